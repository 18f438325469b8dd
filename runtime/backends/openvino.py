"""OpenVINO backend: one ONNX graph compiled by OpenVINO's CPU plugin (torch-free, optional).

Same interface as `ort.OrtBackend` (load/close/run/run_bound/allocate, `inputs`/`outputs`), so the
Pipeline, KV cache and decode loop are the ones every backend uses. OpenVINO reads semedge's
`--attention plain` graphs directly (not the fused export: `GroupQueryAttention` is an ONNX
Runtime contrib op) and fuses the MatMul/Softmax attention into its own SDPA kernel; on CPUs with
AMX-BF16 or AVX512-BF16 it runs them in bf16 (`INFERENCE_PRECISION_HINT`), which is where it beats
ONNX Runtime's fp32 MLAS kernels (docs/export.md, "Precision and providers").

`pip install 'semedge[openvino]'`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semedge.deps import require
from semedge.errors import ArtifactError, BackendUnavailable, InputError, UsageError
from semedge.runtime.backends.base import check_feeds, check_io, host_buffer, manifest_names

__all__ = ["OpenVinoBackend", "OV_PRECISIONS", "openvino_available"]

log = logging.getLogger(__name__)

# manifest precision -> OpenVINO INFERENCE_PRECISION_HINT (int8 graphs carry their own Q/DQ)
OV_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": None}
_HINT = "pip install 'semedge[openvino]'"


def openvino_available() -> bool:
    """True when `openvino` imports and has a CPU device."""
    try:
        import openvino as ov
    except ImportError:
        return False
    try:
        return "CPU" in ov.Core().available_devices
    except Exception:  # a broken install raises its own runtime errors
        return False


class OpenVinoBackend:
    """Runs one ONNX graph with OpenVINO on the CPU.

    Thread safety: after `load()`, `run()`/`run_bound()` may be called from many threads at once
    (each thread gets its own infer request on the shared compiled model).

    Args:
        path: the .onnx file.
        spec: the manifest's description of this graph; `load()` checks names against it.
        threads: inference threads (None: OpenVINO's default, one per core).
        precision: "fp32" | "bf16" | "fp16" | "int8": the precision the export was made for.
        cache_dir: OpenVINO's compiled-model cache (makes the second load fast), or None.
    """

    provider_name = "openvino"
    device = "cpu"

    def __init__(
        self,
        path: Path | str,
        spec: dict[str, Any] | None = None,
        threads: int | None = None,
        precision: str = "fp32",
        cache_dir: Path | str | None = None,
    ) -> None:
        if precision not in OV_PRECISIONS:
            raise InputError(
                f"precision must be one of {', '.join(OV_PRECISIONS)}, got {precision!r}"
            )
        self.path = Path(path)
        self.spec = spec or {}
        self.threads = threads
        self.precision = precision
        self.cache_dir = cache_dir
        self.compiled: Any = None
        self.inputs: dict[str, tuple[type, list]] = {}
        self.outputs: dict[str, tuple[type, list]] = {}
        self._local = threading.local()

    def config(self) -> dict[str, Any]:
        """The compile_model properties used for this graph."""
        cfg: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        hint = OV_PRECISIONS[self.precision]
        if hint:
            cfg["INFERENCE_PRECISION_HINT"] = hint
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = int(self.threads)
        if self.cache_dir:
            cfg["CACHE_DIR"] = str(self.cache_dir)
        return cfg

    def load(self) -> OpenVinoBackend:
        """Read and compile the graph, check its I/O against the manifest. Returns self.

        Raises:
            BackendUnavailable: openvino is not installed.
            ArtifactError: the graph cannot be read or compiled (e.g. ONNX Runtime contrib ops).
        """
        if self.compiled is not None:
            return self
        ov = require("openvino", "openvino")
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as err:  # OpenVINO raises its own RuntimeError subclasses
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if "GroupQueryAttention" in str(err) or "com.microsoft" in str(err):
                raise ArtifactError(
                    f"OpenVINO cannot read {self.path.name}: it uses ONNX Runtime's fused "
                    "GroupQueryAttention; re-export with `semedge export onnx --attention plain` "
                    "for --provider openvino"
                ) from err
            raise ArtifactError(f"OpenVINO cannot read {self.path}: {first}; re-export") from err
        try:
            compiled = core.compile_model(model, "CPU", self.config())
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BackendUnavailable(
                f"OpenVINO CPU cannot compile {self.path.name}: {first}"
            ) from err
        self.inputs = {
            _port_name(p, self.spec.get("inputs"), True): _port_info(p) for p in compiled.inputs
        }
        self.outputs = {
            _port_name(p, self.spec.get("outputs"), False): _port_info(p) for p in compiled.outputs
        }
        check_io(self.path.name, self.spec, self.inputs, self.outputs)
        self.compiled = compiled
        return self

    def close(self) -> None:
        self.compiled = None
        self._local = threading.local()

    def __enter__(self) -> OpenVinoBackend:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self) -> Any:
        if self.compiled is None:
            raise UsageError(f"{self.path.name}: backend is closed or not loaded; call load()")
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        return req

    def check_feeds(self, feeds: dict[str, np.ndarray], partial: bool = False) -> None:
        """Raise InputError when feed names or dtypes differ from the graph's inputs."""
        check_feeds(self.path.name, self.inputs, feeds, partial)

    def run(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the graph on numpy feeds and return {output name: array} (copies)."""
        ov = require("openvino", "openvino")
        req = self._request()
        self.check_feeds(feeds)
        for name, arr in feeds.items():
            req.set_tensor(name, ov.Tensor(np.ascontiguousarray(arr)))
        req.infer()
        names = list(outputs) if outputs else list(self.outputs)
        return {n: req.get_tensor(n).data.copy() for n in names}

    def allocate(self, n: int, dtype: Any) -> tuple[int, np.ndarray | None, Any]:
        """Host memory for the KV cache: (ptr, host view, keepalive)."""
        return host_buffer(n, dtype)

    def run_bound(
        self,
        feeds: dict[str, np.ndarray],
        bound: dict[str, Any],
        fetch: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """Run with the KV cache's host buffers as the graph's past inputs and present outputs
        (OpenVINO writes presents into the preallocated tensors; a copy only if it reallocated).

        Raises:
            InputError: names or dtypes do not match the graph.
        """
        ov = require("openvino", "openvino")
        req = self._request()
        check_feeds(self.path.name, self.inputs, feeds, bound=list(bound))
        for name, arr in feeds.items():
            req.set_tensor(name, ov.Tensor(np.ascontiguousarray(arr)))
        outs = {}
        for name, buf in bound.items():
            if buf.host is None:
                raise UsageError("the OpenVINO backend needs host KV buffers")
            tensor = ov.Tensor(buf.host, shared_memory=True)
            req.set_tensor(name, tensor)
            if name not in self.inputs:
                outs[name] = buf.host
        req.infer()
        for name, host in outs.items():  # the plugin may have replaced a too-small tensor
            got = req.get_tensor(name).data
            if got.ctypes.data != host.ctypes.data:
                np.copyto(host, got.reshape(host.shape))
        return {n: req.get_tensor(n).data.copy() for n in fetch}


def _port_name(port: Any, entries: Any, is_input: bool) -> str:
    """The ONNX name of a port: a port carries every name of its tensor (the ONNX frontend adds
    the names of the nodes it folded), so prefer the manifest's; an input's Parameter keeps the
    ONNX input name as its friendly name."""
    names = set(port.get_names())
    want = [n for n in manifest_names(entries) if n in names]
    if want:
        return want[0]
    if is_input:
        return port.get_node().get_friendly_name()
    return port.get_any_name()


def _port_info(port: Any) -> tuple[type, list]:
    try:
        dtype = port.get_element_type().to_dtype().type
    except Exception:  # types numpy lacks (bf16 I/O)
        dtype = object
    shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    return dtype, shape
