"""SemToken span math (numpy): invariants with hypothesis, ratio control, protection, merging."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semedge.compressor.spans import (
    check_spans,
    find_spans,
    greedy_spans,
    kept_token_spans,
    merge_embeddings,
    min_spans,
    next_position,
    normalize_features,
    protect_relevant_units,
    protected_mask,
    semantic_density,
    span_positions,
)
from semedge.config import CompressionConfig
from semedge.errors import InputError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _assert_valid(spans: np.ndarray, T: int, protected: np.ndarray, max_span: int) -> None:
    check_spans(spans, T)  # covers 0..T, contiguous, ordered, non-empty
    length = spans[:, 1] - spans[:, 0]
    assert length.max() <= max_span
    for s, e in spans[length > 1].tolist():
        assert not protected[s:e].any(), (s, e)  # protected tokens are always singletons


@st.composite
def prompts(draw, min_T=1, max_T=300):
    T = draw(st.integers(min_T, max_T))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    # a random walk: neighbours are similar, so spans form (pure noise never merges)
    hidden = rng.normal(size=(T, 16)).cumsum(axis=0) * draw(st.floats(0.1, 3.0))
    protected = rng.random(T) < draw(st.floats(0.0, 0.4))
    return hidden, protected


@FAST
@given(prompts(), st.floats(-1.0, 1.0), st.integers(1, 10))
def test_greedy_spans_cover_in_order_and_keep_protected_singletons(p, tau, max_span):
    hidden, protected = p
    spans = greedy_spans(hidden, tau, max_span, protected)
    _assert_valid(spans, len(hidden), protected, max_span)


@FAST
@given(prompts(min_T=2), st.integers(2, 8), st.integers(0, 2**31 - 1))
def test_greedy_spans_obey_anchor_rule(p, max_span, seed):
    hidden, protected = p
    tau = np.random.default_rng(seed).uniform(0.0, 0.95, len(hidden))  # per-token tau
    spans = greedy_spans(hidden, tau, max_span, protected)
    _assert_valid(spans, len(hidden), protected, max_span)
    x = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
    for s, e in spans.tolist():
        for j in range(s + 1, e):  # every member is similar enough to the anchor
            assert x[s] @ x[j] > max(tau[s], tau[j]) - 1e-9
        if e < len(hidden) and e - s < max_span and not protected[e] and not protected[s]:
            assert x[s] @ x[e] <= max(tau[s], tau[e]) + 1e-9  # the span stopped for a reason


@FAST
@given(
    prompts(min_T=200, max_T=3000),
    st.floats(1.0, 4.0),
    st.integers(2, 10),
    st.floats(0.0, 2.0),
)
def test_find_spans_hits_ratio_within_tolerance(p, ratio, max_span, alpha):
    hidden, _ = p
    T = len(hidden)
    cfg = CompressionConfig(ratio=ratio, max_span=max_span, density_alpha=alpha, recency_window=8)
    protected = protected_mask(["a"] * T, np.zeros(T, bool), cfg)
    protected |= np.random.default_rng(T).random(T) < 0.05
    try:
        spans, tau = find_spans(hidden, protected, cfg)
    except InputError as err:  # only when even unlimited spans cannot reach the ratio
        assert "too short" in str(err)
        assert T / min_spans(protected, T) < ratio * (1 - cfg.tolerance)
        return
    # max_span holds unless the ratio needs longer spans (then they grow by themselves)
    fits = min_spans(protected, max_span) <= np.floor(T / (ratio * (1 - cfg.tolerance)) + 1e-9)
    _assert_valid(spans, T, protected, max_span if fits else T)
    achieved = T / len(spans)
    # budget() admits T / n == ratio * (1 - tolerance) exactly (T=441, n=150 at ratio 3): compare
    # with the same 1e-9 slack it uses, not bare floats (441 / 150 - 3 is 0.06000000000000005)
    assert abs(achieved - ratio) <= cfg.tolerance * ratio + 1e-9, (achieved, ratio)
    assert np.isfinite(tau)


def test_find_spans_target_tokens_and_calibrated_threshold():
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(1200, 32)).cumsum(axis=0)
    cfg = CompressionConfig(ratio=None, target_tokens=500, recency_window=16)
    prot = protected_mask(["x"] * 1200, np.zeros(1200, bool), cfg)
    spans, tau = find_spans(hidden, prot, cfg)
    assert abs(1200 / len(spans) - 1200 / 500) <= 0.02 * 1200 / 500
    # the found tau reused as a calibrated threshold reproduces the spans without a search
    again, tau2 = find_spans(hidden, prot, CompressionConfig(threshold=tau, recency_window=16))
    assert tau2 == tau and np.array_equal(again, spans)


def test_ratio_one_keeps_every_token():
    hidden = np.random.default_rng(2).normal(size=(100, 8))
    cfg = CompressionConfig(ratio=1.0, recency_window=0, sink_tokens=0)
    spans, _ = find_spans(hidden, np.zeros(100, bool), cfg)
    assert np.array_equal(spans, np.stack([np.arange(100), np.arange(1, 101)], axis=1))


def test_too_short_text_raises_clear_error():
    hidden = np.random.default_rng(3).normal(size=(40, 8)).cumsum(axis=0)
    cfg = CompressionConfig(ratio=2.4, recency_window=64)
    prot = protected_mask(["w"] * 40, np.zeros(40, bool), cfg)
    with pytest.raises(InputError, match=r"text has 40 tokens, too short for ratio 2\.4.*recency"):
        find_spans(hidden, prot, cfg)


def test_protected_mask_rules():
    toks = ["The", " year", " 19", "87", " was", " Mr", ".", " Smith", "'s", " best", " ever", "!"]
    special = np.zeros(len(toks), bool)
    special[-1] = True
    cfg = CompressionConfig(
        protected_strings=("Smith",),
        recency_window=0,
        sink_tokens=1,
        protect_special=True,
        ratio=1.0,
        implicit_query=False,  # no sentence ranking: digits are protected while they fit
    )
    text = "".join(toks)
    ends = np.cumsum([len(t) for t in toks])
    offsets = np.stack([ends - [len(t) for t in toks], ends], axis=1)
    mask = protected_mask(toks, special, cfg, text=text, offsets=offsets)
    assert mask.tolist() == [1, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert np.array_equal(mask, protected_mask(toks, special, cfg))  # offsets from the tokens
    recent = protected_mask(toks, special, CompressionConfig(recency_window=3, sink_tokens=0))
    assert recent[-3:].all() and not recent[4:6].any()
    # digits are protected only while they fit the budget: at 6x the year merges
    tight = protected_mask(toks, special, dataclasses.replace(cfg, ratio=6.0), text, offsets)
    assert tight.tolist() == [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    # with a query, digits are not protected: the relevant sentences take that room
    queried = protected_mask(toks, special, dataclasses.replace(cfg, query="who?"), text, offsets)
    assert queried.tolist() == tight.tolist() and mask.tolist() != tight.tolist()
    ranked = dataclasses.replace(cfg, implicit_query=True)  # the default: the last line ranks
    assert protected_mask(toks, special, ranked, text, offsets).tolist() == tight.tolist()


def test_protected_string_spanning_tokens_protects_each_piece():
    toks = ["pass", "key", " is", " blue", " and", " pass", "word"]
    cfg = CompressionConfig(protected_strings=("skey is b",), recency_window=0, sink_tokens=0)
    mask = protected_mask(toks, np.zeros(len(toks), bool), cfg)
    assert mask.tolist() == [1, 1, 1, 1, 0, 0, 0]


def test_density_is_low_for_repetition_and_high_for_noise():
    rng = np.random.default_rng(4)
    same = np.tile(rng.normal(size=(1, 32)), (40, 1)) + 1e-3 * rng.normal(size=(40, 32))
    noise = rng.normal(size=(40, 32))
    h = semantic_density(normalize_features(np.concatenate([same, noise])), window=8)
    assert h[5:35].max() < 0.1 and h[45:75].min() > 3 * h[5:35].max()


def test_dense_region_stays_finer_than_repetitive_region():
    rng = np.random.default_rng(5)
    smooth = rng.normal(size=(300, 32)).cumsum(axis=0) * 0.05 + rng.normal(size=(1, 32)) * 5
    noisy = rng.normal(size=(300, 32)).cumsum(axis=0) * 0.05 + rng.normal(size=(300, 32)) * 0.5
    hidden = np.concatenate([smooth, noisy])
    cfg = CompressionConfig(ratio=2.0, recency_window=0, density_alpha=2.0)
    spans, _ = find_spans(hidden, np.zeros(600, bool), cfg)
    first_half = (spans[:, 0] < 300).sum()
    assert first_half < len(spans) - first_half  # the dense half keeps more positions


def test_query_similar_tokens_stay_finer():
    rng = np.random.default_rng(6)
    hidden = rng.normal(size=(800, 32)).cumsum(axis=0)
    sim = np.zeros(800)
    sim[400:480] = 1.0  # the query matches this region
    cfg = CompressionConfig(ratio=2.4, recency_window=0, query_keep=0.05)
    plain, _ = find_spans(hidden, np.zeros(800, bool), cfg)
    aware, _ = find_spans(hidden, np.zeros(800, bool), cfg, query_sim=sim)

    def inside(spans):
        return int(((spans[:, 0] >= 400) & (spans[:, 0] < 480)).sum())

    assert inside(aware) > inside(plain)
    assert abs(800 / len(aware) - 2.4) <= 0.02 * 2.4


@FAST
@given(st.integers(1, 60), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_merge_embeddings_modes(T, D, seed):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(T, D)).astype(np.float32)
    cuts = np.unique(np.concatenate([[0], rng.integers(1, T + 1, size=T // 3)]))
    spans = np.stack([cuts, np.append(cuts[1:], T)], axis=1) if cuts[-1] != T else None
    if spans is None:
        spans = np.stack([cuts[:-1], cuts[1:]], axis=1)
    check_spans(spans, T)
    mean = merge_embeddings(emb, spans, "mean")
    for k, (s, e) in enumerate(spans.tolist()):
        np.testing.assert_allclose(mean[k], emb[s:e].mean(axis=0), rtol=1e-5, atol=1e-6)
    nm = merge_embeddings(emb, spans, "norm_mean")
    want = [np.linalg.norm(emb[s:e], axis=1).mean() for s, e in spans.tolist()]
    np.testing.assert_allclose(np.linalg.norm(nm, axis=1), want, rtol=1e-4)
    assert np.array_equal(merge_embeddings(emb, spans, "first"), emb[spans[:, 0]])
    assert np.array_equal(merge_embeddings(emb, spans, "last"), emb[spans[:, 1] - 1])
    single = np.stack([np.arange(T), np.arange(1, T + 1)], axis=1)
    for mode in ("mean", "norm_mean", "first", "last"):  # singletons reproduce tokens exactly
        assert np.array_equal(merge_embeddings(emb, single, mode), emb)


def test_span_positions():
    spans = np.array([[0, 3], [3, 4], [4, 8]])
    assert span_positions(spans).tolist() == [0, 3, 4]
    assert span_positions(spans, "last").tolist() == [2, 3, 7]
    assert span_positions(spans, "index").tolist() == [0, 1, 2]
    assert next_position(spans, "first") == next_position(spans, "last") == 8
    assert next_position(spans, "index") == 3
    with pytest.raises(InputError, match="first"):
        span_positions(spans, "middle")
    with pytest.raises(InputError, match="span_repr"):
        merge_embeddings(np.zeros((8, 2)), spans, "max")


def test_check_spans_rejects_gaps():
    with pytest.raises(InputError, match="contiguous"):
        check_spans(np.array([[0, 2], [3, 5]]), 5)
    with pytest.raises(InputError, match="cover"):
        check_spans(np.array([[0, 2]]), 5)
    # where merged spans are dropped, gaps are allowed, overlaps and overruns are not
    assert check_spans(np.array([[1, 2], [3, 5]]), 5, gaps=True).tolist() == [[1, 2], [3, 5]]
    with pytest.raises(InputError, match="overlapping"):
        check_spans(np.array([[0, 3], [2, 5]]), 5, gaps=True)
    with pytest.raises(InputError, match="lie in"):
        check_spans(np.array([[0, 2], [3, 6]]), 5, gaps=True)


def _ranked(T: int = 400, seed: int = 0):
    """Random states, 20-token sentences with random relevance scores."""
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(T, 16)).cumsum(axis=0)
    units = np.arange(T) // 20
    scores = rng.random(units.max() + 1)
    return hidden, units, scores


@pytest.mark.parametrize("ratio", [1.5, 2.4, 4.0, 8.0])
def test_dropping_merged_spans_keeps_whole_relevant_sentences_within_the_budget(ratio):
    hidden, units, scores = _ranked()
    T = len(hidden)
    cfg = CompressionConfig(ratio=ratio, recency_fraction=0.5)  # merged_spans auto -> drop
    assert cfg.drops_merged()
    prot = protected_mask(["a"] * T, np.zeros(T, bool), cfg)
    spans, _ = find_spans(hidden, prot, cfg, None, (units, scores))
    assert np.all(spans[:, 1] - spans[:, 0] == 1)  # only kept tokens, no merged span
    check_spans(spans, T, gaps=True)
    assert len(spans) == round(T / ratio)  # exactly the budget
    kept = np.zeros(T, bool)
    kept[spans[:, 0]] = True
    assert kept[prot].all()  # sinks and recency window
    free = ~prot
    taken = [u for u in range(units.max() + 1) if free[units == u].any() and kept[units == u].all()]
    if ratio < 8.0:
        assert taken, "no sentence was kept whole"
        best = max(
            range(units.max() + 1), key=lambda u: scores[u] if free[units == u].any() else -1
        )
        if (units == best).sum() <= len(spans) - prot.sum():
            assert best in taken  # the most relevant sentence that fits is kept
    # with the same inputs, keeping merged spans spends positions on them
    keep_cfg = dataclasses.replace(cfg, merged_spans="keep")
    merged, _ = find_spans(hidden, prot, keep_cfg, None, (units, scores))
    assert (merged[:, 1] - merged[:, 0] > 1).any()
    assert merged[-1, 1] == T and merged[0, 0] == 0


def test_dropped_runs_cost_nothing_so_more_sentences_fit():
    _, units, scores = _ranked()
    prot = np.zeros(len(units), bool)
    prot[-100:] = True
    with_runs = protect_relevant_units(prot, units, scores, 200, 1.0)
    without = protect_relevant_units(prot, units, scores, 200, 1.0, run_cost=False)
    assert int(without.sum()) == 200 >= int(with_runs.sum())  # 5 sentences of 20 exactly
    assert (with_runs & ~without).sum() == 0  # the same ranking, a longer prefix of it


def test_leftover_room_goes_to_the_tokens_before_the_recency_window():
    T = 100
    cfg = CompressionConfig(ratio=4.0, recency_window=10, sink_tokens=2, merged_spans="drop")
    prot = protected_mask(["a"] * T, np.zeros(T, bool), cfg)
    spans = kept_token_spans(prot, None, cfg, T)
    assert spans[:, 0].tolist() == [0, 1] + list(range(77, 100))  # 25 = 2 sinks + 23 latest
    with pytest.raises(InputError, match="too short"):
        kept_token_spans(np.ones(T, bool), None, cfg, T)


@pytest.mark.parametrize(
    "module",
    ["semedge.compressor.spans", "semedge.compressor.budget", "semedge.compressor.windows"],
)
def test_span_modules_are_torch_free(module):
    from tests.conftest import run_python

    proc = run_python(
        f"import {module}; heavy = {{'torch', 'transformers'}};"
        " sys.exit(sorted(heavy & set(sys.modules)) or 0)"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_recency_fraction_scales_the_window_with_the_budget():
    cfg = CompressionConfig.adapter_default(ratio=2.4)
    assert cfg.recency_tokens(2048) == round(0.96 * 2048 / 2.4) == 819
    assert cfg.recency_tokens(4096) == round(0.96 * 4096 / 2.4) == 1638
    assert (
        CompressionConfig(target_tokens=100, ratio=None, recency_fraction=0.5).recency_tokens(1000)
        == 50
    )
    assert CompressionConfig(recency_window=64).recency_tokens(40) == 40  # never past the prompt
    mask = protected_mask(["w"] * 2048, np.zeros(2048, bool), cfg)
    assert mask[-819:].all() and not mask[: 2048 - 819].any()  # no sinks, digits may merge
    for bad in (-0.1, 1.0):
        with pytest.raises(InputError, match="recency_fraction must be in"):
            CompressionConfig(recency_fraction=bad)


def test_adapter_preset_merges_only_the_far_context():
    rng = np.random.default_rng(6)
    hidden = rng.normal(size=(1024, 16)).cumsum(axis=0)
    cfg = CompressionConfig.adapter_default(ratio=2.4)
    prot = protected_mask(["w"] * 1024, np.zeros(1024, bool), cfg)
    spans, _ = find_spans(hidden, prot, cfg)
    lengths = spans[:, 1] - spans[:, 0]
    recent = cfg.recency_tokens(1024)
    assert (lengths[-recent:] == 1).all() and spans[-recent, 0] == 1024 - recent
    far = lengths[:-recent]
    assert far.max() <= 64 and far.sum() == 1024 - recent and len(far) < 0.1 * len(spans)
    assert abs(1024 / len(spans) - 2.4) <= 0.02 * 2.4


@pytest.mark.parametrize("rows", [1, 2, 3, 10, 11, 257])
def test_column_median_equals_numpys(rows):
    from semedge.compressor.relevance import column_median

    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 7)).astype(np.float32)
    x[rows // 2 :, 3] = 1.5  # ties
    got, want = column_median(x), np.median(x, axis=0)
    assert got.dtype == want.dtype and np.array_equal(got, want)
