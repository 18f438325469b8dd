"""`semedge eval suite` on the tiny Llama (PyTorch path) and its export (runtime path)."""

from __future__ import annotations

import json

import pytest

from semedge.eval.methods import SUITE_METHODS
from tests.conftest import assert_one_line_error

FIELDS = {"task", "context", "ratio", "method", "accuracy", "accuracy_far", "positions", "samples"}


def test_suite_json_has_every_field_and_the_png(cli, tiny_llama, tmp_path):
    png = tmp_path / "suite.png"
    res = cli(
        "eval", "suite", "--model", tiny_llama, "--context", 300, "--ratio", "2,4",
        "--tasks", "recall", "--samples", 1, "--json", "--plot", png,
    )  # fmt: skip
    out = json.loads(res.stdout)
    assert out["model"] == tiny_llama.name
    rows = out["results"]
    assert {(r["task"], r["ratio"], r["method"]) for r in rows} == {
        ("recall", q, m) for q in (2.0, 4.0) for m in SUITE_METHODS
    }
    for r in rows:
        assert FIELDS <= set(r)
        assert isinstance(r["accuracy"], float) and 0 <= r["accuracy"] <= 1
        assert r["accuracy_far"] is None or 0 <= r["accuracy_far"] <= 1
        assert r["samples"] == 1 and r["context"] == 300
    for s in out["samples"]:  # every baseline keeps exactly round(T / ratio) positions
        if s["method"] not in ("full", "semtoken", "semtoken_query"):
            assert s["positions"] == max(1, round(s["tokens"] / s["ratio"])), s
        elif s["method"] != "full":  # SemToken within its ratio tolerance
            assert abs(s["tokens"] / s["positions"] - s["ratio"]) <= 0.02 * s["ratio"] + 0.1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_suite_on_the_export_runs_through_the_runtime(cli, tiny_export):
    res = cli(
        "eval", "suite", "--export", tiny_export, "--context", 300, "--ratio", 2.4,
        "--tasks", "multikey", "--samples", 1,
        "--methods", "full,truncate,retrieve,semtoken,semtoken_query", "--json",
    )  # fmt: skip
    out = json.loads(res.stdout)
    assert {r["method"] for r in out["results"]} == {
        "full",
        "truncate",
        "retrieve",
        "semtoken",
        "semtoken_query",
    }
    assert out["model"].startswith("export:")


def test_suite_with_chunked_prefill_gives_the_same_answers(cli, tiny_export):
    args = ("eval", "suite", "--export", tiny_export, "--context", 300, "--ratio", 2.4,
            "--tasks", "niah_word", "--samples", 2, "--methods", "full,retrieve,semtoken", "--json")  # fmt: skip
    whole = json.loads(cli(*args).stdout)["samples"]
    chunked = json.loads(cli(*args, "--prefill-chunk", 37).stdout)["samples"]
    assert [r["answer"] for r in chunked] == [r["answer"] for r in whole] and len(whole) >= 6


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (("--tasks", "nope"), "unknown task"),
        (("--methods", "full,magic"), "unknown method"),
        (("--ratio", "0.5"), "ratio must be"),
        (("--ratio", "nan"), "ratio must be"),
        (("--ratio", "abc"), "comma-separated numbers"),
        (("--context", "100000"), "exceeds the model"),
        (("--samples", "0"), "samples must be"),
        (("--recency-window", "-3"), "recency_window"),
        (("--prefill-chunk", "64"), "pass --export DIR"),
    ],
)
def test_suite_bad_inputs_are_one_line(cli, tiny_llama, args, msg):
    res = cli("eval", "suite", "--model", tiny_llama, "--context", 300, "--samples", 1,
              "--tasks", "niah_number", *args, expect_rc=1)  # fmt: skip
    assert_one_line_error(res)
    assert msg in res.stderr


def test_suite_too_little_filler_is_one_line(cli, tiny_llama, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("A sentence here. " * 40, encoding="utf-8")
    res = cli("eval", "suite", "--model", tiny_llama, "--context", 1500, "--samples", 1,
              "--tasks", "niah_number", "--data", small, expect_rc=1)  # fmt: skip
    assert_one_line_error(res)
    assert "filler has" in res.stderr


def test_empty_query_is_one_line(cli, tiny_llama, tmp_path):
    article = tmp_path / "a.txt"
    article.write_text("Some words here. " * 80, encoding="utf-8")
    res = cli("compress", article, "--model", tiny_llama, "--query", " ", expect_rc=1)
    assert_one_line_error(res)
    assert "query" in res.stderr


def test_a_context_beyond_the_model_runs_compacted_with_fit_positions(cli, tiny_llama):
    """The tiny Llama reads 2048 positions: a 2400-token context runs compressed into 1024
    positions, but never with the full method."""
    args = ("eval", "suite", "--model", tiny_llama, "--context", 2400, "--ratio", 4,
            "--tasks", "niah_number", "--samples", 1, "--fit-positions", 1024, "--json")  # fmt: skip
    out = json.loads(cli(*args, "--methods", "truncate,semtoken_query").stdout)
    assert {r["method"] for r in out["results"]} == {"truncate", "semtoken_query"}
    assert all(s["tokens"] > 2048 and s["positions"] <= 1024 for s in out["samples"])
    res = cli(*args, "--methods", "full,truncate", expect_rc=1)
    assert_one_line_error(res)
    assert "exceeds the model" in res.stderr and "--fit-positions" in res.stderr
