"""The fp32 fallback of a quantized decode graph: the logit margin under which a step is re-run.

A quantized decode step flips the greedy token only where its two most likely tokens are nearly
tied: the flip needs the quantization error of their logit difference to exceed the gap. So the
runtime re-runs a step through the fp32 decode graph (decode_exact.onnx, over the same KV cache
slot) when the quantized step's top-2 gap is under a margin, and keeps the fast step elsewhere
(runtime.generator). Measured on SmolLM2's all-int8 weight-only decode (WikiText-2 valid, 1,024
teacher-forced tokens): top-1 agreement with fp32 0.964 without it, 0.983 at margin 0.1 with 8 %
of steps re-run.

The margin is chosen on the calibrator's held-out windows, through the runtime:
    - no smaller than the median quantization error of the top-2 logit difference (its scale,
      measured on every scored token, so few windows do not pick a margin that only got lucky);
    - then the smallest of that and GRID reaching the top-1 target.
Torch-free.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from semedge import constants as C
from semedge.artifacts import onnx_external_locations
from semedge.calibration.data import with_backends, with_graphs
from semedge.calibration.scoring import HeldOutScore, agreement, score_graphs
from semedge.errors import AccuracyError, InputError
from semedge.logs import log_timed

__all__ = [
    "GRID", "DEFAULT_TOP1", "parse_fallback", "pair_error", "with_fallback", "choose_margin",
    "fallback_record",
]  # fmt: skip

log = logging.getLogger(__name__)

GRID = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)
DEFAULT_TOP1 = 0.98  # the target of `auto` without --min-top1: the precision gate's


def parse_fallback(value: str | float | None) -> str | float:
    """ "off" | "auto" | a margin >= 0 (logits); None -> "off".

    Raises:
        InputError: anything else (NaN, negative, infinite, text).
    """
    if value is None:
        return "off"
    if isinstance(value, str) and value.strip().lower() in ("off", "auto"):
        return value.strip().lower()
    try:
        margin = float(value)
    except (TypeError, ValueError):
        margin = float("nan")
    if not (math.isfinite(margin) and margin >= 0):
        raise InputError(f"--fallback-margin must be off, auto or a number >= 0, got {value!r}")
    return "off" if margin == 0 else margin


def pair_error(base: HeldOutScore, quant: HeldOutScore) -> np.ndarray:
    """Per scored token: |quantized - fp32| of the logit difference between the quantized
    step's two most likely tokens (what must exceed their gap for the top token to flip)."""
    zq, zf = np.concatenate(quant.logits), np.concatenate(base.logits)
    top2 = np.argpartition(zq, -2, axis=-1)[:, -2:]
    rows = np.arange(zq.shape[0])
    a, b = top2[:, 0], top2[:, 1]
    return np.abs((zq[rows, a] - zq[rows, b]) - (zf[rows, a] - zf[rows, b]))


def with_fallback(pipe: Any, exact_backend: Any, margin: float) -> Any:
    """A copy of Pipeline `pipe` whose decode steps fall back to `exact_backend` under `margin`
    (the sessions are shared, not copied)."""
    out = with_backends(pipe, decode_exact=exact_backend)
    out.fallback_margin = float(margin)
    return out


def choose_margin(
    score_at: Callable[[float], HeldOutScore], base: HeldOutScore, quant: HeldOutScore,
    target: float, margin: str | float = "auto",
) -> dict[str, Any]:  # fmt: skip
    """The fallback record for the manifest: the margin (given, or the smallest that reaches
    `target` as the module says) and what it measured.

    Args:
        score_at: margin -> HeldOutScore of the quantized pipeline with the fallback.
        base, quant: fp32 and quantized (no fallback) scores of the same windows.
        target: top-1 agreement with fp32 to reach (auto).
        margin: "auto" or a number.

    Raises:
        AccuracyError: auto, and no margin up to GRID's last reaches `target`.
    """
    err = pair_error(base, quant)
    scale = float(np.median(err)) if err.size else 0.0
    if margin == "auto":
        tries = [round(scale, 3)] + [g for g in GRID if g > round(scale, 3)]
    else:
        tries = [float(margin)]
    seen = []
    for t in tries:
        score = score_at(t)
        top1 = agreement(base, score)
        seen.append(f"{t:g}: {top1:.3f}")
        if margin != "auto" or top1 >= target - 1e-12:
            return {
                "margin": float(t), "graph": "decode_exact.onnx", "target_top1": target,
                "top1": top1, "top1_without": agreement(base, quant), "ppl": score.ppl,
                "exact_share": score.exact_steps / max(1, score.decode_steps),
                "pair_error_median": scale, "scored_tokens": int(score.nll.size),
            }  # fmt: skip
    raise AccuracyError(
        f"the fp32 decode fallback does not reach top-1 {target:g} at any margin up to "
        f"{tries[-1]:g} (margin: top-1 {', '.join(seen)}); lower --min-top1 or keep more fp32"
    )


def fallback_record(run: Any, best: dict, base: HeldOutScore) -> dict | None:
    """The fp32 decode fallback's record for the manifest, or None when off or not needed
    (calibration.int8's _Run: `run`; its chosen candidate: `best`).

    Raises:
        InputError: the export's decode graph keeps its weights in external files.
        AccuracyError: auto, and no margin reaches the top-1 target.
    """
    cfg = run.config
    if cfg.fallback == "off":
        return None
    if onnx_external_locations(run.src / C.DECODE_ONNX):
        raise InputError("--fallback-margin needs a decode graph without external data files")
    quant = run.score(best["folder"])
    target = cfg.min_top1 or DEFAULT_TOP1
    with with_graphs(run.pipe, best["folder"]) as qpipe:

        def score_at(margin: float) -> HeldOutScore:
            pipe = with_fallback(qpipe, run.pipe.decode, margin)
            return score_graphs(pipe, run.held, cfg.eval_context)

        with log_timed(log, "fp32 decode fallback: choosing its margin"):
            rec = choose_margin(score_at, base, quant, target, cfg.fallback)
    if rec["margin"] == 0.0:  # int8 already agrees (no top-2 error): no fp32 graph to ship
        log.info("no fp32 decode fallback: the int8 decode reaches top-1 %.3f alone", rec["top1"])
        return None
    share = rec["exact_share"]
    rec["decode_ms_estimate"] = best["decode_ms"] + share * best["decode_ms_fp32"]
    log.info("fallback margin %.3g: top-1 %.3f -> %.3f, %.1f %% of steps re-run in fp32",
             rec["margin"], rec["top1_without"], rec["top1"], 100 * share)  # fmt: skip
    return rec
