"""Sensitivity search on a three-MatMul graph with one planted int8-hostile MatMul."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from semedge.calibration.data import FeedReader
from semedge.calibration.schemes import QuantSettings, quantize_graph
from semedge.calibration.sensitivity import Trial, group_nodes, search_exclusions
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

    def evaluate_top1(scheme: str):
        def run(exclude: list[str]) -> Trial:
            dst = tmp_path / f"{scheme}-{next(counter)}.onnx"
            quantize_graph(
                src, dst, QuantSettings(scheme=scheme), exclude, lambda: FeedReader(feeds)
            )
            sess = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
            got = [sess.run(["logits"], f)[0][0].argmax(-1) for f in feeds]
            top1 = float(np.mean(np.concatenate(got) == np.concatenate(ref)))
            return Trial(pseudo_ppl(dst, feeds, ref), top1, 1.0 - top1)

        return run

    evaluate.top1 = evaluate_top1
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


def test_top1_floor_keeps_what_flips_tokens_inside_a_loose_ppl_budget(planted):
    _, base, evaluate = planted
    groups = {n: [n] for n in ("mm_in", "mm_planted", "mm_out")}
    loose = search_exclusions(groups, evaluate.top1("static"), base, budget_pct=1e6)
    assert loose.kept == [] and loose.top1 < 0.9  # perplexity alone lets the broken graph pass
    res = search_exclusions(groups, evaluate.top1("static"), base, budget_pct=1e6, min_top1=0.95)
    assert res.kept == ["mm_planted"] and res.passed and res.top1 >= 0.95
    assert "top-1" in res.kept_nodes["mm_planted"]
    assert res.to_dict()["groups"][0]["group"] == "mm_planted"


def test_top1_floor_ranks_by_divergence_not_loss():
    """A group that moves the distribution (and flips top-1) while the loss even falls is kept
    before one that raises the loss more but flips nothing."""
    harm = {"a": (0.02, 0.0, 0.001), "b": (-0.01, 0.05, 0.2), "c": (0.0, 0.0, 0.0)}

    def evaluate(exclude: list[str]) -> Trial:
        on = [g for g in harm if g not in exclude]
        return Trial(10.0 * (1 + sum(harm[g][0] for g in on)),
                     1.0 - sum(harm[g][1] for g in on), sum(harm[g][2] for g in on))  # fmt: skip

    groups = {g: [g] for g in harm}
    assert search_exclusions(groups, evaluate, 10.0, budget_pct=3.0).kept == []
    res = search_exclusions(groups, evaluate, 10.0, budget_pct=3.0, min_top1=0.98)
    assert res.kept == ["b"] and res.top1 == 1.0 and res.evaluations == 5
    with pytest.raises(AccuracyError, match="top-1 >= 0.98"):
        search_exclusions({"b": ["b"]}, evaluate, 10.0, budget_pct=3.0, min_top1=0.98)
    with pytest.raises(InputError, match="--min-top1 must be in"):
        search_exclusions(groups, evaluate, 10.0, budget_pct=3.0, min_top1=1.5)


def test_layer_groups_take_packed_gemms_into_their_layer():
    """In graph order a layer's packed q/k/v precedes its o_proj and its gate/up its down_proj:
    the unscoped GEMMs join the next layer named, the tied head is its own group."""
    graph = {
        "/MatMul": "/Constant_1_output_0 [64x128]",  # packed q/k/v, layer 0
        "/o_proj/MatMul": "onnx::MatMul_7 [64x64]",
        "/MatMul_1": "/Constant_9_output_0 [64x256]",  # packed gate/up, layer 0
        "/down_proj/MatMul": "onnx::MatMul_8 [128x64]",
        "/MatMul_2": "/Constant_20_output_0 [64x128]",  # layer 1
        "/o_proj_1/MatMul": "onnx::MatMul_9 [64x64]",
        "/MatMul_3": "/Constant_29_output_0 [64x256]",
        "/down_proj_1/MatMul": "onnx::MatMul_10 [128x64]",
        "/Gemm": "core.lm.model.embed_tokens.weight [384x64]",
    }
    names = list(graph)
    assert group_nodes(names, "layer", graph) == {
        "layer.0": names[:4], "layer.1": names[4:8], "lm_head": ["/Gemm"],
    }  # fmt: skip
