"""check-trt: each TensorRT limit is found, with its node, op, severity and source module."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from semedge.errors import ArtifactError
from semedge.export.trt_check import check_onnx_dir, check_onnx_file, source_module
from tests.export.test_trt_graphs import I64, F, _vi, make_export, make_model

X = _vi("x", F, ["batch", 4096])


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _check(tmp_path, model, name="g.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return check_onnx_file(path)


def _topk_model(k: int, sorted_: int = 1) -> onnx.ModelProto:
    node = helper.make_node(
        "TopK", ["x", "k"], ["vals", "idx"], name="/model/sampler/topk/TopK", sorted=sorted_
    )
    outs = [_vi("vals", F, ["batch", k]), _vi("idx", I64, ["batch", k])]
    return make_model([node], [X], outs, [_const("k", np.array([k], np.int64))])


def test_large_topk_is_an_error_naming_node_and_module(tmp_path):
    findings = _check(tmp_path, _topk_model(4000))
    [err] = [f for f in findings if f.severity == "error"]
    assert err.node == "/model/sampler/topk/TopK" and err.op == "TopK"
    assert err.module == "model.sampler.topk"
    assert "K=4000" in err.message and "3840" in err.message


def test_topk_within_limit_passes(tmp_path):
    assert not [f for f in _check(tmp_path, _topk_model(3840)) if f.severity == "error"]


def test_unsorted_topk_is_an_error(tmp_path):
    assert any("sorted" in f.message for f in _check(tmp_path, _topk_model(8, sorted_=0)))


@pytest.mark.parametrize("op", ["ScatterND", "ScatterElements"])
@pytest.mark.parametrize("reduction", ["none", "add", "max"])
def test_scatter_reduction(tmp_path, op, reduction):
    node = helper.make_node(op, ["x", "i", "u"], ["y"], name=f"/kv/{op}", reduction=reduction)
    ishape = [1, 1, 2] if op == "ScatterND" else [1, 1]
    inputs = [X, _vi("i", I64, ishape), _vi("u", F, [1] if op == "ScatterND" else [1, 1])]
    findings = _check(
        tmp_path, make_model([node], inputs, [_vi("y", F, ["batch", 4096])], opset=18)
    )
    errors = [f for f in findings if f.severity == "error"]
    assert bool(errors) == (reduction != "none")
    if errors:
        assert errors[0].node == f"/kv/{op}" and reduction in errors[0].message


def test_if_node_is_an_error(tmp_path):
    branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["b"])], "b", [], [_vi("b", F, ["batch", 4096])]
    )
    node = helper.make_node(
        "If", ["c"], ["y"], name="/model/If", then_branch=branch, else_branch=branch
    )
    model = make_model([node], [X, _vi("c", TensorProto.BOOL, [])], [_vi("y", F, ["batch", 4096])])
    [err] = [f for f in _check(tmp_path, model) if f.op == "If"]
    assert err.severity == "error" and "run-time data" in err.message


@pytest.mark.parametrize(("zero", "want_error"), [(0, False), (3, True)])
def test_dequantize_zero_point(tmp_path, zero, want_error):
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="/mlp/DQ")
    inits = [_const("s", np.float32(0.1)), _const("z", np.int8(zero))]
    model = make_model([node], [_vi("q", TensorProto.INT8, [4])], [_vi("y", F, [4])], inits)
    errors = [f for f in _check(tmp_path, model) if f.severity == "error"]
    assert bool(errors) == want_error
    if errors:
        assert errors[0].node == "/mlp/DQ" and "symmetric" in errors[0].message


def test_large_per_channel_qdq_is_read_whole(tmp_path):
    """Per-channel scales / zero points bigger than a vocab are still constants and checked."""
    n = 50_000
    zero = np.zeros(n, np.int8)
    zero[-1] = 1
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="/lm_head/DQ", axis=0)
    inits = [_const("s", np.full(n, 0.1, np.float32)), _const("z", zero)]
    model = make_model([node], [_vi("q", TensorProto.INT8, [n])], [_vi("y", F, [n])], inits)
    [err] = [f for f in _check(tmp_path, model) if f.severity == "error"]
    assert "symmetric" in err.message


def test_int64_tensors_are_one_warning_with_a_count(tmp_path):
    node = helper.make_node("Add", ["a", "b"], ["c"], name="/pos/Add")
    model = make_model([node], [_vi("a", I64, [2]), _vi("b", I64, [2])], [_vi("c", I64, [2])])
    [warn] = _check(tmp_path, model)
    assert warn.severity == "warning" and warn.message.startswith("3 int64 tensors")


def test_double_is_a_warning_and_uint32_an_error(tmp_path):
    nodes = [helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE, name="/a/Cast"),
             helper.make_node("Cast", ["d"], ["u"], to=TensorProto.UINT32, name="/b/Cast")]  # fmt: skip
    model = make_model(nodes, [X], [_vi("u", TensorProto.UINT32, ["batch", 4096])])
    by_sev = {(f.severity, f.node) for f in _check(tmp_path, model)}
    assert ("warning", "/a/Cast") in by_sev and ("error", "/b/Cast") in by_sev


def test_custom_domain_op_is_an_error(tmp_path):
    node = helper.make_node(
        "GroupQueryAttention", ["x"], ["y"], domain="com.microsoft", name="/model/layers.3/attn/GQA"
    )
    model = make_model([node], [X], [_vi("y", F, ["batch", 4096])])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    [err] = [f for f in _check(tmp_path, model) if f.severity == "error"]
    assert "plugin" in err.message and err.module == "model.layers.3.attn"


def test_unsupported_op_and_opset(tmp_path):
    node = helper.make_node("Unique", ["x"], ["y"], name="/u/Unique")
    model = make_model([node], [X], [_vi("y", F, [None])], opset=8)
    messages = [f.message for f in _check(tmp_path, model) if f.severity == "error"]
    assert any("no TensorRT ONNX importer" in m for m in messages)
    assert any(m.startswith("opset 8") for m in messages)


def test_external_data_is_a_warning_and_a_missing_file_an_error(tmp_path):
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="/proj/MatMul")
    model = make_model([node], [_vi("x", F, [1, 64])], [_vi("y", F, [1, 64])], [w])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="m.data", size_threshold=0)
    [warn] = check_onnx_file(path)
    assert warn.severity == "warning" and "m.data" in warn.message
    (tmp_path / "m.data").unlink()
    [err] = check_onnx_file(path)
    assert err.severity == "error" and "missing" in err.message


def test_source_module_from_dynamo_metadata():
    node = helper.make_node("MatMul", ["a", "b"], ["c"], name="node_MatMul_12")
    entry = node.metadata_props.add()
    entry.key, entry.value = (
        "namespace",
        ": M/model.layers.0: Layer/model.layers.0.mlp: MLP/mm_3: aten.mm.default",
    )
    assert source_module(node) == "model.layers.0.mlp"
    plain = helper.make_node("MatMul", ["a", "b"], ["c"], name="/model/layers.1/mlp/up/MatMul")
    assert source_module(plain) == "model.layers.1.mlp.up"


def test_export_shaped_graphs_pass(tmp_path):
    report = check_onnx_dir(make_export(tmp_path / "e"))
    assert report.passed, report.to_dict()
    assert report.graphs == ["decode.onnx", "embed.onnx", "encoder.onnx", "prefill.onnx"]


def test_export_with_a_large_topk_fails(tmp_path):
    report = check_onnx_dir(make_export(tmp_path / "e", {"prefill.onnx": _topk_model(5000)}))
    assert not report.passed
    assert report.errors[0].graph == "prefill.onnx" and report.errors[0].op == "TopK"


def test_corrupt_onnx_is_an_artifact_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x07not a protobuf at all\xff\xff")
    with pytest.raises(ArtifactError, match="not a valid ONNX model"):
        check_onnx_file(path)


def test_directory_without_manifest_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="manifest.json"):
        check_onnx_dir(tmp_path)


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma3"])
def tiny_plain_export(request, tiny_models, tmp_path_factory):
    """Tiny exports with plain ONNX attention: the graphs semedge builds for TensorRT."""
    from semedge.export import ExportConfig, export_onnx

    out = tmp_path_factory.mktemp(f"tiny-plain-{request.param}") / "export"
    # the graphs do not depend on the gate; skip it here (test_onnx_export gates plain exports)
    export_onnx(tiny_models[request.param], out, ExportConfig(attention="plain", validate=False))
    return out


def test_semedge_plain_export_passes(tiny_plain_export):
    report = check_onnx_dir(tiny_plain_export)
    assert report.passed, [f.to_dict() for f in report.errors]
    assert report.graphs == ["decode.onnx", "embed.onnx", "encoder.onnx", "prefill.onnx"]


def test_semedge_fused_export_fails_only_on_ort_contrib_attention(tiny_export):
    """The default (fused, ONNX Runtime) export is for ORT: its only TensorRT errors are the
    com.microsoft attention ops, each pointing at `--attention plain`."""
    errors = check_onnx_dir(tiny_export).errors
    assert errors and {f.op for f in errors} == {"GroupQueryAttention"}
    assert all("--attention plain" in f.message for f in errors)
