"""`semedge compress`: output shapes and one-line errors (tiny Llama, not SmolLM2, for speed)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import assert_one_line_error


@pytest.fixture(scope="module")
def article_file(wikitext_test, tmp_path_factory):
    path = tmp_path_factory.mktemp("compress") / "article.txt"
    path.write_text(wikitext_test.read_text(encoding="utf-8")[:5000], encoding="utf-8")
    return path


@pytest.mark.parametrize("merged", ["keep", None])
def test_compress_json_is_one_object_with_spans(cli, tiny_llama, article_file, merged):
    extra = ["--merged-spans", merged] if merged else []
    res = cli("compress", article_file, "--ratio", "2.4", "--model", tiny_llama, "--json",
              "--protect", "Theatre", "--query", "television", *extra)  # fmt: skip
    out = json.loads(res.stdout)  # exactly one JSON object on stdout
    T, n = out["original_tokens"], out["compressed_tokens"]
    assert abs(out["ratio"] - 2.4) <= 0.02 * 2.4 and out["ratio"] == pytest.approx(T / n)
    spans = out["spans"]
    assert len(spans) == n and spans[-1][1] == T
    in_text = sorted(spans)  # with a query, ranked sentences may be read out of text order
    assert all(a[1] <= b[0] and a[0] < a[1] for a, b in zip(in_text, in_text[1:], strict=False))
    covered = sum(e - s for s, e in spans)
    assert out["dropped_tokens"] == T - covered
    if merged == "keep":  # merged spans tile the text
        assert spans[0][0] == 0 and covered == T
    else:  # the default with a query: kept tokens only, the merged stretches left out
        assert covered == n < T


def test_compress_table_shows_stats_and_merged_spans(cli, tiny_llama, article_file):
    res = cli("compress", article_file, "--target-tokens", "1500", "--model", tiny_llama,
              "--max-chars", "0", "--merged-spans", "keep")  # fmt: skip
    assert "compressed_tokens" in res.stdout and "encoder_layers" in res.stdout
    view = [ln for ln in res.stdout.splitlines() if "|" in ln]  # the span view (may hold newlines)
    assert any("[" in ln for ln in view) and "more positions" not in res.stdout
    res = cli("compress", article_file, "--target-tokens", "1500", "--model", tiny_llama,
              "--max-chars", "0")  # fmt: skip
    assert "dropped>" in res.stdout and "dropped_tokens" in res.stdout


def test_compress_handles_files_longer_than_the_context(cli, tiny_llama, wikitext_test, tmp_path):
    path = tmp_path / "long.txt"
    path.write_text(wikitext_test.read_text(encoding="utf-8")[:30000], encoding="utf-8")
    out = json.loads(cli("compress", path, "--ratio", "3", "--model", tiny_llama, "--json").stdout)
    assert out["original_tokens"] > 20000  # 10x the tiny model's 2048 positions
    assert abs(out["ratio"] - 3.0) <= 0.06


def test_compress_rejects_empty_file(cli, tiny_llama, tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("  \n", encoding="utf-8")
    res = cli("compress", path, "--model", tiny_llama, expect_rc=1)
    assert_one_line_error(res)
    assert "empty" in res.stderr


def test_compress_rejects_non_utf8(cli, tiny_llama, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xff\xfe bad bytes")
    res = cli("compress", path, "--model", tiny_llama, expect_rc=1)
    assert_one_line_error(res)
    assert "UTF-8" in res.stderr


def test_compress_rejects_missing_file(cli, tiny_llama, tmp_path):
    res = cli("compress", tmp_path / "nope.txt", "--model", tiny_llama, expect_rc=1)
    assert_one_line_error(res)
    assert "no such file" in res.stderr


def test_compress_rejects_text_too_short_for_ratio(cli, tiny_llama, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("Just a few words here.", encoding="utf-8")
    res = cli("compress", path, "--ratio", "2.4", "--model", tiny_llama, expect_rc=1)
    assert_one_line_error(res)
    assert "too short for ratio 2.4" in res.stderr and "recency_window" in res.stderr


def test_compress_rejects_unknown_model_path(cli, article_file, tmp_path):
    res = cli("compress", article_file, "--model", tmp_path / "no-model", expect_rc=1)
    assert_one_line_error(res)
    assert "unknown model" in res.stderr


def test_compress_rejects_ratio_below_one(cli, tiny_llama, article_file):
    res = cli("compress", article_file, "--ratio", "0.5", "--model", tiny_llama, expect_rc=1)
    assert_one_line_error(res)
    assert "ratio must be >= 1.0" in res.stderr
