"""FP16 conversion of the tiny export: norms/softmax kept fp32, parity against fp32."""

from __future__ import annotations

import json

import onnx
from semedge import constants as C
from semedge.artifacts import load_manifest, verify_manifest
from semedge.calibration.fp16 import Fp16Config, convert_fp16


def test_fp16_keeps_norms_fp32_and_matches_fp32(tiny_export, cal_text, tmp_path):
    out = tmp_path / "fp16"
    cfg = Fp16Config(eval_windows=2, eval_context=32, eval_tokens=16)
    report = convert_fp16(tiny_export, out, cal_text, cfg)
    assert report.passed and report.top1_agreement >= 0.99
    assert (
        0 < report.max_abs_logits_diff < 0.1
        and report.mean_abs_logits_diff <= report.max_abs_logits_diff
    )
    assert report.size_mb < 0.6 * report.size_mb_fp32
    model = onnx.load(str(out / C.PREFILL_ONNX))
    types = {i.data_type for i in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    # the RMSNorm pieces (x**2, its mean) still compute in fp32: a Cast to fp32 feeds each Pow
    producers = {o: n for n in model.graph.node for o in n.output}
    pows = [n for n in model.graph.node if n.op_type == "Pow"]
    assert pows and "Pow" in report.kept_fp32_ops
    for p in pows:
        cast = producers[p.input[0]]
        assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT
    # I/O types unchanged: the runtime feeds the fp16 copy exactly like the fp32 export
    assert [i.type for i in model.graph.input] == [
        i.type for i in onnx.load(str(tiny_export / C.PREFILL_ONNX)).graph.input
    ]
    manifest = verify_manifest(out, load_manifest(out, expect_format=C.FORMAT_CALIBRATED))
    assert manifest.config["dtype"] == "fp16"
    d = json.loads(json.dumps(report.to_dict()))
    assert {"max_abs_logits_diff", "mean_abs_logits_diff", "top1_agreement"} <= set(d)
