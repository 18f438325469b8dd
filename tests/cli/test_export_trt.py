"""`semedge export check-trt | trt | triton` through the real CLI: results and one-line errors."""

from __future__ import annotations

import json
import shlex

import pytest

from semedge.deps import has_module
from tests.conftest import assert_one_line_error
from tests.export.test_trt_check import _topk_model
from tests.export.test_trt_graphs import D, make_export


@pytest.fixture
def export_dir(tmp_path):
    return make_export(tmp_path / "export")


def test_check_trt_passes_an_export(cli, export_dir):
    res = cli("export", "check-trt", export_dir, "--json")
    report = json.loads(res.stdout)
    assert report["passed"] is True and report["errors"] == 0
    assert report["graphs"] == ["decode.onnx", "embed.onnx", "encoder.onnx", "prefill.onnx"]


def test_check_trt_flags_a_large_topk(cli, tmp_path):
    bad = make_export(tmp_path / "bad", {"prefill.onnx": _topk_model(5000)})
    res = cli("export", "check-trt", bad, expect_rc=1)
    assert_one_line_error(res)
    assert "/model/sampler/topk/TopK" in res.stdout and "model.sampler.topk" in res.stdout
    assert "K=5000" in res.stderr


def test_check_trt_without_manifest(cli, tmp_path):
    assert_one_line_error(cli("export", "check-trt", tmp_path, expect_rc=1))


def test_check_trt_corrupt_onnx(cli, export_dir):
    (export_dir / "decode.onnx").write_bytes(b"\x12\x34garbage")
    res = cli("export", "check-trt", export_dir, expect_rc=1)
    assert_one_line_error(res)
    assert "decode.onnx is not a valid ONNX model" in res.stderr


@pytest.mark.skipif(has_module("tensorrt"), reason="tensorrt is installed")
def test_trt_without_tensorrt_prints_trtexec_lines(cli, export_dir, tmp_path):
    res = cli("export", "trt", export_dir, tmp_path / "engines", "--context", "1:16:64",
              "--timing-cache", tmp_path / "tc", expect_rc=1)  # fmt: skip
    assert_one_line_error(res)
    assert "tensorrt is not importable" in res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2 and all(shlex.split(x)[0] == "trtexec" for x in lines)
    assert f"--maxShapes=inputs_embeds:1x64x{D}" in lines[0] and "decode.plan" in lines[1]
    assert "--timingCacheFile=" in lines[0] and not (tmp_path / "engines").exists()


@pytest.mark.parametrize(
    ("args", "match"),
    [(["--context", "1:64:4096"], "max_context 64"), (["--batch", "4:2:1"], "--batch")],
)
def test_trt_bad_ranges(cli, export_dir, tmp_path, args, match):
    res = cli("export", "trt", export_dir, tmp_path / "engines", *args, expect_rc=1)
    assert_one_line_error(res)
    assert match in res.stderr and res.stdout == ""


def test_trt_without_manifest(cli, tmp_path):
    res = cli("export", "trt", tmp_path, tmp_path / "engines", expect_rc=1)
    assert_one_line_error(res)
    assert "manifest.json" in res.stderr


def test_triton_writes_a_repo(cli, export_dir, tmp_path):
    res = cli("export", "triton", export_dir, tmp_path / "repo", "--max-batch", "2")
    assert "prefill" in res.stdout
    assert (tmp_path / "repo" / "decode" / "config.pbtxt").is_file()


def test_triton_unwritable_repo_dir(cli, export_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = cli("export", "triton", export_dir, blocker / "repo", expect_rc=1)
    assert_one_line_error(res)
    assert "cannot write" in res.stderr


def test_triton_without_manifest(cli, tmp_path):
    res = cli("export", "triton", tmp_path, tmp_path / "repo", expect_rc=1)
    assert_one_line_error(res)
    assert not (tmp_path / "repo").exists()


def test_check_trt_on_the_default_fused_export_points_to_plain_attention(cli, tiny_export):
    res = cli("export", "check-trt", tiny_export, expect_rc=1)
    assert_one_line_error(res)
    assert "GroupQueryAttention" in res.stderr and "--attention plain" in res.stderr


def test_trt_refuses_the_fused_export_with_the_fix(cli, tiny_export, tmp_path):
    res = cli("export", "trt", tiny_export, tmp_path / "engines", expect_rc=1)
    assert_one_line_error(res)
    assert "--attention plain" in res.stderr and res.stdout == ""
