"""The torch-free SemToken pipeline: tokenize -> encode -> merge -> prefill -> decode.

`Pipeline.from_pretrained(EXPORT_DIR)` checks the manifest (format, schema, hashes, versions,
engine GPU compatibility), loads the tokenizer and the four graphs, and is then read-only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semedge.artifacts import (
    Manifest,
    compression_from_record,
    listed_file,
    load_manifest,
    verify_manifest,
)
from semedge.config import CompressionConfig, effective_compression
from semedge.constants import (
    ATTENTION_MASK,
    DECODE_ONNX,
    ENCODER_HIDDEN,
    FORMAT_CALIBRATED,
    FORMAT_ENGINE,
    FORMAT_EXPORT,
    INPUT_IDS,
    INPUTS_EMBEDS,
    KEEP_FROM,
    PAST_KEY,
    TOKENIZER_JSON,
)
from semedge.deps import require
from semedge.errors import ArtifactError, InputError
from semedge.logs import log_timed
from semedge.runtime.backends.base import Backend
from semedge.runtime.backends.providers import backends_for
from semedge.runtime.context_limits import check_fits
from semedge.runtime.decode_fallback import fallback_margin
from semedge.runtime.generator import GenerationResult, Generator
from semedge.runtime.kv_cache import HostPool, KVCache, local_kv
from semedge.runtime.prompts import PreparedPrompt, span_tokens
from semedge.runtime.sampling import GenerationConfig
from semedge.runtime.span_adapter import load_span_adapter, span_adapter_fn
from semedge.runtime.trace import NULL_TIMER

__all__ = ["AUTO_PREFILL_CHUNK", "Pipeline", "PreparedPrompt", "REQUIRED_CONFIG", "encoder_feeds"]

# GenerationConfig(prefill_chunk=None) on ONNX Runtime's CPU provider: measured best of 256 /
# 512 / 1024 / 4096 on SmolLM2 and Gemma 3 (benchmarks/prefill_chunks.py; docs/runtime.md)
AUTO_PREFILL_CHUNK = 512

log = logging.getLogger(__name__)

REQUIRED_CONFIG = ("max_context", "num_layers", "num_kv_heads", "head_dim", "eos_token_id")


class Pipeline:
    """A loaded export: tokenizer, backends and model config, shared by every request.

    Thread safety: read-only after `from_pretrained`; `generate`/`stream` may be called from many
    threads at once (each call owns a Generator with its own KV cache; ONNX Runtime sessions are
    concurrent-safe; native TensorRT backends create an execution context per call).

    Use `Pipeline.from_pretrained(path, providers=["cpu"])`, then `generate(...)` or `stream(...)`.
    """

    def __init__(
        self, path: Path, manifest: Manifest, tokenizer: Any, backends: dict[str, Backend]
    ) -> None:
        self.path, self.manifest, self.tokenizer = path, manifest, tokenizer
        self.backends = backends
        self._owns_backends = True  # False on with_adapter copies: they borrow the sessions
        self.config = manifest.config
        self.max_context = int(self.config["max_context"])
        # the rotary/position table's length: max_context unless the manifest records more
        self.max_positions = int(self.config.get("max_positions") or self.max_context)
        eos = self.config["eos_token_id"]
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [eos]) - {None}
        self.compression = compression_from_record(
            self.config.get("compression"), path / "manifest.json"
        )
        self.embed_dtype = self.prefill.inputs[INPUTS_EMBEDS][0]
        self.kv_dtype = self.decode.inputs[PAST_KEY.format(i=0)][0]
        self.kv_pool = HostPool(self.decode.allocate)  # blocks released by serving batches
        self.kv_shared = self._shared_kv()
        self.fallback_margin = fallback_margin(self.config, backends, path)
        self._adapter = load_span_adapter(path, self.config.get("adapter"), manifest.files)
        added = tokenizer.get_added_tokens_decoder()
        self._special_ids = np.array([i for i, t in added.items() if t.special], dtype=np.int64)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: Path | str,
        providers: str | Sequence[str] = ("cpu",),
        verify: bool = True,
        threads: int | None = None,
        ort_profile: str | None = None,
    ) -> Pipeline:
        """Check and load an export directory.

        Args:
            path: a `semedge export onnx` directory, a `semedge calibrate` output (INT8/FP16
                graphs, calibrated SemToken threshold) or a TensorRT engine directory.
            providers: "cpu", "cuda", "tensorrt" (ONNX Runtime execution providers),
                "openvino" (OpenVINO CPU, `--attention plain` exports) or "trt-engine" (native
                TensorRT engines); a list is tried as ONNX Runtime names.
            verify: check every file's SHA-256 against the manifest (on by default); sizes,
                the listing of every loaded file and path confinement are always checked.
            threads: ONNX Runtime intra-op threads per session.
            ort_profile: a path prefix: enable ONNX Runtime's profiler on the prefill/decode graphs.

        Returns:
            The loaded Pipeline.

        Raises:
            ArtifactError: missing directory, bad manifest, tampered file, incompatible engine.
            InputError: unknown provider.
            BackendUnavailable: the provider (or onnxruntime/tokenizers/tensorrt) is not working.
        """
        path = Path(path)
        provider = providers if isinstance(providers, str) else (list(providers) or ["cpu"])[0]
        manifest = load_manifest(
            path, expect_format=(FORMAT_EXPORT, FORMAT_CALIBRATED, FORMAT_ENGINE)
        )
        missing = [k for k in REQUIRED_CONFIG if k not in manifest.config]
        if missing:
            raise ArtifactError(
                f"{path}/manifest.json config lacks {', '.join(missing)}; re-export with this semedge"
            )
        with log_timed(log, f"verifying {path.name}", logging.DEBUG):
            verify_manifest(path, manifest, hashes=verify)  # listing and paths: always
        from semedge.runtime.cpu_features import warn_if_missing

        warn_if_missing(path.name, manifest.config)  # one line when tuned on another CPU
        backends = backends_for(path, manifest, provider, providers, threads, ort_profile)
        tok_path = listed_file(path, manifest, TOKENIZER_JSON, "the tokenizer")
        tokenizers = require("tokenizers")
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(tok_path))
        except Exception as err:  # the Rust side raises a plain Exception on bad JSON
            raise ArtifactError(f"cannot read {tok_path}: {err}; re-export") from err
        with log_timed(log, f"loading {path.name} on {provider}", logging.DEBUG):
            for b in backends.values():
                b.load()
        return cls(path, manifest, tokenizer, backends)

    def close(self) -> None:
        """Free every backend (a `with_adapter` copy leaves its source's backends open).

        Requests still running on other threads finish (each backend call holds its session);
        later calls raise RuntimeError naming the closed backend.
        """
        if not self._owns_backends:
            return
        for b in self.backends.values():
            b.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def prefill(self) -> Backend:
        return self.backends["prefill"]

    @property
    def decode(self) -> Backend:
        return self.backends["decode"]

    @property
    def exact_decode(self) -> Backend | None:
        """The fp32 decode graph beside a quantized one (decode_exact.onnx), used for the steps
        whose next token is a near tie (`fallback_margin`), or None."""
        return self.backends.get("decode_exact") if self.fallback_margin else None

    @property
    def provider(self) -> str:
        return self.backends["prefill"].provider_name

    def prefill_chunk_for(self, requested: int | None, positions: int) -> int | None:
        """The chunk size for a prefill of `positions` (None: the whole prompt in one call).

        `requested` is GenerationConfig.prefill_chunk: 0 is the whole prompt, N >= 1 is N, None
        is the measured default: AUTO_PREFILL_CHUNK on a prompt longer than it, for a plain
        fp32 export whose prefill and decode both run on ONNX Runtime's CPU provider (chunked
        prefill there skips the causal mask's upper half that the fused attention otherwise
        computes: 1.02-1.10x at 1-8K on SmolLM2, 1.29-2.49x at 4-16K on Gemma 3; docs/
        runtime.md). Elsewhere (OpenVINO or GPU prefill, int8 or bf16 graphs, engines) the
        default is the whole prompt: chunks would move positions onto the decode graph's
        other precision or provider, where nothing was measured."""
        if requested == 0:
            return None
        if requested is not None:
            return int(requested)
        if positions <= AUTO_PREFILL_CHUNK or not self._auto_chunks():
            return None
        return AUTO_PREFILL_CHUNK

    def _auto_chunks(self) -> bool:
        plain = self.manifest.format == FORMAT_EXPORT and not self.config.get("decode_precision")
        fp32 = str(self.config.get("precision") or "fp32") == "fp32"
        on_cpu = self.prefill.provider_name == "cpu" and self.decode.provider_name == "cpu"
        return plain and fp32 and on_cpu and self.chunked_prefill_error() is None

    def chunked_prefill_error(self) -> str | None:
        """Why this export cannot read a prompt in chunks (GenerationConfig.prefill_chunk), or
        None when it can: its decode graph must take several new tokens (exports from semedge
        0.1.0 after chunked prefill), run where it was exported to (not a TensorRT engine built
        for one token), and give last-position logits."""
        graphs = self.manifest.graphs
        entry = graphs.get("decode") or graphs.get(DECODE_ONNX) or {}
        shape = ((entry.get("inputs") or {}).get(INPUT_IDS) or {}).get("shape") or [None, 1]
        if isinstance(shape[-1], int):
            return "its decode graph takes one token per call; re-export it with this semedge"
        if self.decode.provider_name == "trt-engine":
            return "its TensorRT decode engine is built for one token per call"
        if self.config.get("logits") == "all":
            return "it returns all-position logits (--full-logits), which chunks would cut"
        return None

    # ---------------------------------------------------------------- stages
    def tokenize(self, text: str) -> Any:
        """tokenizers Encoding of `text` (special tokens added as the export's tokenizer says)."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("prompt is empty; give some text")
        return self.tokenizer.encode(text)

    def decode_tokens(self, ids: Sequence[int]) -> str:
        """Text of generated ids, special tokens skipped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def with_adapter(self, spec: str | Path) -> Pipeline:
        """This export with an MT2ST span adapter and the compression layout it was trained with.

        Args:
            spec: DEFAULT (the adapter shipped for SmolLM2) or a `semedge train adapter` directory.

        Returns:
            A Pipeline sharing this one's sessions (closing it leaves them open; closing this one
            closes them for both); merged spans go through the adapter.

        Raises:
            InputError: the adapter was trained for another model.
            ArtifactError: `spec` is not a readable adapter.
        """
        import copy

        from semedge import adapter_math

        directory = adapter_math.resolve_adapter_dir(spec)
        weights, meta = adapter_math.read_adapter_dir(directory)
        exact = self.config.get("dtype") == "fp32"  # fp16 embeddings cannot match the fingerprint
        rows = self.embed(np.arange(16, dtype=np.int64)) if exact else None
        fingerprint = adapter_math.embedding_fingerprint(rows) if exact else None
        adapter_math.check_adapter_for(
            meta, directory, int(self.config["hidden_size"]), fingerprint, self.config["model"]
        )
        pipe = copy.copy(self)
        pipe._owns_backends = False  # closing the copy must not close this pipeline's sessions
        pipe._adapter = span_adapter_fn(weights)
        trained = adapter_math.adapter_compression(meta)
        pipe.compression = effective_compression(self.compression, trained, adapter=True)
        return pipe

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """(T,) ids -> (T, D) input embeddings (embed.onnx)."""
        out = self.backends["embed"].run({INPUT_IDS: ids.reshape(1, -1).astype(np.int64)})
        return next(iter(out.values()))[0]

    def encode(self, ids: np.ndarray, needed: np.ndarray | None = None) -> np.ndarray:
        """(T,) ids -> (T, E) SemToken encoder states, in the PyTorch path's overlapping windows
        (only the `needed` tokens' rows, relevance.states_needed; NaN elsewhere)."""
        from semedge.compressor.windows import encoder_windows, windowed_states

        window = min(self.compression.encoder_window, self.max_positions)
        enc = self.backends["encoder"]

        def run(start: int, end: int, keep: int) -> np.ndarray:
            feeds = encoder_feeds(enc, ids[start:end], keep - start)
            states = enc.run(feeds, [ENCODER_HIDDEN])[ENCODER_HIDDEN][0]
            return states if KEEP_FROM in feeds else states[keep - start :]

        return windowed_states(len(ids), encoder_windows(len(ids), window, needed=needed), run)

    def compression_config(self, ratio: float, query: str | None = None) -> CompressionConfig:
        """The export's compression settings at `ratio`; its calibrated tau applies only at the
        ratio it was calibrated for."""
        base = self.compression
        threshold = (
            base.threshold if base.ratio is not None and abs(base.ratio - ratio) < 1e-9 else None
        )
        return dataclasses.replace(
            base, ratio=float(ratio), target_tokens=None, threshold=threshold, query=query
        )

    def prepare(
        self, text: str, ratio: float | None = None, query: str | None = None, max_new_tokens: int = 0,
        timer: Any = NULL_TIMER,
    ) -> PreparedPrompt:  # fmt: skip
        """Tokenize, and when `ratio` > 1 encode and merge, one prompt.

        Raises:
            InputError: empty prompt, or the prompt does not fit max_context.
        """
        with timer.span("tokenize"):
            enc = self.tokenize(text)
            ids = np.asarray(enc.ids, dtype=np.int64)
        T = len(ids)
        compress = ratio is not None and ratio > 1.0
        limits = (self.max_context, self.max_positions)
        check_fits(T, T / ratio if compress else T, max_new_tokens, ratio if compress else None,
                   *limits)  # fmt: skip
        if not compress:
            with timer.span("merge", tokens=T, compressed=T):
                return PreparedPrompt(ids, self.embed(ids), np.arange(T, dtype=np.int64), None)
        from semedge.compressor import spans as sp
        from semedge.compressor.relevance import question_start

        cfg = self.compression_config(ratio, query)
        with timer.span("encode", tokens=T):
            hidden, protected = self.span_features(text, cfg, enc)
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            q = self._query_scores(hidden, ids, text, offsets, query, cfg)
        with timer.span("merge", tokens=T) as _:
            at = question_start(text, offsets)  # used where cfg.reorders_ranked()
            spans, tau = sp.find_spans(hidden, protected, cfg, *q, at)
            token_embeds = self.embed(ids)
            embeds = sp.merge_embeddings(token_embeds, spans, mode=cfg.span_repr)
            if self._adapter is not None:
                embeds = self._adapter(embeds, spans)
            token_at = span_tokens(ids, token_embeds, embeds, spans)
            positions = sp.span_positions(spans, cfg.position_mode())
        check_fits(T, len(positions), max_new_tokens, ratio, *limits)
        fitted = sp.compact_positions(positions, self.max_positions - max_new_tokens)
        nxt = sp.next_position(spans, cfg.position_mode())
        if not np.array_equal(fitted, positions):
            nxt = int(fitted[-1]) + 1
        nxt = None if nxt == T else nxt
        embeds = embeds.astype(self.embed_dtype)
        return PreparedPrompt(ids, embeds, fitted, spans, tau, nxt, token_at)

    def span_features(
        self, text: str, cfg: CompressionConfig, enc: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """What SemToken's span search reads for one prompt: ((T, E) encoder states, (T,) bool
        protected mask), the tokenization (`enc`, from tokenize) being done when None. The one
        home of these inputs: `prepare` and ratio calibration both use it."""
        from semedge.compressor import spans as sp
        from semedge.compressor.relevance import states_needed

        enc = enc if enc is not None else self.tokenize(text)
        ids = np.asarray(enc.ids, dtype=np.int64)
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        special = np.isin(ids, self._special_ids)
        texts = [text[s:e] for s, e in enc.offsets]
        needed = states_needed(text, offsets, cfg)
        return self.encode(ids, needed), sp.protected_mask(texts, special, cfg, text, offsets)

    def _query_scores(self, hidden, ids, text, offsets, query, cfg) -> tuple:
        """find_spans' query arguments (relevance.query_scores), or (None, None) without a query."""

        if query is None:
            if not cfg.ranks_sentences():  # implicit_query and query_share: one rule
                return None, None
            from semedge.compressor.relevance import implicit_query_scores

            return implicit_query_scores(hidden, ids, text, offsets, cfg)
        q_ids = np.asarray(self.tokenizer.encode(query, add_special_tokens=False).ids, np.int64)
        if not query.strip() or len(q_ids) == 0:
            raise InputError("query has no tokens; give a non-empty --query")
        from semedge.compressor.relevance import query_scores

        return query_scores(hidden, self.encode(q_ids), ids, q_ids, text, offsets, cfg)

    def _shared_kv(self) -> bool:
        """Whether the decode graph's presents can be written in place (kv_cache shared mode):
        ONNX Runtime's GroupQueryAttention produces them (fused exports), on the CPU provider
        (the only one run here), with no sliding-window layers (their graphs slice presents)."""
        from semedge.runtime.backends.ort import OrtBackend

        local_layers, _ = local_kv(self.config)
        return (
            self.manifest.extra.get("attention") == "fused" and not local_layers
            and isinstance(self.decode, OrtBackend) and self.decode.device == "cpu"
        )  # fmt: skip

    @property
    def kv_position_bytes(self) -> int:
        """Bytes of keys and values one row's position holds in a cache from `new_cache` (an
        upper bound with sliding-window layers, whose caches hold fewer positions)."""
        c = self.config
        per_layer = (
            2 * int(c["num_kv_heads"]) * int(c["head_dim"]) * np.dtype(self.kv_dtype).itemsize
        )
        return int(c["num_layers"]) * per_layer

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """A KV cache on the decode backend's device for `batch` rows of `max_len` positions
        (host memory comes from `kv_pool` where blocks were released to it); in place
        (`kv_shared`) where the decode graph allows it."""
        c = self.config
        local_layers, local_slots = local_kv(c)
        return KVCache(
            self.kv_pool.allocate, int(c["num_layers"]), batch, int(c["num_kv_heads"]),
            int(c["head_dim"]), max_len, self.kv_dtype, self.decode.device,
            local_layers, local_slots, shared=self.kv_shared, give_back=self.kv_pool.give,
        )  # fmt: skip

    # ---------------------------------------------------------------- generation
    def generator(self, prompts: str | Sequence[str], config: GenerationConfig | None = None,
                  timer: Any = None) -> Generator:  # fmt: skip
        """A Generator with `prompts` already prepared and prefilled."""
        config = config or GenerationConfig()
        timer = timer or NULL_TIMER
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not texts:
            raise InputError("no prompts given")
        prepared = [
            self.prepare(t, config.ratio, config.query, config.max_new_tokens, timer) for t in texts
        ]
        gen = Generator(self, config, timer)
        gen.append_prompts(prepared)
        return gen

    def generate(
        self, prompts: str | Sequence[str], config: GenerationConfig | None = None,
        timer: Any = None, **options: Any,
    ) -> GenerationResult | list[GenerationResult]:  # fmt: skip
        """Generate from one prompt (returns a GenerationResult) or a batch (returns a list).

        Args:
            prompts: a string, or a list of strings run as one left-padded batch.
            config: a GenerationConfig (None: its defaults).
            timer: a trace.StageTimer to record stage spans.
            **options: GenerationConfig fields that override `config` (max_new_tokens=64,
                ratio=None, query=None, stop=(), temperature=0.0, top_k=0, top_p=1.0, seed=None).

        Raises:
            InputError: empty prompt, bad option, or the prompt does not fit max_context.
        """
        gen = self.generator(prompts, _config(config, options), timer)
        while not gen.is_done():
            gen.generate_next_token()
        results = gen.results()
        return results[0] if isinstance(prompts, str) else results

    def stream(
        self, prompt: str, config: GenerationConfig | None = None, timer: Any = None,
        **options: Any,
    ) -> Iterator[str]:  # fmt: skip
        """Yield the generated text piece by piece; the pieces join to `generate(...).text`.

        Takes the same `config` / `**options` as `generate`.
        """
        config = _config(config, options)
        gen = self.generator(prompt, config, timer)
        hold = max((len(s) for s in config.stop), default=1) - 1  # could still become a stop
        sent = 0
        while not gen.is_done():
            gen.generate_next_token()
            text = gen.results()[0].text
            end = len(text) if gen.is_done() else len(text) - hold
            if text.endswith("\ufffd") and not gen.is_done():  # an incomplete UTF-8 sequence
                end = min(end, len(text) - 1)
            if end > sent:
                yield text[sent:end]
                sent = end
        text = gen.results()[0].text
        if len(text) > sent:
            yield text[sent:]


def encoder_feeds(encoder: Backend, ids: np.ndarray, keep: int = 0) -> dict[str, np.ndarray]:
    """encoder.onnx's feeds for one window of (T,) ids whose first `keep` rows are left context:
    with `keep_from` where the graph takes it (it then returns rows keep.. only, their context's
    projection and MLP skipped); exports before that input return every row."""
    chunk = np.asarray(ids, dtype=np.int64).reshape(1, -1)  # (1, W)
    feeds = {INPUT_IDS: chunk, ATTENTION_MASK: np.ones_like(chunk)}
    if KEEP_FROM in encoder.inputs:
        feeds[KEEP_FROM] = np.array([keep], dtype=np.int64)
    return feeds


def _config(config: GenerationConfig | None, options: dict[str, Any]) -> GenerationConfig:
    """`config` (or the defaults) with keyword `options` applied: the one place they combine.

    Raises:
        TypeError: an option that is not a GenerationConfig field.
    """
    config = config or GenerationConfig()
    if not options:
        return config
    stop = options.get("stop")
    if stop is not None and not isinstance(stop, str):
        options = {**options, "stop": tuple(stop)}
    return dataclasses.replace(config, **options)
