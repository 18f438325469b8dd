"""SemToken span math in numpy: protection, density-adaptive greedy clustering, ratio search, merging.

Torch-free: imported by semedge.runtime, which must reproduce the PyTorch compressor exactly.
Shapes: T tokens, E encoder features, D model embedding width, n spans.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from semedge.compressor.budget import (
    budget,
    kept_token_spans,
    min_spans,
    protect_relevant_units,
    too_short,
)
from semedge.compressor.merging import (
    compact_positions,
    merge_embeddings,
    next_position,
    span_positions,
)
from semedge.errors import InputError

if TYPE_CHECKING:
    from semedge.config import CompressionConfig

__all__ = [
    "protected_mask",
    "normalize_features",
    "semantic_density",
    "threshold_offsets",
    "greedy_spans",
    "find_spans",
    "min_spans",
    "merge_embeddings",
    "span_positions",
    "next_position",
    "check_spans",
    "protect_relevant_units",
    "kept_token_spans",
    "compact_positions",
]

DENSITY_SCALE = 0.05  # tau shift per standard deviation of local entropy, at density_alpha=1
QUERY_SCALE = 0.05  # tau shift per standard deviation of query similarity, at query_weight=1
_SEARCH_STEPS = 60  # bisection steps on the base tau (interval [-3, 3] -> ~5e-18)


def _offsets_from_tokens(token_texts: list[str]) -> tuple[str, np.ndarray]:
    """Concatenate token strings and give each its [start, end) character span."""
    ends = np.cumsum([len(t) for t in token_texts], dtype=np.int64)
    starts = ends - np.array([len(t) for t in token_texts], dtype=np.int64)
    return "".join(token_texts), np.stack([starts, ends], axis=1).reshape(-1, 2)


def _string_hits(
    text: str, strings: tuple[str, ...] | list[str], offsets: np.ndarray
) -> np.ndarray:
    """(T,) bool: token overlaps an occurrence of any string (a char coverage prefix sum)."""
    covered = np.zeros(len(text) + 1, dtype=np.int64)  # difference array over characters
    for s in strings:
        if not s:
            continue
        i = text.find(s)
        while i >= 0:
            covered[i] += 1
            covered[i + len(s)] -= 1
            i = text.find(s, i + 1)
    cov = np.concatenate([[0], np.cumsum(np.cumsum(covered)[:-1] > 0)])  # chars covered before c
    start = np.clip(offsets[:, 0], 0, len(text))
    end = np.clip(offsets[:, 1], 0, len(text))
    return cov[end] - cov[start] > 0


def protected_mask(
    token_texts: list[str],
    special: np.ndarray,
    config: CompressionConfig,
    text: str | None = None,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """Tokens that must stay singletons (never merged).

    Protected: special tokens (config.protect_special), tokens overlapping any occurrence of
    config.protected_strings, the first config.sink_tokens tokens (attention sinks), the last
    config.recency_tokens(T), and tokens containing a digit (config.digits_protected(): not
    with a query) as long as all of them still fit the budget (a number-heavy text at a high
    ratio merges its digits).

    Args:
        token_texts: each token's text (decoded piece), T entries.
        special: (T,) bool, True for special tokens.
        config: the compression settings.
        text: the full text that `offsets` index into; None -> the concatenated token texts.
        offsets: (T, 2) character [start, end) of each token in `text`.

    Returns:
        (T,) bool mask.

    Raises:
        InputError: the shapes disagree.
    """
    T = len(token_texts)
    special = np.asarray(special, dtype=bool).reshape(-1)
    if special.shape != (T,):
        raise InputError(f"special has {special.shape[0]} entries for {T} tokens")
    mask = special.copy() if config.protect_special else np.zeros(T, dtype=bool)
    if config.protected_strings and T:
        if text is None or offsets is None:
            text, offsets = _offsets_from_tokens(token_texts)
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        if offsets.shape[0] != T:
            raise InputError(f"offsets has {offsets.shape[0]} rows for {T} tokens")
        mask |= _string_hits(text, config.protected_strings, offsets)
    mask[: config.sink_tokens] = True
    recent = config.recency_tokens(T)
    if recent:
        mask[T - recent :] = True
    if config.digits_protected() and T:  # soft: numbers stay only while the budget holds them
        digits = mask | np.fromiter((any(c.isdigit() for c in t) for t in token_texts), bool, T)
        if min_spans(digits, T) <= budget(T, config)[2]:
            mask = digits
    return mask


def normalize_features(hidden: np.ndarray) -> np.ndarray:
    """Centre encoder states on their per-dimension median, then scale rows to unit length.

    Early LM layers are anisotropic (a shared direction and a few huge outlier dimensions make
    every cosine ~1); removing the median makes cosines reflect content. (T, E) -> (T, E) f64.
    """
    x = np.asarray(hidden, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"hidden must be (T, E), got shape {x.shape}")
    if x.shape[0] > 1:
        x = x - np.median(x, axis=0, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def semantic_density(features: np.ndarray, window: int) -> np.ndarray:
    """Local window entropy H_i = trace(Cov(x_j, j in the window around i)).

    With unit rows, trace(Cov) = mean ||x_j||^2 - ||mean x_j||^2 = 1 - ||mean x_j||^2, in [0, 1]:
    0 for a run of identical tokens, near 1 for unrelated ones. (T, E) -> (T,).
    """
    x = np.asarray(features, dtype=np.float64)
    T = x.shape[0]
    if T == 0:
        return np.zeros(0)
    window = max(1, min(int(window), T))
    start = np.clip(np.arange(T) - window // 2, 0, T - window)  # (T,) window start per token
    cs = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
    cs2 = np.concatenate([[0.0], np.cumsum(np.einsum("te,te->t", x, x))])
    mean = (cs[start + window] - cs[start]) / window  # (T, E)
    return (cs2[start + window] - cs2[start]) / window - np.einsum("te,te->t", mean, mean)


def _zscore(v: np.ndarray) -> np.ndarray:
    sd = float(v.std()) if v.size else 0.0
    return (v - v.mean()) / sd if sd > 1e-12 else np.zeros_like(v)


def threshold_offsets(
    density: np.ndarray,
    alpha: float,
    query_sim: np.ndarray | None = None,
    query_weight: float = 1.0,
) -> np.ndarray:
    """Per-token tau offsets: dense (high-entropy) and query-similar tokens get a higher tau.

    tau_i = tau_base + alpha * 0.05 * clip(z(H_i), -2, 2) + w * 0.05 * clip(z(q_i), 0, 3),
    z the z-score over the prompt, so alpha=0 is a fixed tau and the offsets are scale-free.
    """
    off = alpha * DENSITY_SCALE * np.clip(_zscore(np.asarray(density, np.float64)), -2.0, 2.0)
    if query_sim is not None:
        q = _zscore(np.asarray(query_sim, np.float64))
        off = off + query_weight * QUERY_SCALE * np.clip(q, 0.0, 3.0)
    return off


def _neighbour_cos(x: np.ndarray, max_span: int) -> np.ndarray:
    """(T, max_span-1): C[i, d-1] = cos(x_i, x_{i+d}), -inf past the end. Rows are unit."""
    T = x.shape[0]
    cos = np.full((T, max(max_span - 1, 0)), -np.inf)
    for d in range(1, min(max_span, T)):
        cos[: T - d, d - 1] = np.clip(np.einsum("te,te->t", x[: T - d], x[d:]), -1.0, 1.0)
    return cos


def _span_lengths(cos: np.ndarray, tau: np.ndarray, protected: np.ndarray) -> np.ndarray:
    """(T,) length of the span an anchor at i would grow (before the greedy walk)."""
    T = cos.shape[0]
    length = np.ones(T, dtype=np.int64)
    alive = ~protected
    for d in range(1, min(cos.shape[1] + 1, T)):
        nxt = np.zeros(T, dtype=bool)
        # merge i+d into i's span when cos(anchor, i+d) > max(tau_i, tau_{i+d}) and i+d is free
        nxt[: T - d] = (cos[: T - d, d - 1] > np.maximum(tau[: T - d], tau[d:])) & ~protected[d:]
        alive = alive & nxt
        length += alive
    return length


def _walk(length: np.ndarray) -> np.ndarray:
    """Greedy left-to-right walk: a span starts at i and the next anchor is i + length[i]."""
    T = len(length)
    starts, i = [], 0
    lengths = length.tolist()
    while i < T:
        starts.append(i)
        i += lengths[i]
    starts = np.asarray(starts, dtype=np.int64)
    return np.stack([starts, np.append(starts[1:], T)], axis=1).reshape(-1, 2)


def greedy_spans(
    hidden: np.ndarray, threshold: float | np.ndarray, max_span: int, protected: np.ndarray
) -> np.ndarray:
    """Greedy anchored local clustering.

    A span starts at an anchor token and grows while cos(anchor, next) > tau (the larger of the
    anchor's and the candidate's tau when `threshold` is per token), up to `max_span` tokens.
    Protected tokens are always singletons.

    Args:
        hidden: (T, E) encoder features (cosine is scale-free; pass normalize_features output
            to match find_spans).
        threshold: tau, a float or a (T,) array.
        max_span: longest span.
        protected: (T,) bool.

    Returns:
        (n, 2) int64 [start, end) spans covering 0..T in order.
    """
    x = np.asarray(hidden, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    T = x.shape[0]
    tau = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (T,))
    protected = np.asarray(protected, dtype=bool).reshape(T)
    if T == 0:
        return np.zeros((0, 2), dtype=np.int64)
    return _walk(_span_lengths(_neighbour_cos(x, max_span), tau, protected))


def find_spans(
    hidden: np.ndarray,
    protected: np.ndarray,
    config: CompressionConfig,
    query_sim: np.ndarray | None = None,
    unit_scores: tuple[np.ndarray, np.ndarray] | None = None,
    question_at: int | None = None,
) -> tuple[np.ndarray, float]:
    """Spans for one prompt at the asked ratio (or target_tokens): the single control knob.

    tau_i = tau_base + density/query offsets (threshold_offsets); tau_base is found by
    bisection so that T / n lands within config.tolerance of the asked ratio, then a final
    repair merges/splits the fewest spans if the greedy walk jumped over the band. With
    config.threshold set (a calibrated tau_base) there is no search, unless sentences are ranked
    (unit_scores): the calibration never saw them, so the ratio is searched for.

    Args:
        hidden: (T, E) encoder states.
        protected: (T,) bool, from protected_mask.
        config: ratio/target_tokens, max_span, density_alpha, window, tolerance, threshold,
            query_keep, query_weight.
        query_sim: (T,) similarity of each token to the query, or None. The top
            config.query_keep fraction is protected and tau rises with similarity.
        unit_scores: (units (T,) int unit id per token, scores (U,) relevance per unit) in
            query mode: the most relevant units stay verbatim within config.query_share of the
            budget the protected tokens leave (protect_relevant_units).
        question_at: the token that opens the prompt's last blank line (question_start):
            with config.reorders_ranked(), the ranked sentences are read just before it.

    max_span grows past config.max_span when the budget needs longer spans (high ratios), so
    any ratio works unless the protected tokens alone exceed the budget. With
    config.drops_merged() and ranked sentences (or merged_spans "drop"), no span is merged:
    kept_token_spans (tau_base 1.0).

    Returns:
        (spans (n, 2) int64, tau_base float).

    Raises:
        InputError: the text is too short or too protected to reach the ratio.
    """
    hidden = np.asarray(hidden)
    if hidden.ndim != 2:
        raise InputError(f"hidden must be (T, E), got shape {hidden.shape}")
    T = hidden.shape[0]
    protected = np.asarray(protected, dtype=bool).reshape(-1).copy()
    if protected.shape != (T,):
        raise InputError(f"protected has {protected.shape[0]} entries for {T} tokens")
    if T == 0:
        raise InputError("text has no tokens; give some text")
    target, lo_n, hi_n = budget(T, config)
    base = protected.copy()  # without the query's protections
    if query_sim is not None:
        query_sim = np.asarray(query_sim, dtype=np.float64).reshape(T)
        k = int(round(config.query_keep * T))
        if k:
            protected[np.argsort(-query_sim, kind="stable")[:k]] = True
    ranking = unit_scores is not None and config.query_share > 0
    if config.merged_spans == "drop" or (config.drops_merged() and ranking):
        if protected.sum() > hi_n:  # the query's tokens would not fit: drop them
            protected = base
        kept = kept_token_spans(protected, unit_scores if ranking else None, config, T, question_at)
        return kept, 1.0
    if ranking:
        units, scores = unit_scores
        protected = protect_relevant_units(protected, units, scores, target, config.query_share)
    if min_spans(protected, max(T, 1)) > hi_n:  # the query's tokens would not fit: drop them
        protected = base
    x = normalize_features(hidden)  # (only merging reads the features)
    max_span = _fitting_max_span(protected, config.max_span, hi_n, T, config)
    offsets = threshold_offsets(
        semantic_density(x, config.window), config.density_alpha, query_sim, config.query_weight
    )
    cos = _neighbour_cos(x, max_span)

    def spans_at(base: float) -> np.ndarray:
        return _walk(_span_lengths(cos, base + offsets, protected))

    if config.threshold is not None and not ranking:  # a calibrated tau: no ranked sentences
        return spans_at(float(config.threshold)), float(config.threshold)
    if lo_n > hi_n:  # too few tokens for any count to be within the tolerance: take the nearest
        lo_n = hi_n = min(T, max(1, round(target)))
    if lo_n >= T:
        return _walk(np.ones(T, dtype=np.int64)), 1.0
    n_min = min_spans(protected, max_span)
    if n_min > hi_n:
        raise too_short(T, n_min, int(protected.sum()), config)
    lo_b, hi_b = -3.0, 3.0  # n(lo_b) = n_min, n(hi_b) = T; n(base) grows with base
    best, best_base = None, 0.0
    for _ in range(_SEARCH_STEPS):
        mid = 0.5 * (lo_b + hi_b)
        spans = spans_at(mid)
        n = len(spans)
        if best is None or abs(n - target) < abs(len(best) - target):
            best, best_base = spans, mid
        if lo_n <= n <= hi_n:
            return spans, mid
        lo_b, hi_b = (mid, hi_b) if n < lo_n else (lo_b, mid)
    want = min(max(round(target), lo_n), hi_n)
    return _repair(best, want, x, protected, max_span), best_base


def _repair(
    spans: np.ndarray, want: int, x: np.ndarray, protected: np.ndarray, max_span: int
) -> np.ndarray:
    """Split the longest / merge the most similar adjacent spans until there are `want`."""
    spans = spans.copy()
    while len(spans) < want:  # split: halve the longest spans, one split per span per pass
        length = spans[:, 1] - spans[:, 0]
        pick = np.argsort(-length, kind="stable")[: want - len(spans)]
        pick = pick[length[pick] > 1]
        mid = spans[pick, 0] + (length[pick] // 2)
        cuts = np.sort(np.concatenate([spans[:, 0], mid]))
        spans = np.stack([cuts, np.append(cuts[1:], spans[-1, 1])], axis=1)
    while len(spans) > want:  # merge: most similar free neighbours that fit in max_span
        free = ~protected[spans[:, 0]]  # a protected token is always a singleton span
        fits = (spans[1:, 1] - spans[:-1, 0]) <= max_span
        ok = free[:-1] & free[1:] & fits
        if not ok.any():
            break
        score = np.where(ok, np.einsum("te,te->t", x[spans[:-1, 0]], x[spans[1:, 0]]), -np.inf)
        drop = np.zeros(len(spans), dtype=bool)  # drop[k]: span k joins span k-1
        need = len(spans) - want
        for k in np.argsort(-score, kind="stable"):
            if need == 0 or not ok[k]:
                break
            if drop[k] or drop[k + 1] or (k + 2 < len(drop) and drop[k + 2]):
                continue
            drop[k + 1] = True
            need -= 1
        starts = spans[~drop, 0]
        spans = np.stack([starts, np.append(starts[1:], spans[-1, 1])], axis=1)
    return spans.astype(np.int64)


def check_spans(spans: np.ndarray, T: int, gaps: bool = False) -> np.ndarray:
    """Validate (n, 2) [start, end) spans covering 0..T in order; return them as int64.

    With `gaps`, spans may leave tokens out (dropped: config.drops_merged()) and come in
    reading order (ranked sentences moved: budget.reading_order); they must still be
    non-empty, not overlapping and within 0..T.

    Raises:
        InputError: the spans are not contiguous, ordered, non-empty and covering 0..T.
    """
    spans = np.asarray(spans, dtype=np.int64)
    if spans.ndim != 2 or spans.shape[1] != 2 or len(spans) == 0:
        raise InputError(f"spans must be a non-empty (n, 2) array, got shape {spans.shape}")
    if gaps:  # in reading order: text order, or ranked sentences moved (reading_order)
        s = spans[np.argsort(spans[:, 0], kind="stable")]
        if s[0, 0] < 0 or s[-1, 1] > T:
            raise InputError(f"spans must lie in 0..{T}, got {s[0, 0]}..{s[-1, 1]}")
        if np.any(s[:, 1] <= s[:, 0]) or np.any(s[1:, 0] < s[:-1, 1]):
            raise InputError("spans must be non-empty, non-overlapping [start, end) pairs")
        return spans
    if spans[0, 0] != 0 or spans[-1, 1] != T:
        raise InputError(f"spans must cover 0..{T}, got {spans[0, 0]}..{spans[-1, 1]}")
    if np.any(spans[:, 1] <= spans[:, 0]) or np.any(spans[1:, 0] != spans[:-1, 1]):
        raise InputError("spans must be non-empty, contiguous [start, end) pairs in order")
    return spans


def _fitting_max_span(
    protected: np.ndarray, max_span: int, hi_n: int, T: int, config: CompressionConfig
) -> int:
    """The smallest span limit >= max_span that lets the spans fit hi_n positions.

    Raises:
        InputError: even unlimited spans cannot fit (the protected tokens alone fill the budget).
    """
    if min_spans(protected, max_span) <= hi_n:
        return max_span
    if min_spans(protected, max(T, 1)) > hi_n:
        n_min = min_spans(protected, max(T, 1))
        raise too_short(T, n_min, int(protected.sum()), config)
    lo, hi = max_span, max(T, 1)  # min_spans is non-increasing in the limit: bisect
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if min_spans(protected, mid) > hi_n else (lo, mid)
    return lo
