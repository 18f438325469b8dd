"""The `export onnx --precision` quality gate: held-out windows of real text scored through the
runtime users deploy, each candidate against the fp32 export, and the candidates' prefill timed
side by side for `auto`. Torch-free.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from semedge import constants as C
from semedge.errors import InputError

if TYPE_CHECKING:
    from semedge.calibration.precision import PrecisionConfig

__all__ = ["held_out_windows", "score_pipeline", "gate_candidate", "prefill_ms"]


def held_out_windows(tokenizer, text: str, cfg: PrecisionConfig) -> tuple[list[np.ndarray], str]:
    """(the last eval_windows windows of (context + tokens) ids of `text`, the text before
    them). The candidates tune on that text only (the int8 searches score their own held-out
    windows, the ones just before these), so the gate scores tokens no choice was made on."""
    enc = tokenizer.encode(text, add_special_tokens=False)
    ids = np.asarray(enc.ids, dtype=np.int64)
    n = cfg.eval_context + cfg.eval_tokens  # the last eval_tokens ids are scored
    if ids.size < cfg.eval_windows * n:
        raise InputError(
            f"quality data has {ids.size} tokens; {cfg.eval_windows} windows of {n} need "
            f"{cfg.eval_windows * n}; give a longer --quality-data file"
        )
    start = ids.size - cfg.eval_windows * n
    windows = [ids[start + i * n : start + (i + 1) * n] for i in range(cfg.eval_windows)]
    return windows, text[: int(enc.offsets[start][0])]


def score_pipeline(pipe, windows: list[np.ndarray], context: int) -> tuple[np.ndarray, np.ndarray]:
    """Per scored token (nll, argmax) through the runtime's backends and KV cache: prefill
    `context` tokens of each window, then decode the rest teacher-forced (`scoring.score_graphs`,
    the int8 search's measure, on whatever provider `pipe` runs)."""
    from semedge.calibration.scoring import score_graphs

    score = score_graphs(pipe, windows, context)
    return score.nll, score.argmax


def gate_candidate(cand: Path, provider: str, ref: tuple, windows, cfg: PrecisionConfig) -> dict:
    """Score candidate `cand` on `provider` against `ref` (score_pipeline of the fp32 export):
    ppl, its increase, top-1 agreement and whether both are within cfg's budget."""
    from semedge.runtime import Pipeline

    with Pipeline.from_pretrained(cand, providers=provider, verify=False) as pipe:
        nll, arg = score_pipeline(pipe, windows, cfg.eval_context)
    ref_nll, ref_arg = ref
    ppl, ppl32 = float(np.exp(nll.mean())), float(np.exp(ref_nll.mean()))
    delta = (ppl / ppl32 - 1.0) * 100.0
    top1 = float((arg == ref_arg).mean())
    finite = bool(np.isfinite(nll).all())
    passed = finite and delta <= cfg.max_ppl_increase + 1e-9 and top1 >= cfg.min_top1
    return {"ppl": ppl, "ppl_fp32": ppl32, "ppl_delta_pct": delta, "top1": top1,
            "scored_tokens": int(nll.size), "passed": passed}  # fmt: skip


def prefill_ms(dirs: dict[str, tuple[Path, str]], cfg: PrecisionConfig, max_ctx: int) -> dict:
    """Prefill wall time per candidate at speed_tokens, min of alternating repeats (ms)."""
    from semedge.runtime import Pipeline

    n = min(cfg.speed_tokens, max_ctx)
    pipes = {
        k: Pipeline.from_pretrained(d, providers=p, verify=False) for k, (d, p) in dirs.items()
    }
    best = {k: float("inf") for k in pipes}
    try:
        ids = np.arange(n, dtype=np.int64) % 1000 + 100
        for rep in range(cfg.speed_repeats + 1):  # the first round warms up
            for k, pipe in pipes.items():
                cache = pipe.new_cache(1, n)
                feeds = {C.INPUTS_EMBEDS: pipe.embed(ids)[None].astype(pipe.embed_dtype),
                         C.POSITION_IDS: ids[None] * 0 + np.arange(n)[None],
                         C.ATTENTION_MASK: np.ones((1, n), np.int64)}  # fmt: skip
                t0 = time.perf_counter()
                pipe.prefill.run_bound(feeds, cache.present(n), [C.LOGITS])
                if rep:
                    best[k] = min(best[k], (time.perf_counter() - t0) * 1e3)
    finally:
        for pipe in pipes.values():
            pipe.close()
    return best
