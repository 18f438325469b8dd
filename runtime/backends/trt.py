"""Native TensorRT engines behind the OrtBackend interface (tensorrt and cuda-python imported
lazily, inside `load()`; this module imports without them).

An engine directory ("semedge-engine", from `semedge export trt`) holds prefill.plan and
decode.plan; embed/encoder stay ONNX and run on ONNX Runtime (CUDA when available). The KV cache
lives in device memory allocated here, and presents are written straight into it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semedge.artifacts import Manifest, listed_file
from semedge.deps import require
from semedge.errors import ArtifactError, BackendUnavailable, InputError, UsageError
from semedge.runtime.backends.base import check_feeds

__all__ = ["TrtBackend", "engine_backends"]

log = logging.getLogger(__name__)


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as err:
            raise BackendUnavailable(
                f"native TensorRT engines need cuda-python ({err}); pip install cuda-python"
            ) from err
    return cudart


def _check(result: Any, what: str) -> Any:
    """cuda-python returns (err, *values); raise on a non-zero error."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendUnavailable(
            f"CUDA {what} failed ({err}); check the driver with `semedge doctor`"
        )
    return rest[0] if len(rest) == 1 else rest


class _DeviceMemory:
    """cudaMalloc'd bytes, freed when garbage-collected."""

    def __init__(self, cudart: Any, nbytes: int) -> None:
        self.cudart, self.nbytes = cudart, max(int(nbytes), 1)
        self.ptr = int(_check(cudart.cudaMalloc(self.nbytes), "cudaMalloc"))

    def __del__(self) -> None:
        try:
            self.cudart.cudaFree(self.ptr)
        except Exception:  # interpreter shutdown
            pass


class TrtBackend:
    """Runs one serialised TensorRT engine (plan).

    Thread safety: an IExecutionContext is not thread-safe, so each thread gets its own context,
    CUDA stream and scratch buffers (thread-local); the engine itself is shared.

    Args:
        path: the .plan file.
        spec: the manifest's description of this graph (names checked on load).
    """

    def __init__(self, path: Path | str, spec: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.spec = spec or {}
        self.provider_name = "trt-engine"
        self.device = "cuda"
        self.engine: Any = None
        self.inputs: dict[str, tuple[Any, list]] = {}
        self.outputs: dict[str, tuple[Any, list]] = {}
        self._local = threading.local()
        self.profiles: dict[str, tuple[list[int], list[int]]] = {}

    def load(self) -> TrtBackend:
        if self.engine is not None:
            return self
        trt = require("tensorrt")
        self._trt, self._cudart = trt, _cudart()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:  # TRT logs the reason and returns None
            raise ArtifactError(
                f"TensorRT could not deserialise {self.path} (built by another TensorRT or for "
                "another GPU?); rebuild with `semedge export trt`"
            )
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            entry = (
                np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                list(engine.get_tensor_shape(name)),
            )
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs)[name] = entry
        want = set(self.spec.get("inputs") or ())
        if want and want != set(self.inputs):
            raise ArtifactError(
                f"{self.path.name} inputs {sorted(self.inputs)} do not match the manifest's {sorted(want)}"
            )
        self.profiles = _input_profiles(engine, list(self.inputs))
        self._runtime, self.engine = runtime, engine
        return self

    def check_shape(self, name: str, shape: Sequence[int]) -> None:
        """Refuse a shape outside the engine's optimization profile 0 (the one each execution
        context uses), naming the profile and the dimension, before TensorRT sees it.

        Raises:
            InputError: wrong rank, or a dimension outside [min, max] of the profile.
        """
        prof = self.profiles.get(name)
        if prof is None:
            return
        lo, hi = prof
        if len(shape) != len(lo):
            raise InputError(
                f"{self.path.name} input {name!r} has rank {len(shape)} {tuple(shape)}, the engine's "
                f"profile 0 expects rank {len(lo)} (min {tuple(lo)}, max {tuple(hi)})"
            )
        for dim, (d, a, b) in enumerate(zip(shape, lo, hi, strict=True)):
            if not a <= d <= b:
                raise InputError(
                    f"{self.path.name} input {name!r} shape {tuple(shape)}: dimension {dim} is {d}, "
                    f"outside optimization profile 0's range [{a}, {b}] (min {tuple(lo)}, max "
                    f"{tuple(hi)}); rebuild with `semedge export trt --context/--batch` to cover it"
                )

    def close(self) -> None:
        self._local = threading.local()
        self.engine = None

    def __enter__(self) -> TrtBackend:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _thread_state(self, engine: Any) -> Any:
        st = self._local
        if not hasattr(st, "context"):
            st.context = engine.create_execution_context()
            st.stream = _check(self._cudart.cudaStreamCreate(), "cudaStreamCreate")
            st.scratch = {}  # name -> _DeviceMemory, grown on demand
        return st

    def _scratch(self, st: Any, name: str, nbytes: int) -> int:
        mem = st.scratch.get(name)
        if mem is None or mem.nbytes < nbytes:
            mem = st.scratch[name] = _DeviceMemory(self._cudart, nbytes)
        return mem.ptr

    def allocate(self, n: int, dtype: Any) -> tuple[int, None, _DeviceMemory]:
        """Device memory for `n` elements: (ptr, None, keepalive)."""
        mem = _DeviceMemory(_cudart(), n * np.dtype(dtype).itemsize)
        return mem.ptr, None, mem

    def run_bound(self, feeds: dict[str, np.ndarray], bound: dict[str, Any],
                  fetch: Sequence[str]) -> dict[str, np.ndarray]:  # fmt: skip
        """Copy host `feeds` in, bind `bound` device buffers in place, copy `fetch` outputs out.

        Raises:
            InputError: names or dtypes do not match the engine.
        """
        engine = self.engine  # a local reference: close() meanwhile frees it after this run
        if engine is None:
            raise UsageError(f"{self.path.name}: backend is closed or not loaded; call load()")
        check_feeds(self.path.name, self.inputs, feeds, bound=list(bound))
        st, cudart = self._thread_state(engine), self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        ctx, stream = st.context, st.stream
        for name, arr in feeds.items():
            self.check_shape(name, arr.shape)
        for name, buf in bound.items():
            if name in self.inputs:
                self.check_shape(name, buf.shape)
        for name, arr in feeds.items():
            arr = np.ascontiguousarray(arr)
            ptr = self._scratch(st, name, arr.nbytes)
            _check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, stream), "copy in")
            self._set_shape(ctx, name, arr.shape)
            self._set_address(ctx, name, ptr)
        for name, buf in bound.items():
            if name in self.inputs:
                self._set_shape(ctx, name, buf.shape)
            self._set_address(ctx, name, buf.ptr)
        host = {}
        for name in fetch:  # shapes are known once every input shape is set
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise InputError(f"{self.path.name}: output {name!r} shape {shape} is unresolved")
            host[name] = np.empty(shape, dtype=self.outputs[name][0])
            self._set_address(ctx, name, self._scratch(st, name, host[name].nbytes))
        if not ctx.execute_async_v3(int(stream)):
            raise BackendUnavailable(f"TensorRT failed to run {self.path.name}")
        for name, arr in host.items():
            ptr = st.scratch[name].ptr
            _check(
                cudart.cudaMemcpyAsync(arr.ctypes.data, ptr, arr.nbytes, d2h, stream), "copy out"
            )
        _check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return host

    def _set_shape(self, ctx: Any, name: str, shape: Sequence[int]) -> None:
        if not ctx.set_input_shape(name, tuple(int(d) for d in shape)):
            lo, hi = self.profiles.get(name, ((), ()))
            raise InputError(
                f"TensorRT refused shape {tuple(shape)} for {self.path.name} input {name!r} "
                f"(optimization profile 0: min {tuple(lo)}, max {tuple(hi)}); rebuild the engine"
            )

    def _set_address(self, ctx: Any, name: str, ptr: int) -> None:
        if not ctx.set_tensor_address(name, int(ptr)):
            raise BackendUnavailable(
                f"TensorRT refused the device address of {self.path.name} tensor {name!r} "
                "(misaligned or unknown tensor); check `semedge doctor`"
            )

    def run(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run on host arrays; every output (or `outputs`) comes back as numpy."""
        return self.run_bound(feeds, {}, list(outputs or self.outputs))


def _input_profiles(engine: Any, inputs: list[str]) -> dict[str, tuple[list[int], list[int]]]:
    """input name -> (min, max) dims of optimization profile 0 (empty for a static engine)."""
    if not getattr(engine, "num_optimization_profiles", 0):
        return {}
    out = {}
    for name in inputs:
        lo, _opt, hi = engine.get_tensor_profile_shape(name, 0)
        out[name] = ([int(d) for d in lo], [int(d) for d in hi])
    return out


def engine_backends(path: Path, manifest: Manifest) -> dict[str, Any]:
    """Backends for an engine directory: TensorRT for prefill/decode, ONNX Runtime for the rest.

    Checks the engines against this GPU and TensorRT first (`trt_compat.check_engine_compat`).

    Raises:
        ArtifactError: not an engine directory, or built for another GPU / TensorRT.
        BackendUnavailable: no GPU, tensorrt or cuda-python here.
    """
    from semedge.constants import EMBED_ONNX, ENCODER_ONNX, FORMAT_ENGINE
    from semedge.runtime.backends.ort import PROVIDERS, OrtBackend
    from semedge.runtime.backends.trt_compat import check_engine_compat, local_gpu

    if manifest.format != FORMAT_ENGINE:
        raise ArtifactError(
            f"--provider trt-engine needs an engine directory (`semedge export trt`), {path} is "
            f"{manifest.format!r}; or use --provider tensorrt on this ONNX export"
        )
    trt = require("tensorrt")
    gpu = local_gpu()
    if gpu is None:
        raise BackendUnavailable(
            "--provider trt-engine needs an NVIDIA GPU; none found (nvidia-smi)"
        )
    check_engine_compat(manifest.to_dict(), trt.__version__, gpu.name, gpu.compute_capability)
    engines = manifest.extra.get("engines", {})
    out: dict[str, Any] = {}
    for graph in ("prefill", "decode"):
        entry = engines.get(graph)
        if not entry:
            raise ArtifactError(
                f"{path}/manifest.json lists no {graph} engine; rebuild with `semedge export trt`"
            )
        plan = listed_file(path, manifest, entry["file"], f"the {graph} engine")
        out[graph] = TrtBackend(plan, manifest.graphs.get(graph))
    import onnxruntime as ort

    chain = list(
        PROVIDERS["cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"]
    )
    for key, fname in (("embed", EMBED_ONNX), ("encoder", ENCODER_ONNX)):
        if fname in manifest.files or key == "embed":
            graph_path = listed_file(path, manifest, fname, f"the {key} graph")
            out[key] = OrtBackend(graph_path, chain, manifest.graphs.get(key))
    return out
