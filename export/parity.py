"""The parity gate: PyTorch versus the runtime (ONNX Runtime, CPU) on real text, a padded batch
and a SemToken-compressed prompt, through prefill and several decode steps.

Reports max |Δ logits|, mean |Δ|, top-1 agreement and max |Δ KV| per case; a miss of atol is an
AccuracyError. The ONNX side is `semedge.runtime` itself (Pipeline backends, the Generator's KV
cache and decode loop); the torch side is the Hugging Face model itself (and the SDK's LMEncoder),
not the export wrappers, so a wrapper bug fails the gate too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semedge import constants as C
from semedge.deps import require
from semedge.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "ParityConfig",
    "ParityCase",
    "ParityReport",
    "check_parity",
    "default_atol",
    "FAST_LENGTHS",
    "SLOW_LENGTHS",
]

FAST_LENGTHS = (7, 100, 512)  # the default grid (plus max_context when it is <= 512)
SLOW_LENGTHS = (7, 100, 512, 1024, 2048, 4096)  # pytest -m slow / --parity-lengths
_ATOL = {"fp32": 1e-3, "fp16": 0.25}  # measured on SmolLM2: see docs/export.md
# KV tensors pass when max |Δ| <= atol + rtol·max|ref| (per layer tensor): SmolLM2's keys reach
# the hundreds, where one fp16 ulp is already 0.25, and fp16 rounding grows with that range.
_KV_RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float16): 1e-2}

# A fixed English passage, tiled to the lengths the gate needs (no downloads at run time).
TEXT = (
    "The history of the river valley begins with small farming villages that grew wheat and "
    "barley along the banks. In 1871 a railway reached the town, and within twenty years its "
    "population had tripled to 14,500 people. Engineers built a stone bridge, a grain mill and "
    "a school; the mill burned down in 1903 and was rebuilt in brick the following spring. "
    "Today the valley is known for its orchards, its long summer evenings and a music festival "
    "that draws visitors from across the country every August. Local historians keep records "
    "of floods, harvests and elections in the library, where anyone may read them for free. "
)


def default_atol(dtype: str) -> float:
    """The gate's default absolute tolerance for an export dtype ("fp32" | "fp16")."""
    return _ATOL[dtype]


@dataclass(frozen=True)
class ParityConfig:
    """Which inputs the gate runs; None lengths -> FAST_LENGTHS capped at max_context."""

    lengths: tuple[int, ...] | None = None  # prompt lengths in tokens
    decode_steps: int = 4  # greedy decode steps after each prefill (KV chained through ORT)
    batch: bool = True  # also a left-padded batch of two prompts
    compressed: bool = True  # also a SemToken-compressed prompt (non-contiguous position_ids)
    chunked: bool = True  # also the longest text read in 3 chunks (chunked prefill, decode graph)
    # read every text case in chunks of this many tokens, the torch reference too (lengths whose
    # whole-prompt attention does not fit in memory); None: whole prompts
    prefill_chunk: int | None = None

    def __post_init__(self) -> None:
        if self.lengths is not None and (not self.lengths or min(self.lengths) < 2):
            raise InputError(f"parity lengths must be >= 2 tokens, got {self.lengths}")
        if self.decode_steps < 1:
            raise InputError(f"decode_steps must be >= 1, got {self.decode_steps}")
        if self.prefill_chunk is not None and self.prefill_chunk < 1:
            raise InputError(f"prefill_chunk must be >= 1 token, got {self.prefill_chunk}")

    @classmethod
    def slow(cls) -> ParityConfig:
        """The long grid: up to 4096 tokens (capped at max_context)."""
        return cls(lengths=SLOW_LENGTHS)

    def grid(self, max_context: int) -> list[int]:
        base = self.lengths or FAST_LENGTHS + ((max_context,) if max_context <= 512 else ())
        return sorted({min(n, max_context - self.decode_steps) for n in base})


@dataclass
class ParityCase:
    """One compared input: worst differences over prefill and all decode steps."""

    case: str  # "text", "batch", "compressed", "chunked", "encoder", "embed"
    tokens: int  # prompt positions
    max_abs: float  # max |Δ| of logits (or hidden states for encoder/embed)
    mean_abs: float
    top1: float  # fraction of compared positions whose argmax agrees (1.0 for hidden states)
    kv_max_abs: float  # max |Δ| over every present.{i}.key/value (0 for encoder/embed)
    passed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ParityReport:
    """All cases of one gate run; truthy when every case is within atol."""

    atol: float
    cases: list[ParityCase] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)

    def __bool__(self) -> bool:
        return self.passed

    def worst(self) -> ParityCase:
        return max(self.cases, key=lambda c: max(c.max_abs, c.kv_max_abs))

    def to_dict(self) -> dict[str, Any]:
        return {
            "atol": self.atol,
            "passed": self.passed,
            "cases": [c.to_dict() for c in self.cases],
        }

    def rows(self) -> list[list[Any]]:
        """Table rows: case, tokens, max|Δ|, mean|Δ|, top-1, max|Δ KV|, ok."""
        return [
            [c.case, c.tokens, c.max_abs, c.mean_abs, c.top1, c.kv_max_abs, "ok" if c.passed else "FAIL"]
            for c in self.cases
        ]  # fmt: skip

    HEADERS = ["case", "tokens", "max|dlogits|", "mean|dlogits|", "top1", "max|dKV|", "gate"]


class _Diff:
    """Running worst-case of logits / KV differences over a prefill and its decode steps."""

    def __init__(self, kv_rtol: float = 0.0) -> None:
        self.kv_rtol = kv_rtol
        self.max_abs = self.kv_max = self.kv_excess = 0.0
        self.sums = self.count = 0.0
        self.agree = self.positions = 0

    def logits(self, ref: np.ndarray, got: np.ndarray, real: np.ndarray) -> None:
        ref, got = ref[real].astype(np.float64), got[real].astype(np.float64)  # (n, V)
        d = np.abs(ref - got)
        self.max_abs = max(self.max_abs, float(np.nan_to_num(d, nan=np.inf).max()))
        self.sums += float(d.sum())
        self.count += d.size
        self.agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        self.positions += len(ref)

    def kv(self, ref: list[np.ndarray], got: list[np.ndarray], slots: np.ndarray) -> None:
        for r, g in zip(ref, got, strict=True):  # (B, KV, S, H); compare real slots only
            r, S = r.astype(np.float64), r.shape[2]
            # transformers' sliding-window cache keeps only a local layer's last S slots
            g, m = g[:, :, g.shape[2] - S :], slots[:, slots.shape[1] - S :]
            d = np.abs(r - g.astype(np.float64)) * m[:, None, :, None]
            d = np.nan_to_num(d, nan=np.inf)
            self.kv_max = max(self.kv_max, float(d.max()))
            scale = float(np.abs(r).max())  # per tensor: fp16 error grows with the layer's range
            self.kv_excess = max(self.kv_excess, float(d.max()) - self.kv_rtol * scale)

    def case(self, name: str, tokens: int, atol: float) -> ParityCase:
        mean = self.sums / max(self.count, 1)
        top1 = self.agree / max(self.positions, 1)
        ok = self.max_abs <= atol and self.kv_excess <= atol
        return ParityCase(name, tokens, self.max_abs, mean, top1, self.kv_max, ok)


def gate_text_ids(tokenizer, n: int, offset: int = 0, lead: bool = True) -> np.ndarray:
    """n ids of the gate's text from `offset`, after the tokenizer's leading special tokens (a
    prompt's BOS, where the model has one: Gemma 3's largest activations sit there) unless
    `lead` is False."""
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    head = tokenizer("", add_special_tokens=True)["input_ids"] if lead else []
    reps = (n + offset) // len(ids) + 1
    return np.asarray((head + (ids * reps)[offset:])[:n], dtype=np.int64)


def _torch_kv(cache, n_layers: int) -> list[np.ndarray]:
    out = []
    for i in range(n_layers):
        layer = cache.layers[i]
        out += [layer.keys.float().numpy(), layer.values.float().numpy()]
    return out


@dataclass
class _Ctx:
    model: Any
    pipe: Any  # the export loaded by the runtime (semedge.runtime.Pipeline, CPU)
    last_only: bool
    steps: int
    atol: float
    chunk: int | None = None  # ParityConfig.prefill_chunk


def _prompt(ids: np.ndarray, embeds: np.ndarray, positions: np.ndarray | None = None,
            spans: np.ndarray | None = None, token_embeds: np.ndarray | None = None):  # fmt: skip
    from semedge.runtime.prompts import PreparedPrompt, span_tokens

    pos = np.arange(len(ids), dtype=np.int64) if positions is None else positions
    at = None if spans is None else span_tokens(ids, token_embeds, embeds, spans)
    return PreparedPrompt(ids, embeds, pos, spans, token_at=at)


def _reference_prefill(ctx: _Ctx, embeds, positions, mask, chunk: int | None):
    """The torch model's forward over the prompt, whole or (`chunk`) a chunk at a time over its
    own cache, as transformers' chunked prefill does."""
    torch = require("torch")
    # a last-logits export is compared on the last row only, so the reference computes only that
    # row: (T, V) fp32 logits are 8.6 GB for Gemma 3 at 8K tokens
    keep = {"logits_to_keep": 1} if ctx.last_only else {}
    L = int(embeds.shape[1])
    step = L if chunk is None or not ctx.last_only else chunk
    ref, cache = None, None
    with torch.no_grad():
        for s in range(0, L, step):
            e = min(L, s + step)
            ref = ctx.model(
                inputs_embeds=embeds[:, s:e], position_ids=positions[:, s:e],
                attention_mask=mask[:, :e], past_key_values=cache, use_cache=True, **keep,
            )  # fmt: skip
            cache = ref.past_key_values
    return ref


def _run_case(ctx: _Ctx, name: str, prompts: list, chunk: int | None = None) -> ParityCase:
    """Prefill (whole, or `chunk` positions at a time on both sides), then `steps` greedy decode
    steps: the torch model and the runtime's Generator get the same left-padded batch and the
    same (torch's greedy) tokens, each keeping its own KV."""
    torch = require("torch")
    from semedge.runtime.generator import Generator, batch_inputs
    from semedge.runtime.sampling import GenerationConfig

    n_layers = int(ctx.pipe.config["num_layers"])
    diff = _Diff(_KV_RTOL[np.dtype(ctx.pipe.kv_dtype)])
    embeds, positions, mask = (torch.from_numpy(a) for a in batch_inputs(prompts, np.float32))
    ref = _reference_prefill(ctx, embeds, positions, mask, ctx.chunk)
    # 0: the whole prompt through the prefill graph, whatever the runtime's default
    config = GenerationConfig(max_new_tokens=ctx.steps, prefill_chunk=chunk or ctx.chunk or 0)
    gen = Generator(ctx.pipe, config)
    got = gen.append_prompts(prompts)
    ref_logits = ref.logits.float().numpy()
    real = mask.numpy().astype(bool)
    if ctx.last_only:
        diff.logits(ref_logits[:, -1:], got, real[:, -1:])
    else:
        diff.logits(ref_logits, got, real)
    cache = ref.past_key_values
    diff.kv(_torch_kv(cache, n_layers), list(gen.cache.host_arrays().values()), mask.numpy())
    token = ref_logits[:, -1].argmax(-1)
    pos = torch.as_tensor([p.prompt_tokens for p in prompts], dtype=torch.long).reshape(-1, 1)
    for _ in range(ctx.steps):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        with torch.no_grad():
            ref = ctx.model(
                input_ids=torch.from_numpy(token)[:, None], position_ids=pos, attention_mask=mask,
                past_key_values=cache, use_cache=True,
            )  # fmt: skip
        got = gen.append_tokens(token)
        step_logits = ref.logits.float().numpy()
        diff.logits(step_logits, got, np.ones(step_logits.shape[:2], dtype=bool))
        cache = ref.past_key_values
        diff.kv(_torch_kv(cache, n_layers), list(gen.cache.host_arrays().values()), mask.numpy())
        token, pos = step_logits[:, -1].argmax(-1), pos + 1
    return diff.case(name, int(embeds.shape[1]), ctx.atol)


def _embed(model, ids: np.ndarray) -> np.ndarray:
    torch = require("torch")
    with torch.no_grad():
        return model.get_input_embeddings()(torch.from_numpy(ids)).float().numpy()


def _text_case(ctx: _Ctx, tokenizer, n: int) -> ParityCase:
    ids = gate_text_ids(tokenizer, n)
    return _run_case(ctx, "text", [_prompt(ids, _embed(ctx.model, ids))])


def _chunked_case(ctx: _Ctx, tokenizer, n: int) -> ParityCase:
    """The text read in 3 chunks on the runtime (the first through the prefill graph, the rest
    through the decode graph over the cache) against the whole-prompt torch forward."""
    ids = gate_text_ids(tokenizer, n)
    return _run_case(ctx, "chunked", [_prompt(ids, _embed(ctx.model, ids))], -(-n // 3))


def _batch_case(ctx: _Ctx, tokenizer, n: int) -> ParityCase:
    """Two prompts, the shorter left-padded: masks and per-row positions must be honoured."""
    short = max(2, n // 2)
    rows = [gate_text_ids(tokenizer, n), gate_text_ids(tokenizer, short, offset=5)]
    return _run_case(ctx, "batch", [_prompt(ids, _embed(ctx.model, ids)) for ids in rows])


def _compressed_case(ctx: _Ctx, tokenizer, n: int, compression, adapter) -> ParityCase:
    """A SemToken-compressed prompt: merged span embeddings at their first token's position."""
    from semedge.compressor.compressor import SemTokenCompressor

    text = tokenizer.decode(gate_text_ids(tokenizer, n, lead=False).tolist())  # compress() adds BOS
    compressor = SemTokenCompressor(ctx.model, tokenizer, compression, adapter=adapter)
    prompt = compressor.compress(text)
    embeds = prompt.inputs_embeds.float().detach().numpy()[0]
    positions = prompt.position_ids.long().numpy().reshape(-1)
    ids, spans = prompt.input_ids, np.asarray(prompt.spans)
    case = _prompt(ids, embeds, positions, spans, _embed(ctx.model, ids))
    return _run_case(ctx, "compressed", [case])


def _hidden_case(name: str, ref: np.ndarray, got: np.ndarray, ctx: _Ctx) -> ParityCase:
    """Hidden states get the KV budget: atol plus rtol x the tensor's range (Gemma 3's residual
    stream reaches the hundreds, where fp32 rounding alone passes 1e-3)."""
    d = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    worst = float(np.nan_to_num(d, nan=np.inf).max())
    slack = _KV_RTOL[np.dtype(ctx.pipe.kv_dtype)] * float(np.abs(ref).max())
    return ParityCase(
        name, ref.shape[1], worst, float(d.mean()), 1.0, 0.0, worst - slack <= ctx.atol
    )


def _encoder_cases(ctx: _Ctx, tokenizer, n: int, layers: int) -> list[ParityCase]:
    torch = require("torch")
    from semedge.compressor.encoders import LMEncoder
    from semedge.runtime.pipeline import encoder_feeds

    ids = gate_text_ids(tokenizer, n)[None]
    emb = ctx.pipe.embed(ids[0])[None]
    cases = [_hidden_case("embed", _embed(ctx.model, ids), emb, ctx)]
    mask = np.ones_like(ids)
    with torch.no_grad():
        ref = LMEncoder(ctx.model, layers=layers)(torch.from_numpy(ids), torch.from_numpy(mask))
    enc, ref = ctx.pipe.backends["encoder"], ref.float().numpy()
    got = enc.run(encoder_feeds(enc, ids[0]), [C.ENCODER_HIDDEN])[C.ENCODER_HIDDEN]
    cases.append(_hidden_case("encoder", ref, got, ctx))
    if C.KEEP_FROM not in enc.inputs:  # an export before keep_from: every row, always
        return cases
    # the rows of a window whose first quarter is context (as the runtime plans them): the
    # same states without that context's projection and MLP
    keep = ids.shape[1] // 4
    kept = enc.run(encoder_feeds(enc, ids[0], keep), [C.ENCODER_HIDDEN])[C.ENCODER_HIDDEN]
    return cases + [_hidden_case("encoder_context", ref[:, keep:], kept, ctx)]


def check_parity(
    model: Any,
    tokenizer: Any,
    out_dir: Path | str,
    max_context: int,
    atol: float,
    config: ParityConfig | None = None,
    compression: Any = None,
    adapter: Any = None,
) -> ParityReport:
    """Compare the fp32 PyTorch model with the export in `out_dir` run by the runtime (its
    Pipeline and Generator on ONNX Runtime's CPU EP: the code users deploy).

    Args:
        model, tokenizer: the Hugging Face LM that was exported (eval mode) and its tokenizer.
        out_dir: a directory holding embed/encoder/prefill/decode.onnx and manifest.json.
        max_context: the export's declared context; no case exceeds it.
        atol: the budget on max |Δ| of logits, KV and hidden states.
        config: which cases to run; None -> ParityConfig().
        compression: the CompressionConfig for the compressed case (and encoder layers).
        adapter: the span adapter (semedge.training.adapter) merged spans go through, or None.

    Returns:
        A ParityReport; the caller decides whether a miss raises (export_onnx does).
    """
    from semedge.config import CompressionConfig
    from semedge.runtime import Pipeline

    config = config or ParityConfig()
    compression = compression or CompressionConfig()
    with Pipeline.from_pretrained(Path(out_dir), providers="cpu", verify=False) as pipe:
        last_only = pipe.config.get("logits") != "all"
        ctx = _Ctx(model, pipe, last_only, config.decode_steps, atol, config.prefill_chunk)
        return _cases(ctx, tokenizer, max_context, config, compression, adapter)


def _cases(ctx: _Ctx, tokenizer, max_context: int, config: ParityConfig, compression, adapter):
    mcfg = ctx.pipe.config
    grid = config.grid(max_context)
    report = ParityReport(ctx.atol)
    # the runtime encodes in windows of encoder_window tokens: no longer input reaches the graph
    n_enc = min(grid[-1], compression.encoder_window)
    report.cases += _encoder_cases(ctx, tokenizer, n_enc, mcfg["encoder"]["layers"])
    for n in grid:
        report.cases.append(_text_case(ctx, tokenizer, n))
        log.info("parity text %d tokens: max|d| %.3g", n, report.cases[-1].max_abs)
    chunks = config.chunked and ctx.chunk is None  # with prefill_chunk every text is chunked
    if chunks and ctx.pipe.chunked_prefill_error() is None and grid[-1] >= 3:
        report.cases.append(_chunked_case(ctx, tokenizer, grid[-1]))
    if config.batch:
        report.cases.append(_batch_case(ctx, tokenizer, min(grid[-1], 128)))
    if config.compressed and max_context >= 256:
        n = min(max_context - config.decode_steps - 1, max(256, min(grid[-1], 512)))
        report.cases.append(_compressed_case(ctx, tokenizer, n, compression, adapter))
    return report
