"""`export onnx --precision`: each precision behind the quality gate on the tiny Llama."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from semedge.artifacts import load_manifest, write_manifest
from semedge.calibration import precision as P
from semedge.errors import AccuracyError, InputError
from semedge.export import ExportConfig, ParityConfig
from semedge.runtime.cpu_features import NEEDS, cpu_features, missing_features, warn_if_missing
from tests.calibration.planted import plant_outliers
from tests.conftest import assert_one_line_error

FAST_GATE = ParityConfig(lengths=(7, 32), decode_steps=2, compressed=False)
FAST = P.PrecisionConfig(eval_windows=2, eval_context=32, eval_tokens=16, speed_tokens=64,
                         speed_repeats=1, int8_samples=4, int8_seq_len=64)  # fmt: skip
BF16_HERE = P.runnable("bf16") is None


def _leftovers(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}"))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_precision_passes_its_gate_and_is_recorded(precision, tiny_llama, cal_text, tmp_path):
    out = tmp_path / precision
    cfg = ExportConfig(parity=FAST_GATE)
    rep = P.export_precision(tiny_llama, out, precision, cfg, FAST, cal_text)
    m = load_manifest(out)
    assert rep.precision == precision and m.config["precision"] == precision
    assert m.config["provider"] == "cpu" and m.config["quality"]["passed"]
    assert m.config["quality"]["scored_tokens"] == 2 * 16
    assert m.extra["tuned_cpu"]["flags"] == cpu_features()
    if precision == "fp32":  # the same graphs: the gate measures exactly zero
        assert m.config["quality"]["ppl_delta_pct"] == 0.0 and m.config["quality"]["top1"] == 1.0
    else:
        assert m.config["dtype"] == "fp16"
    assert not _leftovers(out)


@pytest.mark.skipif(not BF16_HERE, reason="needs openvino and an AMX-BF16/AVX512-BF16 CPU")
def test_bf16_runs_on_openvino_with_plain_attention(tiny_llama, cal_text, tmp_path):
    out = tmp_path / "bf16"
    loose = P.PrecisionConfig(**{**FAST.__dict__, "min_top1": 0.5, "int8_decode": False})
    # (random weights: flat logits; int8 decode is the next test's)
    rep = P.export_precision(
        tiny_llama, out, "bf16", ExportConfig(parity=FAST_GATE), loose, cal_text
    )
    m = load_manifest(out)
    assert rep.provider == "openvino" and m.config["provider"] == "openvino"
    assert rep.candidates[0]["decode_precision"] == "fp32"
    gate = rep.candidates[0]  # measured in bf16: the logits move (an fp32 run matches exactly)
    assert gate["ppl"] != gate["ppl_fp32"] and m.config["quality"]["ppl"] == gate["ppl"]
    assert m.extra["attention"] == "plain"
    assert set(m.config["cpu_features"]) <= set(NEEDS["bf16"]) and m.config["cpu_features"]
    from semedge.runtime import Pipeline

    enc = rep.candidates[0]["encoder"]  # the encoder's own gate: its spans, then its speed
    assert enc["cases"] == 3 * enc["prompts"] and enc["prompts"] >= 2
    kept = enc["mean_jaccard"] >= 0.99 and enc["encoder_ms_bf16"] < enc["encoder_ms_fp32"]
    assert (
        enc["precision"] == ("bf16" if kept else "fp32") == rep.candidates[0]["encoder_precision"]
    )
    assert ("encoder_precision" in m.config) == kept
    with Pipeline.from_pretrained(out, providers="openvino") as pipe:
        assert pipe.prefill.precision == "bf16"
        assert pipe.backends["encoder"].precision == enc["precision"]
        assert len(pipe.generate("The valley had a river.", max_new_tokens=3).tokens) == 3


@pytest.mark.skipif(not BF16_HERE, reason="needs openvino and an AMX-BF16/AVX512-BF16 CPU")
def test_a_bf16_encoder_whose_spans_move_stays_fp32(
    tiny_export_plain, cal_text, tmp_path, monkeypatch
):
    import shutil

    from semedge.calibration import encoder_bf16 as E
    from semedge.runtime import Pipeline

    cand = tmp_path / "cand"
    shutil.copytree(tiny_export_plain, cand)
    text = cal_text.read_text(encoding="utf-8")
    real = E.span_agreement

    def moved(pipe, encoder, prompts):
        return {**real(pipe, encoder, prompts[:2]), "mean_jaccard": 0.9}

    monkeypatch.setattr(E, "span_agreement", moved)
    rec = E.bf16_encoder(cand, text)
    assert rec["precision"] == "fp32" and "0.9000 < 0.99" in rec["reason"]
    assert "encoder_precision" not in load_manifest(cand).config
    monkeypatch.setattr(E, "span_agreement", real)
    rec = E.bf16_encoder(cand, text, min_agreement=0.0)
    if rec["precision"] == "bf16":  # faster here: recorded, verified and run in bf16
        assert load_manifest(cand).config["encoder_precision"]["precision"] == "bf16"
        with Pipeline.from_pretrained(cand, providers="openvino") as pipe:
            assert pipe.backends["encoder"].precision == "bf16"
            assert pipe.prepare("The valley had a river. " * 30, ratio=2.0).spans is not None
    else:
        assert "no faster" in rec["reason"]


@pytest.mark.skipif(not BF16_HERE, reason="needs openvino and an AMX-BF16/AVX512-BF16 CPU")
def test_a_malformed_encoder_precision_record_is_refused(tiny_export_plain, tmp_path):
    import shutil

    from semedge.errors import ArtifactError
    from semedge.runtime import Pipeline

    cand = tmp_path / "cand"
    shutil.copytree(tiny_export_plain, cand)
    m = load_manifest(cand)
    m.config = {**m.config, "precision": "bf16", "encoder_precision": {"precision": "int3"}}
    write_manifest(cand, m)
    with pytest.raises(ArtifactError, match="encoder_precision"):
        Pipeline.from_pretrained(cand, providers="openvino")


@pytest.mark.skipif(not BF16_HERE, reason="needs openvino and an AMX-BF16/AVX512-BF16 CPU")
def test_bf16_ships_a_weight_only_int8_decode_graph_behind_the_gate(tiny_llama, cal_text, tmp_path):
    """Speed is not asserted: the speed-up threshold is set to 0 so the swap always happens."""
    from semedge.runtime import Pipeline

    out = tmp_path / "bf16-int8-decode"
    cfg = P.PrecisionConfig(**{**FAST.__dict__, "min_top1": 0.5, "max_ppl_increase": 50.0,
                               "int8_decode_min_speedup": 0.0})  # fmt: skip
    rep = P.export_precision(tiny_llama, out, "bf16", ExportConfig(parity=FAST_GATE), cfg, cal_text)
    m = load_manifest(out)
    assert rep.candidates[0]["decode_precision"] == "int8-weight-only"
    assert m.config["decode_precision"]["precision"] == "int8-weight-only"
    assert m.config["quality"]["decode_precision"] == "int8-weight-only"
    decode_ops = {n.op_type for n in onnx.load(str(out / "decode.onnx")).graph.node}
    prefill_ops = {n.op_type for n in onnx.load(str(out / "prefill.onnx")).graph.node}
    assert "MatMulNBits" in decode_ops and "MatMulNBits" not in prefill_ops  # OpenVINO: fp32 graph
    with Pipeline.from_pretrained(out, providers="openvino") as pipe:  # hashes verified
        assert pipe.decode.provider_name == "cpu"
        assert len(pipe.generate("The valley had a river.", max_new_tokens=3).tokens) == 3
    assert not _leftovers(out)


def test_int8_keeps_a_planted_sensitive_layer_fp32(tiny_llama, cal_text, tmp_path, monkeypatch):
    """Outliers planted before every down_proj: dynamic int8 there ruins the output, so the
    sensitivity search keeps exactly those MatMuls fp32 and the rest int8 (gate: fp32 of the
    same planted model). The tiny LM's logits are flat, so its perplexity barely moves; the top-1
    floor is what finds the ruin (the search tunes on other windows than the gate's)."""
    from semedge.export import onnx_export

    def plant(tmp):
        planted = plant_outliers(tmp, tmp.parent / f"{tmp.name}-planted", "down_proj")
        for g in ("prefill.onnx", "decode.onnx"):
            (planted / g).replace(tmp / g)
        write_manifest(tmp, load_manifest(tmp))

    monkeypatch.setattr(onnx_export, "_POST_WRITE_HOOKS", [plant])
    out = tmp_path / "int8"
    cfg = ExportConfig(parity=FAST_GATE, validate=False)  # planting changes the model itself
    budget = P.PrecisionConfig(**{**FAST.__dict__, "max_ppl_increase": 50.0, "min_top1": 0.5})
    P.export_precision(tiny_llama, out, "int8", cfg, budget, cal_text)
    m = load_manifest(out)
    kept = m.config["quantization"]["kept_high_precision"]
    assert m.config["precision"] == "int8" and m.config["quantization"]["scheme"] == "dynamic"
    down = [n for n in kept if "down_proj" in n]
    assert down and all("down_proj" in n or "MatMul" in n for n in kept)
    model = onnx.load(str(out / "prefill.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops  # the rest is int8
    for node in model.graph.node:  # the planted MatMuls stay float MatMuls
        if node.name in down:
            assert node.op_type == "MatMul"


def test_gate_failure_writes_nothing(tiny_llama, cal_text, tmp_path, monkeypatch):
    def ruin(precision, cand):
        path = cand / "prefill.onnx"
        model = onnx.load(str(path))
        for init in model.graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.ndim == 2 and arr.dtype == np.float32:
                init.CopyFrom(numpy_helper.from_array(arr * 3.0, init.name))
        onnx.save(model, str(path))

    monkeypatch.setattr(P, "_CANDIDATE_HOOKS", [ruin])
    out = tmp_path / "bad"
    with pytest.raises(AccuracyError, match="quality gate failed") as err:
        P.export_precision(tiny_llama, out, "fp32", ExportConfig(parity=FAST_GATE), FAST, cal_text)
    assert f"{out} not written" in str(err.value)
    assert not err.value.report.candidates[0]["passed"]
    assert not out.exists() and not _leftovers(out)


def test_refusals_before_any_work(monkeypatch):
    with pytest.raises(InputError, match="--attention plain"):
        P.check_precision("bf16", "fused", None)
    with pytest.raises(InputError, match="conflicts"):
        P.check_precision("int8", None, "fp16")
    assert "AMX-BF16 or AVX512-BF16" in P.runnable("bf16", features=["avx512f"])
    monkeypatch.setattr(P, "has_module", lambda m: m != "openvino")
    assert "pip install 'semedge[openvino]'" in P.runnable("bf16")
    with pytest.raises(InputError, match="budget|min-top1|--max-ppl-increase"):
        P.PrecisionConfig(max_ppl_increase=-1)


def test_cli_refuses_a_precision_it_cannot_run(cli, tmp_path):
    res = cli("export", "onnx", str(tmp_path / "x"), "--precision", "bf16", "--attention",
              "fused", expect_rc=1)  # fmt: skip
    assert_one_line_error(res)
    assert "--attention plain" in res.stderr and not (tmp_path / "x").exists()
    res = cli("export", "onnx", str(tmp_path / "x"), "--min-top1", "0.9", expect_rc=1)
    assert_one_line_error(res)


def test_runtime_warns_once_on_a_cpu_without_the_tuned_features(tiny_export, tmp_path, caplog):
    import json
    import shutil

    assert missing_features(["amx_bf16"], have=[]) == ["amx_bf16"]
    assert warn_if_missing("x", {"cpu_features": ["amx_bf16"]}, have=["amx_bf16"]) == []
    d = tmp_path / "moved"
    shutil.copytree(tiny_export, d)
    m = json.loads((d / "manifest.json").read_text())
    m["config"].update(precision="int8", cpu_features=["amx_int8", "no_such_flag"])
    (d / "manifest.json").write_text(json.dumps(m))
    from semedge.runtime import Pipeline

    with caplog.at_level(logging.WARNING, logger="semedge.runtime.cpu_features"):
        Pipeline.from_pretrained(d).close()
    lines = [r for r in caplog.records if r.name == "semedge.runtime.cpu_features"]
    assert len(lines) == 1 and "no_such_flag" in lines[0].getMessage()


def test_candidates_tune_on_the_text_before_the_gates_windows(tiny_export, cal_text):
    """The int8 search picks what stays fp32 by its own held-out score: it gets the text up to
    the gate's windows, so the gate scores tokens no choice was made on."""
    from semedge.calibration.quality_gate import held_out_windows
    from semedge.runtime import Pipeline

    text = cal_text.read_text(encoding="utf-8")
    with Pipeline.from_pretrained(tiny_export, providers="cpu") as pipe:
        windows, tune = held_out_windows(pipe.tokenizer, text, FAST)
        gate = np.concatenate(windows)
        rest = pipe.tokenizer.encode(text[len(tune) :], add_special_tokens=False).ids
    assert text.startswith(tune) and 0 < len(tune) < len(text)
    assert rest == gate.tolist()  # exactly the gate's tokens are left out
