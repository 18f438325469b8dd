"""Training-cost accounting: FLOPs measured with torch's FlopCounterMode, wall time per strategy.

The savings table compares each strategy with plain multi-task ("mtl") and single-task ("stl").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from semedge.deps import require

__all__ = ["count_flops", "TrainCost", "cost_savings"]


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run `fn()` under torch.utils.flop_counter.FlopCounterMode and return (result, FLOPs).

    FLOPs of everything `fn` runs are counted, so a training step that calls `loss.backward()`
    inside `fn` is measured forward + backward (a multiply-add counts as 2 FLOPs).
    """
    flop_counter = require("torch.utils.flop_counter")
    with flop_counter.FlopCounterMode(display=False) as counter:
        out = fn()
    return out, int(counter.get_total_flops())


@dataclass(frozen=True)
class TrainCost:
    """What a training run cost: measured FLOPs (forward + backward) and wall time."""

    flops: int = 0
    wall_s: float = 0.0
    steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"flops": self.flops, "wall_s": self.wall_s, "steps": self.steps}


def _saving(x: float, base: float) -> float | None:
    return None if base <= 0 else 1.0 - x / base


def cost_savings(costs: Mapping[str, TrainCost]) -> dict[str, dict[str, float | None]]:
    """Per strategy: the FLOP and wall-time saving (fraction) vs "mtl" and vs "stl".

    A positive `flops_saved_vs_mtl` means fewer FLOPs than plain multi-task training; the saving
    vs single-task is normally negative (MT2ST pays for its auxiliary tasks early on).

    Args:
        costs: strategy name -> TrainCost; "mtl" and/or "stl" entries serve as the baselines.

    Returns:
        strategy -> {flops_saved_vs_mtl, wall_saved_vs_mtl, flops_saved_vs_stl, wall_saved_vs_stl}
        (None where that baseline is missing).
    """
    out: dict[str, dict[str, float | None]] = {}
    for name, cost in costs.items():
        row: dict[str, float | None] = {}
        for base in ("mtl", "stl"):
            ref = costs.get(base)
            row[f"flops_saved_vs_{base}"] = _saving(cost.flops, ref.flops) if ref else None
            row[f"wall_saved_vs_{base}"] = _saving(cost.wall_s, ref.wall_s) if ref else None
        out[name] = row
    return out
