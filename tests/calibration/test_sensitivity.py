"""Sensitivity search on a three-MatMul graph with one planted int8-hostile MatMul."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from semedge.calibration.data import FeedReader
from semedge.calibration.schemes import QuantSettings, quantize_graph
from semedge.calibration.sensitivity import group_nodes, search_exclusions
from semedge.errors import AccuracyError, InputError
from tests.calibration.planted import make_planted_graph, planted_feeds, pseudo_ppl


@pytest.fixture
def planted(tmp_path):
    src = make_planted_graph(tmp_path / "planted.onnx")
    feeds = planted_feeds(8)
    sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    ref = [sess.run(["logits"], f)[0][0].argmax(-1) for f in feeds]
    counter = iter(range(10_000))

    def evaluate(scheme: str):
        def run(exclude: list[str]) -> float:
            dst = tmp_path / f"{scheme}-{next(counter)}.onnx"
            quantize_graph(
                src, dst, QuantSettings(scheme=scheme), exclude, lambda: FeedReader(feeds)
            )
            return pseudo_ppl(dst, feeds, ref)

        return run

    return src, pseudo_ppl(src, feeds, ref), evaluate


@pytest.mark.parametrize("scheme", ["static", "static-sym", "dynamic"])
def test_planted_matmul_is_kept_fp32(planted, scheme):
    _, base, evaluate = planted
    groups = {n: [n] for n in ("mm_in", "mm_planted", "mm_out")}
    res = search_exclusions(groups, evaluate(scheme), base, budget_pct=3.0)
    assert res.kept == ["mm_planted"]
    assert res.passed and res.full_loss > base * 1.5  # it was needed: all-int8 breaks the budget
    assert res.scores[0].group == "mm_planted"
    assert "sensitive" in res.kept_nodes["mm_planted"]


def test_budget_nothing_fits_raises(planted):
    _, base, evaluate = planted
    groups = {"mm_planted": ["mm_planted"]}  # the only quantizable group breaks any small budget
    with pytest.raises(AccuracyError, match="no quantization fits --max-ppl-increase 1"):
        search_exclusions(groups, evaluate("static"), base, budget_pct=1.0)


def test_negative_budget_rejected(planted):
    _, base, evaluate = planted
    with pytest.raises(InputError, match="must be >= 0"):
        search_exclusions({"mm_in": ["mm_in"]}, evaluate("static"), base, budget_pct=-1.0)


def test_groups_from_torchscript_and_hf_names():
    ts = ["/q_proj/MatMul", "/q_proj_1/MatMul", "/mlp/down_proj/MatMul", "/mlp_1/down_proj/MatMul",
          "/lm_head/MatMul"]  # fmt: skip
    assert group_nodes(ts) == {
        "q_proj": ts[:2], "mlp.down_proj": ts[2:4], "lm_head": ts[4:],
    }  # fmt: skip
    assert set(group_nodes(ts, "layer")) == {"layer.0", "layer.1", "lm_head"}
    hf = {"a": "model.layers.0.self_attn.q_proj.weight", "b": "model.layers.1.self_attn.q_proj.weight",
          "c": "model.layers.1.mlp.down_proj.weight"}  # fmt: skip
    assert group_nodes(list(hf), "role", hf) == {
        "self_attn.q_proj": ["a", "b"],
        "mlp.down_proj": ["c"],
    }
    assert group_nodes(["MatMul_1", "MatMul_2"]) == {
        "MatMul_1": ["MatMul_1"],
        "MatMul_2": ["MatMul_2"],
    }


def test_feed_reader_counts_and_strips_private_keys():
    reader = FeedReader([{"x": np.zeros(1), "_ids": np.ones(1)}])
    assert list(reader.get_next()) == ["x"]
    assert reader.get_next() is None and reader.calls == 2


def test_groups_for_packed_unscoped_gemms_use_weight_shape():
    packed = {
        "/MatMul": "/Constant_1_output_0 [64x128]",  # packed q/k/v, layer 0
        "/MatMul_1": "/Constant_9_output_0 [64x256]",  # packed gate/up, layer 0
        "/MatMul_2": "/Constant_20_output_0 [64x128]",  # packed q/k/v, layer 1
        "/o_proj/MatMul": "onnx::MatMul_7 [64x64]",
        "/o_proj_1/MatMul": "onnx::MatMul_8 [64x64]",
        "/Gemm": "core.lm.model.embed_tokens.weight [384x64]",  # tied LM head
    }
    assert group_nodes(list(packed), "auto", packed) == {
        "MatMul[64x128]": ["/MatMul", "/MatMul_2"],
        "MatMul[64x256]": ["/MatMul_1"],
        "o_proj": ["/o_proj/MatMul", "/o_proj_1/MatMul"],
        "lm_head": ["/Gemm"],
    }
