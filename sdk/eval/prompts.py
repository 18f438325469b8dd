"""One context window as model inputs under each method: full, semtoken, truncate, random, uniform.

Every compressed method goes through the same representation and position rules
(`CompressionConfig.span_repr` / `span_position`), so only the choice of span boundaries differs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from semedge.config import CompressionConfig
from semedge.errors import InputError
from semedge.eval.baselines import random_spans, uniform_spans
from semedge.eval.methods import leading_specials, plan_truncate
from semedge.textio import parse_names

if TYPE_CHECKING:
    from semedge.compressor.compressor import CompressedPrompt

__all__ = ["METHODS", "PromptBuilder", "parse_methods"]

METHODS = ("full", "semtoken", "truncate", "random", "uniform")


def parse_methods(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'full,semtoken' -> ('full', 'semtoken'), checked against METHODS.

    Raises:
        InputError: an unknown or missing method name.
    """
    return parse_names(spec, METHODS, "method")


class PromptBuilder:
    """Builds the `CompressedPrompt` each method makes of context token ids (not thread-safe)."""

    def __init__(
        self, model, tokenizer, config: CompressionConfig | None = None, seed: int = 0, adapter=None
    ):
        from semedge.compressor import SemTokenCompressor

        self.model, self.tokenizer = model, tokenizer
        self.config = config or CompressionConfig()
        # adapter: a SemToken span adapter (semedge.training.load_adapter) for the semtoken method
        self.compressor = SemTokenCompressor(model, tokenizer, self.config, adapter=adapter)
        self.seed = seed

    def build(
        self, method: str, input_ids: np.ndarray, ratio: float, query: str | None = None
    ) -> CompressedPrompt:
        """The prompt `method` makes of `input_ids` (T,) at `ratio`."""
        from semedge.compressor.inference import plain_prompt

        ids = np.asarray(input_ids, dtype=np.int64)
        n = len(ids)
        if method == "full":
            return plain_prompt(self.model, ids)
        if method == "truncate":  # re-positioned from 0, as a plain short prompt (BOS kept)
            lead = leading_specials(self._special(ids))
            return plain_prompt(self.model, ids[plan_truncate(n, ratio, lead).source])
        if method == "semtoken":
            return self.compressor.compress(input_ids=ids, ratio=ratio, query=query)
        if ratio == 1.0:
            return plain_prompt(self.model, ids)
        protected = self._protected(ids)
        if method == "uniform":
            spans = uniform_spans(n, ratio, protected)
        elif method == "random":
            spans = random_spans(n, ratio, protected, seed=self.seed + n + int(ids[0]))
        else:
            raise InputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        return self._merged(ids, spans)

    def _protected(self, ids: np.ndarray) -> np.ndarray:
        """The compressor's protected mask (sinks, recency window, digits, special tokens)."""
        from semedge.compressor.spans import protected_mask

        texts = self.tokenizer.batch_decode(ids[:, None].tolist())
        return protected_mask(texts, self._special(ids), self.config)

    def _special(self, ids: np.ndarray) -> np.ndarray:
        return np.isin(ids, np.asarray(self.tokenizer.all_special_ids, dtype=np.int64))

    def _merged(self, ids: np.ndarray, spans: np.ndarray) -> CompressedPrompt:
        # the compressor's own span -> (embeds, positions) rules: only the boundaries differ
        return self.compressor.prompt(ids, spans, self.config)
