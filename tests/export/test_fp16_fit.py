"""`export onnx --dtype fp16` refuses a model whose activations fp16 cannot hold (one line,
exit 1, nothing written) and still exports one whose activations fit."""

from __future__ import annotations

import json

import pytest

from semedge import constants as C
from tests.conftest import assert_one_line_error

FAST = ["--dtype", "fp16", "--parity-lengths", "7,32"]


@pytest.fixture(scope="module")
def wide_llama(tiny_llama, tmp_path_factory):
    """The tiny Llama with layer 0's MLP output scaled so the residual stream passes 65504 while
    every weight stays well inside fp16."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    with torch.no_grad():
        w = model.model.layers[0].mlp.down_proj.weight
        w.mul_(5e4 / float(w.abs().max()))  # |w| <= 5e4 < 65504; the residual reaches ~1.3e5
    out = tmp_path_factory.mktemp("wide") / "llama"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(out)
    return out


def _peak(export) -> float:
    return json.loads((export / C.MANIFEST).read_text())["config"]["hidden_peak"]


def test_fp16_export_of_a_model_that_fits_passes(cli, tiny_llama, tmp_path):
    cli("export", "onnx", "-m", tiny_llama, tmp_path / "f16", *FAST)
    assert 0 < _peak(tmp_path / "f16") < C.FP16_MAX


def test_the_manifest_records_the_fp32_hidden_peak(cli, wide_llama, tmp_path):
    """The wide model exports in fp32 (a TensorRT build with --fp16 then reads the peak)."""
    cli("export", "onnx", "-m", wide_llama, tmp_path / "f32", "--parity-lengths", "7,32")
    assert _peak(tmp_path / "f32") > C.FP16_MAX


def test_fp16_export_of_a_model_past_fp16_is_refused(cli, wide_llama, tmp_path):
    out = tmp_path / "f16"
    res = cli("export", "onnx", "-m", wide_llama, out, *FAST, expect_rc=1)
    assert_one_line_error(res)
    assert "does not fit fp16" in res.stderr and "--precision fp16" in res.stderr
    assert "after decoder layer 1 of" in res.stderr
    assert not out.exists()
