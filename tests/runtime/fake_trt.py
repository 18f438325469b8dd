"""A host-memory double of the tensorrt + cuda-python APIs the TrtBackend uses (no GPU here).

A "plan" is the ONNX model's bytes; "device memory" is host memory, so pointers, shapes, the
device KV cache and the per-thread contexts of TrtBackend run for real on ONNX Runtime CPU.
"""

from __future__ import annotations

import ctypes
import types

import numpy as np
import onnxruntime as ort

from semedge.runtime.backends.ort import ORT_DTYPES

__version__ = "10.0.0"
PROFILE_MAX = 4096  # every dynamic dimension's profile-0 maximum (tests lower it)
REFUSE_ADDRESS = False  # make set_tensor_address return False, as TensorRT does on a bad pointer


class Logger:
    WARNING = 2

    def __init__(self, level: int = 2) -> None:
        self.level = level


class TensorIOMode:
    INPUT, OUTPUT = 0, 1


def nptype(dtype):
    return dtype


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes):
        try:
            return _Engine(data)
        except Exception:  # like TensorRT: a bad plan gives None
            return None


class _Engine:
    def __init__(self, data: bytes) -> None:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        self.io = {i.name: (TensorIOMode.INPUT, i) for i in self.sess.get_inputs()}
        self.io |= {o.name: (TensorIOMode.OUTPUT, o) for o in self.sess.get_outputs()}
        self.num_io_tensors = len(self.io)
        self.num_optimization_profiles = 1

    def get_tensor_profile_shape(self, name: str, index: int) -> list[list[int]]:
        """(min, opt, max) of profile `index`: dynamic dims 1..PROFILE_MAX, static dims fixed."""
        assert index == 0 and self.get_tensor_mode(name) == TensorIOMode.INPUT
        dims = self.get_tensor_shape(name)
        return [[d if d > 0 else v for d in dims] for v in (1, 1, PROFILE_MAX)]

    def get_tensor_name(self, i: int) -> str:
        return list(self.io)[i]

    def get_tensor_mode(self, name: str) -> int:
        return self.io[name][0]

    def get_tensor_dtype(self, name: str):
        return ORT_DTYPES[self.io[name][1].type]

    def get_tensor_shape(self, name: str) -> list[int]:
        return [d if isinstance(d, int) else -1 for d in self.io[name][1].shape]

    def create_execution_context(self) -> _Context:
        return _Context(self)


def _read(ptr: int, shape, dtype) -> np.ndarray:
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_char * n).from_address(ptr), dtype=dtype).reshape(shape).copy()


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine, self.shapes, self.addr, self.out = engine, {}, {}, None

    def set_input_shape(self, name: str, shape) -> bool:
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        if len(shape) != len(lo) or not all(
            a <= d <= b for d, a, b in zip(shape, lo, hi, strict=True)
        ):
            return False  # TensorRT logs an error and returns False
        self.shapes[name], self.out = tuple(shape), None
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if REFUSE_ADDRESS:
            return False
        self.addr[name] = int(ptr)
        return True

    def _run(self) -> dict[str, np.ndarray]:
        if self.out is None:
            e = self.engine
            feeds = {n: _read(self.addr[n], self.shapes[n], e.get_tensor_dtype(n))
                     for n, (mode, _) in e.io.items() if mode == TensorIOMode.INPUT}  # fmt: skip
            names = [n for n, (mode, _) in e.io.items() if mode == TensorIOMode.OUTPUT]
            self.out = dict(zip(names, e.sess.run(names, feeds), strict=True))
        return self.out

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._run()[name].shape

    def execute_async_v3(self, stream: int) -> bool:
        for name, arr in self._run().items():
            arr = np.ascontiguousarray(arr)
            ctypes.memmove(self.addr[name], arr.ctypes.data, arr.nbytes)
        self.out = None
        return True


def _cudart() -> types.ModuleType:
    mod = types.ModuleType("cudart")
    mod.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    mem: dict[int, np.ndarray] = {}

    def malloc(n):
        buf = np.zeros(n, np.uint8)
        mem[buf.ctypes.data] = buf
        return 0, buf.ctypes.data

    mod.cudaMalloc = malloc
    mod.cudaFree = lambda ptr: (mem.pop(ptr, None), 0)[1:]
    mod.cudaMemcpyAsync = lambda dst, src, n, kind, stream: (ctypes.memmove(dst, src, n), 0)[1:]
    mod.cudaStreamCreate = lambda: (0, 1)
    mod.cudaStreamSynchronize = lambda stream: (0,)
    return mod


def install(monkeypatch) -> None:
    """Make `import tensorrt` and `from cuda import cudart` resolve to these doubles."""
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", sys.modules[__name__])
    cuda = types.ModuleType("cuda")
    cuda.cudart = _cudart()
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
