"""MT2ST training of the SemToken span adapter on a frozen LM.

Primary task: continuation NLL given the compressed context. Auxiliary tasks: distillation (KL)
to the uncompressed model's next-token distributions on the continuation (top-k, precomputed),
and reconstruction of each merged span's tokens from the LM's state at its position. Windows
are compressed and the teacher run once up front, so a training step is one compressed forward
and backward through the frozen LM (only the adapter's ~80k parameters train).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semedge.checks import check_number
from semedge.config import CompressionConfig, adapter_layout
from semedge.deps import require
from semedge.errors import InputError
from semedge.eval.windows import tokenize_text, window_starts
from semedge.logs import log_timed
from semedge.training.adapter import SpanAdapter
from semedge.training.schedules import STRATEGIES, schedule_from_name
from semedge.training.trainer import AuxTask, MT2STTrainer, TrainConfig, TrainResult

torch = require("torch")
F = torch.nn.functional

log = logging.getLogger(__name__)

__all__ = [
    "AdapterTrainConfig",
    "Example",
    "prepare_examples",
    "train_adapter",
    "adapter_tasks",
    "evaluate_examples",
    "train_adapter_to_dir",
]


@dataclass(frozen=True)
class AdapterTrainConfig:
    """How the span adapter is trained (defaults: the shipped adapter's recipe)."""

    ratio: float = 2.4  # R: context tokens / positions
    strategy: str = "diminish"  # diminish | switch | mtl | stl
    steps: int = 80  # optimizer steps (one window each)
    context: int = 2048  # T: context tokens per training window
    target: int = 128  # S: continuation tokens scored after it
    windows: int = 24  # distinct training windows (cycled)
    lr: float = 3e-3
    width: int = 128  # H: adapter MLP width
    topk: int = 32  # teacher logits kept per position for distillation
    gamma_kd: float = 1.0  # γ0 of the distillation task
    gamma_recon: float = 0.2  # γ0 of the span-reconstruction task
    recon_spans: int = 32  # merged spans per window the reconstruction task reads
    seed: int = 0
    checkpoint_every: int = 0
    # how windows are compressed; recorded in adapter.json and used wherever the adapter is
    compression: CompressionConfig = field(default_factory=CompressionConfig.adapter_default)

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise InputError(f"steps must be > 0, got {self.steps}")
        if self.strategy not in STRATEGIES:
            raise InputError(
                f"unknown strategy {self.strategy!r}; expected one of {', '.join(STRATEGIES)}"
            )
        if not self.ratio >= 1.0:
            raise InputError(f"ratio must be >= 1.0 (2.4 = 2.4x fewer positions), got {self.ratio}")
        for name in ("context", "target", "windows", "width", "topk"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_number(self.lr, "lr", 0.0, 1.0, lo_open=True, hint=" (e.g. 1e-3)")
        check_number(self.ratio, "ratio", 1.0, hint=" (2.4 = 2.4x fewer positions)")
        for name in ("gamma_kd", "gamma_recon"):
            check_number(getattr(self, name), name, 0.0)


@dataclass
class Example:
    """One precomputed training window (CPU tensors)."""

    merged: torch.Tensor  # (n, D) frozen merged span embeddings (the compressor's, no adapter)
    lengths: torch.Tensor  # (n,) tokens per span
    position_ids: torch.Tensor  # (n,) the compressor's span positions
    next_position: int  # T: the position of the first target token
    target: torch.Tensor  # (S,) continuation ids
    teacher_val: torch.Tensor  # (S, k) the full-context model's top-k log-probs
    teacher_idx: torch.Tensor  # (S, k) their token ids
    recon_rows: torch.Tensor  # (m,) indices of spans with > 1 token
    recon_ids: torch.Tensor  # (m, max_len) their token ids, -100 padded
    extra: dict[str, Any] = field(default_factory=dict)


def _span_token_table(
    ids: np.ndarray, spans: np.ndarray, limit: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `limit` evenly spread multi-token spans and their token ids (-100 padded)."""
    lengths = spans[:, 1] - spans[:, 0]
    rows = np.nonzero(lengths > 1)[0]
    if len(rows) > limit:  # bound the reconstruction head's cost (m x V logits)
        rows = rows[np.linspace(0, len(rows) - 1, limit).round().astype(np.int64)]
    width = int(lengths.max(initial=1))
    table = np.full((len(rows), width), -100, dtype=np.int64)
    for j, r in enumerate(rows):
        s, e = spans[r]
        table[j, : e - s] = ids[s:e]
    return torch.as_tensor(rows), torch.as_tensor(table)


@torch.inference_mode()
def _teacher_topk(model, ids: np.ndarray, target: np.ndarray, k: int):
    from semedge.compressor.inference import continuation_logits, plain_prompt

    logits = continuation_logits(model, plain_prompt(model, ids), target)
    logp = F.log_softmax(logits, dim=-1)  # (S, V): position T-1 predicts target 0
    val, idx = logp.topk(k, dim=-1)
    return val.half(), idx.int(), float(F.nll_loss(logp, torch.as_tensor(target), reduction="sum"))


def prepare_examples(
    model,
    tokenizer,
    token_ids: np.ndarray,
    config: AdapterTrainConfig,
    compression: CompressionConfig | None = None,
    count: int | None = None,
    progress: bool = False,
) -> list[Example]:
    """Compress `count` evenly spread windows and record the teacher's top-k continuations.

    Raises:
        InputError: the data is shorter than one window.
    """
    from semedge.compressor import SemTokenCompressor

    tqdm = require("tqdm").tqdm
    T, S = config.context, config.target
    starts = window_starts(len(token_ids), T + S, count or config.windows)
    compression = dataclasses.replace(
        compression or config.compression, ratio=config.ratio, target_tokens=None,
        protected_strings=(),
    )  # fmt: skip
    compression = adapter_layout(compression)  # an adapter learns from merged spans
    compressor = SemTokenCompressor(model, tokenizer, compression)
    out = []
    for s in tqdm(starts, desc="prepare", disable=not progress):
        ids, tgt = token_ids[s : s + T], token_ids[s + T : s + T + S]
        try:
            with torch.inference_mode():
                cp = compressor.compress(input_ids=ids, ratio=config.ratio)
        except InputError as err:  # e.g. a digit-heavy window with too few mergeable tokens
            log.warning("skipping the window at token %d: %s", s, err)
            continue
        spans = np.asarray(cp.spans, dtype=np.int64)
        val, idx, full_nll = _teacher_topk(model, ids, tgt, config.topk)
        rows, table = _span_token_table(ids, spans, config.recon_spans)
        out.append(Example(
            merged=cp.inputs_embeds[0].detach().float().clone(),
            lengths=torch.as_tensor(spans[:, 1] - spans[:, 0]),
            position_ids=cp.position_ids[0].detach().long().clone(),
            next_position=T, target=torch.as_tensor(tgt), teacher_val=val, teacher_idx=idx,
            recon_rows=rows, recon_ids=table, extra={"full_nll": full_nll},
        ))  # fmt: skip
    if not out:
        raise InputError(
            f"no window of {T} tokens could be compressed at ratio {config.ratio}; "
            "use a longer --context or a lower --ratio"
        )
    return out


class _Student(torch.nn.Module):
    """The frozen LM plus the trainable adapter, as one module for the trainer."""

    def __init__(self, lm, adapter: SpanAdapter) -> None:
        super().__init__()
        self.lm, self.adapter = lm, adapter

    def hidden(self, ex: Example) -> torch.Tensor:
        """Final (normed) LM states over [adapted spans | target[:-1]], (n + S - 1, D)."""
        merged = self.adapter(ex.merged, ex.lengths)  # (n, D)
        tgt = self.lm.get_input_embeddings()(ex.target[:-1])  # (S - 1, D)
        embeds = torch.cat([merged, tgt.to(merged.dtype)], dim=0)[None]
        t_pos = ex.next_position + torch.arange(len(ex.target) - 1)
        pos = torch.cat([ex.position_ids, t_pos])[None]
        # an explicit mask: without one transformers reads the position jumps of merged spans
        # as packed-sequence boundaries and blocks attention across them
        mask = torch.ones(pos.shape, dtype=torch.long)
        base = self.lm.base_model(
            inputs_embeds=embeds, position_ids=pos, attention_mask=mask, use_cache=False
        )
        return base.last_hidden_state[0]


def _primary(student: _Student, ex: Example):
    h = student.hidden(ex)
    n = len(ex.merged)  # position n - 1 predicts target 0
    logits = student.lm.get_output_embeddings()(h[n - 1 :]).float()  # (S, V)
    logp = F.log_softmax(logits, dim=-1)
    return F.nll_loss(logp, ex.target), {"h": h, "logp": logp}


def _distill(student: _Student, ex: Example, ctx) -> torch.Tensor:
    # KL(p_teacher || p_student) on the teacher's top-k tokens, teacher renormalised over them
    p_t = F.softmax(ex.teacher_val.float(), dim=-1)  # (S, k)
    log_s = ctx["logp"].gather(1, ex.teacher_idx.long())  # (S, k)
    return (p_t * (p_t.clamp_min(1e-12).log() - log_s)).sum(-1).mean()


def _reconstruct(student: _Student, ex: Example, ctx) -> torch.Tensor:
    if len(ex.recon_rows) == 0:
        return ctx["logp"].sum() * 0.0
    h = student.adapter.reconstruct(ctx["h"][ex.recon_rows])  # (m, D)
    logp = F.log_softmax(student.lm.get_output_embeddings()(h).float(), dim=-1)  # (m, V)
    ids = ex.recon_ids  # (m, max_len), -100 padded: mean NLL of every token of every span
    mask = ids >= 0
    nll = -logp.gather(1, ids.clamp_min(0))  # (m, max_len)
    return (nll * mask).sum() / mask.sum()


def adapter_tasks(config: AdapterTrainConfig) -> list[AuxTask]:
    """The two auxiliary tasks with the schedules of `config.strategy`."""
    return [
        AuxTask("distill", _distill,
                schedule_from_name(config.strategy, config.steps, config.gamma_kd)),
        AuxTask("recon", _reconstruct,
                schedule_from_name(config.strategy, config.steps, config.gamma_recon)),
    ]  # fmt: skip


def train_adapter(
    model,
    examples: list[Example],
    config: AdapterTrainConfig,
    checkpoint_dir=None,
    resume: bool = False,
    progress: bool = False,
) -> tuple[SpanAdapter, TrainResult]:
    """Train a fresh SpanAdapter on precomputed `examples` with MT2ST (the LM stays frozen).

    Returns:
        (adapter in eval mode, TrainResult with history, FLOPs and wall time).
    """
    if not examples:
        raise InputError("no training windows; use a longer --data file")
    torch.manual_seed(config.seed)
    width = int(examples[0].merged.shape[1])
    adapter = SpanAdapter(width, config.width)
    model.requires_grad_(False)
    student = _Student(model, adapter)
    tc = TrainConfig(steps=config.steps, lr=config.lr, seed=config.seed,
                     checkpoint_every=config.checkpoint_every)  # fmt: skip
    trainer = MT2STTrainer(student, _primary, adapter_tasks(config), tc)
    with log_timed(log, f"training adapter ({config.strategy}, {config.steps} steps)"):
        result = trainer.fit(lambda step: examples[step % len(examples)],
                             checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)  # fmt: skip
    return adapter.eval(), result


@torch.inference_mode()
def evaluate_examples(model, examples: list[Example], adapter: SpanAdapter | None) -> dict:
    """Continuation ppl on precomputed windows: compressed (with/without adapter) and full."""
    ident = SpanAdapter(int(examples[0].merged.shape[1])) if adapter is None else adapter
    student = _Student(model, ident.eval())
    nll = sum(float(_primary(student, ex)[0]) * len(ex.target) for ex in examples)
    full = sum(ex.extra["full_nll"] for ex in examples)
    n = sum(len(ex.target) for ex in examples)
    return {"ppl": math.exp(nll / n), "full_ppl": math.exp(full / n), "windows": len(examples)}


def train_adapter_to_dir(
    model_spec: str,
    data: str,
    out: str,
    config: AdapterTrainConfig,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """What `semedge train adapter` runs: prepare windows, train with MT2ST, write `out`.

    Args:
        model_spec: "smollm2" or a local Hugging Face directory.
        data: a UTF-8 training text file (WikiText-2 valid for the shipped adapter).
        out: the adapter directory to create (adapter.safetensors + adapter.json).
        config: training settings.
        checkpoint_dir, resume: resumable training (see MT2STTrainer.fit).
        overwrite: replace an existing `out`.

    Returns:
        A JSON-ready summary (what adapter.json records plus the training cost).

    Raises:
        InputError: a missing/empty data file, a file too short for one window, bad settings.
        ArtifactError: `out` exists (without overwrite) or cannot be written.
    """
    from pathlib import Path

    from semedge.errors import ArtifactError
    from semedge.models import load_model, model_id
    from semedge.textio import read_text_file
    from semedge.training.adapter import model_fingerprint, save_adapter

    text = read_text_file(data)  # check inputs before loading anything heavy
    if Path(out).exists() and not overwrite:
        raise ArtifactError(f"{out} already exists; choose another path or pass --overwrite")
    model, tokenizer = load_model(model_spec)
    ids = tokenize_text(text, tokenizer)
    with log_timed(log, f"preparing {config.windows} windows of {config.context}+{config.target}"):
        examples = prepare_examples(model, tokenizer, ids, config, progress=progress)
    adapter, result = train_adapter(model, examples, config, checkpoint_dir, resume, progress)
    meta = {
        "model_id": model_id(model_spec), "fingerprint": model_fingerprint(model),
        "ratio": config.ratio, "strategy": config.strategy, "steps": config.steps,
        "context": config.context, "target": config.target, "windows": len(examples),
        "train_data": Path(data).name, "lr": config.lr,
        "compression": {**config.compression.to_dict(), "ratio": config.ratio},
        "train_flops": result.cost.flops, "train_wall_s": round(result.cost.wall_s, 2),
        "aux_calls": result.aux_calls, "final_primary_loss": result.final_primary,
    }  # fmt: skip
    save_adapter(out, adapter, meta, overwrite=overwrite)
    return {"out": str(out), **meta}
