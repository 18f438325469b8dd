"""INT8 calibration of the tiny Llama export: Q/DQ form, sensitivity, cache, manifest."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from semedge import constants as C
from semedge.artifacts import load_manifest, sha256_file, verify_manifest
from semedge.calibration.data import tokenize_stream, with_graphs
from semedge.calibration.int8 import Int8Config, calibrate_int8, open_export
from semedge.calibration.schemes import weight_matmuls
from semedge.calibration.scoring import score_graphs
from semedge.errors import InputError
from tests.calibration.conftest import INT8_FAST


def _qdq_zero_points(path):
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zps = [inits[n.input[2]] for n in model.graph.node
           if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]  # fmt: skip
    return model, zps


def test_tensorrt_target_writes_symmetric_qdq(tiny_export, cal_text, tmp_path):
    out = tmp_path / "int8"
    cfg = Int8Config(target="tensorrt", max_ppl_increase=50.0, **INT8_FAST)
    report = calibrate_int8(tiny_export, out, cal_text, cfg, cache_root=tmp_path / "cache")
    assert report.scheme == "static-sym" and report.quantized_nodes > 0
    for graph in (C.PREFILL_ONNX, C.DECODE_ONNX):
        model, zps = _qdq_zero_points(out / graph)
        n_weights = len(weight_matmuls(onnx.load(str(tiny_export / graph))))
        assert n_weights >= 5 and len(zps) >= 2 * n_weights  # activation + weight of each
        assert all(z.dtype == np.int8 and not z.any() for z in zps)  # symmetric: zero point 0
        src = onnx.load(str(tiny_export / graph), load_external_data=False)
        assert [i.name for i in model.graph.input] == [i.name for i in src.graph.input]
        assert [o.name for o in model.graph.output] == [o.name for o in src.graph.output]
    manifest = verify_manifest(out, load_manifest(out, expect_format=C.FORMAT_CALIBRATED))
    quant = manifest.config["quantization"]
    assert quant["scheme"] == "static-sym" and quant["target"] == "tensorrt"
    assert manifest.config["num_layers"] == load_manifest(tiny_export).config["num_layers"]
    assert set(load_manifest(tiny_export).files) == set(manifest.files)


def test_sensitivity_keeps_planted_down_proj(planted_down_export, cal_text, tmp_path):
    # uncompressed windows: the tiny random LM is near uniform (ppl ~ its 384-token vocabulary),
    # and on 27-position compressed windows the planted group's harm is inside that noise
    # (compressed calibration inputs: tests/calibration/test_data.py)
    cfg = Int8Config(scheme="static", max_ppl_increase=5.0, compress=False, **INT8_FAST)
    report = calibrate_int8(planted_down_export, tmp_path / "o", cal_text, cfg, tmp_path / "c")
    (kept,) = report.sensitivity["kept_groups"]  # exactly the planted group
    assert kept.endswith("down_proj")
    assert report.sensitivity["loss_all_quantized"] > report.ppl_fp32 * 1.05
    down = [n for n in report.kept_high_precision if "down_proj" in n]
    assert len(down) == 4 and all("sensitive" in report.kept_reasons[n] for n in down)
    assert report.passed
    # the kept nodes really are float in the written graph: no DequantizeLinear feeds them
    model = onnx.load(str(tmp_path / "o" / C.PREFILL_ONNX))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in down:
            assert all(producers.get(i) != "DequantizeLinear" for i in node.input)


def test_cache_skips_collection_on_rerun(tiny_export, cal_text, tmp_path):
    cfg = Int8Config(scheme="static", max_ppl_increase=50.0, **INT8_FAST)
    first = calibrate_int8(tiny_export, tmp_path / "a", cal_text, cfg, tmp_path / "cache")
    second = calibrate_int8(tiny_export, tmp_path / "b", cal_text, cfg, tmp_path / "cache")
    assert not first.cache_hit and first.calibration_batches > 0
    assert second.cache_hit and second.calibration_batches == 0
    assert sha256_file(tmp_path / "a" / C.PREFILL_ONNX) == sha256_file(
        tmp_path / "b" / C.PREFILL_ONNX
    )
    other = cal_text.with_name("other.txt")  # different data: a new cache entry, collected again
    other.write_text(cal_text.read_text()[1000:], encoding="utf-8")
    third = calibrate_int8(tiny_export, tmp_path / "c", other, cfg, tmp_path / "cache")
    assert not third.cache_hit and third.calibration_batches > 0


def test_cpu_auto_measures_every_scheme(tiny_export, cal_text, tmp_path):
    cfg = Int8Config(max_ppl_increase=50.0, **INT8_FAST)
    report = calibrate_int8(tiny_export, tmp_path / "o", cal_text, cfg, tmp_path / "c")
    got = {c["scheme"]: c for c in report.candidates}
    assert set(got) == {"static", "dynamic", "weight-only"}
    assert all(isinstance(c["kept_groups"], list) for c in got.values() if c["passed"])
    best = max(got.values(), key=lambda c: c["prefill_speedup"])
    assert report.scheme == best["scheme"]
    d = json.loads(json.dumps(report.to_dict()))
    for key in ("ppl_fp32", "ppl_int8", "top1_agreement", "prefill_speedup", "decode_speedup",
                "size_mb", "kept_high_precision"):  # fmt: skip
        assert d[key] is not None, key
    # the written graphs are what the report measured
    _, pipe = open_export(tiny_export)
    ids = tokenize_stream(pipe, cal_text.read_text(encoding="utf-8")).ids
    held = [ids[ids.size - 96 : ids.size - 48], ids[ids.size - 48 :]]
    with pipe, with_graphs(pipe, tmp_path / "o") as written:
        score = score_graphs(written, held, 32)
    assert score.ppl == pytest.approx(report.ppl_int8, rel=1e-6)


def test_runtime_runs_the_calibrated_dir(tiny_export, cal_text, tmp_path):
    from semedge.runtime import Pipeline

    out = tmp_path / "int8"
    cfg = Int8Config(scheme="dynamic", max_ppl_increase=50.0, **INT8_FAST)
    calibrate_int8(tiny_export, out, cal_text, cfg, cache_root=tmp_path / "c")
    prompt = cal_text.read_text(encoding="utf-8")[:1200]
    with Pipeline.from_pretrained(out) as pipe:
        res = pipe.generate(prompt, max_new_tokens=4, ratio=2.0)
    assert len(res.tokens) == 4 and res.compressed_tokens < res.prompt_tokens


def test_decode_only_leaves_the_prefill_graph_as_exported(tiny_export, cal_text, tmp_path):
    out = tmp_path / "dec8"
    cfg = Int8Config(scheme="weight-only", max_ppl_increase=50.0, graphs=(C.DECODE_ONNX,),
                     **INT8_FAST)  # fmt: skip
    report = calibrate_int8(tiny_export, out, cal_text, cfg, cache_root=tmp_path / "cache")
    assert sha256_file(out / C.PREFILL_ONNX) == sha256_file(tiny_export / C.PREFILL_ONNX)
    graph = onnx.load(str(out / C.DECODE_ONNX)).graph
    ops = {n.op_type for n in graph.node}
    assert "MatMulNBits" in ops and report.quantized_nodes > 0
    vocab = load_manifest(tiny_export).config["vocab_size"]
    head = [n for n in graph.node if n.op_type == "MatMulNBits"
            and any(a.name == "N" and a.i == vocab for a in n.attribute)]  # fmt: skip
    assert "Gemm" not in ops and len(head) == 1  # the LM head (tied table, transB) quantized
    assert report.prefill_ms_int8 is None and report.decode_ms_int8 > 0  # prefill not re-timed
    verify_manifest(out, load_manifest(out, expect_format=C.FORMAT_CALIBRATED))
    with pytest.raises(Exception, match="graphs must be"):
        Int8Config(graphs=("encoder.onnx",))


def test_int4_weight_only_decode_packs_4_bit_weights_and_runs(tiny_export, cal_text, tmp_path):
    """`--scheme weight-only-int4`: MatMulNBits with bits=4 (half the weight bytes of the 8-bit
    scheme); only asked for by name, never picked by auto; the runtime runs the result."""
    from semedge.errors import InputError
    from semedge.runtime import Pipeline

    graphs = {}
    for scheme in ("weight-only", "weight-only-int4"):
        out = tmp_path / scheme
        cfg = Int8Config(scheme=scheme, max_ppl_increase=50.0, graphs=(C.DECODE_ONNX,),
                         **INT8_FAST)  # fmt: skip
        report = calibrate_int8(tiny_export, out, cal_text, cfg, cache_root=tmp_path / "c")
        assert report.scheme == scheme and report.quantized_nodes > 0
        graphs[scheme] = onnx.load(str(out / C.DECODE_ONNX))
    for scheme, bits in (("weight-only", 8), ("weight-only-int4", 4)):
        nbits = [n for n in graphs[scheme].graph.node if n.op_type == "MatMulNBits"]
        assert nbits and {a.i for n in nbits for a in n.attribute if a.name == "bits"} == {bits}
        got = {a.i for n in nbits for a in n.attribute if a.name == "block_size"}
        assert got == {32}  # the default block length, recorded in the manifest
        assert load_manifest(tmp_path / scheme).config["quantization"]["block_size"] == 32
    uint8 = onnx.TensorProto.UINT8  # MatMulNBits' packed weight blocks
    packed = {
        s: sum(len(i.raw_data) for i in g.graph.initializer if i.data_type == uint8)
        for s, g in graphs.items()
    }
    assert packed["weight-only-int4"] < 0.6 * packed["weight-only"]
    with Pipeline.from_pretrained(tmp_path / "weight-only-int4") as pipe:
        res = pipe.generate(cal_text.read_text(encoding="utf-8")[:600], max_new_tokens=4)
    assert len(res.tokens) == 4
    with pytest.raises(InputError, match="not for --target tensorrt"):
        Int8Config(scheme="weight-only-int4", target="tensorrt")


@pytest.mark.parametrize("bias", ["none", "zero-constant", "initializer"])
def test_weight_only_rewrites_gemm_as_a_quantized_matmul(tmp_path, bias):
    """Gemm(transB=1) with a constant weight (and bias) becomes MatMul (+ Add) over a (K, N)
    copy, so MatMulNBits takes it; the outputs stay those of the float graph."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from semedge.calibration.schemes import QuantSettings, quantize_graph

    rng = np.random.default_rng(0)
    K, N = 64, 96
    w = rng.normal(0, 0.1, (N, K)).astype(np.float32)  # (N, K): an LM head's tied table
    b = rng.normal(0, 1, N).astype(np.float32) if bias == "initializer" else np.zeros(N, np.float32)
    inits = [numpy_helper.from_array(w, "table")]
    nodes, inputs = [], ["x", "table"]
    if bias == "zero-constant":
        nodes.append(helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(b)))
        inputs.append("c")
    elif bias == "initializer":
        inits.append(numpy_helper.from_array(b, "c"))
        inputs.append("c")
    nodes.append(helper.make_node("Gemm", inputs, ["y"], name="head", transB=1))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])], inits,
    )  # fmt: skip
    src, dst = tmp_path / "g.onnx", tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    assert quantize_graph(src, dst, QuantSettings(scheme="weight-only")) == ["head"]
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node if n.op_type != "Constant"]
    assert ops == (["MatMulNBits", "Add"] if bias == "initializer" else ["MatMulNBits"])
    x = rng.normal(0, 1, (3, K)).astype(np.float32)
    want = x @ w.T + b
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_top1_floor_keeps_the_planted_group_a_loose_ppl_budget_lets_through(
    planted_down_export, cal_text, tmp_path
):
    loose = Int8Config(scheme="static", max_ppl_increase=1e6, compress=False, **INT8_FAST)
    report = calibrate_int8(planted_down_export, tmp_path / "a", cal_text, loose, tmp_path / "c")
    assert report.sensitivity["kept_groups"] == [] and report.top1_agreement < 0.9
    floor = replace(loose, min_top1=0.9)
    report = calibrate_int8(planted_down_export, tmp_path / "b", cal_text, floor, tmp_path / "c")
    assert report.sensitivity["kept_groups"][0].endswith("down_proj")
    assert report.top1_agreement >= 0.9 and report.passed
    quant = load_manifest(tmp_path / "b").config["quantization"]
    assert quant["min_top1"] == 0.9 and quant["top1_agreement"] == report.top1_agreement
    with pytest.raises(InputError, match="--min-top1 must be in"):
        Int8Config(min_top1=-0.1)


def test_decode_only_search_keeps_whole_layers(planted_down_export, cal_text, tmp_path):
    """A decode step reads every weight per token: `auto` groups a decode-only search by layer,
    so what stays fp32 is a few layers' bytes, not one role across every layer."""
    cfg = Int8Config(scheme="weight-only", max_ppl_increase=1e6, min_top1=0.9, compress=False,
                     graphs=(C.DECODE_ONNX,), **INT8_FAST)  # fmt: skip
    report = calibrate_int8(planted_down_export, tmp_path / "o", cal_text, cfg, tmp_path / "c")
    groups = [g["group"] for g in report.sensitivity["groups"]]
    layers = load_manifest(planted_down_export).config["num_layers"]
    assert sorted(groups) == sorted([*(f"layer.{i}" for i in range(layers)), "lm_head"])
    assert report.passed and report.top1_agreement >= 0.9
    assert report.sensitivity["loss_all_quantized"] is not None


def test_block_size_sets_the_weight_only_blocks(tiny_export, cal_text, tmp_path):
    """`--block-size 64`: every MatMulNBits packs blocks of 64 and the report says so; a length
    MatMulNBits does not take is refused before any work."""
    cfg = Int8Config(scheme="weight-only", max_ppl_increase=50.0, graphs=(C.DECODE_ONNX,),
                     block_size=64, **INT8_FAST)  # fmt: skip
    report = calibrate_int8(tiny_export, tmp_path / "b64", cal_text, cfg, cache_root=tmp_path / "c")
    nodes = [n for n in onnx.load(str(tmp_path / "b64" / C.DECODE_ONNX)).graph.node
             if n.op_type == "MatMulNBits"]  # fmt: skip
    assert nodes and {a.i for n in nodes for a in n.attribute if a.name == "block_size"} == {64}
    assert report.block_size == 64 and report.to_dict()["block_size"] == 64
    for bad in (48, 8, -16):
        with pytest.raises(InputError, match="--block-size must be one of"):
            Int8Config(block_size=bad)
