"""INT8 calibration of an export: measure the schemes, keep sensitive parts fp32, write a copy.

    export dir --tokenize/compress--> calibration feeds --ranges (cached)--> Q/DQ graphs
         |                                                                     |
         +--held-out text: ppl / top-1 vs fp32 (prefill + decode) <------------+
                                 sensitivity loop -> kept fp32 nodes -> OUT_DIR (manifest)

The result directory is a full copy of the export with quantized prefill.onnx / decode.onnx and
manifest format "semedge-calibrated"; the runtime loads it like an export.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semedge import constants as C
from semedge.artifacts import (
    Manifest,
    listed_file,
    load_manifest,
    verify_manifest,
)
from semedge.calibration import scoring
from semedge.calibration.cache import RangeCache, default_cache_root
from semedge.calibration.data import (
    FeedReader,
    data_fingerprint,
    decode_feeds,
    prefill_feeds,
    prepare_windows,
    split_tokens,
    tokenize_stream,
    with_graphs,
)
from semedge.calibration.encoder_int8 import int8_encoder
from semedge.calibration.fallback import fallback_record, parse_fallback
from semedge.calibration.int8_write import write_calibrated
from semedge.calibration.report import Int8Report
from semedge.calibration.schemes import (
    METHODS,
    WEIGHT_BITS,
    QuantSettings,
    ensure_node_names,
    quantize_graph,
    weight_hints,
    weight_matmuls,
)
from semedge.calibration.sensitivity import GRANULARITIES, Trial, group_nodes, search_exclusions
from semedge.errors import AccuracyError, ArtifactError, InputError
from semedge.logs import log_timed
from semedge.textio import read_text_file

if TYPE_CHECKING:
    from semedge.runtime.pipeline import Pipeline

__all__ = ["Int8Config", "TARGETS", "calibrate_int8", "open_export"]

log = logging.getLogger(__name__)

# target -> schemes measured for it ("auto"); TensorRT and the GPU EPs take symmetric Q/DQ only
TARGETS = {
    "ort-cpu": ("static", "dynamic", "weight-only"),
    "ort-gpu": ("static-sym",),
    "tensorrt": ("static-sym",),
}
# schemes a target runs only when asked by name: auto never picks them, because their gate is
# perplexity alone (SmolLM2's int4 decode: ppl +2.0 %, inside the 3 % budget, but top-1 0.71)
EXPLICIT = {"ort-cpu": ("weight-only-int4",)}
GRAPHS = (C.PREFILL_ONNX, C.DECODE_ONNX)


@dataclass(frozen=True)
class Int8Config:
    """INT8 calibration settings; defaults suit SmolLM2-135M on a 2-core CPU."""

    samples: int = 16  # calibration windows
    seq_len: int = 256  # tokens per calibration window (before compression)
    method: str = "minmax"  # minmax | entropy | percentile
    target: str = "ort-cpu"  # ort-cpu | ort-gpu | tensorrt
    scheme: str = "auto"  # auto (measure the target's schemes) or one of them
    max_ppl_increase: float = 3.0  # percent
    min_top1: float = 0.0  # top-1 agreement with fp32 on the held-out windows (0: no floor)
    granularity: str = "auto"  # sensitivity groups: auto | role | layer | node
    per_channel: bool = False
    block_size: int = 32  # weight-only block length (MatMulNBits: 16, 32, 64, 128 or 256)
    eval_windows: int = 4  # held-out windows for ppl / agreement
    eval_context: int = 128  # prefill tokens per held-out window
    eval_tokens: int = 32  # decoded (scored) tokens per held-out window
    speed_tokens: int = 512  # prefill length (and decode past) for the speed measurement
    speed_repeats: int = 3
    compress: bool = True  # calibrate on SemToken-merged inputs when the export compresses
    graphs: tuple[str, ...] = GRAPHS  # graphs to quantize; the others stay as exported
    # decode steps whose top-2 logit gap is under this margin re-run in fp32 (calibration.
    # fallback): "off", "auto" (the smallest that reaches min_top1, or 0.98) or a number
    fallback: str | float = "off"
    # the SemToken encoder: "fp32" (as exported) or "int8" (weight-only, gated on its spans:
    # calibration.encoder_int8)
    encoder: str = "fp32"
    min_span_agreement: float = 0.99  # mean Jaccard of the int8 encoder's spans vs fp32's

    def __post_init__(self) -> None:
        object.__setattr__(self, "fallback", parse_fallback(self.fallback))
        if self.encoder not in ("fp32", "int8"):
            raise InputError(f"--encoder must be fp32 or int8, got {self.encoder!r}")
        if not 0.0 <= self.min_span_agreement <= 1.0:
            raise InputError(
                f"--min-span-agreement must be in [0, 1], got {self.min_span_agreement:g}"
            )
        if self.fallback != "off" and C.DECODE_ONNX not in self.graphs:
            raise InputError(
                "--fallback-margin needs the decode graph quantized (--graphs both|decode)"
            )
        if self.target not in TARGETS:
            raise InputError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        allowed = TARGETS[self.target] + EXPLICIT.get(self.target, ())
        if self.scheme != "auto" and self.scheme not in allowed:
            raise InputError(
                f"--scheme {self.scheme} is not for --target {self.target}; "
                f"use auto or one of {', '.join(allowed)}"
            )
        if self.method not in METHODS:
            raise InputError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not self.max_ppl_increase >= 0:
            raise InputError(
                f"--max-ppl-increase must be >= 0 percent, got {self.max_ppl_increase:g}"
            )
        if not 0.0 <= self.min_top1 <= 1.0:
            raise InputError(f"--min-top1 must be in [0, 1], got {self.min_top1:g}")
        QuantSettings(scheme="weight-only", nbits_block=self.block_size)  # raises if invalid
        if self.granularity not in GRANULARITIES:
            raise InputError(f"--granularity must be one of {', '.join(GRANULARITIES)}")
        for name in ("samples", "seq_len", "eval_windows", "eval_context", "eval_tokens"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.speed_tokens < 1 or self.speed_repeats < 1:
            raise InputError("speed_tokens and speed_repeats must be >= 1")
        if not self.graphs or any(g not in GRAPHS for g in self.graphs):
            raise InputError(f"graphs must be some of {', '.join(GRAPHS)}, got {self.graphs!r}")

    @property
    def schemes(self) -> tuple[str, ...]:
        return TARGETS[self.target] if self.scheme == "auto" else (self.scheme,)

    @property
    def search_top1(self) -> float:
        """The sensitivity search's top-1 floor: none when an auto fallback reaches it instead
        (the fallback re-runs a few steps, where keeping a group fp32 slows every step)."""
        return 0.0 if self.fallback == "auto" else self.min_top1


def open_export(directory: Path | str, need: tuple[str, ...] = GRAPHS) -> tuple[Manifest, Pipeline]:
    """Load and verify an fp32 export for calibration, opened as the runtime's CPU Pipeline
    (close it when done).

    Raises:
        ArtifactError: no manifest, wrong format, tampered files, missing graphs, not fp32.
    """
    src = Path(directory)
    manifest = load_manifest(src, expect_format=C.FORMAT_EXPORT)
    verify_manifest(src, manifest)
    for name in (*need, C.EMBED_ONNX, C.TOKENIZER_JSON):
        if name not in manifest.files and not (src / name).exists():
            raise ArtifactError(f"{src} has no {name}; calibrate a full semedge export")
        listed_file(src, manifest, name, "a calibration input")  # unlisted: tampered
    dtype = manifest.config.get("dtype", "fp32")
    if dtype not in ("fp32", "float32"):
        raise ArtifactError(
            f"{src} is a {dtype} export; calibration starts from fp32 (semedge export onnx --dtype fp32)"
        )
    from semedge.runtime import Pipeline

    return manifest, Pipeline.from_pretrained(src, providers="cpu", verify=False)


@dataclass
class _Run:
    """State of one calibration run: data, scratch space, memoized candidates and scores."""

    src: Path
    pipe: Pipeline
    config: Int8Config
    scratch: Path
    cache: RangeCache
    fingerprint: str
    cal_texts: list[str]
    held: list
    readers: list[FeedReader] = field(default_factory=list)
    scores: dict[tuple, scoring.HeldOutScore] = field(default_factory=dict)
    cache_hit: bool = True
    _prompts: list | None = None
    named: dict[str, Path] = field(default_factory=dict)  # graph -> the file quantized from

    def __post_init__(self) -> None:
        for graph in self.config.graphs:
            self.named[graph] = ensure_node_names(self.src / graph, self.scratch / "named")

    def prompts(self) -> list:
        if self._prompts is None:
            with log_timed(log, f"preparing {len(self.cal_texts)} calibration inputs"):
                self._prompts = prepare_windows(self.pipe, self.cal_texts, self.config.compress)
        return self._prompts

    def reader(self, graph: str) -> FeedReader:
        self.cache_hit = False
        if graph == C.PREFILL_ONNX:
            feeds = prefill_feeds(self.pipe, self.prompts())
        else:
            feeds = decode_feeds(self.pipe, self.prompts()[:8])
        self.readers.append(FeedReader(feeds))
        return self.readers[-1]

    def settings(self, scheme: str) -> QuantSettings:
        return QuantSettings(
            scheme=scheme,
            method=self.config.method,
            per_channel=self.config.per_channel,
            nbits_block=self.config.block_size,
        )

    def build(self, scheme: str, exclude: list[str]) -> Path:
        """Quantize config.graphs (memoized per scheme + exclusion set); return their folder
        (a graph not quantized is not in it: `with_graphs` keeps the export's own)."""
        out = self.scratch / f"{scheme}@{abs(hash(tuple(sorted(exclude)))):x}"
        if out.is_dir():
            return out
        s = self.settings(scheme)
        for graph in self.config.graphs:
            cache_path = None
            if s.needs_ranges:
                key = self.cache.key(
                    self.named[graph], self.fingerprint, method=s.method, symmetric=s.symmetric
                )
                cache_path = self.cache.path(key)
                if not self.cache.hit(key):
                    self.cache.prepare(key, self.fingerprint, self.src / graph)
            quantize_graph(
                self.named[graph],
                out / graph,
                s,
                exclude,
                lambda g=graph: self.reader(g),
                cache_path,
            )
        return out

    def score(self, folder: Path) -> scoring.HeldOutScore:
        key = (str(folder),)
        if key not in self.scores:
            with with_graphs(self.pipe, folder) as pipe:
                self.scores[key] = scoring.score_graphs(pipe, self.held, self.config.eval_context)
        return self.scores[key]


def _graph(run: _Run, folder: Path, graph: str) -> Path:
    """`folder`'s `graph` where it was quantized, else the export's own."""
    path = folder / graph
    return path if path.exists() else run.src / graph


def _mb(run: _Run, folder: Path) -> float:
    """Graph bytes (MB) of the calibrated export: the quantized ones from `folder`."""
    return sum(_graph(run, folder, g).stat().st_size for g in GRAPHS) / 1e6


def _mb_exact(run: _Run) -> float:
    """Bytes (MB) of the fp32 decode graph a fallback ships beside the quantized one."""
    return (run.src / C.DECODE_ONNX).stat().st_size / 1e6


def _run_scheme(run: _Run, scheme: str, base: scoring.HeldOutScore) -> dict[str, Any]:
    """Sensitivity search for one scheme; returns its candidate record (or its failure)."""
    import onnx

    hints = {}  # prefill and decode may share node names: one group entry serves both graphs
    for graph in run.config.graphs:
        hints.update(weight_hints(onnx.load(str(run.named[graph]), load_external_data=False)))
    groups = group_nodes(list(hints), _granularity(run.config), hints)

    def evaluate(exclude: list[str]) -> Trial:
        q = run.score(run.build(scheme, exclude))
        return Trial(q.ppl, scoring.agreement(base, q), scoring.divergence(base, q))

    with log_timed(log, f"scheme {scheme}: sensitivity search"):
        try:
            res = search_exclusions(groups, evaluate, base.ppl, run.config.max_ppl_increase,
                                    run.config.search_top1)  # fmt: skip
        except AccuracyError as err:
            return {"scheme": scheme, "passed": False, "error": str(err)}
    folder = run.build(scheme, sorted(res.kept_nodes))
    for other in run.scratch.glob(f"{scheme}@*"):  # candidates of the search: GBs on a real model
        if other != folder:
            shutil.rmtree(other, ignore_errors=True)
    return {
        "scheme": scheme,
        "passed": True,
        "folder": folder,
        "ppl": res.loss,
        "sensitivity": res,
        "quantized_nodes": len(hints) - len(res.kept_nodes),
        "size_mb": _mb(run, folder),
    }


def _granularity(config: Int8Config) -> str:
    """`auto` searches a decode-only graph by layer: a decode step reads every weight once per
    token, so what stays fp32 costs its bytes on every token, and a layer is 1/L of them where
    a role (gate/up over all layers) is far more. SmolLM2's weight-only decode with a 0.98 top-1
    floor: role groups keep the head and gate/up fp32 (1.14x the fp32 step), layer groups the
    head and the last layer (1.94x). Otherwise group_nodes' own choice (roles where names give
    them)."""
    if config.granularity == "auto" and config.graphs == (C.DECODE_ONNX,):
        return "layer"
    return config.granularity


def _attention_matmuls(run: _Run) -> dict[str, str]:
    import onnx

    out = {}
    for graph in run.config.graphs:
        model = onnx.load(str(run.named[graph]), load_external_data=False)
        weights = weight_matmuls(model)
        for n in model.graph.node:
            if n.op_type == "MatMul" and n.name not in weights:
                out[n.name] = (
                    "no constant weight (activation x activation: rotary/attention): kept float"
                )
    return out


def _pick(run: _Run, candidates: list[dict]) -> dict:
    """Measure the passing schemes' speed side by side with fp32 and take the fastest prefill
    (the fastest decode step when only the decode graph is quantized)."""
    ok = [c for c in candidates if c["passed"]]
    if not ok:
        msgs = "; ".join(c["error"] for c in candidates)
        raise AccuracyError(msgs)
    cfg = run.config
    tokens = min(cfg.speed_tokens, int(run.pipe.config.get("max_context", cfg.speed_tokens)))
    timed = [g for g in GRAPHS if g in cfg.graphs]
    with log_timed(log, f"timing {' and '.join(timed)} @{tokens} for fp32 + {len(ok)} schemes"):
        pre = [None] * (len(ok) + 1)
        if C.PREFILL_ONNX in cfg.graphs:
            pre = scoring.prefill_ms(
                run.pipe, [run.src / C.PREFILL_ONNX, *(c["folder"] / C.PREFILL_ONNX for c in ok)],
                tokens, cfg.speed_repeats,
            )  # fmt: skip
        dec = scoring.decode_ms(
            run.pipe,
            [run.src / C.DECODE_ONNX, *(_graph(run, c["folder"], C.DECODE_ONNX) for c in ok)],
            tokens,
        )
    for c, p, d in zip(ok, pre[1:], dec[1:], strict=True):
        c.update(prefill_ms=p, decode_ms=d, decode_speedup=dec[0] / d,
                 prefill_speedup=pre[0] / p if p else None)  # fmt: skip
    speedup = "prefill_speedup" if C.PREFILL_ONNX in cfg.graphs else "decode_speedup"
    best = max(ok, key=lambda c: c[speedup])
    best.update(prefill_ms_fp32=pre[0], decode_ms_fp32=dec[0], speed_tokens=tokens)
    return best


def _public(c: dict) -> dict:
    keep = ("scheme", "passed", "error", "ppl", "prefill_speedup", "decode_speedup", "size_mb")
    out = {k: c[k] for k in keep if k in c}
    if "sensitivity" in c:
        out["kept_groups"] = list(c["sensitivity"].kept)
    return out


def calibrate_int8(
    export_dir: Path | str,
    out_dir: Path | str,
    data: Path | str,
    config: Int8Config | None = None,
    cache_root: Path | str | None = None,
    overwrite: bool = False,
) -> Int8Report:
    """Calibrate an fp32 export to INT8 within a perplexity budget and write it to `out_dir`.

    Args:
        export_dir: a semedge export (fp32).
        out_dir: where the calibrated copy goes (must not exist unless `overwrite`).
        data: UTF-8 text; its head calibrates, its tail is the held-out quality check.
        config: settings; None -> Int8Config().
        cache_root: calibration cache directory; None -> $SEMEDGE_CACHE/calibration.
        overwrite: replace an existing `out_dir`.

    Returns:
        Int8Report of the chosen scheme (every measured scheme under `candidates`).

    Raises:
        InputError: bad settings or too little text.
        ArtifactError: not a usable fp32 export, or `out_dir` exists.
        AccuracyError: no scheme meets the budget (nothing is written).
    """
    config = config or Int8Config()
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out} already exists; choose another path or pass --overwrite")
    manifest, pipe = open_export(export_dir)
    text = read_text_file(data)
    stream = tokenize_stream(pipe, text)
    eval_len = config.eval_context + config.eval_tokens
    cal, held = split_tokens(
        stream.ids.size, config.samples, config.seq_len, config.eval_windows, eval_len
    )
    adapter = manifest.config.get("adapter")
    fp = data_fingerprint(
        text, samples=config.samples, seq_len=config.seq_len, compress=config.compress,
        compression=manifest.config.get("compression"),
        adapter=manifest.files.get(adapter, {}).get("sha256") if adapter else None,
    )  # fmt: skip
    cache = RangeCache(Path(cache_root) if cache_root else default_cache_root())
    with (
        pipe,
        tempfile.TemporaryDirectory(
            prefix="semedge-int8-", dir=out.parent if out.parent.is_dir() else None
        ) as tmp,
    ):
        run = _Run(Path(export_dir), pipe, config, Path(tmp), cache, fp,
                   [stream.text_of(w) for w in cal], [stream.ids[w] for w in held])  # fmt: skip
        with log_timed(log, "scoring fp32 on held-out text"):
            base = scoring.score_graphs(pipe, run.held, config.eval_context)
        candidates = [_run_scheme(run, s, base) for s in config.schemes]
        best = _pick(run, candidates)
        scoring.check_changed(base, run.score(best["folder"]))
        fallback = fallback_record(run, best, base)
        encoder = (
            int8_encoder(run, stream, cal[-1].stop, held[0].start)
            if config.encoder == "int8"
            else None
        )
        report = _report(run, best, base, candidates, out, fallback, encoder)
        write_calibrated(run, manifest, best, report, out, overwrite, encoder and encoder["path"])
    return report


def _report(
    run: _Run, best: dict, base, candidates: list[dict], out: Path, fallback: dict | None = None,
    encoder: dict | None = None,
) -> Int8Report:  # fmt: skip
    sens = best["sensitivity"]
    q = run.score(best["folder"])
    kept = dict(sens.kept_nodes)
    kept.update(_attention_matmuls(run))
    return Int8Report(
        out_dir=str(out), target=run.config.target, scheme=best["scheme"],
        method=run.config.method, budget_pct=run.config.max_ppl_increase,
        ppl_fp32=base.ppl, ppl_int8=q.ppl, top1_agreement=scoring.agreement(base, q),
        min_top1=run.config.min_top1, block_size=_block(run, best["scheme"]),
        prefill_ms_fp32=best["prefill_ms_fp32"], prefill_ms_int8=best["prefill_ms"],
        decode_ms_fp32=best["decode_ms_fp32"], decode_ms_int8=best["decode_ms"],
        speed_tokens=best["speed_tokens"], size_mb_fp32=_mb(run, run.src),
        size_mb=best["size_mb"] + (_mb_exact(run) if fallback else 0.0),
        quantized_nodes=best["quantized_nodes"], kept_high_precision=sorted(kept),
        kept_reasons=kept, candidates=[_public(c) for c in candidates],
        sensitivity=sens.to_dict(), cache_hit=run.cache_hit,
        calibration_batches=sum(r.calls for r in run.readers), scored_tokens=int(base.nll.size),
        fallback=fallback,
        encoder={k: v for k, v in encoder.items() if k != "path"} if encoder else None,
    )  # fmt: skip


def _block(run: _Run, scheme: str) -> int | None:
    """The MatMulNBits block length of a weight-only scheme (None for the others)."""
    return run.config.block_size if scheme in WEIGHT_BITS else None
