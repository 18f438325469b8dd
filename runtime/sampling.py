"""Next-token selection from logits in numpy: greedy, temperature, top-k, top-p (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from semedge.checks import check_int, check_number
from semedge.errors import InputError

__all__ = ["GenerationConfig", "select_next"]


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate: length, stopping and sampling. temperature 0 means greedy.

    Args:
        max_new_tokens: tokens to generate at most.
        temperature: softmax temperature; 0 picks the arg-max (greedy, deterministic).
        top_k: sample among the k most likely tokens (0: all).
        top_p: sample among the smallest set whose probability reaches p (1.0: all).
        seed: seeds the per-request random generator (sampling only).
        stop: strings that end generation; the text is cut before the first one.
        ratio: SemToken compression ratio (None: no compression, 1.0 also none).
        query: query-aware compression: spans similar to this text stay fine.
        ignore_eos: keep generating past EOS (profiling a fixed number of decode steps).
        prefill_chunk: read the prompt in chunks of this many positions (the first through the
            prefill graph, the rest through the decode graph over the growing KV cache), so
            attention holds chunk x context scores instead of context x context; 0: the whole
            prompt in one call; None: the runtime's measured default
            (Pipeline.prefill_chunk_for: 512 on long prompts where it runs faster).
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ratio: float | None = None
    query: str | None = None
    ignore_eos: bool = False
    prefill_chunk: int | None = None

    def __post_init__(self) -> None:
        check_int(self.max_new_tokens, "max_new_tokens", 1)
        check_number(self.temperature, "temperature", 0.0, hint=" (0 = greedy)")
        check_int(self.top_k, "top_k", 0)
        check_number(self.top_p, "top_p", 0.0, 1.0, lo_open=True)
        if self.seed is not None:
            check_int(self.seed, "seed", 0, 2**63 - 1)
        if self.prefill_chunk is not None:
            check_int(self.prefill_chunk, "prefill_chunk", 0)
        if self.ratio is not None:
            check_number(self.ratio, "ratio", 1.0, hint=" (2.4 = 2.4x fewer positions)")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise InputError(f"stop strings must be non-empty text, got {s!r}")
        if self.query is not None and (not isinstance(self.query, str) or not self.query.strip()):
            raise InputError(f"query must be non-empty text, got {self.query!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def select_next(
    logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Pick one token per row of `logits` (B, V) -> (B,) int64."""
    if config.greedy:
        return logits.argmax(axis=-1).astype(np.int64)
    rng = rng or np.random.default_rng(config.seed)
    x = logits.astype(np.float64)
    with np.errstate(
        over="ignore"
    ):  # max first: a tiny temperature sends the rest to -inf, not nan
        z = (x - x.max(axis=-1, keepdims=True)) / config.temperature  # (B, V), max 0
    if config.top_k and config.top_k < z.shape[-1]:
        kth = np.partition(z, -config.top_k, axis=-1)[:, -config.top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    probs = np.exp(z - z.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if config.top_p < 1.0:
        order = np.argsort(-probs, axis=-1)
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        # keep a token while the mass before it is below p (the top token always stays)
        keep_sorted = (np.cumsum(sorted_p, axis=-1) - sorted_p) < config.top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=p) for p in probs], dtype=np.int64)
