"""`semedge.mt2st`: the public MT2ST API (Liu & Yu, 2025) for any torch model and loop.

Schedules are torch-free callables `schedule(step) -> float`; the combiner/trainer skip an
auxiliary task once its weight is numerically zero. Re-exports from `semedge.training`.
"""

from __future__ import annotations

from semedge.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from semedge.training.flops import TrainCost, cost_savings, count_flops
from semedge.training.heads import AuxiliaryHeads, auxiliary_module_names, primary_state_dict
from semedge.training.schedules import (
    EPS,
    Constant,
    Diminish,
    Off,
    Schedule,
    Switch,
    schedule_from_name,
)
from semedge.training.trainer import AuxTask, MT2STLoss, MT2STTrainer, TrainConfig, TrainResult

__all__ = [
    "Schedule",
    "Diminish",
    "Switch",
    "Constant",
    "Off",
    "EPS",
    "schedule_from_name",
    "AuxTask",
    "MT2STLoss",
    "MT2STTrainer",
    "TrainConfig",
    "TrainResult",
    "TrainCost",
    "count_flops",
    "cost_savings",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "AuxiliaryHeads",
    "auxiliary_module_names",
    "primary_state_dict",
]
