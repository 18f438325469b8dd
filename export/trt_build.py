"""TensorRT engines for the prefill and decode graphs of a semedge export (tensorrt imported lazily).

`build_engines` writes an engine directory (format "semedge-engine"): prefill.plan, decode.plan,
the export's other files (tokenizer, config, embed/encoder ONNX for ONNX Runtime) and a manifest
with the TensorRT version, GPU, compute capability, profiles, precision and source ONNX SHA-256s.
Supports TensorRT 10 (fp16 via builder flag) and 11 (always strongly typed).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semedge import __version__
from semedge.artifacts import (
    Manifest,
    atomic_write_bytes,
    copy_verified,
    load_manifest,
    manifest_from_dict,
    sha256_file,
    staged_dir,
    verify_manifest,
    write_manifest,
)
from semedge.constants import FORMAT_CALIBRATED, FORMAT_ENGINE, FORMAT_EXPORT, MANIFEST
from semedge.deps import require
from semedge.errors import ArtifactError, BackendUnavailable, InputError
from semedge.export.fp16_fit import refuse_fp16_kernels
from semedge.export.profiles import (
    ENGINE_GRAPHS,
    DimRange,
    Shapes,
    engine_profiles,
    parse_range,
    trtexec_command,
)
from semedge.logs import log_timed
from semedge.runtime.backends.trt_compat import GpuInfo, local_gpu

__all__ = ["EngineBuildConfig", "build_engines", "engine_from_onnx", "plan_trtexec_commands"]

log = logging.getLogger(__name__)

WORKSPACE_FRACTION = 0.8  # of free device memory: leave room for the CUDA context and tactics
OOM = re.compile(r"out of memory|cudaErrorMemoryAllocation|insufficient memory|requested amount of"
                 r" gpu memory|failed to allocate", re.IGNORECASE)  # fmt: skip


@dataclass(frozen=True)
class EngineBuildConfig:
    """How to build the engines; None fields take defaults from the export's manifest."""

    context: str | None = None  # "MIN:OPT:MAX" positions; default 1:512:max_context
    batch: str | None = None  # "MIN:OPT:MAX" sequences; default 1:1:1
    workspace_mb: int | None = None  # clamped to free device memory; default 80 % of it
    timing_cache: Path | None = None  # read if present, written back after the build
    fp16: bool = False  # TensorRT 10 only: let fp16 kernels run on an fp32 export

    def __post_init__(self) -> None:
        if self.workspace_mb is not None and self.workspace_mb <= 0:
            raise InputError(
                f"--workspace must be a positive number of MB, got {self.workspace_mb}"
            )
        if self.context is not None:
            parse_range(self.context, "context")
        if self.batch is not None:
            parse_range(self.batch, "batch")

    def ranges(self) -> tuple[DimRange | None, DimRange | None]:
        ctx = parse_range(self.context, "context") if self.context else None
        return ctx, parse_range(self.batch, "batch") if self.batch else None


def _buildable_manifest(onnx_dir: Path, config: EngineBuildConfig) -> dict[str, Any]:
    """The export's verified manifest, refused where these build settings cannot serve it."""
    verify_manifest(
        onnx_dir, load_manifest(onnx_dir, expect_format=(FORMAT_EXPORT, FORMAT_CALIBRATED))
    )
    manifest = _export_manifest(onnx_dir)
    if config.fp16:
        refuse_fp16_kernels(manifest.get("config", {}), str(onnx_dir))
    return manifest


def _export_manifest(onnx_dir: Path) -> dict[str, Any]:
    # a calibrated directory (INT8 Q/DQ for --target tensorrt) builds like a plain export
    manifest = load_manifest(onnx_dir, expect_format=(FORMAT_EXPORT, FORMAT_CALIBRATED))
    for graph, file in ENGINE_GRAPHS.items():
        if file not in manifest.files:
            raise ArtifactError(f"{onnx_dir} has no {file} ({graph}); re-export the directory")
    data = manifest.to_dict()
    if data.get("attention") == "fused":  # ORT contrib GroupQueryAttention: no TensorRT importer
        raise ArtifactError(
            f"{onnx_dir} was exported with fused ONNX Runtime attention "
            "(com.microsoft::GroupQueryAttention), which TensorRT cannot build; re-export with "
            "`semedge export onnx --attention plain`"
        )
    for graph, file in ENGINE_GRAPHS.items():  # older manifests: read the I/O from the graph
        graphs = data.setdefault("graphs", {})
        if not (graphs.get(graph) or graphs.get(file)):
            graphs[graph] = _io_from_onnx(onnx_dir / file)
    return data


def _io_from_onnx(path: Path) -> dict[str, Any]:
    from semedge.export.trt_check import load_onnx

    graph = load_onnx(path).graph
    inits = {i.name for i in graph.initializer}

    def spec(vi) -> dict[str, Any]:
        dims = vi.type.tensor_type.shape.dim
        return {
            "dtype": vi.type.tensor_type.elem_type,
            "shape": [d.dim_param or d.dim_value for d in dims],
        }

    return {
        "inputs": {vi.name: spec(vi) for vi in graph.input if vi.name not in inits},
        "outputs": {vi.name: spec(vi) for vi in graph.output},
    }  # fmt: skip


def plan_trtexec_commands(
    onnx_dir: Path | str, out_dir: Path | str, config: EngineBuildConfig | None = None
) -> list[str]:
    """The trtexec command lines equivalent to `build_engines` (one per engine).

    Raises:
        ArtifactError: ONNX_DIR is not a semedge export.
        InputError: a bad --context / --batch range.
    """
    onnx_dir, out_dir, config = Path(onnx_dir), Path(out_dir), config or EngineBuildConfig()
    manifest = _buildable_manifest(onnx_dir, config)
    profiles = engine_profiles(manifest, *config.ranges())
    strongly_typed = not config.fp16
    return [
        trtexec_command(
            onnx_dir / ENGINE_GRAPHS[graph],
            out_dir / f"{graph}.plan",
            profiles[graph],
            config.workspace_mb,
            config.timing_cache,
            fp16=config.fp16,
            strongly_typed=strongly_typed,
        )
        for graph in ENGINE_GRAPHS
    ]


def _precheck(onnx_dir: Path) -> None:
    """Fail before the (minutes-long) build on a limit check-trt already knows."""
    from semedge.export.trt_check import check_onnx_file

    for file in ENGINE_GRAPHS.values():
        errors = [f for f in check_onnx_file(onnx_dir / file) if f.severity == "error"]
        if errors:
            f = errors[0]
            raise ArtifactError(
                f"{file} cannot build in TensorRT: node {f.node!r} ({f.op}): {f.message}; "
                f"see `semedge export check-trt {onnx_dir}`"
            )


def _workspace_bytes(requested_mb: int | None, gpu: GpuInfo | None) -> int | None:
    """Clamp the workspace to free device memory (TensorRT allocates it while timing tactics)."""
    free_mb = gpu.free_mb if gpu else None
    if free_mb is None:
        return requested_mb * 2**20 if requested_mb else None
    cap = int(free_mb * WORKSPACE_FRACTION)
    if requested_mb and requested_mb > cap:
        log.warning("--workspace %d MB exceeds %d MB (80%% of free device memory); using %d MB",
                    requested_mb, cap, cap)  # fmt: skip
    return min(requested_mb or cap, cap) * 2**20


class _Logger:
    """A tensorrt ILogger that forwards to logging and keeps errors for the final message."""

    def __new__(cls, trt):
        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg: str) -> None:
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(msg)
                    log.error("TensorRT: %s", msg)
                elif severity == trt.ILogger.Severity.WARNING:
                    log.warning("TensorRT: %s", msg)
                else:
                    log.debug("TensorRT: %s", msg)

        return Logger()


def _network_flags(trt, fp16: bool) -> int:
    """TensorRT 10: weak typing with the fp16 flag, else strongly typed; 11: always strongly typed."""
    major = int(trt.__version__.split(".")[0])
    if major < 10:
        raise BackendUnavailable(
            f"TensorRT {trt.__version__} is too old; semedge builds with TensorRT 10 or 11 "
            "(pip install 'tensorrt>=10')"
        )
    if fp16 and not hasattr(trt.BuilderFlag, "FP16"):
        raise InputError(
            f"--fp16 is a TensorRT 10 builder flag; TensorRT {trt.__version__} is strongly typed "
            "and takes precision from the ONNX: re-export with `semedge export onnx --dtype fp16` "
            "(`--precision fp16` where the model's activations pass fp16's range)"
        )
    if fp16 or major >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _parse(trt, network, logger, onnx_path: Path):
    """Parse into `network`; returns the parser, which owns the weights until the build ends."""
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(onnx_path)):  # from the path: external data resolves next to it
        return parser
    errs = [parser.get_error(i) for i in range(parser.num_errors)]
    first = errs[0] if errs else None
    where = ""
    if first is not None and hasattr(first, "node_name"):
        where = f" at node {first.node_name()!r} ({first.node_operator()})"
    desc = first.desc() if first is not None else "; ".join(logger.errors[-1:]) or "unknown error"
    raise ArtifactError(
        f"TensorRT cannot parse {onnx_path.name}{where}: {desc}; run `semedge export check-trt "
        f"{onnx_path.parent}` for the known limits"
    )


def engine_from_onnx(
    trt,
    onnx_path: Path,
    profile: dict[str, Shapes],
    workspace_bytes: int | None = None,
    timing_cache: Any | None = None,
    fp16: bool = False,
) -> tuple[bytes, Any]:
    """Build one serialised engine from an ONNX file with one optimisation profile.

    Args:
        trt: the imported tensorrt module.
        onnx_path: the graph (parsed from its path so external data resolves).
        profile: {input: (min, opt, max)} covering every network input.
        workspace_bytes: workspace memory-pool limit; None leaves TensorRT's default.
        timing_cache: an ITimingCache shared across builds, or None to start an empty one.
        fp16: TensorRT 10 weak typing with fp16 kernels allowed.

    Returns:
        (plan bytes, the timing cache used, to serialise after the last build).

    Raises:
        ArtifactError: TensorRT cannot parse the graph or the build fails.
        InputError: the build ran out of device memory (lower --workspace / --context / --batch).
    """
    logger = _Logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, fp16))
    parser = _parse(trt, network, logger, onnx_path)  # keep alive: the network uses its weights
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if missing := sorted(set(names) - set(profile)):
        raise ArtifactError(f"{onnx_path.name} has inputs {missing} the manifest does not list")
    config = builder.create_builder_config()
    opt_profile = builder.create_optimization_profile()
    for name in names:
        opt_profile.set_shape(name, *profile[name])  # (min, opt, max)
    config.add_optimization_profile(opt_profile)
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    cache = timing_cache if timing_cache is not None else config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)  # ignore_mismatch=False: a foreign cache is refused
    try:
        plan = builder.build_serialized_network(network, config)
    except (RuntimeError, MemoryError) as err:
        logger.errors.append(str(err))
        plan = None
    if plan is None:
        _raise_build_failure(onnx_path, logger.errors)
    del parser  # only now may the parsed weights go
    return memoryview(plan).tobytes(), cache


def _raise_build_failure(onnx_path: Path, errors: list[str]) -> None:
    last = errors[-1].splitlines()[0] if errors else "no error message from TensorRT"
    if any(OOM.search(e) for e in errors):
        raise InputError(
            f"TensorRT ran out of device memory building {onnx_path.stem}: {last}; lower "
            "--workspace, the --context or --batch maximum, or free the GPU"
        )
    raise ArtifactError(f"TensorRT could not build {onnx_path.stem}: {last}; rerun with -v")


def _load_timing_cache(trt, path: Path | None):
    try:
        data = path.read_bytes() if path and path.is_file() else b""
    except OSError as err:
        raise ArtifactError(f"cannot read --timing-cache {path}: {err.strerror}") from err
    config = trt.Builder(_Logger(trt)).create_builder_config()
    return config.create_timing_cache(data)


def _copy_export_files(onnx_dir: Path, manifest: dict[str, Any], dest: Path) -> None:
    """Everything but the graphs TensorRT replaces (and their external data)."""
    engine_stems = tuple(f"{Path(f).stem}." for f in ENGINE_GRAPHS.values())
    skip = {rel for rel in manifest["files"] if Path(rel).name.startswith(engine_stems)}
    copy_verified(onnx_dir, manifest_from_dict(manifest, onnx_dir / MANIFEST), dest, skip)


def build_engines(
    onnx_dir: Path | str,
    out_dir: Path | str,
    config: EngineBuildConfig | None = None,
    overwrite: bool = False,
) -> Path:
    """Build prefill and decode TensorRT engines from a semedge export, atomically.

    Args:
        onnx_dir: a `semedge export onnx` directory.
        out_dir: the engine directory to create.
        config: ranges, workspace, timing cache, fp16; defaults from the export's manifest.
        overwrite: replace an existing `out_dir`.

    Returns:
        `out_dir`, holding prefill.plan, decode.plan, the export's other files and a
        "semedge-engine" manifest.

    Raises:
        ArtifactError: not an export, tampered files, a parse or build failure.
        InputError: bad ranges, --fp16 on TensorRT 11, or the build ran out of memory.
        BackendUnavailable: tensorrt is not importable, too old, or no NVIDIA GPU is visible.
    """
    onnx_dir, out_dir, config = Path(onnx_dir), Path(out_dir), config or EngineBuildConfig()
    manifest = _buildable_manifest(onnx_dir, config)
    profiles = engine_profiles(manifest, *config.ranges())
    if out_dir.exists() and not overwrite:
        raise ArtifactError(f"{out_dir} already exists; choose another path or pass --overwrite")
    trt = require("tensorrt")
    gpu = local_gpu()
    if gpu is None:
        raise BackendUnavailable(
            "no NVIDIA GPU visible (cuda-python or nvidia-smi); build on the target"
        )
    _precheck(onnx_dir)
    workspace = _workspace_bytes(config.workspace_mb, gpu)
    cache = _load_timing_cache(trt, config.timing_cache)
    engines: dict[str, Any] = {}
    with staged_dir(out_dir, overwrite=overwrite) as tmp:
        _copy_export_files(onnx_dir, manifest, tmp)
        for graph, file in ENGINE_GRAPHS.items():
            with log_timed(log, f"building the {graph} engine (TensorRT {trt.__version__})"):
                plan, cache = engine_from_onnx(
                    trt, onnx_dir / file, profiles[graph], workspace, cache, config.fp16
                )
            (tmp / f"{graph}.plan").write_bytes(plan)
            engines[graph] = _engine_entry(graph, onnx_dir / file, profiles[graph])
        write_manifest(
            tmp, _engine_manifest(onnx_dir, manifest, engines, trt, gpu, config, workspace)
        )
    if config.timing_cache:  # after the commit: a cache that cannot be written loses no engine
        _save_timing_cache(config.timing_cache, cache, out_dir)
    return out_dir


def _save_timing_cache(path: Path, cache: Any, out_dir: Path) -> None:
    try:
        atomic_write_bytes(path, memoryview(cache.serialize()).tobytes())
    except ArtifactError as err:
        log.warning("engines written to %s, but the timing cache was not saved: %s", out_dir, err)


def _engine_entry(graph: str, onnx_path: Path, profile: dict[str, Shapes]) -> dict[str, Any]:
    return {
        "file": f"{graph}.plan",
        "onnx": onnx_path.name,
        "onnx_sha256": sha256_file(onnx_path),
        "profiles": [
            {name: dict(zip(("min", "opt", "max"), map(list, s), strict=True)) for name, s in profile.items()}
        ],
    }  # fmt: skip


def _engine_manifest(onnx_dir, manifest, engines, trt, gpu, config, workspace) -> Manifest:
    ctx, batch = config.ranges()
    dtype = str(manifest.get("config", {}).get("dtype", "fp32"))
    trt_info = {
        "version": trt.__version__,
        "gpu_name": gpu.name,
        "compute_capability": gpu.compute_capability,
        "hardware_compatibility": "none",
        "precision": "fp16" if config.fp16 else dtype,
        "strongly_typed": not config.fp16,
        "workspace_mb": workspace // 2**20 if workspace else None,
    }
    return Manifest(
        format=FORMAT_ENGINE,
        graphs=manifest.get("graphs", {}),
        # an engine directory holds no decode_exact.onnx: an ORT-CPU int8 decode's fallback
        config={k: v for k, v in manifest.get("config", {}).items() if k != "decode_fallback"},
        created_by={"semedge": __version__, "tensorrt": trt.__version__},
        extra={
            "tensorrt": trt_info,
            "engines": engines,
            "source": {
                "format": manifest.get("format", FORMAT_EXPORT),
                "manifest_sha256": sha256_file(onnx_dir / MANIFEST),
            },
            "build": {"context": str(ctx) if ctx else None, "batch": str(batch) if batch else None},
        },
    )


def engine_manifest_summary(out_dir: Path | str) -> dict[str, Any]:
    """The `tensorrt` and `engines` sections of an engine directory's manifest."""
    data = json.loads((Path(out_dir) / MANIFEST).read_text(encoding="utf-8"))
    return {"tensorrt": data.get("tensorrt"), "engines": data.get("engines")}
