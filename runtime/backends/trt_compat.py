"""Engine-manifest compatibility: may this TensorRT engine load on this GPU and TensorRT?

Torch-free and tensorrt-free: the runtime calls `check_engine_compat` before deserialising a plan
(a plan from another TensorRT version or GPU fails to load or, worse, runs slowly).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from semedge.constants import FORMAT_ENGINE
from semedge.errors import ArtifactError

__all__ = ["GpuInfo", "check_engine_compat", "local_gpu", "normalize_gpu_name"]


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built for or loaded on."""

    name: str  # e.g. "NVIDIA H200"
    compute_capability: str  # "major.minor", e.g. "9.0"
    free_mb: int | None = None  # free device memory when known


def normalize_gpu_name(name: str) -> str:
    """Compare GPU names the same whichever tool reported them ("NVIDIA H200" == "H200")."""
    name = re.sub(r"^(nvidia|tesla)\s+", "", name.strip(), flags=re.IGNORECASE)
    return re.sub(r"\s+", " ", name).lower()


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(version))[:3])


def _capability(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ".".join(str(int(v)) for v in value[:2])
    text = str(value).strip()
    return text if "." in text else f"{text}.0"


def check_engine_compat(
    manifest: dict[str, Any],
    trt_version: str,
    gpu_name: str,
    compute_capability: str | tuple[int, int],
) -> None:
    """Refuse an engine built for another TensorRT version or GPU.

    A serialised TensorRT plan is tied to the TensorRT version (major.minor.patch) that built it
    and, unless built hardware-compatible, to the GPU model it was tuned on.

    Args:
        manifest: the engine directory's manifest.json as a dict (format "semedge-engine").
        trt_version: `tensorrt.__version__` of the loading process, e.g. "10.3.0".
        gpu_name: the loading GPU's name, e.g. "NVIDIA H200" (as torch / nvidia-smi report it).
        compute_capability: "9.0" or (9, 0).

    Raises:
        ArtifactError: another format, a missing field, or a TensorRT / GPU mismatch; the message
            names both sides and says to rebuild with `semedge export trt`.
    """
    fmt = manifest.get("format")
    if fmt != FORMAT_ENGINE:
        raise ArtifactError(f"manifest has format {fmt!r}, expected {FORMAT_ENGINE!r}")
    trt = manifest.get("tensorrt") or {}
    missing = [k for k in ("version", "gpu_name", "compute_capability") if not trt.get(k)]
    if missing:
        raise ArtifactError(
            f"engine manifest lacks tensorrt.{', tensorrt.'.join(missing)}; rebuild with "
            "`semedge export trt`"
        )
    rebuild = "rebuild the engines on this machine with `semedge export trt ONNX_DIR OUT_DIR`"
    built, here = _version_tuple(trt["version"]), _version_tuple(trt_version)
    if built != here:
        raise ArtifactError(
            f"engine was built with TensorRT {trt['version']} but this machine has TensorRT "
            f"{trt_version} (plans load only on the same major.minor.patch); {rebuild}"
        )
    if _capability(trt["compute_capability"]) != _capability(compute_capability):
        raise ArtifactError(
            f"engine was built for compute capability {trt['compute_capability']} "
            f"({trt['gpu_name']}) but this GPU, {gpu_name}, is {_capability(compute_capability)}; "
            f"{rebuild}"
        )
    hw = trt.get("hardware_compatibility", "none")
    if hw == "none" and normalize_gpu_name(trt["gpu_name"]) != normalize_gpu_name(gpu_name):
        raise ArtifactError(
            f"engine was tuned for {trt['gpu_name']} but this GPU is {gpu_name} (TensorRT "
            f"plans are GPU-model specific); {rebuild}"
        )


def local_gpu() -> GpuInfo | None:
    """GPU 0's name, compute capability and free memory, or None without an NVIDIA GPU.

    Tries cuda-python (`cuda.bindings.runtime` / `cuda.cudart`), then `nvidia-smi`; no torch.
    """
    return _gpu_from_cuda_python() or _gpu_from_nvidia_smi()


def _gpu_from_cuda_python() -> GpuInfo | None:
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) != 0:
            return None
        err, free, _total = cudart.cudaMemGetInfo()
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else props.name
        free_mb = int(free) // 2**20 if int(err) == 0 else None
        return GpuInfo(name.rstrip("\x00"), f"{props.major}.{props.minor}", free_mb)
    except Exception:  # not installed, no driver, no device: fall back to nvidia-smi
        return None


def _gpu_from_nvidia_smi() -> GpuInfo | None:
    if shutil.which("nvidia-smi") is None:
        return None
    query = "--query-gpu=name,compute_cap,memory.free"
    try:
        out = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    fields = [f.strip() for f in out.strip().splitlines()[0].split(",")] if out.strip() else []
    if len(fields) != 3:
        return None
    free = int(float(fields[2])) if fields[2].replace(".", "").isdigit() else None
    return GpuInfo(fields[0], fields[1], free)
