"""One context window as model inputs under each method: full, semtoken, truncate, random, uniform.

Every compressed method goes through the same representation and position rules
(`CompressionConfig.span_repr` / `span_position`), so only the choice of span boundaries differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from semedge.config import CompressionConfig
from semedge.errors import InputError
from semedge.eval.baselines import random_spans, truncate_keep, uniform_spans

if TYPE_CHECKING:
    import torch

__all__ = ["METHODS", "ContextPrompt", "PromptBuilder", "parse_methods"]

METHODS = ("full", "semtoken", "truncate", "random", "uniform")


def parse_methods(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'full,semtoken' -> ('full', 'semtoken'), checked against METHODS.

    Raises:
        InputError: an unknown or missing method name.
    """
    names = [m.strip() for m in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [m for m in names if m]
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise InputError(f"unknown method(s) {bad or spec!r}; choose from {', '.join(METHODS)}")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class ContextPrompt:
    """A context as the LM sees it, and where the continuation after it starts."""

    inputs_embeds: torch.Tensor  # (1, n, D)
    position_ids: torch.Tensor  # (1, n)
    next_position: int  # position id of the first token after this context

    @property
    def tokens(self) -> int:
        """Positions the LM attends to (the compressed length)."""
        return int(self.inputs_embeds.shape[1])


class PromptBuilder:
    """Builds a `ContextPrompt` from context token ids for any method (not thread-safe)."""

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
    ) -> ContextPrompt:
        """The prompt `method` makes of `input_ids` (T,) at `ratio`."""
        torch = _torch()
        ids = np.asarray(input_ids, dtype=np.int64)
        n = len(ids)
        if method == "full":
            return self._plain(ids, n)
        if method == "truncate":
            kept = ids[n - truncate_keep(n, ratio) :]
            return self._plain(kept, len(kept))  # re-positioned from 0, as a plain short prompt
        if method == "semtoken":
            cp = self.compressor.compress(input_ids=ids, ratio=ratio, query=query)
            return ContextPrompt(cp.inputs_embeds, cp.position_ids.to(torch.long), n)
        if ratio == 1.0:
            return self._plain(ids, n)
        protected = self._protected(ids)
        if method == "uniform":
            spans = uniform_spans(n, ratio, protected)
        elif method == "random":
            spans = random_spans(n, ratio, protected, seed=self.seed + n + int(ids[0]))
        else:
            raise InputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        return self._merged(ids, spans)

    def _plain(self, ids: np.ndarray, covered: int) -> ContextPrompt:
        torch = _torch()
        t = torch.as_tensor(ids)[None]
        with torch.inference_mode():
            embeds = self.model.get_input_embeddings()(t)
        return ContextPrompt(embeds, torch.arange(len(ids))[None], covered)

    def _protected(self, ids: np.ndarray) -> np.ndarray:
        """The compressor's protected mask (sinks, recency window, digits, special tokens)."""
        from semedge.compressor.spans import protected_mask

        texts = self.tokenizer.batch_decode(ids[:, None].tolist())
        special = np.isin(ids, np.asarray(self.tokenizer.all_special_ids, dtype=np.int64))
        return protected_mask(texts, special, self.config)

    def _merged(self, ids: np.ndarray, spans: np.ndarray) -> ContextPrompt:
        # the compressor's own span -> (embeds, positions) rules: only the boundaries differ
        embeds, pos = self.compressor.build_inputs(ids, spans, self.config)
        return ContextPrompt(embeds, pos.to(_torch().long), len(ids))


def _torch():
    from semedge.deps import require

    return require("torch", extra="torch")
