"""Resumable training checkpoints: safetensors for tensors, JSON for everything else.

A checkpoint directory holds `params.safetensors` (the trained parameters by name),
`optimizer.safetensors` + the optimizer's scalars in `state.json`, and the RNG states
(torch in `rng.safetensors`, Python's `random` and numpy in `state.json`). Nothing is pickled.
It is written through `staged_dir`, so a crash mid-write never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semedge.artifacts import staged_dir
from semedge.deps import require
from semedge.errors import ArtifactError

if TYPE_CHECKING:
    import torch

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "has_checkpoint"]

PARAMS = "params.safetensors"
OPTIMIZER = "optimizer.safetensors"
RNG = "rng.safetensors"
STATE = "state.json"
CHECKPOINT_FORMAT = "semedge-checkpoint"


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns: tensors by name plus the JSON state."""

    step: int
    params: dict[str, Any]  # name -> torch.Tensor
    optimizer: dict[str, Any] | None  # a torch optimizer state_dict, rebuilt
    state: dict[str, Any] = field(default_factory=dict)  # the JSON (history, extra, rng)
    rng: dict[str, Any] = field(default_factory=dict)  # RNG states stored as tensors

    def restore_rng(self) -> None:
        """Put torch, numpy and Python's RNGs back where they were when the checkpoint was saved."""
        torch = require("torch")
        rng = self.state.get("rng", {})
        if "torch" in self.rng:
            torch.set_rng_state(self.rng["torch"])
        if "python" in rng:
            version, internal, gauss = rng["python"]
            random.setstate((version, tuple(internal), gauss))
        if "numpy" in rng and "numpy" in self.rng:
            kind, pos, has_gauss, cached = rng["numpy"]
            keys = self.rng["numpy"].numpy().astype(np.uint32)
            np.random.set_state((kind, keys, pos, has_gauss, cached))


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors ("state.{param}.{key}") and JSON scalars."""
    torch = require("torch")
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"scalars": scalars, "param_groups": sd["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    # JSON turned tuples (AdamW's betas) into lists; torch wants them back as tuples
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    torch = require("torch")
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
    }
    meta = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, int(pos), int(has_gauss), float(cached)],
    }
    return tensors, meta


def save_checkpoint(
    directory: Path | str,
    step: int,
    params: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write a resumable checkpoint to `directory` atomically (replacing an older one).

    Args:
        directory: the checkpoint directory (replaced as a whole).
        step: the number of completed steps.
        params: trained parameters by name (usually only the trainable ones).
        optimizer: its state (moments, step counts, param groups) is saved too.
        state: extra JSON-serialisable state (history, config, schedule descriptions).

    Returns:
        The checkpoint directory.
    """
    st = require("safetensors.torch")
    rng_tensors, rng_meta = _rng_state()
    meta: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "step": int(step), "rng": rng_meta}
    meta.update(state or {})
    with staged_dir(directory, overwrite=True) as tmp:
        st.save_file({k: v.detach().contiguous().cpu() for k, v in params.items()}, tmp / PARAMS)
        st.save_file(rng_tensors, tmp / RNG)
        if optimizer is not None:
            tensors, meta["optimizer"] = _flatten_optimizer(optimizer.state_dict())
            st.save_file(tensors, tmp / OPTIMIZER)
        (tmp / STATE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return Path(directory)


def has_checkpoint(directory: Path | str) -> bool:
    """True when `directory` holds a checkpoint's state.json."""
    return (Path(directory) / STATE).is_file()


def load_checkpoint(directory: Path | str) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`.

    Raises:
        ArtifactError: the directory is not a semedge checkpoint or its files are unreadable.
    """
    st = require("safetensors.torch")
    directory = Path(directory)
    try:
        meta = json.loads((directory / STATE).read_text(encoding="utf-8"))
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ArtifactError(f"{directory / STATE} is not a semedge checkpoint")
        params = st.load_file(directory / PARAMS)
        rng = st.load_file(directory / RNG)
        optimizer = None
        if "optimizer" in meta:
            optimizer = _unflatten_optimizer(st.load_file(directory / OPTIMIZER), meta["optimizer"])
    except (OSError, ValueError, KeyError) as err:
        raise ArtifactError(
            f"cannot read checkpoint {directory}: {err}; delete it to start over"
        ) from err
    return Checkpoint(int(meta["step"]), params, optimizer, state=meta, rng=rng)
