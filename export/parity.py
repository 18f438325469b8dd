"""The parity gate: PyTorch versus ONNX Runtime (CPU) on real text, a padded batch and a
SemToken-compressed prompt, through prefill and several decode steps.

Reports max |Δ logits|, mean |Δ|, top-1 agreement and max |Δ KV| per case; a miss of atol is an
AccuracyError. The torch side is the Hugging Face model itself (and helper-1's LMEncoder), not the
export wrappers, so a wrapper bug fails the gate too.
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

    def __post_init__(self) -> None:
        if self.lengths is not None and (not self.lengths or min(self.lengths) < 2):
            raise InputError(f"parity lengths must be >= 2 tokens, got {self.lengths}")
        if self.decode_steps < 1:
            raise InputError(f"decode_steps must be >= 1, got {self.decode_steps}")

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

    case: str  # "text", "batch", "compressed", "encoder", "embed"
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
            r = r.astype(np.float64)
            d = np.abs(r - g.astype(np.float64)) * slots[:, None, :, None]
            d = np.nan_to_num(d, nan=np.inf)
            self.kv_max = max(self.kv_max, float(d.max()))
            scale = float(np.abs(r).max())  # per tensor: fp16 error grows with the layer's range
            self.kv_excess = max(self.kv_excess, float(d.max()) - self.kv_rtol * scale)

    def case(self, name: str, tokens: int, atol: float) -> ParityCase:
        mean = self.sums / max(self.count, 1)
        top1 = self.agree / max(self.positions, 1)
        ok = self.max_abs <= atol and self.kv_excess <= atol
        return ParityCase(name, tokens, self.max_abs, mean, top1, self.kv_max, ok)


def _text_ids(tokenizer, n: int, offset: int = 0) -> np.ndarray:
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    reps = (n + offset) // len(ids) + 1
    return np.asarray((ids * reps)[offset : offset + n], dtype=np.int64)


def _sessions(out_dir: Path) -> dict[str, Any]:
    from semedge.export.optimize import session_from_path

    names = {"embed": C.EMBED_ONNX, "encoder": C.ENCODER_ONNX}
    names |= {"prefill": C.PREFILL_ONNX, "decode": C.DECODE_ONNX}
    return {k: session_from_path(out_dir / f) for k, f in names.items()}


def _torch_kv(cache, n_layers: int) -> list[np.ndarray]:
    out = []
    for i in range(n_layers):
        layer = cache.layers[i]
        out += [layer.keys.float().numpy(), layer.values.float().numpy()]
    return out


@dataclass
class _Ctx:
    model: Any
    sessions: dict[str, Any]
    float_np: Any  # numpy dtype of the export's float tensors
    last_only: bool
    steps: int
    atol: float


def _run_case(ctx: _Ctx, name: str, embeds, positions, mask, next_pos) -> ParityCase:
    """Prefill, then `steps` greedy decode steps (tokens from torch, KV chained per backend)."""
    torch = require("torch")
    n_layers = (len(ctx.sessions["decode"].get_inputs()) - 3) // 2  # inputs: ids, pos, mask, KV
    diff = _Diff(_KV_RTOL[np.dtype(ctx.float_np)])
    with torch.no_grad():
        ref = ctx.model(
            inputs_embeds=embeds, position_ids=positions, attention_mask=mask, use_cache=True
        )
    got = ctx.sessions["prefill"].run(None, {
        C.INPUTS_EMBEDS: embeds.numpy().astype(ctx.float_np),
        C.POSITION_IDS: positions.numpy(), C.ATTENTION_MASK: mask.numpy(),
    })  # fmt: skip
    ref_logits = ref.logits.float().numpy()
    real = mask.numpy().astype(bool)
    if ctx.last_only:
        diff.logits(ref_logits[:, -1:], got[0], real[:, -1:])
    else:
        diff.logits(ref_logits, got[0], real)
    cache, kv = ref.past_key_values, got[1:]
    diff.kv(_torch_kv(cache, n_layers), kv, mask.numpy())
    token = torch.from_numpy(ref_logits[:, -1].argmax(-1))[:, None]
    pos = torch.as_tensor(next_pos, dtype=torch.long).reshape(-1, 1)
    _decode(ctx, diff, token, pos, mask, cache, kv, n_layers)
    return diff.case(name, int(embeds.shape[1]), ctx.atol)


def _decode(ctx: _Ctx, diff: _Diff, token, pos, mask, cache, kv, n_layers: int) -> None:
    """Greedy decode steps: the same token into both backends, each keeping its own KV."""
    torch = require("torch")
    from semedge.export.graphs import past_names

    for _ in range(ctx.steps):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        with torch.no_grad():
            ref = ctx.model(
                input_ids=token, position_ids=pos, attention_mask=mask,
                past_key_values=cache, use_cache=True,
            )  # fmt: skip
        feeds = {C.INPUT_IDS: token.numpy(), C.POSITION_IDS: pos.numpy()}
        feeds |= {
            C.ATTENTION_MASK: mask.numpy(),
            **dict(zip(past_names(n_layers), kv, strict=True)),
        }
        got = ctx.sessions["decode"].run(None, feeds)
        step_logits = ref.logits.float().numpy()
        diff.logits(step_logits, got[0], np.ones(step_logits.shape[:2], dtype=bool))
        cache, kv = ref.past_key_values, got[1:]
        diff.kv(_torch_kv(cache, n_layers), kv, mask.numpy())
        token, pos = torch.from_numpy(step_logits[:, -1].argmax(-1))[:, None], pos + 1


def _embed(model, ids: np.ndarray):
    torch = require("torch")
    with torch.no_grad():
        return model.get_input_embeddings()(torch.from_numpy(ids))


def _text_case(ctx: _Ctx, tokenizer, n: int) -> ParityCase:
    torch = require("torch")
    ids = _text_ids(tokenizer, n)[None]
    positions = torch.arange(n)[None]
    mask = torch.ones(1, n, dtype=torch.long)
    return _run_case(ctx, "text", _embed(ctx.model, ids), positions, mask, [n])


def _batch_case(ctx: _Ctx, tokenizer, n: int, pad_id: int) -> ParityCase:
    """Two prompts, the shorter left-padded: masks and per-row positions must be honoured."""
    torch = require("torch")
    short = max(2, n // 2)
    ids = np.full((2, n), pad_id, dtype=np.int64)
    ids[0] = _text_ids(tokenizer, n)
    ids[1, n - short :] = _text_ids(tokenizer, short, offset=5)
    mask = torch.from_numpy((np.arange(n)[None] >= np.array([[0], [n - short]])).astype(np.int64))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return _run_case(ctx, "batch", _embed(ctx.model, ids), positions, mask, [n, short])


def _compressed_case(ctx: _Ctx, tokenizer, n: int, compression, adapter) -> ParityCase:
    """A SemToken-compressed prompt: merged span embeddings at their first token's position."""
    torch = require("torch")
    from semedge.compressor.compressor import SemTokenCompressor

    text = tokenizer.decode(_text_ids(tokenizer, n).tolist())
    compressor = SemTokenCompressor(ctx.model, tokenizer, compression, adapter=adapter)
    prompt = compressor.compress(text)
    embeds = prompt.inputs_embeds.float().detach()
    positions = prompt.position_ids.long().reshape(1, -1)
    mask = torch.ones_like(positions)
    return _run_case(ctx, "compressed", embeds, positions, mask, [prompt.original_tokens])


def _hidden_case(name: str, ref: np.ndarray, got: np.ndarray, atol: float) -> ParityCase:
    d = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    worst = float(np.nan_to_num(d, nan=np.inf).max())
    return ParityCase(name, ref.shape[1], worst, float(d.mean()), 1.0, 0.0, worst <= atol)


def _encoder_cases(ctx: _Ctx, tokenizer, n: int, layers: int) -> list[ParityCase]:
    torch = require("torch")
    from semedge.compressor.encoders import LMEncoder

    ids = _text_ids(tokenizer, n)[None]
    emb = ctx.sessions["embed"].run(None, {C.INPUT_IDS: ids})[0]
    cases = [_hidden_case("embed", _embed(ctx.model, ids).float().numpy(), emb, ctx.atol)]
    mask = np.ones_like(ids)
    with torch.no_grad():
        ref = LMEncoder(ctx.model, layers=layers)(torch.from_numpy(ids), torch.from_numpy(mask))
    got = ctx.sessions["encoder"].run(None, {C.INPUT_IDS: ids, C.ATTENTION_MASK: mask})[0]
    return cases + [_hidden_case("encoder", ref.float().numpy(), got, ctx.atol)]


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
    """Compare the fp32 PyTorch model with the export in `out_dir` on ONNX Runtime (CPU EP).

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
    from semedge.artifacts import load_manifest
    from semedge.config import CompressionConfig

    config = config or ParityConfig()
    compression = compression or CompressionConfig()
    out_dir = Path(out_dir)
    mcfg = load_manifest(out_dir, expect_format=C.FORMAT_EXPORT).config
    float_np = np.float16 if mcfg.get("dtype") == "fp16" else np.float32
    ctx = _Ctx(model, _sessions(out_dir), float_np, mcfg.get("logits") != "all",
               config.decode_steps, atol)  # fmt: skip
    grid = config.grid(max_context)
    report = ParityReport(atol)
    report.cases += _encoder_cases(ctx, tokenizer, grid[-1], mcfg["encoder"]["layers"])
    for n in grid:
        report.cases.append(_text_case(ctx, tokenizer, n))
        log.info("parity text %d tokens: max|d| %.3g", n, report.cases[-1].max_abs)
    if config.batch:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        report.cases.append(_batch_case(ctx, tokenizer, min(grid[-1], 128), pad))
    if config.compressed and max_context >= 256:
        n = min(max_context - config.decode_steps - 1, max(256, min(grid[-1], 512)))
        report.cases.append(_compressed_case(ctx, tokenizer, n, compression, adapter))
    return report
