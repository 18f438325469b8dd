"""`semedge train adapter` on the tiny Llama: a real run, and each bad input as one stderr line."""

from __future__ import annotations

import json

from semedge.config import CompressionConfig
from tests.conftest import assert_one_line_error

FAST = ["--context", "256", "--target", "8", "--windows", "1", "--steps", "2"]


def _data(tmp_path, wikitext_valid):
    path = tmp_path / "train.txt"
    path.write_text(wikitext_valid.read_text(encoding="utf-8")[:6000], encoding="utf-8")
    return path


def test_train_adapter_writes_a_loadable_adapter(cli, tiny_llama, wikitext_valid, tmp_path):
    data, out = _data(tmp_path, wikitext_valid), tmp_path / "ad"
    res = cli("train", "adapter", "--model", tiny_llama, "--data", data, "--strategy", "switch",
              "--out", out, "--json", *FAST)  # fmt: skip
    summary = json.loads(res.stdout)
    meta = json.loads((out / "adapter.json").read_text())
    assert meta["model_id"] == tiny_llama.name and meta["hidden_size"] == 64
    assert meta["strategy"] == "switch" and meta["steps"] == 2 and meta["ratio"] == 2.4
    assert summary["aux_calls"] == {"distill": 1, "recon": 1}  # switched off at step 1 of 2
    assert (out / "adapter.safetensors").is_file()
    # eval reads it: the semtoken row changes, the full row does not
    ppl = ["eval", "ppl", "--model", tiny_llama, "--data", data, "--context", "256", "--target",
           "8", "--windows", "1", "--methods", "full,semtoken", "--json"]  # fmt: skip
    plain = json.loads(cli(*ppl).stdout)["results"]
    adapted_report = json.loads(cli(*ppl, "--adapter", out).stdout)
    adapted = adapted_report["results"]
    assert adapted["full"]["ppl"] == plain["full"]["ppl"]
    assert adapted["semtoken"]["ppl"] != plain["semtoken"]["ppl"]
    # the adapter records the compression it was trained with, and eval compresses the same way
    assert meta["compression"]["recency_fraction"] == 0.96 and meta["compression"]["ratio"] == 2.4
    assert adapted_report["config"]["recency_fraction"] == 0.96
    assert adapted_report["config"]["max_span"] == meta["compression"]["max_span"] == 64
    assert json.loads(cli(*ppl).stdout)["config"]["recency_fraction"] is None
    # an explicit --recency-window wins over the adapter's recency fraction
    own = json.loads(cli(*ppl, "--adapter", out, "--recency-window", "32").stdout)["config"]
    assert own["recency_fraction"] is None and own["recency_window"] == 32
    # --preset picks the settings explicitly, with or without an adapter
    preset = json.loads(cli(*ppl, "--preset", "adapter").stdout)["config"]
    assert preset["recency_fraction"] == 0.96 and preset["sink_tokens"] == 0
    plain_cfg = json.loads(cli(*ppl, "--adapter", out, "--preset", "default").stdout)["config"]
    assert (
        plain_cfg["recency_fraction"] is None
        and plain_cfg["max_span"] == CompressionConfig().max_span
    )
    # the directory exists now: a second run refuses to overwrite it
    res = cli("train", "adapter", "--model", tiny_llama, "--data", data, "--out", out, *FAST,
              expect_rc=1)  # fmt: skip
    assert_one_line_error(res)
    assert "already exists" in res.stderr


def test_train_rejects_missing_data_file(cli, tiny_llama, tmp_path):
    out = tmp_path / "ad"
    res = cli("train", "adapter", "--model", tiny_llama, "--data", tmp_path / "nope.txt",
              "--out", out, expect_rc=1)  # fmt: skip
    assert_one_line_error(res)
    assert "nope.txt: no such file" in res.stderr
    assert not out.exists() and not list(tmp_path.glob(".ad.tmp-*"))


def test_train_rejects_nonpositive_steps(cli, tiny_llama, wikitext_valid, tmp_path):
    data, out = _data(tmp_path, wikitext_valid), tmp_path / "ad"
    res = cli("train", "adapter", "--model", tiny_llama, "--data", data, "--steps", "0",
              "--out", out, expect_rc=1)  # fmt: skip
    assert_one_line_error(res)
    assert "steps must be > 0, got 0" in res.stderr
    assert not out.exists()


def test_train_rejects_data_too_short_for_one_window(cli, tiny_llama, tmp_path):
    data = tmp_path / "short.txt"
    data.write_text("A few words only.", encoding="utf-8")
    res = cli("train", "adapter", "--model", tiny_llama, "--data", data, "--out", tmp_path / "ad",
              *FAST, expect_rc=1)  # fmt: skip
    assert_one_line_error(res)
    assert "one window needs" in res.stderr and not (tmp_path / "ad").exists()


def test_train_compare_reports_every_strategy(cli, tiny_llama, wikitext_valid, tmp_path):
    data = _data(tmp_path, wikitext_valid)
    res = cli("train", "compare", "--model", tiny_llama, "--data", data, "--test-data", data,
              "--strategies", "switch,mtl", "--test-windows", "1", "--json", *FAST)  # fmt: skip
    out = json.loads(res.stdout)
    assert set(out["rows"]) == {"switch", "mtl"}
    assert out["rows"]["switch"]["flops"] < out["rows"]["mtl"]["flops"]
    assert out["rows"]["switch"]["flops_saved_vs_mtl"] > 0
    assert out["full_ppl"] > 1 and out["truncate_ppl"] > 1


def test_train_compare_rejects_unknown_strategy(cli, tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("text", encoding="utf-8")
    res = cli("train", "compare", "--data", data, "--test-data", data, "--strategies", "fast",
              expect_rc=1)  # fmt: skip
    assert_one_line_error(res)
    assert "unknown strategies ['fast']" in res.stderr


def test_eval_refuses_an_adapter_for_another_model(cli, tiny_llama, wikitext_valid, tmp_path):
    data = _data(tmp_path, wikitext_valid)
    res = cli("eval", "ppl", "--model", tiny_llama, "--data", data, "--context", "256",
              "--target", "8", "--windows", "1", "--adapter", "DEFAULT", expect_rc=1)  # fmt: skip
    assert_one_line_error(res)
    assert "trained for model 'smollm2'" in res.stderr


def test_eval_rejects_a_directory_that_is_no_adapter(cli, tiny_llama, wikitext_valid, tmp_path):
    data = _data(tmp_path, wikitext_valid)
    res = cli("eval", "ppl", "--model", tiny_llama, "--data", data, "--context", "256",
              "--target", "8", "--windows", "1", "--adapter", tmp_path, expect_rc=1)  # fmt: skip
    assert_one_line_error(res)
    assert "not a semedge adapter directory" in res.stderr
