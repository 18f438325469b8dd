"""Baseline span choices at the same budget as SemToken: truncation, uniform and random spans.

Torch-free. Spans are (n, 2) int64 [start, end) rows covering every token in order, as
`semedge.compressor.spans` produces them; protected tokens (the recency window, digits, special
tokens) stay single so the baselines differ from SemToken only in where the boundaries fall.
"""

from __future__ import annotations

import numpy as np

__all__ = ["truncate_keep", "uniform_spans", "random_spans", "spans_from_cuts"]


def truncate_keep(n_tokens: int, ratio: float) -> int:
    """How many trailing tokens truncation keeps: round(n / ratio), at least 1."""
    return max(1, int(round(n_tokens / ratio)))


def spans_from_cuts(n_tokens: int, cuts: np.ndarray) -> np.ndarray:
    """Spans from sorted cut points in (0, n): a span starts at 0 and at every cut."""
    starts = np.concatenate([[0], np.asarray(cuts, dtype=np.int64)])
    ends = np.concatenate([starts[1:], [n_tokens]])
    return np.stack([starts, ends], axis=1).astype(np.int64)


def _free_runs(protected: np.ndarray) -> list[tuple[int, int]]:
    """Maximal [start, end) runs of unprotected tokens."""
    runs, start = [], None
    for i, p in enumerate(protected.tolist() + [True]):
        if not p and start is None:
            start = i
        elif p and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _budget(n_tokens: int, ratio: float, protected: np.ndarray, runs: list) -> int:
    """Spans the free runs may use so the total lands at round(n / ratio) (at least one per run)."""
    total = max(1, int(round(n_tokens / ratio)))
    free_tokens = sum(e - s for s, e in runs)
    return int(np.clip(total - int(protected.sum()), len(runs), free_tokens))


def _mask(n_tokens: int, protected: np.ndarray | None) -> np.ndarray:
    return np.zeros(n_tokens, bool) if protected is None else np.asarray(protected, bool)


def uniform_spans(n_tokens: int, ratio: float, protected: np.ndarray | None = None) -> np.ndarray:
    """Merge every ~`ratio` consecutive unprotected tokens (boundaries evenly spaced per run).

    Args:
        n_tokens: tokens in the context.
        ratio: wanted n_tokens / spans.
        protected: (n,) bool; True tokens stay single spans.

    Returns:
        (n_spans, 2) int64 spans.
    """
    protected = _mask(n_tokens, protected)
    runs = _free_runs(protected)
    budget = _budget(n_tokens, ratio, protected, runs)
    lengths = np.array([e - s for s, e in runs], dtype=np.float64)
    # largest-remainder split of the budget over runs, proportional to run length
    share = lengths / max(lengths.sum(), 1) * budget
    alloc = np.maximum(np.floor(share).astype(np.int64), 1)
    for i in np.argsort(-(share - np.floor(share))):
        if alloc.sum() >= budget:
            break
        if alloc[i] < lengths[i]:
            alloc[i] += 1
    cuts = [i for i in range(1, n_tokens) if protected[i] or protected[i - 1]]
    for (s, e), k in zip(runs, alloc.tolist(), strict=True):
        cuts += [s + int(round(j * (e - s) / k)) for j in range(1, k)]
    cuts += [s for s, _ in runs if s > 0] + [e for _, e in runs if e < n_tokens]
    return spans_from_cuts(n_tokens, np.unique(np.asarray(cuts, dtype=np.int64)))


def random_spans(
    n_tokens: int, ratio: float, protected: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """Random span boundaries inside the unprotected runs, at the same budget (seeded).

    Returns:
        (n_spans, 2) int64 spans.
    """
    protected = _mask(n_tokens, protected)
    runs = _free_runs(protected)
    budget = _budget(n_tokens, ratio, protected, runs)
    fixed = {i for i in range(1, n_tokens) if protected[i] or protected[i - 1]}
    fixed |= {s for s, _ in runs if s > 0} | {e for _, e in runs if e < n_tokens}
    inner = np.array([i for s, e in runs for i in range(s + 1, e)], dtype=np.int64)
    rng = np.random.default_rng(seed)
    extra = rng.choice(inner, size=min(budget - len(runs), len(inner)), replace=False)
    cuts = np.unique(np.concatenate([np.array(sorted(fixed), dtype=np.int64), extra]))
    return spans_from_cuts(n_tokens, cuts)
