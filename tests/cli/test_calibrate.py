"""`semedge calibrate`: JSON reports and one-line errors that leave nothing half-written."""

from __future__ import annotations

import json

import pytest

from tests.calibration.conftest import INT8_FAST_ARGS
from tests.calibration.planted import plant_outliers
from tests.conftest import assert_one_line_error


@pytest.fixture(scope="module")
def cal_text(wikitext_valid, tmp_path_factory):
    path = tmp_path_factory.mktemp("cal-data") / "valid-150k.txt"
    path.write_bytes(wikitext_valid.read_bytes()[:150_000])
    return path


@pytest.fixture(scope="module")
def planted_all_export(tiny_export, tmp_path_factory):
    return plant_outliers(tiny_export, tmp_path_factory.mktemp("planted") / "all", "")


def _nothing_left(out):
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_int8_json_report(cli, tiny_export, cal_text, tmp_path):
    out = tmp_path / "int8"
    res = cli("calibrate", "int8", tiny_export, out, "--data", cal_text, *INT8_FAST_ARGS,
              "--scheme", "dynamic", "--max-ppl-increase", "50", "--cache-dir", tmp_path / "c",
              "--json")  # fmt: skip
    d = json.loads(res.stdout)
    for key in ("ppl_fp32", "ppl_int8", "top1_agreement", "prefill_speedup", "decode_speedup",
                "size_mb", "kept_high_precision"):  # fmt: skip
        assert key in d, key
    assert d["scheme"] == "dynamic" and isinstance(d["kept_high_precision"], list)
    assert 0.0 <= d["top1_agreement"] <= 1.0 and d["ppl_int8"] > 0
    assert (out / "manifest.json").is_file()
    # every MatMul with a constant weight (packed q/k/v and gate/up included) became int8;
    # the tied LM head is a Gemm, which ORT's dynamic quantizer leaves float
    import onnx

    from semedge.calibration.schemes import weight_matmuls

    left = [n for n in weight_matmuls(onnx.load(str(out / "prefill.onnx"))) if "Gemm" not in n]
    assert not left, left


@pytest.mark.parametrize(
    "case",
    [
        "missing-data",
        "tiny-data",
        "no-manifest",
        "negative-budget",
        "impossible-budget",
        "top1-floor-out-of-range",
        "bad-block-size",
        "out-exists",
    ],
)
def test_int8_bad_input(cli, tiny_export, planted_all_export, cal_text, tmp_path, case):
    out, data, src, extra = tmp_path / "out", cal_text, tiny_export, []
    if case == "missing-data":
        data = tmp_path / "nope.txt"
    elif case == "tiny-data":
        data = tmp_path / "small.txt"
        data.write_text("Only a few words of calibration text.\n", encoding="utf-8")
    elif case == "no-manifest":
        src = tmp_path / "plain"
        src.mkdir()
        (src / "prefill.onnx").write_bytes(b"not really")
    elif case == "negative-budget":
        extra = ["--max-ppl-increase", "-1"]
    elif case == "impossible-budget":
        src, extra = planted_all_export, ["--max-ppl-increase", "0", "--scheme", "static"]
    elif case == "top1-floor-out-of-range":
        extra = ["--min-top1", "nan"]
    elif case == "bad-block-size":
        extra = ["--scheme", "weight-only", "--block-size", "48"]
    elif case == "out-exists":
        out.mkdir()
    res = cli("calibrate", "int8", src, out, "--data", data, *INT8_FAST_ARGS, *extra,
              "--cache-dir", tmp_path / "c", expect_rc=1)  # fmt: skip
    assert_one_line_error(res)
    if case == "out-exists":
        assert out.is_dir() and not list(out.iterdir())
        return
    _nothing_left(out)
    want = {"missing-data": "no such file", "tiny-data": "give a longer --data",
            "no-manifest": "manifest.json", "negative-budget": ">= 0 percent",
            "impossible-budget": "no quantization fits",
            "top1-floor-out-of-range": "--min-top1 must be in [0, 1]",
            "bad-block-size": "--block-size must be one of 16, 32"}[case]  # fmt: skip
    assert want in res.stderr


def test_fp16_json_and_existing_out(cli, tiny_export, cal_text, tmp_path):
    out = tmp_path / "fp16"
    res = cli("calibrate", "fp16", tiny_export, out, "--data", cal_text, "--eval-windows", "2",
              "--eval-context", "32", "--eval-tokens", "8", "--json")  # fmt: skip
    d = json.loads(res.stdout)
    assert d["passed"] and {"max_abs_logits_diff", "mean_abs_logits_diff", "top1_agreement"} <= set(
        d
    )
    res = cli("calibrate", "fp16", tiny_export, out, "--data", cal_text, expect_rc=1)
    assert_one_line_error(res)
    assert "already exists" in res.stderr


@pytest.mark.parametrize("case", ["ratio-below-one", "unreachable", "missing-data", "no-manifest"])
def test_ratio_bad_input(cli, tiny_export, cal_text, tmp_path, case):
    out, ratio, data, export = tmp_path / "c.json", "2.4", cal_text, tiny_export
    if case == "ratio-below-one":
        ratio = "0.5"
    elif case == "unreachable":
        ratio = "50"
    elif case == "missing-data":
        data = tmp_path / "nope.txt"
    elif case == "no-manifest":
        export = tmp_path / "empty"
        export.mkdir()
    res = cli("calibrate", "ratio", "--data", data, "--ratio", ratio, "--export-dir", export,
              "--out", out, "--chunk-tokens", "128", "--prompts", "4", "--test-prompts", "2",
              expect_rc=1)  # fmt: skip
    assert_one_line_error(res)
    assert not out.exists() and not list(tmp_path.glob(".c.json.tmp-*"))
