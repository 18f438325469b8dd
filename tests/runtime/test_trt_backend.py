"""TrtBackend plumbing (device KV cache, bound presents, per-thread contexts, compat check) on a
host-memory double of tensorrt/cuda-python; real engines run in the `trt` tests on a GPU."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from semedge.artifacts import load_manifest, write_manifest
from semedge.constants import FORMAT_ENGINE
from semedge.errors import ArtifactError
from semedge.runtime import Pipeline
from semedge.runtime.backends import trt_compat
from tests.runtime import fake_trt
from tests.runtime.toy_export import sample_text

TEXT = sample_text()[:600]


def _engine_dir(toy_export, out, gpu_name="Fake GPU"):
    shutil.copytree(toy_export, out)
    for graph in ("prefill", "decode"):
        shutil.copy(out / f"{graph}.onnx", out / f"{graph}.plan")
    m = load_manifest(out)
    m.format = FORMAT_ENGINE
    m.extra = {
        "tensorrt": {"version": fake_trt.__version__, "gpu_name": gpu_name, "compute_capability": "9.0"},
        "engines": {g: {"file": f"{g}.plan"} for g in ("prefill", "decode")},
    }  # fmt: skip
    write_manifest(out, m)
    return out


@pytest.fixture
def fake_gpu(monkeypatch):
    fake_trt.install(monkeypatch)
    monkeypatch.setattr(
        trt_compat, "local_gpu", lambda: trt_compat.GpuInfo("NVIDIA Fake GPU", "9.0")
    )


def test_engine_backend_matches_onnx_runtime(toy_export, tmp_path, fake_gpu):
    engines = _engine_dir(toy_export, tmp_path / "engines")
    cpu = Pipeline.from_pretrained(toy_export)
    trt = Pipeline.from_pretrained(engines, providers="trt-engine")
    assert trt.provider == "trt-engine" and trt.decode.device == "cuda"
    for ratio in (None, 2.4):
        want = cpu.generate(TEXT, max_new_tokens=10, ratio=ratio).tokens
        assert trt.generate(TEXT, max_new_tokens=10, ratio=ratio).tokens == want
    batch = [TEXT[:300], TEXT[300:800]]
    assert [r.tokens for r in trt.generate(batch, max_new_tokens=6)] == [
        r.tokens for r in cpu.generate(batch, max_new_tokens=6)
    ]
    with ThreadPoolExecutor(4) as pool:  # one execution context per thread
        got = list(pool.map(lambda _: trt.generate(TEXT, max_new_tokens=5).tokens, range(8)))
    assert got == [cpu.generate(TEXT, max_new_tokens=5).tokens] * 8


def test_engine_for_another_gpu_is_refused(toy_export, tmp_path, fake_gpu):
    engines = _engine_dir(toy_export, tmp_path / "engines", gpu_name="NVIDIA A100")
    with pytest.raises(ArtifactError, match="tuned for NVIDIA A100 .* rebuild"):
        Pipeline.from_pretrained(engines, providers="trt-engine")
