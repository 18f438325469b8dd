"""Evaluation windows: deterministic (context, target) slices spread evenly over a token stream.

Torch-free; the tokenizer is any Hugging Face fast tokenizer.
"""

from __future__ import annotations

import numpy as np

from semedge.errors import InputError

__all__ = ["tokenize_text", "leading_bos", "window_starts", "check_window_fits"]


def tokenize_text(text: str, tokenizer) -> np.ndarray:
    """Token ids of `text` (no special tokens added) as an int64 array."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


def leading_bos(tokenizer) -> int | None:
    """The BOS id the tokenizer puts before every text (Gemma 3), or None (SmolLM2): a model
    trained that way is scored with BOS opening each window."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return int(bos) if bos is not None and len(ids) and ids[0] == bos else None


def window_starts(n_tokens: int, length: int, count: int) -> list[int]:
    """Start offsets of `count` windows of `length` tokens, spread evenly over `n_tokens`.

    Deterministic: the first window starts at 0, the last ends at the end of the stream.

    Raises:
        InputError: the stream is shorter than one window, or `count` < 1.
    """
    if count < 1:
        raise InputError(f"windows must be >= 1, got {count}")
    if n_tokens < length:
        raise InputError(
            f"the data has {n_tokens} tokens but one window needs {length} "
            "(context + target); use a longer file or a smaller --context/--target"
        )
    starts = np.linspace(0, n_tokens - length, num=count).round().astype(np.int64)
    return sorted({int(s) for s in starts})


def check_window_fits(context: int, target: int, max_positions: int | None) -> None:
    """Reject sizes the model cannot take.

    Raises:
        InputError: context or target < 1, or context + target longer than the model supports.
    """
    if context < 1:
        raise InputError(f"context must be >= 1 token, got {context}")
    if target < 1:
        raise InputError(f"target must be >= 1 token, got {target}")
    if max_positions is not None and context + target > max_positions:
        raise InputError(
            f"context + target = {context + target} tokens but the model supports "
            f"{max_positions} positions; pass a smaller --context or --target"
        )
