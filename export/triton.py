"""Triton Inference Server model repository from a semedge export (or engine) directory.

One model per graph (embed, encoder, prefill, decode): `<name>/config.pbtxt` with dynamic dims
(-1), max batch size and instance groups, and `<name>/1/model.onnx` (onnxruntime) or
`<name>/1/model.plan` (tensorrt). Written atomically; no tritonclient needed to write it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semedge.artifacts import (
    confined,
    listed_file,
    load_manifest,
    onnx_external_locations,
    staged_dir,
    verify_manifest,
)
from semedge.constants import FORMAT_ENGINE, FORMAT_EXPORT
from semedge.errors import ArtifactError, InputError

__all__ = ["TritonConfig", "write_triton_repo", "model_config_text"]

GRAPHS = ("embed", "encoder", "prefill", "decode")
BACKENDS = {
    "onnxruntime": ("onnxruntime_onnx", "model.onnx"),
    "tensorrt": ("tensorrt_plan", "model.plan"),
}
# manifest dtype spellings (numpy names, short names, onnx elem-type ints) -> Triton DataType
TRITON_DTYPES = {
    "float32": "TYPE_FP32", "float": "TYPE_FP32", "fp32": "TYPE_FP32", 1: "TYPE_FP32",
    "float16": "TYPE_FP16", "half": "TYPE_FP16", "fp16": "TYPE_FP16", 10: "TYPE_FP16",
    "bfloat16": "TYPE_BF16", "bf16": "TYPE_BF16", 16: "TYPE_BF16",
    "float64": "TYPE_FP64", "double": "TYPE_FP64", 11: "TYPE_FP64",
    "int64": "TYPE_INT64", 7: "TYPE_INT64", "int32": "TYPE_INT32", 6: "TYPE_INT32",
    "int8": "TYPE_INT8", 3: "TYPE_INT8", "uint8": "TYPE_UINT8", 2: "TYPE_UINT8",
    "bool": "TYPE_BOOL", 9: "TYPE_BOOL",
}  # fmt: skip


@dataclass(frozen=True)
class TritonConfig:
    """Repository options."""

    backend: str = "onnxruntime"  # "onnxruntime" (export dir) or "tensorrt" (engine dir)
    max_batch: int = 1  # Triton max_batch_size; 0 = no batch dimension handling by Triton
    instances: int = 1  # model instances per device
    instance_kind: str = "auto"  # "auto" (GPU for tensorrt, CPU for onnxruntime), "cpu", "gpu"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(f"--backend {self.backend!r}: choose onnxruntime or tensorrt")
        if self.max_batch < 0:
            raise InputError(f"--max-batch must be >= 0, got {self.max_batch}")
        if self.instances < 1:
            raise InputError(f"--instances must be >= 1, got {self.instances}")
        if self.instance_kind not in ("auto", "cpu", "gpu"):
            raise InputError(f"--instance-kind {self.instance_kind!r}: choose auto, cpu or gpu")

    @property
    def kind(self) -> str:
        if self.instance_kind == "auto":
            return "KIND_GPU" if self.backend == "tensorrt" else "KIND_CPU"
        return f"KIND_{self.instance_kind.upper()}"


def _dtype(name: str, spec: dict[str, Any]) -> str:
    raw = spec.get("dtype")
    key = raw.lower().removeprefix("tensor(").rstrip(")") if isinstance(raw, str) else raw
    if key not in TRITON_DTYPES:
        raise ArtifactError(f"tensor {name!r} has dtype {raw!r} with no Triton equivalent")
    return TRITON_DTYPES[key]


def _dims(shape: list[Any], batched: bool) -> list[int]:
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in shape]
    return dims[1:] if batched else dims  # Triton adds the batch dim itself when max_batch > 0


def _tensor_block(name: str, spec: dict[str, Any], batched: bool) -> str:
    dims = ", ".join(str(d) for d in _dims(list(spec.get("shape", [])), batched))
    return f"  {{\n    name: {json.dumps(name)}\n    data_type: {_dtype(name, spec)}\n    dims: [ {dims} ]\n  }}"


def model_config_text(
    name: str, io: dict[str, Any], config: TritonConfig, backend: str | None = None
) -> str:
    """config.pbtxt text (protobuf text format of Triton's ModelConfig) for one graph.

    Args:
        name: the Triton model name (its directory name).
        io: {"inputs": {tensor: {dtype, shape}}, "outputs": {...}} from the manifest.
        config: backend, batch size, instances.
        backend: this model's backend when it differs from `config.backend` (the ONNX embed and
            encoder of an engine directory run on onnxruntime).

    Raises:
        ArtifactError: a dtype Triton cannot represent.
    """
    platform, _ = BACKENDS[backend or config.backend]
    batched = config.max_batch > 0
    sections = [
        f"name: {json.dumps(name)}",
        f"platform: {json.dumps(platform)}",
        f"max_batch_size: {config.max_batch}",
    ]
    for key, field in (("inputs", "input"), ("outputs", "output")):
        blocks = ",\n".join(_tensor_block(n, s, batched) for n, s in io[key].items())
        sections.append(f"{field} [\n{blocks}\n]")
    sections.append(
        f"instance_group [\n  {{\n    count: {config.instances}\n    kind: {config.kind}\n  }}\n]"
    )
    if batched and name in ("embed", "encoder"):  # stateless, equal-shape requests batch well
        sections.append("dynamic_batching { }")
    return "\n".join(sections) + "\n"


def _graph_io(manifest: Any, graph: str) -> dict[str, Any] | None:
    entry = manifest.graphs.get(graph) or manifest.graphs.get(f"{graph}.onnx")
    return entry if entry and entry.get("inputs") and entry.get("outputs") else None


def _model_file(src_dir: Path, manifest: Any, graph: str, backend: str) -> Path | None:
    if backend == "tensorrt":
        engine = (manifest.extra.get("engines") or {}).get(graph)
        if engine:
            return listed_file(src_dir, manifest, engine["file"], f"the {graph} engine")
    rel = f"{graph}.onnx"
    return (
        listed_file(src_dir, manifest, rel, f"the {graph} graph") if rel in manifest.files else None
    )


def _backend_of(model: Path) -> str:
    return "onnxruntime" if model.suffix == ".onnx" else "tensorrt"


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)  # same filesystem: no second copy of the weights
    except OSError:
        shutil.copy2(src, dest)


def _external_data(src_dir: Path, manifest: Any, model: Path) -> list[str]:
    """Relative paths of the external-data files an ONNX model references: confined to its
    directory and listed in the manifest (verify_manifest checked both; checked again here, where
    the copy's destination is built from them)."""
    out = []
    for loc in sorted(onnx_external_locations(model)):
        src = confined(model.parent, loc, f"external data of {model.name}")
        listed_file(src_dir, manifest, src.relative_to(src_dir).as_posix(), "external data")
        out.append(loc)
    return out


def _plan_models(src_dir: Path, manifest: Any, backend: str) -> list[tuple[str, Path, dict]]:
    """(graph, model file, I/O) for every graph the directory holds for `backend`."""
    plan: list[tuple[str, Path, dict[str, Any]]] = []
    for graph in GRAPHS:
        model, io = _model_file(src_dir, manifest, graph, backend), _graph_io(manifest, graph)
        if model is None:
            continue
        if io is None:
            raise ArtifactError(
                f"{src_dir}'s manifest has no inputs/outputs for {graph}; re-export"
            )
        plan.append((graph, model, io))
    if not plan:
        raise ArtifactError(f"{src_dir} holds none of {', '.join(GRAPHS)} for {backend}")
    return plan


def write_triton_repo(
    src_dir: Path | str,
    repo_dir: Path | str,
    config: TritonConfig | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Write a Triton model repository for the graphs of an export or engine directory.

    Args:
        src_dir: a `semedge export onnx` directory (onnxruntime backend) or a
            `semedge export trt` engine directory (tensorrt backend).
        repo_dir: the repository to create (atomically: all models or nothing).
        config: backend, max batch size, instances.
        overwrite: replace an existing `repo_dir`.

    Returns:
        The model names written.

    Raises:
        ArtifactError: no manifest, the wrong kind of directory for the backend, a missing graph,
            or an unwritable `repo_dir`.
        InputError: bad options.
    """
    src_dir, repo_dir, config = Path(src_dir), Path(repo_dir), config or TritonConfig()
    want = FORMAT_ENGINE if config.backend == "tensorrt" else (FORMAT_EXPORT, FORMAT_ENGINE)
    try:
        manifest = load_manifest(src_dir, expect_format=want)
    except ArtifactError as err:
        if config.backend == "tensorrt" and "format" in str(err):
            raise ArtifactError(
                f"--backend tensorrt needs an engine directory; build one first with "
                f"`semedge export trt {src_dir} ENGINE_DIR` and pass ENGINE_DIR"
            ) from err
        raise
    verify_manifest(src_dir, manifest)  # a tampered graph must not reach the server
    plan = _plan_models(src_dir, manifest, config.backend)
    with staged_dir(repo_dir, overwrite=overwrite) as tmp:
        for graph, model, io in plan:
            version_dir, backend = tmp / graph / "1", _backend_of(model)
            _link_or_copy(model, version_dir / BACKENDS[backend][1])
            if backend == "onnxruntime":
                for rel in _external_data(src_dir, manifest, model):  # relative to model.onnx
                    dest = confined(version_dir, rel, f"external data of {model.name}")
                    _link_or_copy(model.parent / rel, dest)
            text = model_config_text(graph, io, config, backend)
            (tmp / graph / "config.pbtxt").write_text(text)
    return [graph for graph, _, _ in plan]
