"""semedge.eval on the tiny models: perplexity matches the model, baselines hit the ratio,
ratio 1 is the identity, the passkey hides the key where asked."""

from __future__ import annotations

import math

import numpy as np
import pytest

from semedge.errors import InputError
from semedge.eval.baselines import random_spans, truncate_keep, uniform_spans
from semedge.eval.windows import tokenize_text, window_starts


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    from semedge.models import load_model

    return load_model(tiny_llama)


@pytest.fixture(scope="module")
def stream(tiny):
    from semedge.eval.passkey import default_filler

    return tokenize_text(default_filler(), tiny.tokenizer)


def _direct_ppl(model, ids, starts, context, target):
    import torch

    nll = 0.0
    for s in starts:
        x = torch.as_tensor(ids[s : s + context + target])[None]
        with torch.no_grad():
            logits = model(x).logits[0, context - 1 : -1]
        nll += float(torch.nn.functional.cross_entropy(logits, x[0, context:], reduction="sum"))
    return math.exp(nll / (target * len(starts)))


def test_full_ppl_is_exp_mean_nll_of_the_model(tiny, stream):
    from semedge.eval import evaluate_perplexity

    rep = evaluate_perplexity(*tiny, stream, context=96, target=24, windows=3, methods="full")
    starts = window_starts(len(stream), 120, 3)
    want = _direct_ppl(tiny.model, stream, starts, 96, 24)
    assert rep.results["full"].ppl == pytest.approx(want, rel=1e-5)
    assert rep.windows == 3 and rep.results["full"].tokens == 96


def test_semtoken_at_ratio_one_equals_full_exactly(tiny, stream):
    from semedge.eval import evaluate_perplexity

    rep = evaluate_perplexity(
        *tiny, stream, context=96, target=24, ratio=1.0, windows=2, methods="full,semtoken"
    )
    assert rep.results["semtoken"].ppl == rep.results["full"].ppl
    assert rep.results["semtoken"].ratio == 1.0


def test_every_method_reports_its_achieved_ratio(tiny, stream):
    from semedge.config import CompressionConfig
    from semedge.eval import evaluate_perplexity

    cfg = CompressionConfig(recency_window=16)
    rep = evaluate_perplexity(
        *tiny, stream, context=160, target=16, ratio=2.0, windows=2, config=cfg
    )
    for name in ("semtoken", "truncate", "random", "uniform"):
        assert rep.results[name].ratio == pytest.approx(2.0, rel=0.03), name
        assert rep.results[name].ppl > 1.0
    d = rep.to_dict()
    assert set(d["results"]) == {"full", "semtoken", "truncate", "random", "uniform"}
    assert d["context"] == 160 and d["ratio"] == 2.0


@pytest.mark.parametrize("n", [50, 257, 1024, 2048])
@pytest.mark.parametrize("ratio", [1.5, 2.4, 4.0])
def test_baselines_hit_the_ratio_and_tile_the_tokens(n, ratio):
    rng = np.random.default_rng(n)
    protected = np.zeros(n, bool)
    protected[rng.choice(n, n // 20, replace=False)] = True
    protected[-n // 10 :] = True
    for spans in (uniform_spans(n, ratio, protected), random_spans(n, ratio, protected, seed=1)):
        assert spans[0, 0] == 0 and spans[-1, 1] == n
        assert (spans[1:, 0] == spans[:-1, 1]).all() and (spans[:, 1] > spans[:, 0]).all()
        assert len(spans) == round(n / ratio)  # the exact budget truncation gets
        if n >= 257:
            assert n / len(spans) == pytest.approx(ratio, rel=0.02)
        single = spans[spans[:, 1] - spans[:, 0] == 1, 0]
        assert set(np.flatnonzero(protected)) <= set(single.tolist())
    assert truncate_keep(n, ratio) == round(n / ratio)


def test_random_spans_are_seeded():
    a, b = random_spans(500, 2.4, seed=3), random_spans(500, 2.4, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, random_spans(500, 2.4, seed=4))


def test_window_starts_spread_over_the_stream_and_reject_short_data():
    assert window_starts(1000, 100, 4) == [0, 300, 600, 900]
    with pytest.raises(InputError, match="smaller --context"):
        window_starts(99, 100, 1)


@pytest.mark.parametrize("depth", [0.1, 0.5, 0.9])
def test_passkey_sample_hides_the_key_at_the_asked_depth(tiny, stream, depth):
    from semedge.eval.passkey import make_passkey_sample

    tok = tiny.tokenizer
    s = make_passkey_sample(stream, tok, 1500, depth, np.random.default_rng(7))
    assert len(s.input_ids) == 1500
    assert s.input_ids.dtype == np.int64 and len(s.passkey) == 5
    assert s.passkey in tok.decode(s.input_ids[s.key_start : s.key_end].tolist())
    assert s.passkey not in tok.decode(s.input_ids[: s.key_start].tolist())
    assert abs(s.depth - depth) < 0.1  # snapped to the nearest sentence end
    assert tok.decode(s.input_ids[-12:].tolist()).endswith("The pass key is")


def test_passkey_report_scores_each_method(tiny):
    from semedge.config import CompressionConfig
    from semedge.eval import evaluate_passkey

    cfg = CompressionConfig(recency_window=16)
    rep = evaluate_passkey(*tiny, context=200, ratio=2.0, samples=2, config=cfg)
    d = rep.to_dict()
    assert d["n_samples"] == 2 and set(d["results"]) == {"full", "semtoken", "truncate"}
    for row in d["samples"]:
        assert isinstance(row["key_dropped"], bool)
        assert row["truncate"]["tokens"] == 100 and row["full"]["tokens"] == 200


def test_a_bos_model_is_scored_with_bos_opening_each_window_and_truncation_keeps_it(tiny_models):
    import torch

    from semedge.eval import evaluate_perplexity
    from semedge.eval.passkey import default_filler
    from semedge.eval.prompts import PromptBuilder
    from semedge.eval.windows import leading_bos
    from semedge.models import load_model

    gemma = load_model(tiny_models["gemma3"])
    bos = leading_bos(gemma.tokenizer)
    assert bos == gemma.tokenizer.bos_token_id and bos is not None
    ids = tokenize_text(default_filler(), gemma.tokenizer)
    assert bos not in ids[:4].tolist()  # the stream itself carries no BOS
    rep = evaluate_perplexity(*gemma, ids, context=96, target=24, windows=3, methods="full")
    nll = 0.0
    for s in window_starts(len(ids), 95 + 24, 3):
        x = torch.as_tensor(np.concatenate([[bos], ids[s : s + 95 + 24]]))[None]
        with torch.no_grad():
            logits = gemma.model(x).logits[0, 95:-1]
        nll += float(torch.nn.functional.cross_entropy(logits, x[0, 96:], reduction="sum"))
    assert rep.results["full"].ppl == pytest.approx(math.exp(nll / 72), rel=1e-5)
    ctx = np.concatenate([[bos], ids[:99]])
    kept = PromptBuilder(*gemma).build("truncate", ctx, 4.0)
    assert kept.compressed_tokens == 25 and kept.input_ids[0] == bos
    assert kept.input_ids[1:].tolist() == ctx[-24:].tolist()
    assert leading_bos(load_model(tiny_models["llama"]).tokenizer) is None


def test_truncation_plans_keep_the_leading_special_tokens():
    from semedge.eval.methods import leading_specials, plan_truncate

    assert leading_specials(np.array([True, False, True])) == 1
    assert leading_specials(np.array([False, True])) == 0
    plan = plan_truncate(100, 4.0, lead=1)
    assert plan.source.tolist() == [0, *range(76, 100)]
    assert plan_truncate(100, 4.0).source.tolist() == list(range(75, 100))
