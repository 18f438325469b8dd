"""`semedge eval ppl|passkey` on the tiny Llama: JSON schema, PNG, and one-line bad-input errors."""

from __future__ import annotations

import json

import pytest

from semedge.eval.passkey import default_filler
from tests.conftest import assert_one_line_error


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "data.txt"
    path.write_text(default_filler(), encoding="utf-8")
    return path


def test_ppl_json_is_one_object_with_every_method(cli, tiny_llama, data, tmp_path):
    png = tmp_path / "ppl.png"
    res = cli(
        "eval", "ppl", "--data", data, "--model", tiny_llama, "--context", 256, "--target", 16,
        "--ratio", 2.0, "--windows", 2, "--json", "--plot", png,
    )  # fmt: skip
    out = json.loads(res.stdout)
    assert out["context"] == 256 and out["ratio"] == 2.0 and out["model"] == tiny_llama.name
    assert set(out["results"]) == {"full", "semtoken", "truncate", "random", "uniform"}
    for r in out["results"].values():
        assert {"ppl", "tokens", "ratio"} <= set(r) and r["ppl"] > 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))


def test_passkey_table(cli, tiny_llama):
    res = cli(
        "eval", "passkey", "--model", tiny_llama, "--context", 400, "--ratio", 2.0,
        "--samples", 1,
    )  # fmt: skip
    assert "semtoken" in res.stdout and "truncate" in res.stdout


@pytest.mark.parametrize(
    "args, hint",
    [
        (["--data", "{missing}"], "no such file"),
        (["--data", "{empty}"], "is empty"),
        (["--data", "{binary}"], "not UTF-8"),
        (["--data", "{data}", "--target", "0"], "target must be >= 1"),
        (["--data", "{data}", "--ratio", "0.5"], "ratio must be >= 1.0"),
        (["--data", "{data}", "--methods", "full,best"], "unknown method"),
        (["--data", "{short}", "--context", "64"], "one window needs"),
        (["--data", "{data}", "--context", "4000"], "model supports 2048"),
    ],
)
def test_ppl_bad_input_is_one_line(cli, tiny_llama, data, tmp_path, args, hint):
    files = {
        "missing": tmp_path / "nope.txt",
        "empty": tmp_path / "empty.txt",
        "binary": tmp_path / "bin.txt",
        "short": tmp_path / "short.txt",
        "data": data,
    }
    files["empty"].write_text("  \n")
    files["binary"].write_bytes(b"\xff\xfe bad")
    files["short"].write_text("Only a few words here.")
    args = [a.format(**files) for a in args]
    res = cli("eval", "ppl", "--model", tiny_llama, "--windows", 1, *args, expect_rc=1)
    assert_one_line_error(res)
    assert hint in res.stderr


@pytest.mark.parametrize(
    "args, hint",
    [
        (["--ratio", "0.9"], "ratio must be >= 1.0"),
        (["--samples", "0"], "samples must be >= 1"),
        (["--context", "9000"], "model supports 2048"),
        (["--data", "{empty}"], "is empty"),
        (["--data", "{short}", "--context", "512"], "pass a longer --data"),
    ],
)
def test_passkey_bad_input_is_one_line(cli, tiny_llama, tmp_path, args, hint):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("A short filler. It has two sentences.")
    args = [a.format(empty=tmp_path / "empty.txt", short=tmp_path / "short.txt") for a in args]
    res = cli("eval", "passkey", "--model", tiny_llama, *args, expect_rc=1)
    assert_one_line_error(res)
    assert hint in res.stderr
