"""`semedge doctor`: what is installed, which ONNX Runtime providers really run, which GPU.

Torch-free: versions come from package metadata (nothing heavy is imported just to read them).
Each provider is proven by running a tiny graph and reading `session.get_providers()`, which
catches ONNX Runtime's silent fallback to CPU.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import importlib.metadata
import platform
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DoctorReport", "run_doctor", "provider_works"]

PACKAGES = ("semedge", "numpy", "onnxruntime", "onnxruntime-gpu", "tokenizers", "onnx", "torch",
            "transformers", "tensorrt", "cuda-python", "matplotlib", "optimum", "optimum-onnx", "openvino")  # fmt: skip
TEGRA_RELEASE = Path("/etc/nv_tegra_release")
# y = x + x on a float[2] (opset 13): used when the onnx package is absent
_ADD_MODEL = base64.b64decode(
    "CAc6OgoOCgF4CgF4EgF5IgNBZGQSBmRvY3RvcloPCgF4EgoKCAgBEgQKAggCYg8KAXkSCgoICAESBAoCCAJCBAoAEA0="
)


@dataclass
class DoctorReport:
    """Everything `semedge doctor` found; `passed` means the CPU runtime works."""

    python: str = ""
    platform: str = ""
    packages: dict[str, str | None] = field(default_factory=dict)
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {ok, detail}
    gpu: dict[str, Any] = field(default_factory=dict)
    jetson: dict[str, Any] = field(default_factory=dict)
    hints: list[str] = field(default_factory=list)
    cpu: dict[str, Any] = field(default_factory=dict)  # matrix features, precision -> provider

    @property
    def passed(self) -> bool:
        return bool(self.providers.get("CPUExecutionProvider", {}).get("ok"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "python": self.python, "platform": self.platform, "packages": self.packages,
            "providers": self.providers, "gpu": self.gpu, "jetson": self.jetson,
            "hints": self.hints, "cpu": self.cpu, "passed": self.passed,
        }  # fmt: skip


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _tiny_model() -> bytes:
    """A float[2] -> x + x graph, built with onnx.helper when onnx is installed."""
    try:
        from onnx import TensorProto, helper
    except ImportError:
        return _ADD_MODEL
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "doctor", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model.SerializeToString()


def provider_works(provider: str) -> tuple[bool, str]:
    """Run a tiny graph on `provider`: (ok, detail). Fails when ORT silently falls back."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        return False, f"onnxruntime not importable: {err}"
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        chain = (
            [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        )
        with warnings.catch_warnings():  # ORT warns (and falls back) for a missing provider
            warnings.simplefilter("ignore")
            sess = ort.InferenceSession(_tiny_model(), sess_options=opts, providers=chain)
        y = sess.run(None, {"x": np.array([1.0, 2.0], np.float32)})[0]
    except Exception as err:  # ORT raises a variety of pybind errors when a provider cannot start
        return False, f"failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    active = sess.get_providers()
    if active[0] != provider:
        return False, f"silently fell back to {active[0]} (missing CUDA/cuDNN/TensorRT libraries?)"
    if not np.allclose(y, [2.0, 4.0]):
        return False, f"wrong result {y.tolist()}"
    return True, "ran a test graph"


def _run(cmd: list[str], timeout: float = 10.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _gpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {}
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                "--format=csv,noheader"])  # fmt: skip
    if smi:
        name, driver, mem, cc = ([*map(str.strip, smi.splitlines()[0].split(",")), "", "", ""])[:4]
        info.update(name=name, driver=driver, memory=mem, compute_capability=cc)
        head = _run(["nvidia-smi"]) or ""
        if "CUDA Version:" in head:
            info["cuda_driver_api"] = head.split("CUDA Version:")[1].split()[0]
    info["cudnn"] = _cudnn_version()
    info["tensorrt"] = _version("tensorrt") or _version("tensorrt-cu12") or _lib_present("nvinfer")
    return info


def _lib_present(name: str) -> str | None:
    return "library found" if ctypes.util.find_library(name) else None


def _cudnn_version() -> str | None:
    lib = ctypes.util.find_library("cudnn")
    if not lib:
        return None
    try:
        v = ctypes.CDLL(lib).cudnnGetVersion()
    except (OSError, AttributeError):
        return "library found"
    return f"{v // 10000 if v >= 10000 else v // 1000}.{(v % 10000) // 100 if v >= 10000 else (v % 1000) // 100}"


def _jetson_info() -> dict[str, Any]:
    if not TEGRA_RELEASE.is_file():
        return {"detected": False}
    info: dict[str, Any] = {
        "detected": True,
        "l4t": TEGRA_RELEASE.read_text(errors="replace").split("\n")[0],
    }
    info["jetpack"] = _run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    info["power_mode"] = _run(["nvpmodel", "-q"])
    return info


def run_doctor() -> DoctorReport:
    """Collect the report. Never raises for a missing piece: it becomes a hint."""
    rep = DoctorReport(python=sys.version.split()[0], platform=platform.platform())
    rep.packages = {name: _version(name) for name in PACKAGES}
    try:
        import onnxruntime as ort

        available = list(ort.get_available_providers())
    except ImportError:
        available = []
        rep.hints.append("onnxruntime is missing: pip install onnxruntime (or onnxruntime-gpu)")
    for prov in available:
        if prov in ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"):
            ok, detail = provider_works(prov)
            rep.providers[prov] = {"ok": ok, "detail": detail}
        else:
            rep.providers[prov] = {"ok": None, "detail": "installed, not tested"}
    for prov in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        if available and prov not in available:
            rep.providers[prov] = {"ok": False, "detail": "not in this onnxruntime build"}
    if _version("openvino"):
        from semedge.runtime.backends.openvino import openvino_available

        ok = openvino_available()
        rep.providers["openvino"] = {
            "ok": ok,
            "detail": "CPU device found" if ok else "no CPU device",
        }
    rep.cpu = cpu_report()
    rep.gpu = _gpu_info()
    rep.jetson = _jetson_info()
    rep.hints += _hints(rep)
    return rep


def cpu_report() -> dict[str, Any]:
    """The CPU's matrix features and, per precision, the engine and provider that run it here."""
    from semedge.runtime.cpu_features import NEEDS, cpu_features

    feats = cpu_features()
    engine = {
        "fp32": "AVX-512 FMA" if "avx512f" in feats else "AVX2 FMA",
        "int8": "AMX-INT8" if "amx_int8" in feats else ("VNNI" if set(NEEDS["int8"]) & set(feats)
                                                         else "no int8 dot-product engine"),
        "bf16": "AMX-BF16" if "amx_bf16" in feats else ("AVX512-BF16" if "avx512_bf16" in feats
                                                        else "no bf16 engine"),
    }  # fmt: skip
    ov = bool(_version("openvino"))
    precisions = {
        "fp32": {"provider": "cpu (ONNX Runtime MLAS)", "engine": engine["fp32"], "ok": True},
        "int8": {"provider": "cpu (ONNX Runtime dynamic int8)", "engine": engine["int8"],
                 "ok": bool(set(NEEDS["int8"]) & set(feats))},
        "bf16": {"provider": "openvino" if ov else "openvino (not installed)",
                 "engine": engine["bf16"], "ok": ov and bool(set(NEEDS["bf16"]) & set(feats))},
    }  # fmt: skip
    return {"features": feats, "precisions": precisions}


def _hints(rep: DoctorReport) -> list[str]:
    hints = []
    has_gpu = bool(rep.gpu.get("name"))
    cuda = rep.providers.get("CUDAExecutionProvider")
    if rep.jetson.get("detected"):
        hints.append(
            "Jetson: install the onnxruntime-gpu wheel built for your JetPack (Jetson Zoo / "
            "pypi.jetson-ai-lab.io) and use TensorRT from JetPack (`semedge run --provider tensorrt`)"
        )
    elif has_gpu and cuda is not None and cuda["detail"].startswith("not in"):
        hints.append(
            "a GPU is present but onnxruntime has no CUDA provider: pip install onnxruntime-gpu"
        )
    if cuda is not None and cuda["ok"] is False and not cuda["detail"].startswith("not in"):
        hints.append("CUDA provider does not run: install CUDA 12 + cuDNN 9 runtime libraries "
                     "matching onnxruntime-gpu (pip install 'onnxruntime-gpu[cuda,cudnn]')")  # fmt: skip
    if not has_gpu and not rep.jetson.get("detected"):
        hints.append("no NVIDIA GPU found: use --provider cpu")
    if has_gpu and not rep.packages.get("tensorrt"):
        hints.append("native TensorRT engines need: pip install tensorrt cuda-python")
    return hints
