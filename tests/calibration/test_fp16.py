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
    assert report.size_mb < 0.7 * report.size_mb_fp32  # weights fp16; norm weights stay fp32
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


def test_kept_fp32_chain_does_not_round_trip_through_fp16(tmp_path):
    """x ~ 1000: mean(x**2) ~ 1e6 overflows fp16; the kept Pow -> ReduceMean -> Sqrt chain must
    pass it in fp32 (the converter alone casts to fp16 and back between kept nodes)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from semedge.calibration.fp16 import fp16_from_fp32

    nodes = [
        helper.make_node("Pow", ["x", "two"], ["sq"], "n/Pow"),
        helper.make_node("ReduceMean", ["sq"], ["ms"], "n/ReduceMean", axes=[-1], keepdims=1),
        helper.make_node("Sqrt", ["ms"], ["rms"], "n/Sqrt"),
        helper.make_node("Div", ["x", "rms"], ["y"], "n/Div"),
    ]
    graph = helper.make_graph(
        nodes, "rms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "a.onnx"))
    fp16_from_fp32(tmp_path / "a.onnx", tmp_path / "b.onnx")
    x = {"x": np.linspace(500.0, 1500.0, 8, dtype=np.float32)[None]}
    want = ort.InferenceSession(str(tmp_path / "a.onnx")).run(None, x)[0]
    got = ort.InferenceSession(str(tmp_path / "b.onnx")).run(None, x)[0]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=2e-3)
