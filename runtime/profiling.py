"""Per-stage latency profile of an export on the runtime users deploy (torch-free).

For each (context length, ratio): tokenize, encode, merge, prefill and per-token decode
p50/p90/p99, time to first token, decode tokens/s, peak RSS, KV-cache bytes, token reduction and
achieved prefill GFLOP/s against this machine's measured numpy matmul peak.
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semedge.checks import check_int, check_number
from semedge.constants import PREFILL_ONNX
from semedge.errors import ArtifactError, InputError
from semedge.runtime.sampling import GenerationConfig
from semedge.runtime.trace import StageTimer

if TYPE_CHECKING:
    from semedge.runtime.pipeline import Pipeline

__all__ = [
    "ProfileReport",
    "profile_export",
    "prompt_of_tokens",
    "matmul_peak_gflops",
    "plot_profile",
]

log = logging.getLogger(__name__)

STAGES = ("tokenize", "encode", "merge", "prefill", "decode_token")
ASSETS = Path(__file__).resolve().parents[1] / "sdk" / "assets"
SAMPLE_TEXTS = ("sample_article.txt", "wikitext2_excerpt.txt")  # real text shipped in the package


@dataclass
class ProfileReport:
    """The sweep's results; `to_dict()` is the `--json` schema."""

    device: str
    provider: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)  # cores, matmul peak, Jetson readings

    @property
    def passed(self) -> bool:
        return bool(self.runs)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "provider": self.provider, "runs": self.runs,
                "skipped": self.skipped, "machine": self.machine}  # fmt: skip


def _asset_text() -> str:
    import semedge

    base = Path(semedge.__file__).resolve().parent / "assets"
    for name in SAMPLE_TEXTS:
        for folder in (base, ASSETS):
            if (folder / name).is_file():
                return (folder / name).read_text(encoding="utf-8")
    raise ArtifactError(
        f"no sample text ({' or '.join(SAMPLE_TEXTS)}) in {base}; reinstall semedge"
    )


def prompt_of_tokens(pipe: Pipeline, tokens: int, text: str | None = None) -> str:
    """Real text (the shipped article, repeated as needed) cut to about `tokens` tokens."""
    text = text or _asset_text()
    ids = pipe.tokenize(text).ids
    reps = -(-tokens // max(len(ids), 1))
    return pipe.decode_tokens((list(ids) * reps)[:tokens])


def matmul_peak_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Best float32 numpy matmul throughput (2 n^3 FLOPs per product) on this machine."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm up BLAS threads
    best = min(_time(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n**3 / best / 1e9


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def prefill_flops(pipe: Pipeline, positions: int) -> float:
    """Estimated prefill FLOPs: 2 x weights x T' (lm_head once when logits are "last")
    + causal attention 2 x layers x T'^2 x hidden (QK^T and AV, half the square each)."""
    c = pipe.config
    itemsize = np.dtype(pipe.embed_dtype).itemsize
    n_params = (pipe.path / PREFILL_ONNX).stat().st_size / itemsize
    for extra in pipe.path.glob(f"{Path(PREFILL_ONNX).stem}*.data"):  # external weights
        n_params += extra.stat().st_size / itemsize
    head = float(c.get("vocab_size", 0)) * float(c.get("hidden_size", 0))
    body = max(n_params - head, 0.0)
    lm = head * (1 if c.get("logits", "last") == "last" else positions)
    attn = 2.0 * float(c["num_layers"]) * positions**2 * float(c.get("hidden_size", 0))
    return 2.0 * body * positions + 2.0 * lm + attn


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS)
    scale = 1 / 1024 if platform.system() != "Darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "n": 0}
    p50, p90, p99 = np.percentile(np.asarray(values), [50, 90, 99])
    return {"p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4),
            "p99_ms": round(float(p99), 4), "n": len(values)}  # fmt: skip


def _one_run(pipe: Pipeline, prompt: str, ratio: float, decode_tokens: int, timer: StageTimer):
    """(ttft_ms, generator) for one generation of exactly `decode_tokens` tokens."""
    cfg = GenerationConfig(max_new_tokens=decode_tokens, ratio=None if ratio <= 1.0 else ratio,
                           ignore_eos=True)  # fmt: skip
    t0 = time.perf_counter()
    gen = pipe.generator(prompt, cfg, timer)
    gen.generate_next_token()
    ttft = (time.perf_counter() - t0) * 1e3
    while not gen.is_done():
        gen.generate_next_token()
    return ttft, gen


def _point(pipe, prompt, ratio, warmup, runs, decode_tokens, timer, peak) -> dict[str, Any]:
    for _ in range(warmup):
        _one_run(pipe, prompt, ratio, decode_tokens, StageTimer())
    first = len(timer.events)
    ttfts, gen, exact = [], None, 0
    for _ in range(runs):
        with timer.span("generate", ratio=ratio):
            ttft, gen = _one_run(pipe, prompt, ratio, decode_tokens, timer)
        ttfts.append(ttft)
        exact += gen.exact_steps
    mine = timer.events[first:]
    by = {s: [e["dur"] / 1e3 for e in mine if e["name"] == s] for s in STAGES}
    stages = {s: _percentiles(by[s]) for s in STAGES}
    x = gen.prompts[0]
    decode_s = sum(by["decode_token"]) / 1e3
    gflops = prefill_flops(pipe, len(x.positions)) / (stages["prefill"]["p50_ms"] / 1e3) / 1e9
    return {
        "context": x.prompt_tokens, "ratio": ratio, "compressed_tokens": len(x.positions),
        "token_reduction": round(x.prompt_tokens / len(x.positions), 4),
        "ttft_ms": round(float(np.median(ttfts)), 4),
        "decode_tokens_per_s": round(len(by["decode_token"]) / decode_s, 3) if decode_s else 0.0,
        "peak_rss_mb": round(_peak_rss_mb(), 1), "kv_cache_bytes": int(gen.cache.nbytes),
        "kv_cache": "in-place" if gen.cache.shared else "ping-pong",
        "prefill_gflops": round(gflops, 3),
        "prefill_fraction_of_peak": round(gflops / peak, 4) if peak else None,
        # decode steps re-run by the fp32 fallback graph (calibrate int8 --fallback-margin)
        "decode_fp32_fallback_share": round(exact / max(1, len(by["decode_token"])), 4)
        if pipe.fallback_margin else None,
        "stages": stages,
    }  # fmt: skip


def check_sweep(lengths, ratios, warmup: int, runs: int, decode_tokens: int) -> None:
    """Raise InputError for an empty or invalid sweep (before any model is loaded)."""
    if not lengths or not ratios or runs < 1 or warmup < 0 or decode_tokens < 1:
        raise InputError(
            "profile needs --lengths, --ratios, --runs >= 1, --warmup >= 0, --decode-tokens >= 1"
        )
    for r in ratios:
        check_number(r, "--ratios value", 1.0, hint=" (1 = full prompt)")
    for n in lengths:
        check_int(n, "--lengths value", 8, 1 << 24)
    check_int(decode_tokens, "--decode-tokens", 1, 1 << 20)
    check_int(runs, "--runs", 1, 100_000)
    check_int(warmup, "--warmup", 0, 100_000)


def profile_export(
    pipe: Pipeline,
    lengths: Sequence[int] = (512, 1024, 2048, 4096),
    ratios: Sequence[float] = (1.0, 2.4),
    warmup: int = 1,
    runs: int = 3,
    decode_tokens: int = 16,
    timer: StageTimer | None = None,
    progress: bool = False,
) -> ProfileReport:
    """Sweep context lengths x ratios on a loaded Pipeline.

    Args:
        pipe: the Pipeline to measure.
        lengths: prompt lengths in tokens (real shipped text, repeated as needed).
        ratios: compression ratios (1 = the full prompt).
        warmup, runs: untimed and timed generations per point.
        decode_tokens: tokens generated per run (EOS ignored).
        timer: a StageTimer collecting every span (for the Chrome trace); a new one if None.
        progress: show a tqdm bar on stderr.

    Returns:
        A ProfileReport; points that cannot fit max_context are listed in `skipped`.

    Raises:
        InputError: empty or invalid lengths/ratios/runs.
    """
    check_sweep(lengths, ratios, warmup, runs, decode_tokens)
    from tqdm import tqdm

    timer = timer or StageTimer()
    peak = matmul_peak_gflops()
    report = ProfileReport(device=device_name(pipe.provider), provider=pipe.provider,
                           machine=machine_info(peak))  # fmt: skip
    points = [(n, r) for n in lengths for r in ratios]
    for n, r in tqdm(points, disable=not progress, desc="profile", unit="point"):
        prompt = prompt_of_tokens(pipe, n)
        try:
            report.runs.append(
                _point(pipe, prompt, float(r), warmup, runs, decode_tokens, timer, peak)
            )
        except InputError as err:  # e.g. does not fit max_context at this ratio
            log.warning("skipping context %d ratio %g: %s", n, r, err)
            report.skipped.append({"context": n, "ratio": r, "reason": str(err)})
    report.machine.update(jetson_readings())
    return report


def device_name(provider: str) -> str:
    """GPU name for GPU providers, else the CPU model."""
    if provider != "cpu":
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(peak_gflops: float) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_cores": cores, "matmul_peak_gflops": round(peak_gflops, 2),
            "platform": platform.platform()}  # fmt: skip


def jetson_readings() -> dict[str, Any]:
    """Jetson power mode (nvpmodel) and one tegrastats line, when on a Jetson."""
    if not Path("/etc/nv_tegra_release").is_file():
        return {}
    out: dict[str, Any] = {"jetson": True}
    for key, cmd in (("power_mode", ["nvpmodel", "-q"]), ("tegrastats", ["tegrastats"])):
        try:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, text=True, stderr=subprocess.DEVNULL
            )
            try:
                line = (
                    proc.stdout.readline().strip()
                    if key == "tegrastats"
                    else proc.communicate(timeout=5)[0].strip()
                )
            finally:
                proc.kill()
                proc.wait()
            out[key] = line
        except (OSError, subprocess.TimeoutExpired):
            out[key] = None
    return out


def plot_profile(report: ProfileReport, path: Path | str) -> Path:
    """PNG of time to first token vs context, one line per ratio (matplotlib, lazily imported).

    Raises:
        BackendUnavailable: matplotlib is not installed.
    """
    from semedge.artifacts import atomic_write_bytes
    from semedge.deps import require

    require("matplotlib")
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in sorted({run["ratio"] for run in report.runs}):
        pts = sorted((run["context"], run["ttft_ms"]) for run in report.runs if run["ratio"] == r)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"ratio {r:g}")
    ax.set(xlabel="context (tokens)", ylabel="time to first token (ms)",
           title=f"{report.device} / {report.provider}")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
