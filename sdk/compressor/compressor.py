"""SemTokenCompressor: text or token ids -> a CompressedPrompt of merged span embeddings.

PyTorch. The span math lives in the torch-free `spans.py`; this module tokenizes, encodes,
and builds the LM inputs (`inputs_embeds`, `position_ids`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semedge.compressor.encoders import LMEncoder, MiniLMEncoder, encode_lm_windows
from semedge.compressor.merging import next_position
from semedge.compressor.relevance import (
    implicit_query_scores,
    query_scores,
    question_start,
    states_needed,
)
from semedge.compressor.spans import (
    check_spans,
    find_spans,
    protected_mask,
    span_positions,
)
from semedge.config import CompressionConfig, adapter_layout
from semedge.deps import require
from semedge.errors import InputError
from semedge.textio import check_text

torch = require("torch")

log = logging.getLogger(__name__)

__all__ = ["CompressedPrompt", "SemTokenCompressor", "compress", "merge_spans_torch"]


@dataclass
class CompressedPrompt:
    """A context as the LM sees it: n positions (merged spans, or one per token when plain).

    The one prompt type of the PyTorch path: the compressor, eval's baselines and training make
    it; `semedge.compressor.inference` scores and generates from it.

    Attributes:
        input_ids: (T,) int64 original token ids.
        spans: (n, 2) int64 [start, end) token spans in order, covering 0..T (or with gaps:
            the tokens in no span were dropped, CompressionConfig.drops_merged()).
        inputs_embeds: (1, n, D) merged span embeddings (the LM's input embedding dtype).
        position_ids: (1, n) long, each span's position in the original numbering.
        stats: original_tokens, compressed_tokens, ratio, threshold, encoder, timings ...
    """

    input_ids: np.ndarray
    spans: np.ndarray
    inputs_embeds: torch.Tensor
    position_ids: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)
    first_new_position: int | None = None  # set when positions were compacted to fit

    @property
    def original_tokens(self) -> int:
        """T, the number of original tokens (generation continues at position T)."""
        return int(len(self.input_ids))

    @property
    def compressed_tokens(self) -> int:
        """n, the number of LM positions after compression."""
        return int(len(self.spans))

    @property
    def next_position(self) -> int:
        """Position id of the first token after this context (T: merging leaves gaps; less
        when the positions were compacted to fit a model, `fit_positions`)."""
        return self.original_tokens if self.first_new_position is None else self.first_new_position

    def fit_positions(self, limit: int) -> CompressedPrompt:
        """This prompt with its position ids compacted to end before `limit`
        (spans.compact_positions), as the runtime does for a prompt longer than its export."""
        from semedge.compressor.spans import compact_positions

        pos = compact_positions(self.position_ids[0].numpy(), limit)
        if int(pos[-1]) + 1 >= self.next_position:
            return self
        return dataclasses.replace(self, position_ids=torch.as_tensor(pos)[None],
                                   first_new_position=int(pos[-1]) + 1)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the stats plus `spans` as a list of [start, end) pairs."""
        return {**self.stats, "spans": self.spans.tolist()}


def merge_spans_torch(token_embeds: torch.Tensor, spans: np.ndarray, mode: str = "mean"):
    """PyTorch twin of `spans.merge_embeddings` (differentiable; singletons stay exact).

    Args:
        token_embeds: (T, D) input embeddings.
        spans: (n, 2) [start, end) spans (tiling 0..T, or with gaps: dropped tokens).
        mode: "mean", "norm_mean", "first" or "last".

    Returns:
        (n, D) tensor.

    Raises:
        InputError: unknown mode.
    """
    spans_t = torch.as_tensor(np.asarray(spans, dtype=np.int64))
    starts, ends = spans_t[:, 0], spans_t[:, 1]
    if mode == "first":
        return token_embeds[starts]
    if mode == "last":
        return token_embeds[ends - 1]
    if mode not in ("mean", "norm_mean"):
        raise InputError(f"span_repr must be mean, norm_mean, first or last, got {mode!r}")
    lengths = ends - starts
    seg = torch.repeat_interleave(torch.arange(len(spans_t)), lengths)  # span of each kept token
    tiled = bool(starts[0] == 0) and bool((starts[1:] == ends[:-1]).all())
    if not (tiled and int(ends[-1]) == token_embeds.shape[0]):  # gaps: dropped tokens
        keep = torch.cat([torch.arange(int(a), int(b)) for a, b in spans_t.tolist()])
        token_embeds = token_embeds[keep]
    sums = token_embeds.new_zeros(len(spans_t), token_embeds.shape[1]).index_add(
        0, seg, token_embeds
    )
    mean = sums / lengths[:, None].to(token_embeds.dtype)  # (n, D)
    if mode == "norm_mean":  # rescale to the span's mean token norm (averaging shrinks it)
        tok_norm = token_embeds.float().norm(dim=1)
        target = torch.zeros(len(spans_t)).index_add(0, seg, tok_norm) / lengths
        scale = torch.where(lengths > 1, target / mean.float().norm(dim=1).clamp_min(1e-12), 1.0)
        mean = mean * scale[:, None].to(mean.dtype)
    return mean


@dataclass
class _Tokens:
    ids: np.ndarray  # (T,) int64
    texts: list[str]  # each token's text
    text: str  # the text `offsets` index into
    offsets: np.ndarray  # (T, 2) char [start, end)
    special: np.ndarray  # (T,) bool


class SemTokenCompressor:
    """Compress prompts for one causal LM with SemToken span merging.

    Holds the model, its tokenizer, the config and lazily built encoders; read-only after the
    first call per encoder, so it can be shared by threads that each call `compress`.

    Args:
        model: a transformers causal LM (Llama, Qwen2, GPT-2 families).
        tokenizer: its fast tokenizer.
        config: compression settings; None -> CompressionConfig().
        adapter: optional callable `(merged (m, D), lengths (m,) long) -> (m, D)` applied to the
            merged (multi-token) spans only, e.g. an MT2ST-trained adapter; None = plain merge.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: CompressionConfig | None = None,
        adapter: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or CompressionConfig()
        if adapter is not None:  # an adapter projects merged spans: they are kept
            self.config = adapter_layout(self.config)
        self.adapter = adapter
        self._encoders: dict[tuple[str, int], Any] = {}

    def encoder(self, name: str, layers: int | None = None) -> Any:
        """The `lm` (LMEncoder with k layers) or `minilm` encoder, built once."""
        k = self.config.encoder_layers if layers is None else layers
        key = (name, k if name == "lm" else 0)
        if key not in self._encoders:
            self._encoders[key] = LMEncoder(self.model, k) if name == "lm" else MiniLMEncoder()
        return self._encoders[key]

    def _tokenize(self, text: str | None, input_ids: Any) -> _Tokens:
        tok = self.tokenizer
        if text is not None and input_ids is not None:
            raise InputError("pass text or input_ids, not both")
        if text is not None:
            check_text(text)
            enc = tok(text, add_special_tokens=True, return_offsets_mapping=True, verbose=False)
            ids = np.asarray(enc["input_ids"], dtype=np.int64)
            offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
            texts = [text[a:b] for a, b in offsets.tolist()]
        elif input_ids is not None:
            ids = np.asarray(
                input_ids.cpu() if hasattr(input_ids, "cpu") else input_ids, np.int64
            ).reshape(-1)
            texts = tok.batch_decode(ids[:, None].tolist())
            ends = np.cumsum([len(t) for t in texts], dtype=np.int64)
            offsets = np.stack([ends - [len(t) for t in texts], ends], axis=1).reshape(-1, 2)
            text = "".join(texts)
        else:
            raise InputError("pass text or input_ids")
        if len(ids) == 0:
            raise InputError("text has no tokens; give some text")
        special = np.isin(ids, np.asarray(tok.all_special_ids, dtype=np.int64))
        return _Tokens(ids, texts, text, offsets, special)

    def _features(self, cfg: CompressionConfig, toks: _Tokens, query: str | None):
        """(T, E) encoder states and, in query mode, relevance.query_scores' (sim, unit scores)."""
        enc = self.encoder(cfg.encoder)
        if cfg.encoder == "lm":
            needed = states_needed(toks.text, toks.offsets, cfg)
            hidden = encode_lm_windows(enc, toks.ids, cfg.encoder_window, needed)
        else:
            hidden = enc.token_states(toks.text, toks.offsets)
        if query is None:
            if not cfg.ranks_sentences():  # implicit_query and query_share: one rule
                return hidden, None, None
            return hidden, *implicit_query_scores(hidden, toks.ids, toks.text, toks.offsets, cfg)
        q_ids = np.asarray(self.tokenizer(query, add_special_tokens=False)["input_ids"], np.int64)
        if not query.strip() or len(q_ids) == 0:
            raise InputError("query has no tokens; give a non-empty --query")
        if cfg.encoder == "lm":
            q = encode_lm_windows(enc, q_ids, cfg.encoder_window)
        else:
            q = enc.pieces(query)[0]
        sim, units = query_scores(hidden, q, toks.ids, q_ids, toks.text, toks.offsets, cfg)
        return hidden, sim, units

    def compress(
        self,
        text: str | None = None,
        input_ids: Any = None,
        ratio: float | None = None,
        target_tokens: int | None = None,
        query: str | None = None,
    ) -> CompressedPrompt:
        """Compress one prompt.

        Args:
            text: the prompt text (tokenized with the LM's tokenizer, special tokens added).
            input_ids: or the (T,) token ids (a list, numpy array or tensor).
            ratio: overrides config.ratio (positions in / positions out, >= 1).
            target_tokens: overrides config.target_tokens (and the ratio).
            query: query-aware mode: tokens similar to it stay fine; overrides config.query.

        Returns:
            A CompressedPrompt.

        Raises:
            InputError: empty text, bad ratio, or a text too short for the ratio.
        """
        cfg = self.config
        if target_tokens is not None:
            cfg = dataclasses.replace(cfg, target_tokens=target_tokens)
        elif ratio is not None:
            cfg = dataclasses.replace(cfg, ratio=ratio, target_tokens=None)
        query = query if query is not None else cfg.query
        cfg = dataclasses.replace(cfg, query=query)  # the recency window depends on it
        t0 = time.perf_counter()
        toks = self._tokenize(text, input_ids)
        T = len(toks.ids)
        unit = cfg.target_tokens is None and cfg.ratio == 1.0 and cfg.threshold is None
        if unit or (cfg.target_tokens is not None and cfg.target_tokens >= T):
            spans, tau = np.stack([np.arange(T), np.arange(1, T + 1)], axis=1), 1.0
        else:
            hidden, query_sim, unit_scores = self._features(cfg, toks, query)
            prot = protected_mask(toks.texts, toks.special, cfg, toks.text, toks.offsets)
            at = question_start(toks.text, toks.offsets)  # used where cfg.reorders_ranked()
            spans, tau = find_spans(hidden, prot, cfg, query_sim, unit_scores, at)
        t1 = time.perf_counter()
        stats = {
            "original_tokens": T,
            "compressed_tokens": len(spans),
            "ratio": T / len(spans),
            "dropped_tokens": T - int(np.sum(spans[:, 1] - spans[:, 0])),
            "threshold": float(tau),
            "encoder": cfg.encoder,
            "encoder_layers": cfg.encoder_layers if cfg.encoder == "lm" else None,
            "span_repr": cfg.span_repr,
            "query": query,
            "compress_ms": 1000 * (t1 - t0),
        }
        return self.prompt(toks.ids, spans, cfg, stats)

    def prompt(
        self, input_ids: np.ndarray, spans: np.ndarray, config: CompressionConfig | None = None,
        stats: dict[str, Any] | None = None,
    ) -> CompressedPrompt:  # fmt: skip
        """The CompressedPrompt for given spans (build_inputs, and where generation continues:
        merging.next_position)."""
        cfg = config or self.config
        embeds, positions = self.build_inputs(input_ids, spans, cfg)
        spans = np.asarray(spans, dtype=np.int64)
        T, nxt = len(input_ids), next_position(spans, cfg.position_mode())
        return CompressedPrompt(np.asarray(input_ids, dtype=np.int64), spans, embeds, positions,
                                stats or {}, None if nxt == T else nxt)  # fmt: skip

    def build_inputs(
        self, input_ids: np.ndarray, spans: np.ndarray, config: CompressionConfig | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LM inputs for given spans (any spans: SemToken's, or a baseline's).

        Args:
            input_ids: (T,) token ids.
            spans: (n, 2) [start, end) spans covering 0..T (with gaps when the config
                drops merged spans).
            config: span_repr / span_position / merged_spans; None -> the compressor's config.

        Returns:
            (inputs_embeds (1, n, D), position_ids (1, n) long).

        Raises:
            InputError: the spans do not tile 0..T.
        """
        cfg = config or self.config
        spans = check_spans(spans, len(input_ids), gaps=cfg.drops_merged())
        ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64))
        with torch.no_grad():
            tok_emb = self.model.get_input_embeddings()(ids)  # (T, D)
            merged = merge_spans_torch(tok_emb, spans, cfg.span_repr)
            if self.adapter is not None:  # only multi-token spans: singletons stay exact
                lengths = torch.as_tensor(spans[:, 1] - spans[:, 0])
                multi = lengths > 1
                if bool(multi.any()):
                    merged = merged.clone()
                    merged[multi] = self.adapter(merged[multi], lengths[multi]).to(merged.dtype)
        positions = torch.as_tensor(span_positions(spans, cfg.position_mode()))[None]
        return merged[None], positions


@functools.lru_cache(maxsize=2)
def _compressor_for(model_spec: str) -> SemTokenCompressor:
    from semedge.models import load_model

    model, tok = load_model(model_spec)
    return SemTokenCompressor(model, tok)


def compress(
    text: str, model_spec: str = "smollm2", config: CompressionConfig | None = None, **kwargs: Any
) -> CompressedPrompt:
    """One-call SemToken compression with a model loaded by spec (cached between calls).

    Args:
        text: the prompt.
        model_spec: "smollm2" or a local Hugging Face directory.
        config: compression settings; None -> CompressionConfig().
        **kwargs: ratio, target_tokens, query (see SemTokenCompressor.compress).

    Returns:
        A CompressedPrompt.

    Raises:
        InputError: bad text, ratio or model spec.
    """
    base = _compressor_for(str(model_spec))
    comp = SemTokenCompressor(base.model, base.tokenizer, config or CompressionConfig())
    comp._encoders = base._encoders  # share built encoders (they only depend on the model)
    return comp.compress(text, **kwargs)
