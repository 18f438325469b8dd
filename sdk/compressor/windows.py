"""Windowed encoding plans and character-offset alignment for SemToken encoders.

Torch-free (numpy): the runtime runs encoder.onnx over the same windows.
"""

from __future__ import annotations

import numpy as np

from semedge.errors import InputError

__all__ = ["encoder_windows", "windowed_states", "align_to_tokens"]


def encoder_windows(
    T: int, window: int, overlap: int | None = None, needed: np.ndarray | None = None
) -> list[tuple[int, int, int]]:
    """Plan overlapping windows so every token is encoded with at least `overlap` tokens of left
    context (except the first `overlap` tokens of the text).

    Args:
        T: tokens in the text.
        window: tokens per window (at most the encoder's max positions).
        overlap: left context shared with the previous window; default window // 4.
        needed: (T,) bool, the tokens whose states are wanted (default: all). Each run of needed
            tokens is planned on its own, starting `overlap` tokens before it, so a run that
            starts at 0 gets exactly the windows the whole text would.

    Returns:
        [(start, end, keep)]: encode tokens [start, end) and keep the states of [keep, end);
        the kept ranges tile the needed runs (0..T by default) in order.

    Raises:
        InputError: window too small for the overlap.
    """
    overlap = window // 4 if overlap is None else overlap
    if window < 1 or not 0 <= overlap < window:
        raise InputError(f"encoder window {window} must exceed its overlap {overlap}")
    if T == 0:
        return [(0, 0, 0)]
    plan = []
    for run_start, run_end in _runs(np.ones(T, bool) if needed is None else needed):
        keep = run_start
        while keep < run_end:
            start = max(0, keep - overlap)
            end = min(run_end, start + window)
            plan.append((start, end, keep))
            keep = end
    return plan


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) runs of True in a (T,) bool mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], np.asarray(mask, np.int8), [0]])))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def windowed_states(T: int, plan: list[tuple[int, int, int]], run_window) -> np.ndarray:
    """(T, E) float32 states from `plan` (encoder_windows): run_window(start, end, keep) ->
    (end - keep, E), the states of rows [keep, end) of the window [start, end) (the rows before
    keep are its left context); rows no window keeps are NaN (not needed, never read)."""
    out = None
    for start, end, keep in plan:
        if end <= start:
            continue
        states = np.asarray(run_window(start, end, keep), dtype=np.float32)
        if out is None:
            out = np.full((T, states.shape[1]), np.nan, dtype=np.float32)
        out[keep:end] = states
    if out is None:
        raise InputError("text has no tokens; give some text")
    return out


def align_to_tokens(
    piece_vecs: np.ndarray, piece_offsets: np.ndarray, token_offsets: np.ndarray
) -> np.ndarray:
    """Give each LM token the mean vector of the encoder pieces its characters overlap.

    A token that overlaps no piece (whitespace, a special token) takes the nearest following
    piece (the last one at the end of the text).

    Args:
        piece_vecs: (P, H) encoder states, pieces in text order.
        piece_offsets: (P, 2) character [start, end) of each piece.
        token_offsets: (T, 2) character [start, end) of each LM token.

    Returns:
        (T, H) float32.
    """
    vecs = np.asarray(piece_vecs, dtype=np.float64)
    po = np.asarray(piece_offsets, dtype=np.int64).reshape(-1, 2)
    to = np.asarray(token_offsets, dtype=np.int64).reshape(-1, 2)
    if len(po) == 0:
        raise InputError("the encoder produced no pieces for this text")
    cs = np.concatenate([np.zeros((1, vecs.shape[1])), np.cumsum(vecs, axis=0)])
    # pieces [lo, hi) overlap the token: piece end > token start and piece start < token end
    lo = np.searchsorted(po[:, 1], to[:, 0], side="right")
    hi = np.searchsorted(po[:, 0], to[:, 1], side="left")
    empty = hi <= lo
    lo = np.where(empty, np.minimum(lo, len(po) - 1), lo)
    hi = np.where(empty, lo + 1, hi)
    return ((cs[hi] - cs[lo]) / (hi - lo)[:, None]).astype(np.float32)
