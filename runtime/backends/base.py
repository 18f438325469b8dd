"""The interface every inference backend implements (torch-free).

`OrtBackend` (ONNX Runtime) and `TrtBackend` (native TensorRT engines) satisfy it; the Pipeline,
the Generator and the KV cache only use these members.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Backend"]


@runtime_checkable
class Backend(Protocol):
    """One graph (or engine) that runs on numpy feeds or on bound device buffers.

    `inputs` / `outputs` map tensor names to (numpy dtype, shape) once `load()` has run.
    Calling `run`/`run_bound` before `load()` raises `UsageError`.
    """

    path: Path
    provider_name: str  # "cpu", an ONNX Runtime provider name, or "trt-engine"
    inputs: dict[str, tuple[Any, list]]
    outputs: dict[str, tuple[Any, list]]

    @property
    def device(self) -> str:
        """Where `allocate` reserves memory: "cpu" or "cuda"."""
        ...

    def load(self) -> Backend: ...

    def close(self) -> None: ...

    def run(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run on host arrays; every output (or `outputs`) comes back as numpy."""
        ...

    def run_bound(
        self, feeds: dict[str, np.ndarray], bound: dict[str, Any], fetch: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Run with `bound` tensors (kv_cache.Buffer) read/written in place; `fetch` as numpy."""
        ...

    def allocate(self, n: int, dtype: Any) -> tuple[int, np.ndarray | None, Any]:
        """Reserve `n` elements: (pointer, host view or None, keepalive)."""
        ...
