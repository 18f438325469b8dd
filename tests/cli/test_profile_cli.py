"""`semedge profile`: JSON schema with every stage, a valid Chrome trace, a PNG, bad input."""

from __future__ import annotations

import json

import pytest

from tests.conftest import assert_one_line_error
from tests.runtime.toy_export import build_toy_export

STAGES = {"tokenize", "encode", "merge", "prefill", "decode_token"}


@pytest.fixture(scope="module")
def export(tiny_llama, tmp_path_factory):
    return build_toy_export(
        tmp_path_factory.mktemp("prof") / "export", tiny_llama / "tokenizer.json"
    )


def test_profile_json_trace_plot(cli, export, tmp_path):
    out, trace, png = tmp_path / "p.json", tmp_path / "t.json", tmp_path / "p.png"
    res = cli("profile", export, "--lengths", "64,700", "--ratios", "1,2.4", "--runs", "2",
              "--warmup", "0", "--decode-tokens", "4", "--json", out, "--trace", trace,
              "--plot", png, "--ort-profile")  # fmt: skip
    assert "ttft_ms" in res.stdout
    data = json.loads(out.read_text())
    assert data["provider"] == "cpu" and data["device"]
    # 700 tokens at ratio 1 exceed the toy's max_context (512): skipped with the reason
    assert [(r["context"], r["ratio"]) for r in data["runs"]] == [(64, 1.0), (64, 2.4), (700, 2.4)]
    assert data["skipped"][0]["ratio"] == 1.0 and "max_context" in data["skipped"][0]["reason"]
    for run in data["runs"]:
        assert set(run["stages"]) == STAGES
        for stats in run["stages"].values():
            assert stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
        assert run["stages"]["prefill"]["n"] == 2 and run["stages"]["decode_token"]["n"] == 2 * 3
        assert run["ttft_ms"] > 0 and run["decode_tokens_per_s"] > 0 and run["peak_rss_mb"] > 0
        assert run["kv_cache_bytes"] > 0 and run["kv_cache"] == "ping-pong"  # toy: plain graphs
    compressed = data["runs"][2]
    assert compressed["stages"]["encode"]["n"] == 2
    assert compressed["compressed_tokens"] < compressed["context"]
    events = json.loads(trace.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["name"] for e in spans if e["pid"] == 1} >= STAGES | {"generate"}
    assert any(e["pid"] == 2 for e in spans)  # ONNX Runtime's own events merged
    assert all(isinstance(e["ts"], float | int) and e["dur"] >= 0 for e in spans)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_bad_lengths(cli, export):
    res = cli("profile", export, "--lengths", "5x", expect_rc=1)
    assert_one_line_error(res)
    assert "--lengths" in res.stderr


def test_profile_missing_export(cli, tmp_path):
    assert_one_line_error(cli("profile", tmp_path / "none", expect_rc=1))


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    from semedge.errors import BackendUnavailable
    from semedge.runtime.profiling import ProfileReport, plot_profile

    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    with pytest.raises(BackendUnavailable, match=r"semedge\[torch\]"):
        plot_profile(ProfileReport("cpu", "cpu"), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
