"""ONNX Runtime backend: one graph in one InferenceSession (torch-free).

Built like a Polygraphy runner: `__init__` records options, `load()`/`close()` (or `with`) own the
session, `run(feeds)` checks names and dtypes before calling ONNX Runtime.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semedge.deps import require
from semedge.errors import ArtifactError, BackendUnavailable, InputError, UsageError
from semedge.runtime.backends.base import check_feeds, check_io, host_buffer

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["OrtBackend", "ORT_DTYPES", "PROVIDERS", "ort_providers", "session_from_path"]

log = logging.getLogger(__name__)

# CLI spelling -> ONNX Runtime execution providers, in priority order
PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
_HINT = {
    "CUDAExecutionProvider": "pip install onnxruntime-gpu (and a CUDA 12 driver); `semedge doctor`",
    "TensorrtExecutionProvider": "pip install onnxruntime-gpu tensorrt; `semedge doctor`",
}
# ONNX Runtime type strings -> numpy dtypes
ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def ort_providers(provider: str) -> list[str]:
    """ONNX Runtime provider list for a CLI provider name, checked against this install.

    Raises:
        InputError: unknown provider name.
        BackendUnavailable: the provider is not in this onnxruntime build.
    """
    if provider not in PROVIDERS:
        known = ", ".join([*PROVIDERS, "openvino", "trt-engine"])
        raise InputError(f"unknown provider {provider!r}; choose one of {known}")
    ort = require("onnxruntime")
    available = set(ort.get_available_providers())
    first = PROVIDERS[provider][0]
    if first not in available:
        raise BackendUnavailable(
            f"provider {provider!r} ({first}) is not available in this onnxruntime "
            f"(installed: {', '.join(sorted(available))}); {_HINT.get(first, 'pip install onnxruntime')}"
        )
    return list(PROVIDERS[provider])


def session_from_path(
    path: Path | str,
    providers: Sequence[str],
    threads: int | None = None,
    profile_prefix: str | None = None,
    stop_spinning: bool = False,
) -> onnxruntime.InferenceSession:
    """Create an InferenceSession and fail loudly when ONNX Runtime silently falls back to CPU.

    Raises:
        ArtifactError: the file is not a loadable ONNX model.
        BackendUnavailable: the first requested provider did not attach to the session.
    """
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if stop_spinning:  # the intra-op workers stop spinning when a run returns
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
    except Exception as err:  # ORT raises pybind errors (Fail, InvalidProtobuf, ...) for bad files
        if "provider" in str(err).lower() and providers[0] != "CPUExecutionProvider":
            raise BackendUnavailable(
                f"{providers[0]} failed to start for {Path(path).name}: {str(err).splitlines()[0]}"
                f"; {_HINT.get(providers[0], '')}"
            ) from err
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ArtifactError(f"cannot load {path}: {first}; re-export the directory") from err
    active = sess.get_providers()
    if providers[0] not in active:
        raise BackendUnavailable(
            f"{providers[0]} was requested but ONNX Runtime fell back to {', '.join(active)} for "
            f"{Path(path).name}; {_HINT.get(providers[0], 'check `semedge doctor`')}"
        )
    return sess


class OrtBackend:
    """Runs one ONNX graph with ONNX Runtime.

    Thread safety: after `load()`, `run()` may be called from many threads at once
    (`InferenceSession.run` is concurrent-safe); `load()`/`close()` must not race with `run()`.

    Args:
        path: the .onnx file.
        providers: ONNX Runtime provider names in priority order (see `ort_providers`).
        spec: the manifest's description of this graph ({"inputs": ..., "outputs": ...}); when
            given, `load()` checks the session's names against it.
        threads: intra-op threads (None: ONNX Runtime's default).
        profile_prefix: enable ONNX Runtime's own profiler, writing `<prefix>_*.json`.
        shrink_arena: after each bound run, hand the CPU arena's unused chunks back (ORT's
            `memory.enable_memory_arena_shrinkage`): for the prefill graph, whose activations
            are large and rare, so a server's memory falls back between prompts (measured: no
            slower at 256-2,048 tokens). CPU only; ignored on GPU providers.
        stop_spinning: the session's thread pool stops spinning as soon as a run returns
            (`session.force_spinning_stop`): for the decode graph, whose workers otherwise
            keep spinning into the next request's encoder and prefill on the same cores
            (scratch A/B at 2,048 tokens, README: compression overhead 187-205 -> 163-174 ms,
            decode ms/token unchanged).
    """

    def __init__(
        self,
        path: Path | str,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        spec: dict[str, Any] | None = None,
        threads: int | None = None,
        profile_prefix: str | None = None,
        shrink_arena: bool = False,
        stop_spinning: bool = False,
    ) -> None:
        self.path = Path(path)
        self.shrink_arena = shrink_arena
        self.stop_spinning = stop_spinning
        self.providers = list(providers)
        self.spec = spec or {}
        self.threads = threads
        self.profile_prefix = profile_prefix
        self.provider_name = (
            "cpu" if self.providers[0] == "CPUExecutionProvider" else self.providers[0]
        )
        self.session: onnxruntime.InferenceSession | None = None
        self.inputs: dict[str, tuple[type, list]] = {}  # name -> (numpy dtype, shape)
        self.outputs: dict[str, tuple[type, list]] = {}

    @property
    def device(self) -> str:
        """ "cuda" when the session runs on a GPU provider, else "cpu"."""
        return "cpu" if self.providers[0] == "CPUExecutionProvider" else "cuda"

    def load(self) -> OrtBackend:
        """Create the session and check its I/O against the manifest. Returns self."""
        if self.session is not None:
            return self
        sess = session_from_path(
            self.path, self.providers, self.threads, self.profile_prefix, self.stop_spinning
        )
        self.inputs = {i.name: (ORT_DTYPES.get(i.type, object), i.shape) for i in sess.get_inputs()}
        self.outputs = {
            o.name: (ORT_DTYPES.get(o.type, object), o.shape) for o in sess.get_outputs()
        }
        check_io(self.path.name, self.spec, self.inputs, self.outputs)
        for kind, have in (("inputs", self.inputs), ("outputs", self.outputs)):
            _check_dtypes(self.path.name, self.spec.get(kind), have)
        self.session = sess
        return self

    def close(self) -> None:
        """Free the session (and write ONNX Runtime's profile when profiling)."""
        if self.session is not None and self.profile_prefix:
            self.session.end_profiling()
        self.session = None

    def __enter__(self) -> OrtBackend:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_feeds(self, feeds: dict[str, np.ndarray], partial: bool = False) -> None:
        """Raise InputError when feed names or dtypes differ from the graph's inputs."""
        check_feeds(self.path.name, self.inputs, feeds, partial)

    def run(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the graph on numpy feeds and return {output name: array}.

        Raises:
            InputError: feed names or dtypes do not match the graph.
        """
        sess = self.session  # a local reference: close() meanwhile frees it after this run
        if sess is None:
            raise UsageError(f"{self.path.name}: backend is closed or not loaded; call load()")
        self.check_feeds(feeds)
        names = list(outputs) if outputs else list(self.outputs)
        values = sess.run(names, feeds)
        return dict(zip(names, values, strict=True))

    def allocate(self, n: int, dtype: Any) -> tuple[int, np.ndarray | None, Any]:
        """Reserve `n` elements where this backend's graphs run: (ptr, host view or None, keepalive)."""
        if self.device == "cpu":
            return host_buffer(n, dtype)
        ort = require("onnxruntime")
        value = ort.OrtValue.ortvalue_from_shape_and_type([n], np.dtype(dtype).type, "cuda", 0)
        return value.data_ptr(), None, value

    def run_bound(
        self,
        feeds: dict[str, np.ndarray],
        bound: dict[str, Any],
        fetch: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """Run with I/O binding: `bound` maps tensor names to `kv_cache.Buffer`s read or written in
        place (no copies); `fetch` outputs come back as numpy arrays.

        Raises:
            InputError: names or dtypes do not match the graph.
        """
        sess = self.session  # a local reference: close() meanwhile frees it after this run
        if sess is None:
            raise UsageError(f"{self.path.name}: backend is closed or not loaded; call load()")
        check_feeds(self.path.name, self.inputs, feeds, bound=list(bound))
        io = sess.io_binding()
        for name, arr in feeds.items():
            io.bind_cpu_input(name, np.ascontiguousarray(arr))
        for name in fetch:  # bound first so get_outputs() starts with them
            io.bind_output(name, "cpu")
        for name, buf in bound.items():
            bind = io.bind_input if name in self.inputs else io.bind_output
            bind(name, buf.device, 0, np.dtype(buf.dtype).type, list(buf.shape), buf.ptr)
        sess.run_with_iobinding(io, self._run_options())
        values = io.get_outputs()
        return {name: values[i].numpy() for i, name in enumerate(fetch)}

    def binding(self, bound: dict[str, Any], fetch: Sequence[str]) -> Binding:
        """An I/O binding with `bound` and `fetch` set once, for runs whose buffers stay put
        (a shared KV cache's decode steps); see `Binding`."""
        if self.session is None:
            raise UsageError(f"{self.path.name}: backend is closed or not loaded; call load()")
        return Binding(self, bound, fetch)

    def _run_options(self) -> onnxruntime.RunOptions | None:
        if not (self.shrink_arena and self.device == "cpu"):
            return None
        opts = require("onnxruntime").RunOptions()
        opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return opts

    def end_profiling(self) -> str | None:
        """Stop ONNX Runtime's profiler and return its JSON path (None when not profiling)."""
        if self.session is None or not self.profile_prefix:
            return None
        path = self.session.end_profiling()
        self.profile_prefix = None
        return path


class Binding:
    """One ONNX Runtime I/O binding reused across runs: the bound buffers (same pointers and
    shapes every step: an in-place KV cache) and the fetched outputs are bound once; each `run`
    binds only the small feeds. Saves re-binding 2 x layers tensors per token (SmolLM2: about
    1 ms of a 14 ms int8 decode step). The fetched outputs land in host buffers of the first
    run's shapes (a decode step's (B, 1, V) logits), so their shapes must not change between
    runs either. One per cache; not thread-safe.
    """

    def __init__(self, backend: OrtBackend, bound: dict[str, Any], fetch: Sequence[str]) -> None:
        self.backend, self.bound, self.fetch = backend, list(bound), list(fetch)
        self._session = backend.session
        self._io = self._session.io_binding()
        for name in self.fetch:  # bound first so get_outputs() starts with them
            self._io.bind_output(name, "cpu")
        for name, buf in bound.items():
            bind = self._io.bind_input if name in backend.inputs else self._io.bind_output
            bind(name, buf.device, 0, np.dtype(buf.dtype).type, list(buf.shape), buf.ptr)
        self._checked: set[tuple] = set()
        self._fetched: dict[str, np.ndarray] | None = None  # host buffers the outputs land in

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Bind `feeds`, run, and return copies of the fetched outputs (ONNX Runtime writes
        the next run's outputs into the same memory).

        Raises:
            InputError: names or dtypes do not match the graph.
            UsageError: the backend was closed or reloaded since the binding was made.
        """
        b = self.backend
        key = tuple((n, a.dtype) for n, a in feeds.items())
        if key not in self._checked:  # the same names and dtypes every step: check once
            check_feeds(b.path.name, b.inputs, feeds, bound=self.bound)
            self._checked.add(key)
        if b.session is not self._session:
            raise UsageError(f"{b.path.name}: the session was closed or reloaded")
        for name, arr in feeds.items():
            self._io.bind_cpu_input(name, np.ascontiguousarray(arr))
        self._session.run_with_iobinding(self._io, b._run_options())
        if self._fetched is not None:  # same shapes every step: ONNX Runtime wrote into them
            return {name: buf.copy() for name, buf in self._fetched.items()}
        values = self._io.get_outputs()
        out = {name: values[i].numpy().copy() for i, name in enumerate(self.fetch)}
        # bind the fetched outputs to host buffers of the first run's shapes: later runs skip
        # get_outputs(), which wraps every output, KV presents included (0.3 ms of a 10 ms step)
        self._fetched = {name: np.empty_like(a) for name, a in out.items()}
        for name, buf in self._fetched.items():
            self._io.bind_output(name, "cpu", 0, buf.dtype.type, list(buf.shape), buf.ctypes.data)
        return out


def _check_dtypes(graph: str, entries: Any, have: dict[str, tuple[Any, list]]) -> None:
    """Manifest dtypes ({name: {"dtype": "int64"}}) must equal the graph's."""
    if not isinstance(entries, dict):
        return
    for name, meta in entries.items():
        want = meta.get("dtype") if isinstance(meta, dict) else None
        if not want or name not in have or have[name][0] is object:
            continue
        try:
            declared = np.dtype(want)
        except TypeError:  # a spelling numpy does not know ("fp16"): nothing to compare
            continue
        if declared != np.dtype(have[name][0]):
            raise ArtifactError(
                f"{graph} tensor {name!r} is {np.dtype(have[name][0]).name} but the manifest "
                f"says {want}; re-export the directory"
            )
