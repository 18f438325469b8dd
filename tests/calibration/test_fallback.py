"""The fp32 decode fallback of an int8 decode graph (`calibrate int8 --fallback-margin`):
near-tie steps re-run in fp32 over the same KV cache slot, the margin's choice, the artifact."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from semedge import constants as C
from semedge.artifacts import load_manifest, sha256_file, verify_manifest
from semedge.calibration.data import tokenize_stream
from semedge.calibration.fallback import choose_margin
from semedge.calibration.int8 import Int8Config, calibrate_int8
from semedge.calibration.scoring import HeldOutScore, agreement, score_graphs
from semedge.errors import AccuracyError, ArtifactError, InputError
from tests.calibration.conftest import INT8_FAST, INT8_FAST_ARGS
from tests.conftest import assert_one_line_error

DECODE_ONLY = dict(scheme="weight-only", max_ppl_increase=1e6, compress=False,
                   graphs=(C.DECODE_ONNX,), **INT8_FAST)  # fmt: skip


@pytest.fixture(scope="module")
def always_exact(planted_down_export, cal_text, tmp_path_factory):
    """The planted export's int8 decode with a margin no step's top-2 gap reaches: every step
    falls back to fp32."""
    tmp = tmp_path_factory.mktemp("fallback")
    cfg = Int8Config(fallback=1000.0, **DECODE_ONLY)
    report = calibrate_int8(planted_down_export, tmp / "o", cal_text, cfg, tmp / "c")
    return tmp / "o", report


def _held(pipe, cal_text, n=3, length=48):
    ids = tokenize_stream(pipe, cal_text.read_text(encoding="utf-8")).ids
    return [ids[ids.size - (i + 1) * length : ids.size - i * length] for i in range(n)]


def test_every_step_falling_back_reproduces_the_fp32_decode(
    always_exact, planted_down_export, cal_text
):
    """Re-running a step in fp32 rewrites the cache slot the int8 step wrote before the cache
    advances, so with every step re-run the logits are the fp32 export's; with the fallback
    off the same graphs give other logits (the planted outlier hurts int8)."""
    from semedge.runtime import Pipeline

    out, report = always_exact
    with Pipeline.from_pretrained(planted_down_export) as ref:
        held = _held(ref, cal_text)
        want = score_graphs(ref, held, 32)
        want_text = ref.generate("The tower is", max_new_tokens=8, ratio=1.0).tokens
    with Pipeline.from_pretrained(out) as pipe:
        assert pipe.fallback_margin == 1000.0 and pipe.exact_decode is not None
        got = score_graphs(pipe, held, 32)
        assert got.exact_steps == got.decode_steps == 3 * 15
        assert np.abs(np.concatenate(got.logits) - np.concatenate(want.logits)).max() < 1e-4
        assert pipe.generate("The tower is", max_new_tokens=8, ratio=1.0).tokens == want_text
        shared, pipe.kv_shared = pipe.kv_shared, False  # a ping-pong cache: the same
        pong = score_graphs(pipe, held, 32)
        assert (
            shared
            and np.abs(np.concatenate(pong.logits) - np.concatenate(want.logits)).max() < 1e-4
        )
        pipe.fallback_margin = 0.0  # the int8 graph alone
        plain = score_graphs(pipe, held, 32)
    assert plain.exact_steps == 0
    assert np.abs(np.concatenate(plain.logits) - np.concatenate(want.logits)).max() > 1e-2
    assert report.fallback["exact_share"] == 1.0 and report.fallback["top1"] == 1.0


def test_the_artifact_ships_the_exports_fp32_decode_graph(always_exact, planted_down_export):
    out, report = always_exact
    manifest = load_manifest(out, expect_format=C.FORMAT_CALIBRATED)
    verify_manifest(out, manifest)
    assert C.DECODE_EXACT_ONNX in manifest.files
    assert sha256_file(out / C.DECODE_EXACT_ONNX) == sha256_file(
        planted_down_export / C.DECODE_ONNX
    )
    assert sha256_file(out / C.DECODE_ONNX) != sha256_file(planted_down_export / C.DECODE_ONNX)
    assert manifest.config["decode_fallback"]["margin"] == report.fallback["margin"] == 1000.0
    assert report.size_mb > report.size_mb_fp32  # int8 decode + the fp32 one it keeps: counted


def test_auto_takes_the_smallest_margin_reaching_the_target(
    planted_down_export, cal_text, tmp_path
):
    """`auto` lifts the search's top-1 floor (nothing kept fp32) and picks a margin no smaller
    than the median int8 error of the top-2 gap that reaches --min-top1 through the runtime."""
    from semedge.runtime import Pipeline

    cfg = Int8Config(fallback="auto", min_top1=0.9, **DECODE_ONLY)
    report = calibrate_int8(planted_down_export, tmp_path / "o", cal_text, cfg, tmp_path / "c")
    fb = report.fallback
    assert report.sensitivity["kept_groups"] == []  # the floor is the fallback's to reach
    assert fb["top1_without"] < 0.9 <= fb["top1"] and report.passed
    assert fb["margin"] >= round(fb["pair_error_median"], 3) and 0 < fb["exact_share"] <= 1
    assert fb["decode_ms_estimate"] > report.decode_ms_int8
    with Pipeline.from_pretrained(planted_down_export) as ref:
        held = _held(ref, cal_text)
        want = score_graphs(ref, held, 32)
    with Pipeline.from_pretrained(tmp_path / "o") as pipe:
        on = score_graphs(pipe, held, 32)
        pipe.fallback_margin = 0.0
        off = score_graphs(pipe, held, 32)
    assert agreement(want, on) > agreement(want, off) and on.exact_steps > 0


def _score(rows):
    z = np.asarray(rows, dtype=np.float32)
    return HeldOutScore(np.zeros(len(z)), z.argmax(-1), [z], decode_steps=len(z))


def test_choose_margin_starts_at_the_error_scale_and_stops_at_the_target():
    """Tries the median top-2 error first, then the grid above it; the first margin whose
    agreement reaches the target wins; none reaching it raises."""
    base = _score([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.9, 0.0]])
    quant = _score([[1.0, 0.2, 0.0], [0.0, 1.0, 0.3], [0.0, 0.4, 1.0], [0.8, 0.9, 0.0]])
    # top-2 gap errors: |0.8-1| = 0.2, |0.7-1| = 0.3, |0.6-1| = 0.4, |-0.1-0.1| = 0.2 -> median 0.25
    tried = []

    def score_at(margin):
        tried.append(margin)
        return base if margin >= 0.5 else quant  # the fallback mends the flip from 0.5 on

    rec = choose_margin(score_at, base, quant, target=0.9)
    assert tried == [0.25, 0.3, 0.5] and rec["margin"] == 0.5
    assert rec["top1"] == 1.0 and rec["top1_without"] == 0.75 and rec["pair_error_median"] == 0.25
    tried.clear()
    with pytest.raises(AccuracyError, match="does not reach top-1 0.9"):
        choose_margin(lambda m: quant, base, quant, target=0.9)
    assert choose_margin(score_at, base, quant, 0.9, margin=0.1)["margin"] == 0.1  # given: kept


@pytest.mark.parametrize("bad", ["nan", "-1", "inf", "fast"])
def test_bad_margins_are_refused(bad):
    with pytest.raises(InputError, match="--fallback-margin must be"):
        Int8Config(fallback=bad)


def test_fallback_needs_the_decode_graph_quantized():
    with pytest.raises(InputError, match="needs the decode graph quantized"):
        Int8Config(fallback="auto", graphs=(C.PREFILL_ONNX,))


def test_cli_refuses_a_negative_margin(cli, tiny_export, cal_text, tmp_path):
    res = cli("calibrate", "int8", str(tiny_export), str(tmp_path / "o"), "--data", str(cal_text),
              "--graphs", "decode", "--fallback-margin", "-0.5", *INT8_FAST_ARGS, expect_rc=1)  # fmt: skip
    assert_one_line_error(res)
    assert "--fallback-margin must be" in res.stderr and not (tmp_path / "o").exists()


def _rewrite(src, dest, edit):
    shutil.copytree(src, dest)
    path = dest / C.MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return dest


@pytest.mark.parametrize("margin", ["0.1", -1, float("nan"), True])
def test_a_tampered_margin_is_refused(always_exact, tmp_path, margin):
    from semedge.runtime import Pipeline

    def edit(m):
        m["config"]["decode_fallback"]["margin"] = margin

    bad = _rewrite(always_exact[0], tmp_path / "bad", edit)
    with pytest.raises(ArtifactError, match="decode_fallback margin"):
        Pipeline.from_pretrained(bad, verify=False)


def test_a_margin_without_its_graph_is_refused(always_exact, tmp_path):
    from semedge.runtime import Pipeline

    def edit(m):
        del m["files"][C.DECODE_EXACT_ONNX]

    bad = _rewrite(always_exact[0], tmp_path / "bad", edit)
    (bad / C.DECODE_EXACT_ONNX).unlink()
    with pytest.raises(ArtifactError, match="decode_exact.onnx is not listed"):
        Pipeline.from_pretrained(bad)


def test_cli_writes_the_fallback_and_reports_it(cli, planted_down_export, cal_text, tmp_path):
    from semedge.runtime import Pipeline

    out = tmp_path / "o"
    res = cli("calibrate", "int8", str(planted_down_export), str(out), "--data", str(cal_text),
              "--graphs", "decode", "--scheme", "weight-only", "--max-ppl-increase", "1e6",
              "--fallback-margin", "0.5", *INT8_FAST_ARGS)  # fmt: skip
    assert "top-1 with fp32 fallback (margin 0.5" in res.stdout
    with Pipeline.from_pretrained(out) as pipe:
        assert pipe.fallback_margin == 0.5 and pipe.exact_decode is not None
        assert len(pipe.generate("The tower is", max_new_tokens=4, ratio=1.0).tokens) == 4


def test_profile_reports_the_share_of_steps_the_fallback_re_ran(always_exact, cli):
    import json as _json

    res = cli("profile", str(always_exact[0]), "--lengths", "64", "--ratios", "1", "--warmup", "0",
              "--runs", "1", "--decode-tokens", "4")  # fmt: skip
    assert "re-run by the fp32 fallback: 100.0% .. 100.0%" in res.stdout
    out = always_exact[0].parent / "profile.json"
    cli("profile", str(always_exact[0]), "--lengths", "64", "--ratios", "1", "--warmup", "0",
        "--runs", "1", "--decode-tokens", "4", "--json", str(out))  # fmt: skip
    assert _json.loads(out.read_text())["runs"][0]["decode_fp32_fallback_share"] == 1.0


def test_a_result_that_changes_no_scored_logit_is_refused():
    """An "int8" result whose held-out logits equal fp32's bit for bit quantized nothing that
    runs: refused rather than reported as int8."""
    from semedge.calibration.scoring import check_changed

    base = _score([[1.0, 0.0, 0.0], [0.0, 1.0, 0.5]])
    with pytest.raises(AccuracyError, match="changes anything"):
        check_changed(base, _score([[1.0, 0.0, 0.0], [0.0, 1.0, 0.5]]))
    check_changed(base, _score([[1.0, 0.0, 0.0], [0.0, 1.0, 0.5001]]))  # any change: accepted
