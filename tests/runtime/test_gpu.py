"""GPU paths (skipped without CUDA / TensorRT): same greedy tokens as the CPU runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from semedge.errors import ArtifactError
from semedge.runtime import Pipeline
from tests.runtime.toy_export import sample_text

ROOT = Path(__file__).resolve().parents[2]
TEXT = sample_text()[:1200]


def _tokens(path, provider, ratio):
    with Pipeline.from_pretrained(path, providers=provider) as pipe:
        return pipe.generate(TEXT, max_new_tokens=12, ratio=ratio).tokens


@pytest.mark.gpu
@pytest.mark.parametrize("ratio", [None, 2.4])
def test_cuda_provider_matches_cpu(toy_export, ratio):
    assert _tokens(toy_export, "cuda", ratio) == _tokens(toy_export, "cpu", ratio)


@pytest.mark.trt
def test_tensorrt_ep_matches_cpu(toy_export):
    assert _tokens(toy_export, "tensorrt", 2.4) == _tokens(toy_export, "cpu", 2.4)


@pytest.mark.trt
def test_native_engines_match_cpu(toy_export, tmp_path):
    from semedge.export.trt_build import build_engines

    engines = build_engines(toy_export, tmp_path / "engines")
    assert _tokens(engines, "trt-engine", 2.4) == _tokens(toy_export, "cpu", 2.4)


def test_trt_engine_provider_needs_an_engine_dir(toy_export):
    with pytest.raises(ArtifactError, match="needs an engine directory"):
        Pipeline.from_pretrained(toy_export, providers="trt-engine")
