"""From spans to LM inputs, in numpy: one vector and one position id per span.

Torch-free: the runtime's twin of the PyTorch compressor's `build_inputs`.
"""

from __future__ import annotations

import numpy as np

from semedge.errors import InputError

__all__ = ["span_positions", "next_position", "merge_embeddings", "compact_positions"]


def span_positions(spans: np.ndarray, mode: str = "first") -> np.ndarray:
    """Position id of each span: its first (default) or last token's original position, or
    its index ("index": the n spans read as a text of n tokens).

    mode is a resolved CompressionConfig.position_mode(). (n, 2) -> (n,) int64.
    """
    spans = np.asarray(spans, dtype=np.int64)
    if mode == "first":
        return spans[:, 0].copy()
    if mode == "last":
        return spans[:, 1] - 1
    if mode == "index":
        return np.arange(len(spans), dtype=np.int64)
    raise InputError(f"span position mode must be 'first', 'last' or 'index', got {mode!r}")


def next_position(spans: np.ndarray, mode: str = "first") -> int:
    """Position id of the first generated token: T with original positions (the gaps merging
    leaves stay), n with "index" positions."""
    spans = np.asarray(spans, dtype=np.int64)
    return len(spans) if mode == "index" else int(spans[-1, 1])


def merge_embeddings(token_embeds: np.ndarray, spans: np.ndarray, mode: str = "mean") -> np.ndarray:
    """One vector per span from the tokens' input embeddings.

    Modes: "mean" (the SemToken merge), "norm_mean" (the mean rescaled to the mean token norm:
    averaging shrinks the norm the LM expects), "first" / "last" (the span's first / last
    token's embedding). A singleton span is its token's embedding exactly in every mode.

    Args:
        token_embeds: (T, D) input embeddings.
        spans: (n, 2) [start, end) spans (tiling 0..T, or with gaps: dropped tokens).
        mode: one of the modes above.

    Returns:
        (n, D), the dtype of `token_embeds`.

    Raises:
        InputError: unknown mode.
    """
    emb = np.asarray(token_embeds)
    spans = np.asarray(spans, dtype=np.int64)
    starts, ends = spans[:, 0], spans[:, 1]
    if mode == "first":
        return emb[starts].copy()
    if mode == "last":
        return emb[ends - 1].copy()
    if mode not in ("mean", "norm_mean"):
        raise InputError(f"span_repr must be mean, norm_mean, first or last, got {mode!r}")
    length = (ends - starts)[:, None].astype(emb.dtype)
    mean = _span_sums(emb, starts, ends) / length  # (n, D)
    if mode == "norm_mean":
        tok_norm = np.linalg.norm(emb.astype(np.float64), axis=1)
        target = _span_sums(tok_norm, starts, ends) / (ends - starts)  # mean token norm per span
        cur = np.linalg.norm(mean.astype(np.float64), axis=1)
        scale = np.where(ends - starts > 1, target / np.maximum(cur, 1e-12), 1.0)
        mean = (mean * scale[:, None]).astype(emb.dtype)
    return mean


def _span_sums(x: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Sum of x over each [start, end) (spans may leave gaps: dropped tokens count nowhere)."""
    if len(starts) and np.array_equal(starts[1:], ends[:-1]) and ends[-1] == len(x):
        return np.add.reduceat(x, starts, axis=0)  # tiling spans
    pairs = zip(starts.tolist(), ends.tolist(), strict=True)
    idx = np.concatenate([np.arange(s, e) for s, e in pairs])
    seg = np.repeat(np.arange(len(starts)), ends - starts)
    out = np.zeros((len(starts),) + x.shape[1:], dtype=x.dtype)
    np.add.at(out, seg, x[idx])
    return out


def compact_positions(positions: np.ndarray, limit: int) -> np.ndarray:
    """Position ids that end before `limit`: shift left by the excess, never below the index.

    pos'_i = max(i, pos_i - excess), excess = pos_last + 1 - limit: the recent end keeps its
    spacing (so it reads as the original text) and the far part is squeezed, contiguous where
    it must be. Strictly increasing if `positions` is. Unchanged when they already fit.

    Raises:
        InputError: more positions than `limit`.
    """
    pos = np.asarray(positions, dtype=np.int64)
    if len(pos) > limit:
        raise InputError(f"{len(pos)} positions cannot fit {limit}; compress harder")
    excess = int(pos[-1]) + 1 - int(limit) if len(pos) else 0
    if excess <= 0:
        return pos.copy()
    return np.maximum(np.arange(len(pos), dtype=np.int64), pos - excess)
