"""MT2ST loss combiner and training loop: L_t = L_0 + Σ_k γ_k(t)·L_k with real compute savings.

An auxiliary task is a callable the trainer invokes only while its weight γ_k(t) is above eps,
so once a schedule reaches zero its head is neither run forward nor backward.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semedge.deps import require
from semedge.errors import InputError
from semedge.training.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from semedge.training.flops import TrainCost, count_flops
from semedge.training.schedules import EPS, Schedule

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = ["AuxTask", "MT2STLoss", "TrainConfig", "TrainResult", "MT2STTrainer"]

# primary(model, batch) -> loss or (loss, context); the context is handed to the auxiliary tasks
PrimaryFn = Callable[[Any, Any], Any]
# task(model, batch, context) -> loss; called only while the task's weight is > eps
AuxFn = Callable[[Any, Any, Any], Any]


@dataclass(frozen=True)
class AuxTask:
    """One auxiliary task k: a loss callable and its weight schedule γ_k(t)."""

    name: str
    loss: AuxFn
    schedule: Schedule


class MT2STLoss:
    """Combines a primary loss with weighted auxiliary losses, skipping tasks whose weight is ~0.

    Args:
        tasks: the auxiliary tasks.
        eps: a weight <= eps counts as zero: the task's callable is not invoked at all.
    """

    def __init__(self, tasks: Sequence[AuxTask], eps: float = EPS) -> None:
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise InputError(f"auxiliary task names must be unique, got {names}")
        self.tasks = tuple(tasks)
        self.eps = eps
        self.calls = {t.name: 0 for t in tasks}  # how often each task was actually computed

    def weights(self, step: int) -> dict[str, float]:
        """γ_k(step) for every task."""
        return {t.name: t.schedule(step) for t in self.tasks}

    def active(self, step: int) -> tuple[str, ...]:
        """Names of the tasks computed at `step` (weight > eps)."""
        return tuple(t.name for t in self.tasks if t.schedule(step) > self.eps)

    def __call__(
        self, step: int, primary_loss: torch.Tensor, model: Any, batch: Any, context: Any = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """L_t = L_0 + Σ_k γ_k(t)·L_k over the active tasks.

        Returns:
            (total loss, parts) where parts holds "primary", each computed task's loss and
            each task's weight as "w_<name>".
        """
        total = primary_loss
        parts = {"primary": float(primary_loss.detach())}
        for task in self.tasks:
            w = task.schedule(step)
            parts[f"w_{task.name}"] = w
            if w <= self.eps:
                continue  # the saving: the head and its loss are never built into the graph
            loss_k = task.loss(model, batch, context)
            self.calls[task.name] += 1
            total = total + w * loss_k
            parts[task.name] = float(loss_k.detach())
        return total, parts


@dataclass(frozen=True)
class TrainConfig:
    """Training-loop settings (AdamW on the trainable parameters)."""

    steps: int = 100  # optimizer steps
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0  # max global grad norm; None = no clipping
    checkpoint_every: int = 0  # save every N steps when a checkpoint dir is given (0 = at end)
    measure_flops: bool = True  # count FLOPs of every step with FlopCounterMode
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise InputError(f"steps must be > 0, got {self.steps}")
        if not self.lr > 0:
            raise InputError(f"lr must be > 0, got {self.lr}")
        if self.checkpoint_every < 0:
            raise InputError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")


@dataclass
class TrainResult:
    """A finished run: per-step losses and weights, cost, and how often each task ran."""

    history: list[dict[str, float]] = field(default_factory=list)
    cost: TrainCost = field(default_factory=TrainCost)
    aux_calls: dict[str, int] = field(default_factory=dict)

    @property
    def final_primary(self) -> float:
        """Mean primary loss over the last 10 % of steps (at least one)."""
        k = max(1, len(self.history) // 10)
        return sum(h["primary"] for h in self.history[-k:]) / k

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": len(self.history),
            "final_primary": self.final_primary if self.history else None,
            "cost": self.cost.to_dict(),
            "aux_calls": self.aux_calls,
            "history": self.history,
        }


def _batch_at(data: Any, step: int) -> Any:
    """Data is a callable step -> batch (deterministic resume) or a sequence cycled by step."""
    return data(step) if callable(data) else data[step % len(data)]


class MT2STTrainer:
    """A small training loop around MT2STLoss: AdamW, FLOP/wall accounting, checkpoints, tqdm.

    Batches come from `data(step)` (or `data[step % len(data)]`), so a resumed run sees exactly
    the batches an uninterrupted one would. Not thread-safe; one trainer per run.

    Args:
        model: the torch module; only parameters with requires_grad are trained and checkpointed.
        primary: primary(model, batch) -> loss, or (loss, context) to share work with aux tasks.
        tasks: auxiliary tasks with their schedules.
        config: loop settings; None = TrainConfig().
    """

    def __init__(
        self,
        model: torch.nn.Module,
        primary: PrimaryFn,
        tasks: Sequence[AuxTask] = (),
        config: TrainConfig | None = None,
    ) -> None:
        self.torch = require("torch")
        self.model = model
        self.primary = primary
        self.combiner = MT2STLoss(tasks)
        self.config = config or TrainConfig()
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise InputError("the model has no trainable parameters (requires_grad=False on all)")
        self.optimizer = self.torch.optim.AdamW(
            list(self.params.values()), lr=self.config.lr, weight_decay=self.config.weight_decay
        )

    def _step(self, step: int, batch: Any) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        out = self.primary(self.model, batch)
        loss0, ctx = out if isinstance(out, tuple) else (out, None)
        total, parts = self.combiner(step, loss0, self.model, batch, ctx)
        total.backward()
        parts["loss"] = float(total.detach())
        return parts

    def _update(self) -> None:
        if self.config.grad_clip is not None:
            self.torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.config.grad_clip)
        self.optimizer.step()

    def _save(self, directory: Path, step: int, result: TrainResult) -> None:
        state = {
            "history": result.history,
            "cost": result.cost.to_dict(),
            "aux_calls": dict(self.combiner.calls),
            "schedules": {t.name: t.schedule.to_dict() for t in self.combiner.tasks},
        }
        save_checkpoint(directory, step, self.params, self.optimizer, state)

    def _resume(self, directory: Path, result: TrainResult) -> int:
        ckpt = load_checkpoint(directory)
        missing = set(self.params) - set(ckpt.params)
        if missing:
            raise InputError(f"checkpoint {directory} lacks parameters {sorted(missing)[:3]}")
        with self.torch.no_grad():
            for name, p in self.params.items():
                p.copy_(ckpt.params[name])
        if ckpt.optimizer is not None:
            self.optimizer.load_state_dict(ckpt.optimizer)
        ckpt.restore_rng()
        result.history = list(ckpt.state.get("history", []))
        cost = ckpt.state.get("cost", {})
        result.cost = TrainCost(cost.get("flops", 0), cost.get("wall_s", 0.0), ckpt.step)
        self.combiner.calls.update(ckpt.state.get("aux_calls", {}))
        log.info("resumed from %s at step %d", directory, ckpt.step)
        return ckpt.step

    def fit(
        self,
        data: Any,
        checkpoint_dir: Path | str | None = None,
        resume: bool = False,
        progress: bool = False,
    ) -> TrainResult:
        """Train for `config.steps` steps (continuing from a checkpoint when `resume`).

        Args:
            data: callable step -> batch, or a sequence of batches (cycled).
            checkpoint_dir: where checkpoints go (every `checkpoint_every` steps and at the end).
            resume: continue from `checkpoint_dir` when it holds a checkpoint.
            progress: show a tqdm bar on stderr.

        Returns:
            TrainResult with the per-step history, measured FLOPs and wall time, task call counts.

        Raises:
            InputError: resuming from a checkpoint of another model.
            ArtifactError: an unreadable checkpoint.
        """
        tqdm = require("tqdm").tqdm
        cfg = self.config
        result, start = TrainResult(), 0
        ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if resume and ckdir is not None and has_checkpoint(ckdir):
            start = self._resume(ckdir, result)
        else:
            self.torch.manual_seed(cfg.seed)
        flops, wall = result.cost.flops, result.cost.wall_s
        bar = tqdm(range(start, cfg.steps), disable=not progress, desc="train", initial=start,
                   total=cfg.steps)  # fmt: skip
        for step in bar:
            t0 = time.perf_counter()
            batch = _batch_at(data, step)
            if cfg.measure_flops:
                parts, n = count_flops(lambda s=step, b=batch: self._step(s, b))
                flops += n
            else:
                parts = self._step(step, batch)
            self._update()
            wall += time.perf_counter() - t0
            result.history.append({"step": step, **parts})
            result.cost = TrainCost(flops, wall, step + 1)
            bar.set_postfix(loss=f"{parts['primary']:.3f}", refresh=False)
            every = cfg.checkpoint_every
            if ckdir is not None and every and (step + 1) % every == 0 and step + 1 < cfg.steps:
                self._save(ckdir, step + 1, result)
        result.aux_calls = dict(self.combiner.calls)
        if ckdir is not None:
            self._save(ckdir, cfg.steps, result)
        return result
