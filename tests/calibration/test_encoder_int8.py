"""`calibrate int8 --encoder int8`: the SemToken encoder in weight-only int8, gated on its spans."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from semedge import constants as C
from semedge.artifacts import load_manifest, sha256_file, verify_manifest
from semedge.calibration.data import tokenize_stream
from semedge.calibration.encoder_int8 import PROMPT_TOKENS, gate_encoder, span_prompts
from semedge.calibration.int8 import Int8Config, calibrate_int8
from semedge.errors import AccuracyError, InputError
from tests.calibration.conftest import INT8_FAST

DECODE_ONLY = dict(scheme="weight-only", max_ppl_increase=1e6, graphs=(C.DECODE_ONNX,), **INT8_FAST)


def test_int8_encoder_is_written_listed_and_run(tiny_export, cal_text, tmp_path):
    from semedge.runtime import Pipeline

    cfg = Int8Config(encoder="int8", min_span_agreement=0.0, **DECODE_ONLY)
    report = calibrate_int8(tiny_export, tmp_path / "o", cal_text, cfg, tmp_path / "c")
    out = tmp_path / "o"
    manifest = load_manifest(out, expect_format=C.FORMAT_CALIBRATED)
    verify_manifest(out, manifest)
    assert sha256_file(out / C.ENCODER_ONNX) != sha256_file(tiny_export / C.ENCODER_ONNX)
    ops = {n.op_type for n in onnx.load(str(out / C.ENCODER_ONNX)).graph.node}
    assert "MatMulNBits" in ops
    rec = manifest.config["encoder_quantization"]
    assert rec == report.encoder and 0.0 <= rec["mean_jaccard"] <= 1.0
    assert rec["cases"] % 3 == 0 and 0 <= rec["identical"] <= rec["cases"]
    assert rec["encoder_ms_int8"] > 0 and "path" not in rec
    with Pipeline.from_pretrained(out) as pipe:
        res = pipe.generate(
            cal_text.read_text(encoding="utf-8")[:1200], max_new_tokens=2, ratio=2.0
        )
    assert res.compressed_tokens < res.prompt_tokens


def _noisy_copy(src, dst, scale):
    """`src`'s encoder graph with gaussian noise of `scale` x each 2-D weight's std added."""
    model = onnx.load(str(src))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim == 2 and w.dtype == np.float32:
            noisy = w + rng.normal(0, scale * float(w.std()) + 1e-12, w.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    onnx.save(model, str(dst))
    return dst


def test_the_span_gate_passes_the_same_encoder_and_refuses_a_moved_one(
    tiny_export, cal_text, tmp_path
):
    """A copy of the fp32 encoder gives identical spans; one whose weights moved by their own
    spread gives other spans, and the gate refuses it."""
    from semedge.runtime import Pipeline

    same = tmp_path / "same.onnx"
    shutil.copy2(tiny_export / C.ENCODER_ONNX, same)
    moved = _noisy_copy(tiny_export / C.ENCODER_ONNX, tmp_path / "moved.onnx", 1.0)
    with Pipeline.from_pretrained(tiny_export) as pipe:
        stream = tokenize_stream(pipe, cal_text.read_text(encoding="utf-8"))
        prompts = span_prompts(stream, 0, 3 * PROMPT_TOKENS)
        rec = gate_encoder(pipe, same, prompts, 0.99, 64)
        assert rec["identical"] == rec["cases"] == 9 and rec["mean_jaccard"] == 1.0
        with pytest.raises(AccuracyError, match="keep --encoder fp32"):
            gate_encoder(pipe, moved, prompts, 0.99, 64)


def test_too_little_text_for_the_span_gate_is_refused(tiny_export, cal_text):
    from semedge.runtime import Pipeline

    with Pipeline.from_pretrained(tiny_export) as pipe:
        stream = tokenize_stream(pipe, cal_text.read_text(encoding="utf-8"))
    with pytest.raises(InputError, match="needs 2048 tokens"):
        span_prompts(stream, 0, PROMPT_TOKENS + 5)


@pytest.mark.parametrize("bad", [dict(encoder="int4"), dict(min_span_agreement=1.5)])
def test_bad_encoder_settings_are_refused(bad):
    with pytest.raises(InputError):
        Int8Config(**bad)


def test_openvino_runs_an_int8_encoder_on_onnx_runtime(tiny_export_plain, cal_text, tmp_path):
    """MatMulNBits is ONNX Runtime's op: under --provider openvino the int8 encoder (like the
    decode graphs) runs on ONNX Runtime, the prefill on OpenVINO."""
    pytest.importorskip("openvino")
    from semedge.runtime import Pipeline
    from semedge.runtime.backends.ort import OrtBackend

    cfg = Int8Config(encoder="int8", min_span_agreement=0.0, **DECODE_ONLY)
    calibrate_int8(tiny_export_plain, tmp_path / "o", cal_text, cfg, tmp_path / "c")
    with Pipeline.from_pretrained(tmp_path / "o", providers="openvino") as pipe:
        assert isinstance(pipe.backends["encoder"], OrtBackend)
        assert not isinstance(pipe.prefill, OrtBackend)
        res = pipe.generate(
            cal_text.read_text(encoding="utf-8")[:1200], max_new_tokens=2, ratio=2.0
        )
    assert res.compressed_tokens < res.prompt_tokens
