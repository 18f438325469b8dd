"""MT2ST training (schedules, loss combiner, loop, FLOP accounting, checkpoints) and the
SemToken adapter. Light: names load lazily (PEP 562); torch is imported only when used.
"""

from __future__ import annotations

from semedge._lazy import lazy_exports

_LAZY = {
    "Schedule": "semedge.training.schedules",
    "Diminish": "semedge.training.schedules",
    "Switch": "semedge.training.schedules",
    "Constant": "semedge.training.schedules",
    "Off": "semedge.training.schedules",
    "schedule_from_name": "semedge.training.schedules",
    "AuxTask": "semedge.training.trainer",
    "MT2STLoss": "semedge.training.trainer",
    "MT2STTrainer": "semedge.training.trainer",
    "TrainConfig": "semedge.training.trainer",
    "TrainResult": "semedge.training.trainer",
    "TrainCost": "semedge.training.flops",
    "count_flops": "semedge.training.flops",
    "cost_savings": "semedge.training.flops",
    "save_checkpoint": "semedge.training.checkpoint",
    "load_checkpoint": "semedge.training.checkpoint",
    "AuxiliaryHeads": "semedge.training.heads",
    "primary_state_dict": "semedge.training.heads",
    "SpanAdapter": "semedge.training.adapter",
    "load_adapter": "semedge.training.adapter",
    "save_adapter": "semedge.training.adapter",
    "AdapterTrainConfig": "semedge.training.adapter_train",
    "train_adapter": "semedge.training.adapter_train",
    "train_adapter_to_dir": "semedge.training.adapter_train",
    "compare_strategies": "semedge.training.compare",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
