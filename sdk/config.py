"""Config dataclasses the runtime reads, and the only place environment variables are read.

Torch-free: imported by semedge.runtime.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semedge.errors import InputError

__all__ = [
    "CompressionConfig",
    "PRESETS",
    "adapter_layout",
    "cache_dir",
    "debug_enabled",
    "effective_compression",
    "replace_set",
    "triton_home",
]


def cache_dir() -> Path:
    """Where converted weights are cached: $SEMEDGE_CACHE, else ~/.cache/semedge."""
    env = os.environ.get("SEMEDGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "semedge"


def triton_home() -> Path | None:
    """Where nvidia-pytriton is unpacked ($SEMEDGE_TRITON_HOME), None when unset."""
    env = os.environ.get("SEMEDGE_TRITON_HOME")
    return Path(env).expanduser() if env else None


def debug_enabled() -> bool:
    """True when SEMEDGE_DEBUG is set to a truthy value: the CLI then shows tracebacks."""
    return os.environ.get("SEMEDGE_DEBUG", "").lower() not in ("", "0", "false", "no")


def replace_set(base: Any, **options: Any) -> Any:
    """`dataclasses.replace` with only the options that are not None (None means default)."""
    return dataclasses.replace(base, **{k: v for k, v in options.items() if v is not None})


# What a stored config that lacks a field meant when it was written (older exports/adapters).
_BEFORE_FIELD = {
    "query_share": 0.0,
    "implicit_query": False,
    "merged_spans": "keep",
    "ranked_order": "text",
}
# Default recency window, as a share of the output positions (docs/eval.md): the recent text is
# what a frozen LM continues from (at 0.5 SmolLM2's continuation of the demo article degenerates,
# at 0.75 it stays on topic), and with a query 0.75 also answered the suite better than 0.5
# (0.86 vs 0.74 at 2.4x); the rest goes to the sentences most relevant to the (implicit) query.
AUTO_RECENCY = 0.75
SPAN_REPRS = ("mean", "norm_mean", "first", "last")  # how a merged span becomes one vector
# A span's position id: its first / last token's original position ("first", "last": the gaps
# stay, generation continues at T), or its index ("index": the kept positions read as a shorter
# text, generation continues at n). "auto": "index" when sentences are ranked by a query (given,
# or implicit), else "first" (docs/eval.md: with a query, index positions answer the suite and
# continue WikiText better).
SPAN_POSITIONS = ("auto", "first", "last", "index")
# What becomes of the merged (multi-token) spans: "keep" (each is one position, SemToken's
# merge), "drop" (left out of the LM's input; their positions go to more relevant sentences),
# "auto": "drop" when sentences are ranked, else "keep" (docs/eval.md: with ranked sentences
# a frozen LM answers the suite better from whole sentences than from merged stretches).
MERGED_SPANS = ("auto", "keep", "drop")
# How sentences are ranked for a query: "maxsim" (IDF-weighted MaxSim over encoder states),
# "cosine" (best cosine to the mean query state), "bm25" (Okapi BM25 over token ids), "hybrid"
# (reciprocal-rank fusion of maxsim and bm25).
QUERY_RELEVANCE = ("maxsim", "cosine", "bm25", "hybrid")
# Where the ranked (most relevant) sentences are read when merged spans are dropped: "text"
# (where they stand, in text order), "relevance" (moved to just before the prompt's last
# paragraph, where the question sits, least relevant first so the most relevant is read last:
# LongLLMLingua's reordering against "lost in the middle"), "auto": "relevance" when a query is
# given, else "text" (docs/eval.md: with the question as query it answered the suite better at
# 2.4x and 4x; without one the last paragraph is text to continue, not a question).
RANKED_ORDERS = ("auto", "text", "relevance")


@dataclass(frozen=True)
class CompressionConfig:
    """SemToken settings: how many positions to keep and which tokens may never merge.

    Exactly one of `ratio` and `target_tokens` controls the budget.
    """

    ratio: float | None = 2.4  # input positions / output positions; None -> use target_tokens
    target_tokens: int | None = None  # output positions wanted (overrides ratio when set)
    encoder: str = "lm"  # "lm" (the LM's own first layers) or "minilm"
    encoder_layers: int = 1  # k: hidden state after the first k LM layers (lm encoder)
    max_span: int = 16  # longest merged span (grows by itself when a high ratio needs it)
    recency_window: int | None = None  # the last N tokens never merge; None: AUTO_RECENCY
    recency_fraction: float | None = None  # recency window = this share of the output positions
    protect_digits: bool = True  # tokens containing a digit never merge (without a query)
    protect_special: bool = True  # special tokens never merge
    protected_strings: tuple[str, ...] = ()  # user strings whose tokens never merge
    query: str | None = None  # query-aware mode: spans similar to it stay fine
    density_alpha: float = 1.0  # strength of the entropy-adaptive threshold (0 = fixed tau)
    window: int = 16  # tokens per local window for the semantic-density estimate
    tolerance: float = 0.02  # achieved ratio must be within this relative error of `ratio`
    threshold: float | None = None  # a calibrated tau: skips the per-prompt search when set
    sink_tokens: int = 4  # the first N tokens never merge (attention sinks)
    span_repr: str = "first"  # span vector: "first" (selection) | "mean" | "norm_mean" | "last"
    span_position: str = "auto"  # span position id: SPAN_POSITIONS; see position_mode()
    encoder_window: int = 1024  # encoder tokens per window for long texts (overlapping)
    query_keep: float = 0.0  # query-aware: fraction of tokens most similar to the query kept
    query_weight: float = 1.0  # query-aware: how much query similarity raises tau
    query_share: float = 1.0  # query-aware: share of the free budget for relevant sentences
    query_relevance: str = "maxsim"  # sentence relevance: QUERY_RELEVANCE
    implicit_query: bool = True  # without a query, the prompt's last paragraph serves as one
    merged_spans: str = "auto"  # MERGED_SPANS; see drops_merged()
    ranked_order: str = "auto"  # RANKED_ORDERS; see reorders_ranked()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # forward-compatible knobs

    def __post_init__(self) -> None:
        if self.ratio is not None and not (self.ratio >= 1.0 and math.isfinite(self.ratio)):
            raise InputError(f"ratio must be >= 1.0 (2.4 = 2.4x fewer positions), got {self.ratio}")
        if self.target_tokens is not None and self.target_tokens < 1:
            raise InputError(f"target_tokens must be >= 1, got {self.target_tokens}")
        if self.ratio is None and self.target_tokens is None:
            raise InputError("set ratio (e.g. 2.4) or target_tokens")
        if self.encoder not in ("lm", "minilm"):
            raise InputError(f"encoder must be 'lm' or 'minilm', got {self.encoder!r}")
        if self.max_span < 1:
            raise InputError(f"max_span must be >= 1, got {self.max_span}")
        if self.recency_window is not None and self.recency_window < 0:
            raise InputError(f"recency_window must be >= 0, got {self.recency_window}")
        if self.recency_fraction is not None and not 0.0 <= self.recency_fraction < 1.0:
            raise InputError(
                f"recency_fraction must be in [0, 1) (a share of the output positions), "
                f"got {self.recency_fraction}"
            )
        if self.encoder_layers < 0:
            raise InputError(f"encoder_layers must be >= 0, got {self.encoder_layers}")
        if self.sink_tokens < 0:
            raise InputError(f"sink_tokens must be >= 0, got {self.sink_tokens}")
        if self.span_repr not in SPAN_REPRS:
            raise InputError(f"span_repr must be one of {SPAN_REPRS}, got {self.span_repr!r}")
        if self.span_position not in SPAN_POSITIONS:
            raise InputError(
                f"span_position must be one of {SPAN_POSITIONS}, got {self.span_position!r}"
            )
        if self.merged_spans not in MERGED_SPANS:
            raise InputError(
                f"merged_spans must be one of {MERGED_SPANS}, got {self.merged_spans!r}"
            )
        if self.ranked_order not in RANKED_ORDERS:
            raise InputError(
                f"ranked_order must be one of {RANKED_ORDERS}, got {self.ranked_order!r}"
            )
        if self.encoder_window < 16:
            raise InputError(f"encoder_window must be >= 16 tokens, got {self.encoder_window}")
        for name in ("query_keep", "query_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:  # NaN fails too
                raise InputError(f"{name} must be in [0, 1], got {value}")
        if self.query_relevance not in QUERY_RELEVANCE:
            raise InputError(
                f"query_relevance must be one of {QUERY_RELEVANCE}, got {self.query_relevance!r}"
            )
        if self.query is not None and not self.query.strip():
            raise InputError("query is empty; give a question or leave it out")

    def recency_tokens(self, n_tokens: int) -> int:
        """Tokens at the end of an `n_tokens` prompt kept verbatim (never merged).

        With `recency_fraction` set, that share of the output positions (n_tokens / ratio, or
        target_tokens), so the window scales with the budget; else `recency_window` tokens; with
        neither (the default) AUTO_RECENCY (3/4) of the output positions.
        """
        fraction = self.recency_fraction
        if fraction is None and self.recency_window is not None:
            return min(self.recency_window, n_tokens)
        if fraction is None:
            fraction = AUTO_RECENCY
        budget = self.target_tokens if self.target_tokens is not None else n_tokens / self.ratio
        return min(n_tokens, int(round(fraction * budget)))

    def position_mode(self) -> str:
        """The span position rule in force: span_position, with "auto" resolved ("index" when
        `query` is set, else "first")."""
        if self.span_position != "auto":
            return self.span_position
        return "index" if self.ranks_sentences() else "first"

    def ranks_sentences(self) -> bool:
        """True when sentences are ranked by relevance to a query: `query` given, or the
        prompt's own last paragraph (`implicit_query`). A share (`query_share`) of the free budget
        then keeps the best sentences verbatim."""
        return bool(self.query) or (self.implicit_query and self.query_share > 0)

    def drops_merged(self) -> bool:
        """True when merged spans are left out of the LM's input (merged_spans, with "auto"
        resolved: "drop" when sentences are ranked). The kept tokens then fill the whole
        budget: the recency window, the most relevant sentences, and the tokens just before
        the window for what is left."""
        if self.merged_spans != "auto":
            return self.merged_spans == "drop"
        return self.ranks_sentences()

    def reorders_ranked(self) -> bool:
        """True when the ranked sentences are read just before the prompt's last paragraph,
        most relevant last (ranked_order, with "auto" resolved: "relevance" when a query is
        given). Only where the kept tokens are read as one text (merged spans dropped, "index"
        positions): moved tokens take the next position ids, never their original ones."""
        if not (self.ranks_sentences() and self.drops_merged() and self.position_mode() == "index"):
            return False
        if self.ranked_order != "auto":
            return self.ranked_order == "relevance"
        return bool(self.query)

    def digits_protected(self) -> bool:
        """Digits stay verbatim (while they fit) only when no sentences are ranked: otherwise
        the relevant sentences stay verbatim, and a haystack's numbers would take their room."""
        return self.protect_digits and not self.ranks_sentences()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what exports and calibration store)."""
        d = dataclasses.asdict(self)
        d["protected_strings"] = list(self.protected_strings)
        return d

    @classmethod
    def paper(cls, **overrides: Any) -> CompressionConfig:
        """SemToken as the paper describes it: each span is the mean of its tokens' embeddings,
        spans up to 8 tokens, a fixed 64-token recency window. Kept for comparison: on a frozen
        LM it scores far below the default (docs/eval.md)."""
        preset = {"span_repr": "mean", "recency_window": 64, "max_span": 8, "query_keep": 0.1,
                  "encoder_layers": 2,
                  "query_share": 0.0, "implicit_query": False, "span_position": "first",
                  "merged_spans": "keep"}  # fmt: skip
        return cls(**{**preset, **overrides})

    @classmethod
    def frozen_lm(cls, **overrides: Any) -> CompressionConfig:
        """Preset measured best for an untrained (frozen) LM at T=2048, R=2.4 (docs/eval.md).

        Each merged span is its first token's embedding (a frozen LM reads a mean of embeddings as
        noise), the last 448 tokens stay verbatim, spans reach 16 tokens so the far context can take
        the rest of the budget. MT2ST span adapters train on `adapter_default()` instead.
        """
        preset = {"span_repr": "first", "recency_window": 448, "max_span": 16, "encoder_layers": 2,
                  "implicit_query": False, "span_position": "first",
                  "merged_spans": "keep"}  # fmt: skip
        return cls(**{**preset, **overrides})

    @classmethod
    def adapter_default(cls, **overrides: Any) -> CompressionConfig:
        """Preset the shipped MT2ST span adapter is trained and evaluated with (docs/mt2st.md).

        96 % of the position budget keeps the most recent tokens verbatim; everything older is
        merged by SemToken into spans of up to 64 tokens (about 20 positions at T=2048, R=2.4),
        which the adapter turns into vectors the frozen LM reads well. No attention sinks;
        digits and query matches may merge (the far context is spans only, so protecting them
        there would not fit the budget).
        """
        preset = {"recency_fraction": 0.96, "recency_window": 64, "sink_tokens": 0, "max_span": 64,
                  "encoder_layers": 2,
                  "protect_digits": False, "span_repr": "mean", "query_keep": 0.0,
                  "query_share": 0.0, "implicit_query": False, "span_position": "first",
                  "merged_spans": "keep", "ranked_order": "text"}  # fmt: skip
        return cls(**{**preset, **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionConfig:
        """Inverse of to_dict; unknown keys go to `extra` so newer configs still load."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names and k != "extra"}
        extra = {**data.get("extra", {}), **{k: v for k, v in data.items() if k not in names}}
        for key, before in _BEFORE_FIELD.items():  # written before the field existed
            known.setdefault(key, before)
        if "protected_strings" in known:
            known["protected_strings"] = tuple(known["protected_strings"])
        return cls(**known, extra=extra)


PRESETS = {  # --preset name -> CompressionConfig constructor
    "default": CompressionConfig,
    "paper": CompressionConfig.paper,
    "frozen-lm": CompressionConfig.frozen_lm,
    "adapter": CompressionConfig.adapter_default,
}


def adapter_layout(config: CompressionConfig) -> CompressionConfig:
    """`config` as a span adapter needs it: merged spans kept ("auto" -> "keep"), since an
    adapter projects merged spans and dropping them would leave it nothing to do.

    Raises:
        InputError: merged_spans is "drop".
    """
    if config.merged_spans == "drop":
        raise InputError(
            "a span adapter projects merged spans, and merged_spans='drop' leaves them out; "
            "use merged_spans='keep' (or leave it at auto)"
        )
    return dataclasses.replace(config, merged_spans="keep")


def effective_compression(
    stored: CompressionConfig | None = None,
    trained: CompressionConfig | None = None,
    preset: str | None = None,
    adapter: bool = False,
    **options: Any,
) -> CompressionConfig:
    """The one rule for which CompressionConfig applies (export, runtime and CLI use it).

    A named `preset`, else the layout an adapter was `trained` with, else the `stored` config
    (an export's), else the defaults; then the explicit `options` (None = not given). An
    explicit recency_window replaces a recorded recency_fraction. With `adapter` (a span
    adapter applies), merged spans are kept (adapter_layout).

    Raises:
        InputError: unknown preset or a bad option value.
    """
    if preset is not None and preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    if preset is not None:
        base = PRESETS[preset]()
    else:
        base = trained or stored or CompressionConfig()
    if options.get("recency_window") is not None:
        base = dataclasses.replace(base, recency_fraction=None)
    config = replace_set(base, **options)
    return adapter_layout(config) if adapter else config
