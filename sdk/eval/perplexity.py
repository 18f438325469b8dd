"""Continuation perplexity of the `target` tokens after a `context` window, per method.

ppl = exp(sum of target-token NLL / number of target tokens), pooled over all windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semedge.config import CompressionConfig
from semedge.eval.prompts import METHODS, PromptBuilder, parse_methods
from semedge.eval.windows import check_window_fits, leading_bos, window_starts

__all__ = ["MethodResult", "PerplexityReport", "evaluate_perplexity"]


@dataclass(frozen=True)
class MethodResult:
    """One method's pooled result over all windows."""

    ppl: float
    nll: float  # mean NLL per target token (nats)
    tokens: float  # mean context positions the LM attended to
    ratio: float  # achieved context tokens / positions (mean over windows)

    def to_dict(self) -> dict[str, float]:
        return {"ppl": self.ppl, "nll": self.nll, "tokens": self.tokens, "ratio": self.ratio}


@dataclass(frozen=True)
class PerplexityReport:
    """`semedge eval ppl` result; `to_dict()` is what --json prints."""

    model: str
    context: int
    target: int
    ratio: float
    windows: int
    results: dict[str, MethodResult]
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "context": self.context,
            "target": self.target,
            "ratio": self.ratio,
            "windows": self.windows,
            "results": {k: v.to_dict() for k, v in self.results.items()},
            "config": self.config,
        }

    @property
    def passed(self) -> bool:
        """True when SemToken beats the random and uniform span baselines that were run."""
        sem = self.results.get("semtoken")
        rivals = [self.results[m].ppl for m in ("random", "uniform") if m in self.results]
        return sem is not None and all(sem.ppl < r for r in rivals)


def evaluate_perplexity(
    model,
    tokenizer,
    token_ids: np.ndarray,
    context: int,
    target: int = 256,
    ratio: float = 2.4,
    windows: int = 8,
    methods: tuple[str, ...] | str = METHODS,
    config: CompressionConfig | None = None,
    model_name: str = "model",
    seed: int = 0,
    progress: bool = False,
    adapter=None,
) -> PerplexityReport:
    """Continuation perplexity of each method over `windows` evenly spread windows.

    Args:
        model, tokenizer: a loaded causal LM (see `semedge.load_model`).
        token_ids: the whole data file as token ids.
        context: T, context tokens per window (BOS first, counted in T, where the tokenizer
            puts one before every text: windows.leading_bos); target: tokens scored after it.
        ratio: R, context tokens / positions for the compressed methods.
        methods: subset of METHODS.
        config: SemToken settings (its ratio is overridden by `ratio`).
        adapter: a span adapter (`semedge.training.load_adapter`) the semtoken method applies.

    Returns:
        PerplexityReport.

    Raises:
        InputError: sizes the model or the data cannot take, unknown methods, ratio < 1.
    """
    from tqdm.auto import tqdm

    from semedge.compressor.inference import score_continuation

    methods = parse_methods(methods)
    config = CompressionConfig(**{**_fields(config), "ratio": ratio, "target_tokens": None})
    check_window_fits(context, target, _max_positions(model))
    bos = leading_bos(tokenizer)  # BOS opens each window's context where the model expects it
    lead = [] if bos is None else [bos]
    starts = window_starts(len(token_ids), context - len(lead) + target, windows)
    builder = PromptBuilder(model, tokenizer, config, seed=seed, adapter=adapter)
    nll = {m: 0.0 for m in methods}
    used = {m: [] for m in methods}
    for s in tqdm(starts, desc="eval ppl", unit="window", disable=not progress):
        end = s + context - len(lead)
        ctx = np.concatenate([np.asarray(lead, dtype=np.int64), token_ids[s:end]])
        tgt = token_ids[end : end + target]
        for m in methods:
            prompt = builder.build(m, ctx, ratio)
            nll[m] += score_continuation(model, prompt, tgt)[0]
            used[m].append(prompt.compressed_tokens)
    n_tgt = target * len(starts)
    results = {
        m: MethodResult(
            ppl=math.exp(nll[m] / n_tgt),
            nll=nll[m] / n_tgt,
            tokens=float(np.mean(used[m])),
            ratio=float(np.mean([context / u for u in used[m]])),
        )
        for m in methods
    }
    return PerplexityReport(
        model_name, context, target, float(ratio), len(starts), results, config.to_dict()
    )


def _fields(config: CompressionConfig | None) -> dict[str, Any]:
    import dataclasses

    cfg = config or CompressionConfig()
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _max_positions(model) -> int | None:
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions"):
        if getattr(cfg, name, None):
            return int(getattr(cfg, name))
    return None
