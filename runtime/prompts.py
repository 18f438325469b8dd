"""A prompt as prefill reads it: ids, one embedding and position id per kept position (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PreparedPrompt", "span_tokens"]


@dataclass
class PreparedPrompt:
    """A tokenized prompt ready for prefill: one embedding and position id per kept position."""

    ids: np.ndarray  # (T,) token ids
    embeds: np.ndarray  # (T', D) input embeddings (merged spans when compressed)
    positions: np.ndarray  # (T',) position ids (a merged span sits at its first token's position)
    spans: np.ndarray | None  # (T', 2) [start, end) token spans, None when uncompressed
    threshold: float | None = None  # the tau used (compressed only)
    next_position: int | None = None  # position id of the first new token; None: len(ids)
    # (T',) the token whose embedding each position is, -1 where it is none (a merged span or an
    # adapted vector); None: every position is ids[i] (an uncompressed prompt)
    token_at: np.ndarray | None = None

    def position_tokens(self) -> np.ndarray:
        """(T',) int64: the token each position feeds, -1 where only its embedding can (chunked
        prefill reads positions after its first chunk as token ids)."""
        if self.token_at is not None:
            return self.token_at
        if self.spans is None and len(self.ids) == len(self.positions):
            return self.ids
        return np.full(len(self.positions), -1, dtype=np.int64)

    @property
    def prompt_tokens(self) -> int:
        return int(len(self.ids))

    @property
    def first_new_position(self) -> int:
        """Where generation continues: T, or less when positions were compacted to fit."""
        return self.prompt_tokens if self.next_position is None else int(self.next_position)


def span_tokens(ids: np.ndarray, token_embeds: np.ndarray, embeds: np.ndarray, spans: np.ndarray):
    """(T',) the token each compressed position feeds, -1 where its vector is no token's own:
    a one-token span whose vector is exactly that token's embedding (after any adapter)."""
    first = spans[:, 0]
    single = (spans[:, 1] - first) == 1
    same = np.all(embeds == token_embeds[first], axis=-1)
    return np.where(single & same, ids[first], -1).astype(np.int64)
