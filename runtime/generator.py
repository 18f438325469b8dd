"""Per-request generation state: the KV cache, positions and tokens (torch-free).

genai's split: a `Pipeline` is shared and read-only; a `Generator` belongs to one request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from semedge.constants import ATTENTION_MASK, INPUT_IDS, INPUTS_EMBEDS, LOGITS, POSITION_IDS
from semedge.errors import InputError, UsageError
from semedge.runtime.decode_fallback import near_tie
from semedge.runtime.kv_cache import KVCache
from semedge.runtime.sampling import GenerationConfig, select_next
from semedge.runtime.trace import NULL_TIMER

if TYPE_CHECKING:
    from semedge.runtime.pipeline import Pipeline, PreparedPrompt

__all__ = [
    "Generator", "GenerationResult", "batch_inputs", "batch_tokens", "regroup", "step_runner",
]  # fmt: skip


@dataclass
class GenerationResult:
    """One prompt's output. `tokens` are the generated ids; `text` their decoded text."""

    text: str
    tokens: list[int]
    prompt_tokens: int  # tokens in the prompt (T)
    compressed_tokens: int  # positions the model saw after SemToken (T')
    finish_reason: str  # "eos" | "length" | "stop"
    spans: Any = field(default=None, repr=False)  # (n, 2) merged spans, None when uncompressed

    @property
    def token_reduction(self) -> float:
        """T / T' (1.0 without compression)."""
        return self.prompt_tokens / max(self.compressed_tokens, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens,
            "compressed_tokens": self.compressed_tokens,
            "token_reduction": round(self.token_reduction, 4),
            "finish_reason": self.finish_reason,
        }


class Generator:
    """Generation state for one request of B prompts (left-padded into one batch).

    Not thread-safe: use one Generator per request (and per thread); the Pipeline it reads is
    shared. Loop: `append_prompts(...)`, then `generate_next_token()` until `is_done()`; or
    `score(targets)` for teacher-forced logits (the one KV decode loop: calibration and the parity
    gate run it too).

    Args:
        pipeline: the loaded Pipeline.
        config: generation settings.
        timer: a `trace.StageTimer` to record stage spans (profiling), or None.
        tap: called with every decode step's feeds, past keys/values included as host arrays
            (calibration collects them; CPU caches only), or None.
    """

    def __init__(
        self, pipeline: Pipeline, config: GenerationConfig | None = None, timer: Any = None,
        tap: Callable[[dict[str, np.ndarray]], None] | None = None,
    ) -> None:  # fmt: skip
        self.pipeline = pipeline
        self.config = config or GenerationConfig()
        self.timer = timer or NULL_TIMER
        self.tap = tap
        self.rng = np.random.default_rng(self.config.seed)
        self.prompts: list[PreparedPrompt] = []
        self.tokens: list[list[int]] = []
        self.finish: list[str | None] = []
        self.cache: KVCache | None = None
        self._logits: np.ndarray | None = None  # (B, V) logits for the next token
        self._pending: np.ndarray | None = None  # (B,) last token, not yet fed to decode
        self._mask: np.ndarray | None = None  # (B, P) attention mask of the cache
        self._next_pos: np.ndarray | None = None  # (B,) position id of the next token
        self._step: Callable[[dict], dict] | None = None  # step_runner over self.cache
        self._exact_step: Callable[[dict], dict] | None = None  # the same on the fp32 fallback
        self.exact_steps = 0  # decode steps re-run by the fp32 graph (near ties)

    @property
    def batch(self) -> int:
        return len(self.prompts)

    def append_prompts(self, prompts: list[PreparedPrompt]) -> np.ndarray:
        """Prefill the cache with prepared (tokenized, possibly compressed) prompts.

        Returns:
            The prefill's logits: (B, 1, V), or (B, L, V) left-padded for all-logits exports.

        Raises:
            UsageError: called twice on one Generator.
            InputError: a prompt does not fit the export's max_context.
        """
        if self.cache is not None:
            raise UsageError("this Generator already has its prompt; create one per request")
        p = self.pipeline
        self.prompts = list(prompts)
        B = len(prompts)
        self.tokens = [[] for _ in range(B)]
        self.finish = [None] * B
        embeds, pos, mask = batch_inputs(prompts, p.embed_dtype)
        L = mask.shape[1]
        first, chunk, tokens = self._plan_chunks(prompts, L)  # a refusal leaves no state
        self.cache = p.new_cache(B, L + self.config.max_new_tokens)
        with self.timer.span("prefill", tokens=L, batch=B):
            feeds = {
                INPUTS_EMBEDS: embeds[:, :first], POSITION_IDS: pos[:, :first],
                ATTENTION_MASK: mask[:, :first],
            }  # fmt: skip
            out = p.prefill.run_bound(feeds, self.cache.present(first), [LOGITS])
            self.cache.advance(first)
            if first < L:
                out = self._prefill_chunks(tokens, pos, mask, first, chunk)
        self._logits = out[LOGITS][:, -1, :]  # (B, 1|T, V) -> (B, V): last (real) position
        self._mask = mask
        self._next_pos = np.array([x.first_new_position for x in prompts], dtype=np.int64)
        return out[LOGITS]

    def _plan_chunks(self, prompts: list[PreparedPrompt], L: int):
        """(first, chunk, tokens): the positions the prefill graph reads (all L, or the first
        chunk stretched over every position only an embedding can feed, a merged span), the
        chunk size of the rest (None: no rest) and the (B, L) token ids they feed.

        Raises:
            InputError: prefill_chunk set on an export that cannot take chunks.
        """
        chunk = self.pipeline.prefill_chunk_for(self.config.prefill_chunk, L)
        if chunk is None or chunk >= L:
            return L, None, None
        why = self.pipeline.chunked_prefill_error()
        if why is not None:
            raise InputError(f"prefill_chunk {chunk} cannot run on this export: {why}")
        tokens = batch_tokens(prompts, L)  # (B, L), -1 where a position is no token
        bad = np.flatnonzero((tokens < 0).any(axis=0))
        return max(chunk, int(bad[-1]) + 1 if len(bad) else 0), chunk, tokens

    def _prefill_chunks(self, tokens, pos, mask, start: int, chunk: int) -> dict[str, np.ndarray]:
        """Positions [start, L) through the decode graph, `chunk` at a time, each chunk
        attending to the cache so far and to itself (causal); returns the last chunk's logits.
        Rows run one at a time into their slices of the cache (ONNX Runtime's fused attention
        takes several new tokens over a past only at batch 1)."""
        p, (B, L) = self.pipeline, mask.shape
        logits = []
        for s in range(start, L, chunk):
            e = min(L, s + chunk)
            logits = []
            for b in range(B):
                feeds = {
                    INPUT_IDS: np.maximum(tokens[b : b + 1, s:e], 0),  # padding: token 0, masked
                    POSITION_IDS: pos[b : b + 1, s:e], ATTENTION_MASK: mask[b : b + 1, :e],
                }  # fmt: skip
                bound = {**self.cache.past(b if B > 1 else None),
                         **self.cache.present(e - s, b if B > 1 else None)}  # fmt: skip
                logits.append(p.decode.run_bound(feeds, bound, [LOGITS])[LOGITS])
            self.cache.advance(e - s)
        return {LOGITS: np.concatenate(logits, axis=0)}

    def _decode(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row; the presents land in the cache's other buffer."""
        p, B = self.pipeline, self.batch
        self._mask = np.concatenate([self._mask, np.ones((B, 1), dtype=np.int64)], axis=1)
        feeds = {
            INPUT_IDS: np.asarray(tokens).reshape(B, 1).astype(np.int64),
            POSITION_IDS: self._next_pos.reshape(B, 1),
            ATTENTION_MASK: self._mask,
        }
        if self.tap is not None:
            self.tap({**feeds, **self.cache.host_arrays()})
        with self.timer.span("decode_token", position=int(self.cache.length)):
            if self._step is None:
                self._step = step_runner(p.decode, self.cache)
            out = self._step(feeds)
            live = [b for b, f in enumerate(self.finish) if f is None]
            if p.fallback_margin and near_tie(out[LOGITS][:, -1, :], live, p.fallback_margin):
                if self._exact_step is None:
                    self._exact_step = step_runner(p.exact_decode, self.cache)
                out = self._exact_step(feeds)  # rewrites the same cache slot: not advanced yet
                self.exact_steps += 1
            self.cache.advance(1)
        self._logits = out[LOGITS][:, -1, :]
        self._next_pos = self._next_pos + 1
        return out[LOGITS]

    def append_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """Teacher forcing: feed the given token of every row (B,) and return the step's logits
        (B, 1, V). The cache must have room (GenerationConfig.max_new_tokens).

        Raises:
            UsageError: no prompt yet, or generate_next_token() left a token pending.
        """
        if self._logits is None or self._pending is not None:
            raise UsageError("append_tokens() needs append_prompts() and no sampled token pending")
        return self._decode(tokens)

    def score(self, targets: np.ndarray) -> np.ndarray:
        """Teacher-forced scoring: (B, k) logits rows where [:, j] predicts targets[:, j].

        Feeds targets[:, :-1] one by one after the prompt (k - 1 decode steps); the Generator is
        done afterwards.
        """
        targets = np.asarray(targets, dtype=np.int64).reshape(self.batch, -1)
        if self._logits is None:
            raise UsageError("call append_prompts() before score()")
        rows = [self._logits]
        for j in range(targets.shape[1] - 1):
            rows.append(self.append_tokens(targets[:, j])[:, -1, :])
        self.finish = ["length"] * self.batch
        return np.stack(rows, axis=1)

    def generate_next_token(self) -> np.ndarray:
        """Choose the next token of every row (B,) and advance; finished rows repeat EOS."""
        if self._logits is None:
            raise UsageError("call append_prompts() before generate_next_token()")
        if self.is_done():
            raise UsageError("generation is done; create a new Generator")
        if self._pending is not None:
            self._decode(self._pending)
        nxt = select_next(self._logits, self.config, self.rng)
        eos = self.pipeline.eos_ids
        for b in range(self.batch):
            if self.finish[b] is not None:
                nxt[b] = self.tokens[b][-1] if self.tokens[b] else next(iter(eos), 0)
                continue
            tok = int(nxt[b])
            if tok in eos and not self.config.ignore_eos:
                self.finish[b] = "eos"
                continue
            self.tokens[b].append(tok)
            if self.config.stop and self._hit_stop(b):
                self.finish[b] = "stop"
            elif len(self.tokens[b]) >= self.config.max_new_tokens:
                self.finish[b] = "length"
        self._pending = nxt
        return nxt

    def _hit_stop(self, b: int) -> bool:
        tail = self.pipeline.decode_tokens(self.tokens[b][-16:])
        return any(s in tail for s in self.config.stop)

    def is_done(self) -> bool:
        """True when every row has finished (EOS, a stop string, or max_new_tokens)."""
        return bool(self.finish) and all(f is not None for f in self.finish)

    def results(self) -> list[GenerationResult]:
        """The generated text per row, cut before the first stop string."""
        out = []
        for b, x in enumerate(self.prompts):
            text = self.pipeline.decode_tokens(self.tokens[b])
            text = cut_at_stop(text, self.config.stop)
            out.append(
                GenerationResult(
                    text, list(self.tokens[b]), x.prompt_tokens, len(x.positions),
                    self.finish[b] or "length", x.spans,
                )
            )  # fmt: skip
        return out


def step_runner(backend: Any, cache: KVCache, fetch: Sequence[str] = (LOGITS,)):
    """`feeds -> outputs` for one decode step of one token per row over `cache`, bound the way
    the runtime binds it: an in-place cache once (its buffers never move: `OrtBackend.binding`),
    a ping-pong cache afresh each step. It checks the cache has room; the caller advances it.

    Raises (from the returned function):
        InputError: the cache is full, or the feeds do not match the graph.
    """
    if cache.shared:
        binding = backend.binding({**cache.past(), **cache.present(1)}, fetch)

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            cache.check_room(1)
            return binding.run(feeds)
    else:

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return backend.run_bound(feeds, {**cache.past(), **cache.present(1)}, fetch)

    return run


def regroup(parts: list[tuple[Generator, list[int]]], config: GenerationConfig) -> Generator:
    """One Generator with the chosen rows of several, to decode together (continuous batching).

    Each part's pending token is fed first, so that every row has fresh logits; the rows' caches
    are then copied right-aligned (left-padded, masked) into one cache of the longest length with
    room for `config.max_new_tokens` more tokens per row. Rows keep their tokens, finish state and
    position ids, so each continues exactly as it would alone (greedy). Host (CPU) caches only.

    Args:
        parts: (generator, row indices to keep) pairs; generators with no kept rows are skipped.
        config: the merged batch's settings; the first kept part's random generator goes on.

    Raises:
        UsageError: a cache lives on a GPU, or a part has no prompt yet.
    """
    parts = [(g, list(rows)) for g, rows in parts if rows]
    if not parts:
        raise UsageError("regroup() needs at least one row")
    for g, _ in parts:
        if g.cache is None or g._logits is None:
            raise UsageError("regroup() needs generators that have their prompts")
        if g.cache.device != "cpu":
            raise UsageError("regroup() needs host (CPU) caches")
        if g._pending is not None:
            g._decode(g._pending)
            g._pending = None
    first = parts[0][0]
    out = Generator(first.pipeline, config, first.timer, first.tap)
    out.rng = first.rng
    for g, rows in parts:
        out.prompts += [g.prompts[b] for b in rows]
        out.tokens += [g.tokens[b] for b in rows]
        out.finish += [g.finish[b] for b in rows]
    P = max(g.cache.length for g, _ in parts)
    room = max(config.max_new_tokens - len(t) for t in out.tokens)
    out.cache = first.pipeline.new_cache(out.batch, P + max(room, 1))
    out.cache.length = P
    mask = np.zeros((out.batch, P), dtype=np.int64)
    dst = out.cache.arrays()
    r0 = 0
    for g, rows in parts:
        n, idx = g.cache.length, np.asarray(rows)
        mask[r0 : r0 + len(rows), P - n :] = g._mask[idx]
        for name, src in g.cache.arrays().items():
            # right-aligned; a local layer holds its window's last slots, so the mask's last
            # columns stay its slots' mask (rows shorter than the window are padded the same)
            d, m = dst[name], src.shape[2]
            pad = d.shape[2] - m
            d[r0 : r0 + len(rows), :, :pad] = 0  # padding: masked, but NaN-free
            for i, b in enumerate(rows):  # slices, not fancy indexing: one pass, no temporary
                d[r0 + i, :, pad:] = src[b]
        r0 += len(rows)
    out._mask = mask
    out._logits = np.concatenate([g._logits[np.asarray(rows)] for g, rows in parts])
    out._next_pos = np.concatenate([g._next_pos[np.asarray(rows)] for g, rows in parts])
    return out


def batch_inputs(
    prompts: list[PreparedPrompt], dtype: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-pad prompts into one batch: embeds (B, L, D), position_ids (B, L), attention_mask
    (B, L); padded slots are zero and masked out."""
    B, L = len(prompts), max(len(x.positions) for x in prompts)
    embeds = np.zeros((B, L, prompts[0].embeds.shape[1]), dtype=dtype)
    pos = np.zeros((B, L), dtype=np.int64)
    mask = np.zeros((B, L), dtype=np.int64)
    for b, x in enumerate(prompts):
        n = len(x.positions)
        embeds[b, L - n :] = x.embeds
        pos[b, L - n :] = x.positions
        mask[b, L - n :] = 1
    return embeds, pos, mask


def batch_tokens(prompts: list[PreparedPrompt], L: int) -> np.ndarray:
    """(B, L) int64, left-padded like batch_inputs: the token each position feeds (-1: a merged
    span, only its embedding feeds it; 0 on padded slots)."""
    out = np.zeros((len(prompts), L), dtype=np.int64)
    for b, x in enumerate(prompts):
        t = x.position_tokens()
        out[b, L - len(t) :] = t
    return out


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """`text` up to the earliest occurrence of any stop string."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]
