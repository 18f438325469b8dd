"""`semedge export onnx --precision auto|fp32|fp16|bf16|int8`: one export per precision, each
behind the same quality gate, `auto` choosing the fastest that passes by measuring it here.

    fp32 export (parity-gated) --fp16: calibration.fp16 (norms/softmax fp32)    --+
                               --int8: calibration.int8 dynamic, per-channel,     +--> quality gate
                                       sensitive layers kept fp32 (search)         |   (runtime, real
                               --bf16: the same fp32 `--attention plain` graphs, --+    text) -> OUT_DIR
                                       run by OpenVINO in bf16 (AMX/AVX512-BF16)

The gate (calibration.quality_gate) scores every candidate through the runtime users deploy
(`Pipeline` on the provider the precision runs on) against the fp32 export on ONNX Runtime:
perplexity of held-out real text (prefill a context, teacher-forced decode of the next tokens)
and top-1 agreement. Past the
budget it raises AccuracyError and nothing is written. The manifest records the precision, the
provider, the CPU features it was tuned on (the runtime warns on a CPU without them) and the gate.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semedge import constants as C
from semedge.artifacts import load_manifest, staged_dir, write_manifest
from semedge.calibration.quality_gate import (
    gate_candidate,
    held_out_windows,
    prefill_ms,
    score_pipeline,
)
from semedge.deps import has_module
from semedge.errors import AccuracyError, ArtifactError, BackendUnavailable, InputError
from semedge.logs import log_timed
from semedge.runtime.cpu_features import NEEDS, cpu_features
from semedge.staging import scratch_dir

__all__ = [
    "PRECISIONS",
    "PrecisionConfig",
    "PrecisionReport",
    "export_precision",
    "check_precision",
]

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
PROVIDER = {"fp32": "cpu", "fp16": "cpu", "int8": "cpu", "bf16": "openvino"}
# test hooks: called with (precision, candidate dir) before the gate scores it
_CANDIDATE_HOOKS: list[Callable[[str, Path], None]] = []


@dataclass(frozen=True)
class PrecisionConfig:
    """The quality budget and how it is measured (defaults: the issue's goals)."""

    max_ppl_increase: float = 1.0  # percent over the fp32 export
    min_top1: float = 0.98  # top-1 agreement with fp32
    # the gate scores eval_windows x eval_tokens tokens (512): at 128, one token is 0.8 % of
    # top-1 agreement, and SmolLM2's int8 decode measured 0.953 .. 0.977 on windows of 128
    # against 0.971 .. 0.983 on 512 and 1,024 (docs/calibration.md)
    eval_windows: int = 16
    search_windows: int = 4  # windows the int8 searches score each candidate on (before these)
    eval_context: int = 128  # prefill tokens per held-out window
    eval_tokens: int = 32  # teacher-forced decode tokens scored per window
    speed_tokens: int = 512  # prefill length timed for `auto`
    speed_repeats: int = 3
    int8_samples: int = 16  # int8: windows for the sensitivity search's data split
    int8_seq_len: int = 256
    # bf16: decode (ONNX Runtime) with weight-only int8 MatMulNBits where it passes the gate and
    # steps faster than fp32 (decode reads every weight once per token: half the bytes or less)
    int8_decode: bool = True
    int8_decode_min_speedup: float = 1.05  # measured decode speed-up needed to keep it
    # ... with its near-tie steps re-run in fp32 (calibration.fallback) to reach min_top1
    decode_fallback: bool = True
    # bf16: the SemToken encoder in bf16 on OpenVINO too where its spans stay (mean span-set
    # Jaccard with fp32's >= min_span_agreement) and it runs faster (calibration.encoder_bf16)
    bf16_encoder: bool = True
    min_span_agreement: float = 0.99

    def __post_init__(self) -> None:
        if not self.max_ppl_increase >= 0:
            raise InputError(
                f"--max-ppl-increase must be >= 0 percent, got {self.max_ppl_increase:g}"
            )
        if not 0.0 <= self.min_top1 <= 1.0:
            raise InputError(f"--min-top1 must be in [0, 1], got {self.min_top1:g}")
        if not 0.0 <= self.min_span_agreement <= 1.0:
            raise InputError(
                f"--min-span-agreement must be in [0, 1], got {self.min_span_agreement:g}"
            )
        for name in (
            "eval_windows",
            "search_windows",
            "eval_context",
            "eval_tokens",
            "speed_tokens",
            "speed_repeats",
        ):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class PrecisionReport:
    """The chosen precision and every candidate's gate (and speed, for auto)."""

    out_dir: str
    precision: str
    provider: str
    cpu_features: list[str]
    candidates: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    HEADERS = [
        "precision",
        "provider",
        "decode",
        "encoder",
        "ppl",
        "ppl fp32",
        "delta %",
        "top-1",
        "prefill ms",
        "gate",
    ]

    def rows(self) -> list[list[Any]]:
        out = []
        for c in self.candidates:
            mark = "pass" if c["passed"] else "FAIL"
            if c["precision"] == self.precision and c["passed"]:
                mark += " (chosen)"
            out.append([
                c["precision"], c["provider"], c.get("decode_precision", "fp32"),
                c.get("encoder_precision", "fp32"),
                _f(c.get("ppl")), _f(c.get("ppl_fp32")), _f(c.get("ppl_delta_pct"), "+.2f"), _f(c.get("top1"), ".3f"),
                _f(c.get("prefill_ms"), ".1f"), mark,
            ])  # fmt: skip
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir, "precision": self.precision, "provider": self.provider,
            "cpu_features": self.cpu_features, "candidates": self.candidates,
            "seconds": round(self.seconds, 2),
        }  # fmt: skip


def _f(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def runnable(precision: str, features: list[str] | None = None) -> str | None:
    """None when this machine can run `precision` fast, else the reason (one line)."""
    features = cpu_features() if features is None else features
    if precision == "bf16":
        if not has_module("openvino"):
            return ("--precision bf16 runs on OpenVINO's CPU plugin (ONNX Runtime has no fast bf16 "
                    "CPU kernels) and openvino is not installed; pip install 'semedge[openvino]'")  # fmt: skip
        if not set(NEEDS["bf16"]) & set(features):
            return (f"--precision bf16 needs a CPU with AMX-BF16 or AVX512-BF16; this one has "
                    f"{', '.join(features) or 'no matrix extensions'}; use --precision auto, fp32 or int8")  # fmt: skip
    return None


def check_precision(precision: str, attention: str | None, dtype: str | None) -> None:
    """Refuse, before any heavy work, a precision this machine or these options cannot run.

    Raises:
        InputError: unknown precision, conflicting options, a CPU without the needed engine.
        BackendUnavailable: the package the precision runs on is missing.
    """
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if dtype not in (None, "fp32") and precision != "fp16":
        raise InputError(
            f"--dtype {dtype} conflicts with --precision {precision}; pass one of them"
        )
    if precision == "bf16" and attention == "fused":
        raise InputError(
            "--precision bf16 runs on OpenVINO, which cannot read the fused (ONNX Runtime "
            "GroupQueryAttention) graphs; pass --attention plain or leave --attention unset"
        )
    why = runnable(precision) if precision != "auto" else None
    if why:
        err = BackendUnavailable if "not installed" in why else InputError
        raise err(why)
    if precision == "int8" and not set(NEEDS["int8"]) & set(cpu_features()):
        log.warning("this CPU has no VNNI/AMX-INT8: int8 GEMMs run on the slower fallback path")


# ---------------------------------------------------------------- candidates
def _convert(precision: str, fp32_dir: Path, out: Path, data: Path, cfg: PrecisionConfig) -> Path:
    """Write the `precision` candidate of `fp32_dir` to `out` (fp32/bf16: the graphs as they are)."""
    if precision in ("fp32", "bf16"):
        shutil.copytree(fp32_dir, out)
        if precision == "bf16":  # the graphs are fp32; the manifest tells OpenVINO to run bf16
            m = load_manifest(out)
            m.config = {**m.config, "precision": "bf16", "provider": PROVIDER["bf16"]}
            write_manifest(out, m)
        return out
    if precision == "fp16":
        from semedge.calibration.fp16 import Fp16Config, convert_fp16

        f16 = Fp16Config(eval_windows=cfg.search_windows, eval_context=cfg.eval_context,
                         eval_tokens=cfg.eval_tokens, min_agreement=0.0)  # our gate decides  # fmt: skip
        convert_fp16(fp32_dir, out, data, f16)
        return out
    from semedge.calibration.int8 import Int8Config, calibrate_int8

    i8 = Int8Config(
        scheme="dynamic", per_channel=True, max_ppl_increase=cfg.max_ppl_increase,
        min_top1=cfg.min_top1, samples=cfg.int8_samples, seq_len=cfg.int8_seq_len,
        eval_windows=cfg.search_windows, eval_context=cfg.eval_context,
        eval_tokens=cfg.eval_tokens, speed_tokens=cfg.speed_tokens, speed_repeats=1,
    )  # fmt: skip
    calibrate_int8(fp32_dir, out, data, i8, cache_root=out.parent / "range-cache")
    return out


def _int8_decode(fp32_dir: Path, cand: Path, data: Path, cfg: PrecisionConfig) -> dict | None:
    """Swap `cand`'s decode graph for a weight-only int8 one (MatMulNBits, sensitive layers kept
    fp32 by calibration.int8's search). Returns what it recorded in the manifest, or None (and
    `cand` unchanged) when no weight-only graph fits the budget or it decodes no faster."""
    from semedge.calibration.int8 import Int8Config, calibrate_int8

    i8 = Int8Config(
        scheme="weight-only", max_ppl_increase=cfg.max_ppl_increase, min_top1=cfg.min_top1,
        samples=cfg.int8_samples, seq_len=cfg.int8_seq_len,
        eval_windows=cfg.search_windows, eval_context=cfg.eval_context,
        eval_tokens=cfg.eval_tokens, speed_tokens=cfg.speed_tokens, speed_repeats=1,
        graphs=(C.DECODE_ONNX,), fallback="auto" if cfg.decode_fallback else "off",
    )  # fmt: skip
    tmp = cand.parent / f"{cand.name}-int8-decode"
    try:
        with log_timed(log, "weight-only int8 decode graph"):
            rep = calibrate_int8(fp32_dir, tmp, data, i8, cache_root=cand.parent / "range-cache")
    except AccuracyError as err:
        log.info("decode stays fp32: %s", str(err).split(";")[0])
        return None
    try:
        speedup = rep.decode_ms_fp32 / rep.decode_ms_int8
        if speedup < cfg.int8_decode_min_speedup:
            log.info("decode stays fp32: weight-only int8 steps only %.2fx faster", speedup)
            return None
        if rep.fallback:  # what a step costs with its share of fp32 re-runs
            speedup = rep.decode_ms_fp32 / rep.fallback["decode_ms_estimate"]
            if speedup < cfg.int8_decode_min_speedup:
                log.info("decode stays fp32: with its fp32 fallback int8 steps only %.2fx "
                         "faster", speedup)  # fmt: skip
                return None
        rec = {"precision": "int8-weight-only", "provider": "cpu", "decode_speedup": speedup,
               "kept_fp32": rep.kept_high_precision, "ppl_delta_pct_alone":
               (rep.ppl_int8 / rep.ppl_fp32 - 1.0) * 100.0}  # fmt: skip
        if rep.fallback:
            rec["fallback_margin"] = rep.fallback["margin"]
        _replace_decode(tmp, cand, rec)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rec


def _bf16_encoder(cand: Path, text: str, cfg: PrecisionConfig) -> dict:
    """calibration.encoder_bf16 on `cand` (its manifest records a kept bf16 encoder)."""
    from semedge.calibration.encoder_bf16 import bf16_encoder

    with log_timed(log, "bf16 encoder: spans against fp32"):
        return bf16_encoder(cand, text, cfg.min_span_agreement)


def _replace_decode(src: Path, cand: Path, decode_precision: dict | None) -> None:
    """`cand`'s decode graph (and its external data) replaced by `src`'s; the manifest records
    `decode_precision` (None: the fp32 graph, the key dropped) and is re-hashed."""
    from semedge.calibration.int8_write import graph_files

    for name in graph_files(cand, C.DECODE_ONNX) | {C.DECODE_EXACT_ONNX}:
        (cand / name).unlink(missing_ok=True)
    exact = (src / C.DECODE_EXACT_ONNX).is_file()
    for name in graph_files(src, C.DECODE_ONNX) | ({C.DECODE_EXACT_ONNX} if exact else set()):
        shutil.copy2(src / name, cand / name)
    fallback = load_manifest(src).config.get("decode_fallback") if exact else None
    m = load_manifest(cand)
    m.config = {k: v for k, v in m.config.items()
                if k not in ("decode_precision", "decode_fallback")}  # fmt: skip
    if decode_precision:
        m.config["decode_precision"] = decode_precision
    if fallback:
        m.config["decode_fallback"] = fallback
    write_manifest(cand, m)


def _stamp(cand: Path, precision: str, provider: str, gate: dict, tuned: list[str]) -> None:
    m = load_manifest(cand)
    m.config = {**m.config, "precision": precision, "provider": provider,
                "cpu_features": tuned, "quality": gate}  # fmt: skip
    m.extra = {**m.extra, "tuned_cpu": {"flags": cpu_features(), "model": _cpu_model()}}
    write_manifest(cand, m)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def export_precision(
    model_spec: str | Path,
    out_dir: str | Path,
    precision: str,
    export_config: Any = None,
    config: PrecisionConfig | None = None,
    data: Path | str | None = None,
) -> PrecisionReport:
    """Export `model_spec` at `precision` (or the fastest passing one for "auto") to `out_dir`.

    Args:
        model_spec: "smollm2" or a local Hugging Face causal-LM directory.
        out_dir: the export directory (written only when the gate passes).
        precision: auto | fp32 | fp16 | bf16 | int8.
        export_config: semedge.export.ExportConfig for the fp32 export; None -> defaults.
        config: the quality budget; None -> PrecisionConfig().
        data: held-out real text (UTF-8) for the gate; None -> the bundled WikiText-2 excerpt.

    Raises:
        InputError / BackendUnavailable: a precision this machine cannot run (before any work).
        AccuracyError: the precision (every candidate, for auto) misses the budget; nothing written.
        ArtifactError: out_dir exists (without overwrite).
    """
    from semedge.calibration.fp16 import _default_data
    from semedge.export import ExportConfig, export_onnx
    from semedge.runtime import Pipeline
    from semedge.textio import read_text_file

    t0 = time.perf_counter()
    cfg = config or PrecisionConfig()
    ecfg = export_config or ExportConfig()
    check_precision(precision, None, None)  # the CLI checks its raw --attention/--dtype first
    out = Path(out_dir)
    if out.exists() and not ecfg.overwrite:
        raise ArtifactError(f"{out} already exists; choose another path or pass --overwrite")
    data = Path(data) if data is not None else _default_data()
    text = read_text_file(data)
    features = cpu_features()
    wanted = _candidates(precision, features)
    with scratch_dir(out.parent, f".{out.name}.precision-") as scratch:
        exports: dict[str, Path] = {}

        def fp32_export(attention: str) -> Path:
            if attention not in exports:
                d = scratch / f"fp32-{attention}"
                e = dataclasses.replace(ecfg, attention=attention, overwrite=False, dtype="fp32")
                with log_timed(log, f"fp32 export ({attention} attention)"):
                    export_onnx(model_spec, d, e)
                exports[attention] = d
            return exports[attention]

        ref_dir = fp32_export("plain" if wanted == ["bf16"] else ecfg.attention)
        with Pipeline.from_pretrained(ref_dir, providers="cpu", verify=False) as ref_pipe:
            windows, before = held_out_windows(ref_pipe.tokenizer, text, cfg)
            tune = scratch / "tuning-text.txt"  # the candidates' searches never see the gate's
            tune.write_text(before, encoding="utf-8")
            with log_timed(log, "scoring fp32 on held-out text"):
                ref = score_pipeline(ref_pipe, windows, cfg.eval_context)
            max_ctx = ref_pipe.max_context
        results, dirs = [], {}
        for p in wanted:
            src = fp32_export("plain" if p == "bf16" else ecfg.attention)
            cand, provider = scratch / p, PROVIDER[p]
            rec: dict[str, Any] = {"precision": p, "provider": provider}
            try:
                with log_timed(log, f"{p} candidate"):
                    _convert(p, src, cand, tune, cfg)
                    decode8 = _int8_decode(src, cand, tune, cfg) if (
                        p == "bf16" and cfg.int8_decode) else None  # fmt: skip
                    if p == "bf16" and cfg.bf16_encoder:
                        rec["encoder"] = _bf16_encoder(cand, before, cfg)
                        rec["encoder_precision"] = rec["encoder"]["precision"]
                    for hook in _CANDIDATE_HOOKS:
                        hook(p, cand)
                    rec.update(gate_candidate(cand, provider, ref, windows, cfg))
                    if decode8 and not rec["passed"]:  # bf16 and int8 together past the budget
                        log.info("bf16 with int8 decode misses the gate (ppl %+.2f %%, top-1 %.3f): "
                                 "decode back to fp32", rec["ppl_delta_pct"], rec["top1"])  # fmt: skip
                        rec["int8_decode_gate"] = {k: rec[k] for k in ("ppl_delta_pct", "top1")}
                        _replace_decode(src, cand, None)
                        decode8 = None
                        rec.update(gate_candidate(cand, provider, ref, windows, cfg))
                    rec["decode_precision"] = decode8["precision"] if decode8 else "fp32"
            except AccuracyError as err:  # int8's own search found nothing in budget
                rec.update(passed=False, error=str(err))
            results.append(rec)
            if rec["passed"]:
                dirs[p] = (cand, provider)
        if not dirs:
            raise AccuracyError(_failure(results, cfg, out), PrecisionReport(
                str(out), precision, "-", features, results, time.perf_counter() - t0))  # fmt: skip
        if len(wanted) > 1:
            with log_timed(log, f"timing prefill of {', '.join(dirs)}"):
                for k, ms in prefill_ms(dirs, cfg, max_ctx).items():
                    next(r for r in results if r["precision"] == k)["prefill_ms"] = ms
        best = min(
            dirs,
            key=lambda k: next(r for r in results if r["precision"] == k).get("prefill_ms", 0.0),
        )
        cand, provider = dirs[best]
        gate = {k: v for k, v in next(r for r in results if r["precision"] == best).items()
                if k not in ("precision", "provider")}  # fmt: skip
        tuned = [f for f in NEEDS.get(best, ()) if f in features]
        _stamp(cand, best, provider, {**gate, "budget_pct": cfg.max_ppl_increase,
                                      "min_top1": cfg.min_top1, "data": data.name}, tuned)  # fmt: skip
        with staged_dir(out, overwrite=ecfg.overwrite) as tmp:
            for p in sorted(cand.iterdir()):
                os.replace(p, tmp / p.name)
    return PrecisionReport(str(out), best, provider, tuned, results, time.perf_counter() - t0)


def _candidates(precision: str, features: list[str]) -> list[str]:
    if precision != "auto":
        return [precision]
    out = ["fp32", "int8"]
    if runnable("bf16", features) is None:
        out.append("bf16")
    return out


def _failure(results: list[dict], cfg: PrecisionConfig, out: Path) -> str:
    parts = []
    for r in results:
        if "error" in r:
            parts.append(f"{r['precision']}: {r['error'].split(';')[0]}")
        else:
            parts.append(f"{r['precision']}: ppl {r['ppl']:.3f} vs fp32 {r['ppl_fp32']:.3f} "
                         f"({r['ppl_delta_pct']:+.2f} %), top-1 {r['top1']:.3f}")  # fmt: skip
    return (f"quality gate failed ({'; '.join(parts)}) against budget +{cfg.max_ppl_increase:g} % "
            f"ppl and top-1 >= {cfg.min_top1:g}; {out} not written; raise --max-ppl-increase / "
            "lower --min-top1, or choose another --precision")  # fmt: skip
