"""The interface every inference backend implements (torch-free).

`OrtBackend` (ONNX Runtime) and `TrtBackend` (native TensorRT engines) satisfy it; the Pipeline,
the Generator and the KV cache only use these members.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from semedge.errors import ArtifactError, InputError

__all__ = ["Backend", "check_feeds", "check_io", "host_buffer", "manifest_names"]


def host_buffer(n: int, dtype: Any) -> tuple[int, np.ndarray, np.ndarray]:
    """`n` elements of host memory for a KV cache: (ptr, host view, keepalive)."""
    arr = np.empty(n, dtype=dtype)
    return arr.ctypes.data, arr, arr


def manifest_names(entries: Any) -> list[str]:
    """Tensor names from a manifest graph entry: a {name: meta} dict or a list of names/dicts."""
    if not entries:
        return []
    if isinstance(entries, dict):
        return list(entries)
    return [e["name"] if isinstance(e, dict) else str(e) for e in entries]


def check_io(graph: str, spec: dict[str, Any], inputs: dict, outputs: dict) -> None:
    """The loaded graph's input and output names must be the manifest's (when it lists them).

    Raises:
        ArtifactError: they differ (the graph is not the one the export recorded).
    """
    for kind, have in (("inputs", inputs), ("outputs", outputs)):
        want = manifest_names(spec.get(kind))
        if want and set(want) != set(have):
            raise ArtifactError(
                f"{graph} {kind} {sorted(have)} do not match the manifest's {sorted(want)}; "
                "re-export the directory"
            )


def check_feeds(
    graph: str,
    inputs: dict[str, tuple[Any, Any]],
    feeds: dict[str, np.ndarray],
    partial: bool = False,
    bound: Sequence[str] = (),
) -> None:
    """The one feed check of every backend: names (all of the graph's inputs, counting `bound`
    buffer names; a subset when `partial`) and dtypes (`inputs`: name -> (dtype, shape)).

    Raises:
        InputError: a missing, unknown or mistyped feed.
    """
    given = set(feeds) | {n for n in bound if n in inputs}
    if given - set(inputs) or (not partial and given != set(inputs)):
        raise InputError(f"{graph} expects inputs {sorted(inputs)}, got {sorted(given)}")
    for name, arr in feeds.items():
        dtype = inputs[name][0]
        if dtype is not object and arr.dtype != dtype:
            raise InputError(
                f"{graph} input {name!r} must be {np.dtype(dtype).name}, got {arr.dtype.name}"
            )


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
