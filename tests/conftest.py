"""Shared fixtures: tiny random models (built once per session), WikiText paths, a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _has_cuda() -> bool:
    """A CUDA GPU that torch or ONNX Runtime can use (the pinned CPU torch wheel cannot, so a GPU
    box with onnxruntime-gpu still runs the runtime's CUDA tests)."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return True
    except ImportError:
        pass
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    cuda = _has_cuda()
    trt = cuda and _spec("tensorrt")
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA (nvidia-smi and torch.cuda)"))
        if "trt" in item.keywords and not trt:
            item.add_marker(pytest.mark.skip(reason="needs tensorrt and a CUDA GPU"))


def _spec(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.fixture(scope="session")
def wikitext_test() -> Path:
    path = WIKITEXT / "test.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def wikitext_valid() -> Path:
    path = WIKITEXT / "valid.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """family -> directory of a tiny random HF model (llama, qwen2, gpt2, gemma3), fixed seed."""
    from semedge.models import TINY_FAMILIES, make_tiny_model

    base = tmp_path_factory.mktemp("tiny-models")
    return {fam: make_tiny_model(fam, base / fam, seed=0) for fam in TINY_FAMILIES}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_models) -> Path:
    return tiny_models["gpt2"]


@dataclass
class CliResult:
    rc: int
    stdout: str
    stderr: str


@pytest.fixture
def cli():
    """Run `semedge ARGS...` in a subprocess and assert its exit code (expect_rc)."""

    def run(*args, expect_rc: int = 0, env: dict | None = None, input: str | None = None):
        cmd = [sys.executable, "-m", "semedge", *map(str, args)]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, input=input
        )
        res = CliResult(proc.returncode, proc.stdout, proc.stderr)
        assert res.rc == expect_rc, f"rc={res.rc} (want {expect_rc})\n{res.stdout}\n{res.stderr}"
        return res

    return run


def run_python(code: str, block: tuple[str, ...] = (), cwd: Path | None = None):
    """Run `code` in a fresh interpreter with the `block`ed modules made unimportable."""
    prelude = "".join(f"sys.modules[{m!r}] = None; " for m in block)
    probe = f"import sys; {prelude}\n{code}"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=cwd)


def assert_one_line_error(res: CliResult) -> None:
    """A user error: exit 1, exactly one stderr line, no traceback."""
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("[")]
    assert res.rc == 1, res.stderr
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr


def _tiny_export(tiny_models, tmp_path_factory, family: str, **options) -> Path:
    from semedge.export import ExportConfig, ParityConfig, export_onnx

    out = tmp_path_factory.mktemp(f"tiny-export-{family}") / "export"
    fast_gate = ParityConfig(lengths=(7, 48), decode_steps=2, compressed=False)
    export_onnx(tiny_models[family], out, ExportConfig(parity=fast_gate, **options))
    return out


@pytest.fixture(scope="session")
def tiny_export(tiny_models, tmp_path_factory) -> Path:
    """A gated semedge ONNX export of the tiny Llama (fp32, fused attention), once per session."""
    return _tiny_export(tiny_models, tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def tiny_export_gpt2(tiny_models, tmp_path_factory) -> Path:
    """A gated semedge ONNX export of the tiny GPT-2, once per session."""
    return _tiny_export(tiny_models, tmp_path_factory, "gpt2")


@pytest.fixture(scope="session")
def tiny_export_gemma3(tiny_models, tmp_path_factory) -> Path:
    """A gated export of the tiny Gemma 3 (window 16 < the 48-token gate), fused attention."""
    return _tiny_export(tiny_models, tmp_path_factory, "gemma3")


@pytest.fixture(scope="session")
def tiny_export_plain(tiny_models, tmp_path_factory) -> Path:
    """The tiny Llama exported with `--attention plain` (what OpenVINO and TensorRT read)."""
    from semedge.export import ExportConfig, ParityConfig, export_onnx

    out = tmp_path_factory.mktemp("tiny-export-plain") / "export"
    gate = ParityConfig(lengths=(7, 32), decode_steps=2, compressed=False)
    export_onnx(tiny_models["llama"], out, ExportConfig(attention="plain", parity=gate))
    return out
