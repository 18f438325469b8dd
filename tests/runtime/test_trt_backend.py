"""TrtBackend plumbing (device KV cache, bound presents, per-thread contexts, compat check) on a
host-memory double of tensorrt/cuda-python; real engines run in the `trt` tests on a GPU."""

from __future__ import annotations

import json
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


def test_shapes_outside_the_engine_profile_are_refused_naming_profile_and_dim(
    toy_export, tmp_path, fake_gpu, monkeypatch
):
    from semedge.errors import InputError

    engines = _engine_dir(toy_export, tmp_path / "engines")
    trt = Pipeline.from_pretrained(engines, providers="trt-engine")
    monkeypatch.setattr(fake_trt, "PROFILE_MAX", 16)  # engine "built" for <= 16 positions
    trt.prefill.close()
    trt.prefill.load()  # re-reads the profiles from the (fake) engine
    with pytest.raises(InputError, match=r"prefill.plan input 'inputs_embeds' .* dimension 1 is \d+"
                       r", outside optimization profile 0's range \[1, 16\]"):  # fmt: skip
        trt.generate(TEXT, max_new_tokens=2)


def test_false_from_set_input_shape_or_address_is_an_error(
    toy_export, tmp_path, fake_gpu, monkeypatch
):
    from semedge.errors import BackendUnavailable, InputError

    engines = _engine_dir(toy_export, tmp_path / "engines")
    trt = Pipeline.from_pretrained(engines, providers="trt-engine")
    monkeypatch.setattr(fake_trt, "REFUSE_ADDRESS", True)
    with pytest.raises(BackendUnavailable, match="refused the device address of prefill.plan"):
        trt.generate(TEXT, max_new_tokens=2)
    monkeypatch.setattr(fake_trt, "REFUSE_ADDRESS", False)
    monkeypatch.setattr(fake_trt, "PROFILE_MAX", 16)
    monkeypatch.setattr(type(trt.prefill), "check_shape", lambda self, name, shape: None)
    with pytest.raises(InputError, match="TensorRT refused shape .* prefill.plan input"):
        trt.generate(TEXT, max_new_tokens=2)


def test_engine_file_not_listed_is_refused(toy_export, tmp_path, fake_gpu):
    engines = _engine_dir(toy_export, tmp_path / "engines")
    data = json.loads((engines / "manifest.json").read_text())
    data["files"].pop("decode.plan")
    (engines / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="decode.plan.*not listed"):
        Pipeline.from_pretrained(engines, providers="trt-engine")
