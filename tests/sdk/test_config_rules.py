"""The one rule for the effective CompressionConfig, and the defaults every path uses."""

from __future__ import annotations

import math

import pytest

from semedge.config import AUTO_RECENCY, CompressionConfig, effective_compression
from semedge.errors import InputError


def test_preset_beats_trained_beats_stored_beats_defaults_then_options():
    stored = CompressionConfig(max_span=5)
    trained = CompressionConfig.adapter_default()
    assert effective_compression() == CompressionConfig()
    assert effective_compression(stored) == stored
    assert effective_compression(stored, trained) == trained
    assert effective_compression(stored, trained, "paper") == CompressionConfig.paper()
    got = effective_compression(stored, trained, None, max_span=9, ratio=3.0, encoder=None)
    assert got.max_span == 9 and got.ratio == 3.0 and got.recency_fraction == 0.96
    # an explicit recency window replaces the trained fraction
    assert effective_compression(None, trained, recency_window=32).recency_tokens(10_000) == 32
    with pytest.raises(InputError, match="unknown preset"):
        effective_compression(preset="magic")


def test_the_default_selects_tokens_and_scales_its_recency_window_with_the_budget():
    cfg = CompressionConfig(ratio=4.0)
    assert cfg.span_repr == "first"
    assert cfg.recency_tokens(4096) == round(AUTO_RECENCY * 4096 / 4)
    assert CompressionConfig(ratio=8.0).recency_tokens(4096) == round(AUTO_RECENCY * 512)
    assert CompressionConfig(recency_window=10).recency_tokens(4096) == 10
    assert CompressionConfig.paper().span_repr == "mean"
    # old stored configs (no query_share) keep their behaviour
    old = {k: v for k, v in CompressionConfig().to_dict().items() if k != "query_share"}
    assert CompressionConfig.from_dict(old).query_share == 0.0
    # ... and no implicit query: they compress as when they were written
    old = {k: v for k, v in CompressionConfig().to_dict().items() if k != "implicit_query"}
    stored = CompressionConfig.from_dict(old)
    assert not stored.implicit_query and not stored.ranks_sentences()
    assert CompressionConfig().ranks_sentences() and CompressionConfig().position_mode() == "index"
    assert stored.position_mode() == "first" and stored.digits_protected()


def test_ranked_sentences_move_before_the_question_only_with_a_query():
    assert CompressionConfig(query="Where?").reorders_ranked()
    assert not CompressionConfig().reorders_ranked()  # the last paragraph is text to continue
    assert CompressionConfig(ranked_order="relevance").reorders_ranked()
    assert not CompressionConfig(query="Where?", ranked_order="text").reorders_ranked()
    assert not CompressionConfig(query="Where?", merged_spans="keep").reorders_ranked()
    assert not CompressionConfig(query="Where?", span_position="first").reorders_ranked()
    old = {k: v for k, v in CompressionConfig().to_dict().items() if k != "ranked_order"}
    assert CompressionConfig.from_dict(old).ranked_order == "text"  # as it compressed then


@pytest.mark.parametrize("bad", [{"ratio": math.nan}, {"ratio": math.inf}, {"ratio": 0.5},
                                 {"query_share": 1.5}, {"query_share": math.nan},
                                 {"query": "  "}, {"query_relevance": "tfidf"},
                                 {"ranked_order": "random"}])  # fmt: skip
def test_bad_compression_options_are_input_errors(bad):
    with pytest.raises(InputError):
        CompressionConfig(**bad)
