"""The position budget of SemToken's span search, in numpy: how many positions a ratio allows,
what a protection mask costs, and which whole units (sentences) fit.

Torch-free: used by `spans.find_spans` (shared by the PyTorch compressor and the runtime).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from semedge.errors import InputError

if TYPE_CHECKING:
    from semedge.config import CompressionConfig

__all__ = [
    "min_spans", "budget", "too_short", "protect_relevant_units", "kept_token_spans",
    "reading_order",
]  # fmt: skip


def min_spans(protected: np.ndarray, max_span: int) -> int:
    """The fewest spans any merge can reach: protected singletons plus ceil(run / max_span)."""
    protected = np.asarray(protected, dtype=bool)
    n = int(protected.sum())
    edges = np.flatnonzero(np.diff(np.concatenate([[1], protected.astype(np.int8), [1]])))
    runs = edges[1::2] - edges[0::2]  # lengths of unprotected runs
    return n + int(np.sum(-(-runs // max_span)))


def budget(T: int, config: CompressionConfig) -> tuple[float, int, int]:
    """Target span count and the [lo, hi] counts whose ratio is within the tolerance."""
    ratio = T / config.target_tokens if config.target_tokens is not None else float(config.ratio)
    ratio = max(ratio, 1.0)
    tol = config.tolerance
    lo = math.ceil(T / (ratio * (1 + tol)) - 1e-9)
    hi = math.floor(T / (ratio * (1 - tol)) + 1e-9) if tol < 1 else T
    return T / ratio, max(1, lo), min(T, hi)


def too_short(T: int, n_min: int, n_protected: int, config: CompressionConfig) -> InputError:
    asked = (
        f"target_tokens {config.target_tokens}"
        if config.target_tokens is not None
        else f"ratio {config.ratio:g}"
    )
    best = T / max(n_min, 1)
    return InputError(
        f"text has {T} tokens, too short for {asked}: {n_protected} are protected "
        f"(recency window {config.recency_tokens(T)}, sink_tokens {config.sink_tokens}, and "
        f"special tokens, protected strings, digits where they fit) so the best ratio is "
        f"{best:.2f}; give a longer text, a lower ratio or a smaller recency_window"
    )


def protect_relevant_units(
    protected: np.ndarray, units: np.ndarray, scores: np.ndarray, budget: float, share: float,
    run_cost: bool = True,
) -> np.ndarray:  # fmt: skip
    """Protect whole units, most relevant first, within `share` of the free budget.

    What a mask costs is its protected tokens plus one position per free run (what merging the
    rest needs at least; with `run_cost` False, the free runs are dropped and cost nothing).
    The free budget is `budget` less the cost of `protected`; a unit is taken when the cost
    with it stays within `share` of that (so a unit that splits a free run in two pays for the
    extra span too); units already fully protected are skipped.

    Args:
        protected: (T,) bool, the mask before query protection.
        units: (T,) unit id per token; scores: (U,) relevance (-inf = never).
        budget: the target number of output positions.
        share: fraction of the free budget the relevant units may take, in [0, 1].

    Returns:
        (T,) bool, a new mask.
    """
    out = np.asarray(protected, dtype=bool).copy()
    units = np.asarray(units, dtype=np.int64)
    free_per_unit = np.bincount(units, weights=~out, minlength=len(scores)).astype(np.int64)

    def cost(mask: np.ndarray) -> int:
        return int(mask.sum()) + (_free_runs_count(mask) if run_cost else 0)

    base = cost(out)
    limit = base + share * (budget - base)
    for u in np.argsort(-np.asarray(scores), kind="stable"):
        if not np.isfinite(scores[u]) or int(out.sum()) + 1 > limit:
            break
        if free_per_unit[u] == 0:
            continue
        trial = out | (units == u)
        if cost(trial) <= limit:
            out = trial
    return out


def kept_token_spans(
    protected: np.ndarray,
    unit_scores: tuple[np.ndarray, np.ndarray] | None,
    config: CompressionConfig,
    T: int,
    question_at: int | None = None,
) -> np.ndarray:
    """The spans when merged spans are dropped (config.drops_merged()): one singleton per kept
    token, the rest left out of the LM's input.

    Kept, within the budget's position count: the protected tokens (sinks, recency window,
    special tokens, protected strings), then whole units most relevant first
    (protect_relevant_units within config.query_share of the room left, a dropped stretch
    costing nothing), then the latest tokens not kept yet (the recency window grows back).

    Returns:
        (n, 2) int64 singleton spans [i, i + 1), in order, n the budget's position count.

    Raises:
        InputError: the protected tokens alone exceed the budget.
    """
    target, lo_n, hi_n = budget(T, config)
    n = min(max(round(target), lo_n), hi_n)
    keep = np.asarray(protected, dtype=bool).reshape(T).copy()
    if int(keep.sum()) > hi_n:
        raise too_short(T, int(keep.sum()), int(keep.sum()), config)
    ranked = np.zeros(T, dtype=bool)
    if unit_scores is not None:
        units, scores = unit_scores
        before = keep
        keep = protect_relevant_units(keep, units, scores, n, config.query_share, run_cost=False)
        ranked = keep & ~before
    room = n - int(keep.sum())
    if room > 0:
        keep[np.flatnonzero(~keep)[-room:]] = True
    idx = np.flatnonzero(keep).astype(np.int64)
    if unit_scores is not None and question_at is not None and config.reorders_ranked():
        idx = reading_order(idx, ranked, unit_scores[0], unit_scores[1], question_at,
                            config.sink_tokens)  # fmt: skip
    return np.stack([idx, idx + 1], axis=1).reshape(-1, 2)


def reading_order(kept: np.ndarray, ranked: np.ndarray, units: np.ndarray, scores: np.ndarray,
                  question_at: int, pinned: int = 0) -> np.ndarray:  # fmt: skip
    """`kept` (token indices, in text order) with its k most relevant sentences moved to just
    before `question_at`, least relevant first (ties in text order), so the most relevant
    sentence is read right before the question; everything else keeps its order.

    k is the number of movable sentences kept for relevance alone (`ranked`); the k moved are
    the most relevant of all movable sentences, so a sentence of the recency window that
    outranks a far one is read with the others (the far one then stays in its place in the
    text). Movable: kept whole, before `question_at`, with a finite score and none of the first
    `pinned` tokens (attention sinks: such a sentence stays whole where it is).

    Args:
        kept: (n,) int64 sorted token indices; ranked: (T,) bool tokens kept for relevance.
        units: (T,) sentence id per token; scores: (U,) relevance per sentence (-inf: never).
        question_at: the token that opens the last blank line (relevance.question_start).
        pinned: leading tokens that never move (config.sink_tokens).
    """
    kept, units = np.asarray(kept, dtype=np.int64), np.asarray(units)
    scores = np.asarray(scores, dtype=np.float64)
    U = len(scores)
    n_kept = np.bincount(units[kept], minlength=U)
    n_ranked = np.bincount(units[kept], weights=np.asarray(ranked, bool)[kept], minlength=U)
    movable = (n_kept == np.bincount(units, minlength=U)) & np.isfinite(scores)  # kept whole
    movable[units[: min(pinned, len(units))]] = False
    movable[units[question_at:]] = False  # the question's paragraph (and a sentence into it)
    pool = np.unique(units[kept[kept < question_at]])
    pool = pool[movable[pool]]
    k = int(np.count_nonzero(n_ranked[pool] == n_kept[pool]))  # kept for relevance alone
    if k == 0:
        return kept
    top = pool[np.lexsort((pool, -scores[pool]))][:k]
    move = (kept < question_at) & np.isin(units[kept], top)
    moved = kept[move]
    moved = moved[np.lexsort((moved, scores[units[moved]]))]
    stay = kept[~move]
    return np.concatenate([stay[stay < question_at], moved, stay[stay >= question_at]])


def _free_runs_count(protected: np.ndarray) -> int:
    p = np.asarray(protected, dtype=np.int8)
    return int(np.sum(np.diff(np.concatenate([[1], p])) == -1))
