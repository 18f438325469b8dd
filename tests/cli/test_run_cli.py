"""`semedge run`: text, --json, --stream, and one clear line for every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, run_python
from tests.runtime.toy_export import build_toy_export, sample_text

ROOT = Path(__file__).resolve().parents[2]
TEXT = sample_text()


@pytest.fixture(scope="module")
def export(tiny_llama, tmp_path_factory):
    return build_toy_export(
        tmp_path_factory.mktemp("cli") / "export", tiny_llama / "tokenizer.json"
    )


@pytest.fixture
def prompt(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text(TEXT[:500], encoding="utf-8")
    return path


def test_run_json_stream_and_text_agree(cli, export, prompt):
    data = json.loads(cli("run", export, "-f", prompt, "--ratio", "2.4", "--json",
                          "--max-new-tokens", "6").stdout)  # fmt: skip
    assert len(data["tokens"]) == 6 and data["compressed_tokens"] < data["prompt_tokens"]
    text = cli("run", export, "-f", prompt, "--ratio", "2.4", "--max-new-tokens", "6").stdout
    streamed = cli("run", export, "-f", prompt, "--ratio", "2.4", "--max-new-tokens", "6",
                   "--stream").stdout  # fmt: skip
    assert text == streamed == data["text"] + "\n"


def test_run_missing_export_dir(cli, prompt, tmp_path):
    res = cli("run", tmp_path / "nope", "-f", prompt, expect_rc=1)
    assert_one_line_error(res)
    assert "not a directory" in res.stderr


def test_run_tampered_export(cli, export, prompt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(export, bad)
    (bad / "tokenizer.json").write_text((bad / "tokenizer.json").read_text() + " ")
    res = cli("run", bad, "-f", prompt, expect_rc=1)
    assert_one_line_error(res)
    assert "tokenizer.json" in res.stderr and "SHA-256" in res.stderr


def test_run_prompt_too_long(cli, export, tmp_path):
    long = tmp_path / "long.txt"
    long.write_text(TEXT[:2000], encoding="utf-8")
    res = cli("run", export, "-f", long, expect_rc=1)
    assert_one_line_error(res)
    assert "max_context" in res.stderr and "--ratio" in res.stderr and "--max-context" in res.stderr


def test_run_unknown_provider(cli, export, prompt):
    res = cli("run", export, "-f", prompt, "--provider", "npu", expect_rc=1)
    assert_one_line_error(res)
    assert "unknown provider 'npu'" in res.stderr


def test_run_cuda_not_working_here(cli, export, prompt):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider present")
    res = cli("run", export, "-f", prompt, "--provider", "cuda", expect_rc=1)
    assert_one_line_error(res)
    assert "CUDAExecutionProvider" in res.stderr and "onnxruntime-gpu" in res.stderr


def test_run_non_utf8_prompt(cli, export, tmp_path):
    bad = tmp_path / "p.txt"
    bad.write_bytes(b"\xff\xfe bad")
    assert_one_line_error(cli("run", export, "--prompt-file", bad, expect_rc=1))


def test_run_trt_engine_on_an_onnx_export(cli, export, prompt):
    res = cli("run", export, "-f", prompt, "--provider", "trt-engine", expect_rc=1)
    assert_one_line_error(res)
    assert "needs an engine directory" in res.stderr and "--provider tensorrt" in res.stderr


def test_run_bad_ratio(cli, export, prompt):
    res = cli("run", export, "-f", prompt, "--ratio", "0.5", expect_rc=1)
    assert_one_line_error(res)
    assert "ratio must be >= 1.0" in res.stderr


@pytest.mark.parametrize("verb", ["run", "profile", "doctor"])
def test_help_works_without_torch(verb):
    code = f"from semedge.cli import main; sys.argv = ['semedge', {verb!r}, '--help']; main()"
    proc = run_python(code, block=("torch", "transformers"))
    assert proc.returncode == 0 and "Usage:" in proc.stdout, proc.stderr


def test_run_refuses_an_adapter_of_another_model(cli, export, prompt, tmp_path):
    res = cli("run", export, "-f", prompt, "--ratio", "2.4", "--adapter", "DEFAULT", expect_rc=1)
    assert_one_line_error(res)
    assert "trained for model 'smollm2'" in res.stderr
    res = cli("run", export, "-f", prompt, "--adapter", tmp_path / "nope", expect_rc=1)
    assert_one_line_error(res)
    assert "is not a semedge adapter directory" in res.stderr


def test_run_prefill_chunk_gives_the_same_tokens(cli, tiny_export, prompt):
    args = ("run", tiny_export, "-f", prompt, "--json", "--max-new-tokens", "6")
    whole = json.loads(cli(*args).stdout)
    chunked = json.loads(cli(*args, "--prefill-chunk", "13").stdout)
    assert chunked["tokens"] == whole["tokens"] and whole["prompt_tokens"] > 13


@pytest.mark.parametrize("chunk, needle", [("-1", "prefill_chunk must be an integer >= 0"),
                                           ("8", "decode graph takes one token")])  # fmt: skip
def test_run_bad_prefill_chunk(cli, export, prompt, chunk, needle):
    res = cli("run", export, "-f", prompt, "--prefill-chunk", chunk, expect_rc=1)
    assert_one_line_error(res)
    assert needle in res.stderr
