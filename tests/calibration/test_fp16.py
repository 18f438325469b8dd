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


def test_nodes_past_fp16_range_stay_fp32(tiny_export, cal_text, tmp_path):
    """A planted activation of 2e5 (past fp16's 65504) before every down_proj MatMul, with that
    channel's weight row zeroed: the fp32 model is unchanged; under the op-type block list alone
    the sum is an fp16 inf (inf * 0 = NaN on a GPU; ONNX Runtime's CPU casts the fp16 MatMul
    back to fp32 and hides it). The measured ranges keep the Add and the MatMul reading it fp32."""
    import numpy as np
    import onnxruntime as ort

    from semedge.calibration.fp16 import fp16_from_fp32
    from semedge.calibration.ranges import _output_types, node_ranges, too_wide_for_fp16
    from tests.calibration.planted import plant_outliers

    planted = plant_outliers(tiny_export, tmp_path / "planted", "down_proj", value=2e5)
    hidden = json.loads((tiny_export / C.MANIFEST).read_text())["config"]["hidden_size"]
    feed = {
        C.INPUTS_EMBEDS: np.random.default_rng(0).normal(0, 1, (1, 8, hidden)).astype(np.float32),
        C.POSITION_IDS: np.arange(8, dtype=np.int64)[None],
        C.ATTENTION_MASK: np.ones((1, 8), np.int64),
    }
    wide = too_wide_for_fp16(node_ranges(planted / C.PREFILL_ONNX, [feed]))
    adds = [n for n in wide if n.startswith("planted_add")]
    assert adds and any("down_proj" in n and "MatMul" in n for n in wide)
    assert all("planted_" in n or "down_proj" in n for n in wide), wide  # nothing else is wide

    def planted_sum(path):
        """The first planted Add's output, as the converted graph types it."""
        model = onnx.load(str(path))
        add = next(n for n in model.graph.node if n.name == adds[0])
        kind = _output_types(model)[add.output[0]]
        model.graph.output.append(onnx.helper.make_tensor_value_info(add.output[0], kind, None))
        got = ort.InferenceSession(model.SerializeToString()).run([add.output[0]], feed)[0]
        return got, ort.InferenceSession(str(path)).run(None, feed)[0]

    fp16_from_fp32(planted / C.PREFILL_ONNX, tmp_path / "plain.onnx")
    plain, _ = planted_sum(tmp_path / "plain.onnx")  # the op-type block list alone: fp16, inf
    assert plain.dtype == np.float16 and np.isinf(plain).any()
    fp16_from_fp32(planted / C.PREFILL_ONNX, tmp_path / "kept.onnx", keep_nodes=tuple(wide))
    kept, logits = planted_sum(tmp_path / "kept.onnx")
    assert kept.dtype == np.float32 and np.isfinite(kept).all() and kept.max() >= 1.9e5
    want = ort.InferenceSession(str(planted / C.PREFILL_ONNX)).run(None, feed)[0]
    np.testing.assert_allclose(logits, want, atol=0.1)

    cfg = Fp16Config(eval_windows=2, eval_context=32, eval_tokens=16)
    report = convert_fp16(planted, tmp_path / "fp16", cal_text, cfg)
    assert report.passed and report.kept_fp32_range_nodes >= 2 * len(adds)


def test_rotary_angles_stay_fp32(tiny_export, tmp_path):
    """position x inv_freq and its Cos/Sin compute in fp32: in fp16 the angle's ulp is 0.25 rad
    at position 512 (Gemma 3's top-1 agreement fell to 0.984 from it)."""
    from semedge.calibration.fp16 import fp16_from_fp32
    from semedge.calibration.ranges import _output_types

    fp16_from_fp32(tiny_export / C.PREFILL_ONNX, tmp_path / "p.onnx")
    model = onnx.load(str(tmp_path / "p.onnx"))
    types = _output_types(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    trig = [n for n in model.graph.node if n.op_type in ("Cos", "Sin")]
    assert trig
    upstream, todo = {}, [producer[i] for n in trig for i in n.input if i in producer]
    while todo:
        node = todo.pop()
        if node.name not in upstream:
            upstream[node.name] = node
            todo.extend(producer[i] for i in node.input if i in producer)
    assert all(types[o] == onnx.TensorProto.FLOAT for n in trig for o in (*n.input, *n.output))
    assert any(n.op_type in ("MatMul", "Mul") for n in upstream.values())  # position x inv_freq
    floats = [o for n in upstream.values() for o in n.output if types[o] in (1, 10)]
    assert floats and all(types[o] == onnx.TensorProto.FLOAT for o in floats)
