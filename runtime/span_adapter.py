"""The MT2ST span adapter an export may carry, applied at merge time in numpy (torch-free)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from semedge.deps import require
from semedge.errors import ArtifactError

__all__ = ["load_span_adapter", "span_adapter_fn"]


def span_adapter_fn(weights: dict[str, np.ndarray]) -> Any:
    """`(embeds, spans) -> embeds` applying adapter `weights` to merged multi-token spans."""
    from semedge import adapter_math

    def apply(embeds: np.ndarray, spans: np.ndarray) -> np.ndarray:
        return adapter_math.apply_span_adapter(weights, embeds, spans[:, 1] - spans[:, 0])

    return apply


def load_span_adapter(path: Path, name: str | None, listed: Collection[str] | None = None) -> Any:
    """The MT2ST span adapter named by the manifest as `(embeds, spans) -> embeds`, or None.

    Applied to merged multi-token spans only (singletons stay exact), as the PyTorch path does.
    `name` must stay inside `path` and, when `listed` (the manifest's files) is given, be listed.

    Raises:
        ArtifactError: the adapter is missing, unlisted, escapes `path` or is unreadable.
    """
    if not name:
        return None
    from semedge import adapter_math
    from semedge.artifacts import confined

    file = confined(path, name, "config.adapter")
    if listed is not None and name not in listed:
        raise ArtifactError(
            f"{file} (the export's adapter) is not listed in manifest.json; re-export"
        )
    if file.is_symlink() or not file.is_file():
        raise ArtifactError(f"{file} (the export's adapter) is missing; re-export")
    safetensors = require("safetensors.numpy")
    try:
        weights = safetensors.load_file(str(file))
    except Exception as err:  # safetensors raises its own error types on a corrupt header
        raise ArtifactError(f"cannot read adapter {file}: {err}; re-export") from err
    missing = [k for k in adapter_math.TENSOR_NAMES if k not in weights]
    if missing:
        raise ArtifactError(f"{file} lacks tensors {missing}; retrain the adapter and re-export")
    return span_adapter_fn(weights)
