"""Query-aware SemToken: identical spans in PyTorch and the runtime, the relevant sentence kept
verbatim, every ratio 1-8 on a 512-token prompt, long prompts compacted into a small export."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest

from semedge.compressor import SemTokenCompressor
from semedge.errors import InputError
from semedge.runtime import Pipeline
from tests.runtime.toy_export import sample_text

NEEDLE = "The special magic number for amber-falcon is: 4817263."
QUESTION = "What is the special magic number for amber-falcon?"


def _prompt(n_chars: int = 2400) -> str:
    text = sample_text()[:n_chars]
    cut = text.find(". ", len(text) // 5) + 2  # a sentence boundary in the first fifth
    return text[:cut] + NEEDLE + " " + text[cut:] + "\n\n" + QUESTION


@pytest.fixture(scope="module")
def compressor(tiny_models, tiny_export):
    from semedge.compressor import SemTokenCompressor
    from semedge.models import load_model

    model, tok = load_model(str(tiny_models["llama"]))
    with Pipeline.from_pretrained(tiny_export) as pipe:
        config = pipe.compression
    return SemTokenCompressor(model, tok, config)


@pytest.fixture(scope="module")
def pipe(tiny_export):
    with Pipeline.from_pretrained(tiny_export) as p:
        yield p


@pytest.mark.parametrize("query", [QUESTION, None])  # None: the implicit query (last paragraph)
@pytest.mark.parametrize("merged", ["auto", "keep"])
@pytest.mark.parametrize("ratio", [2.4, 4.0])
def test_query_spans_equal_between_pytorch_and_runtime(compressor, pipe, ratio, merged, query):
    """Both paths encode only the states the span search reads (relevance.states_needed)."""
    text = _prompt()
    cfg = dataclasses.replace(compressor.config, merged_spans=merged)
    want = SemTokenCompressor(compressor.model, compressor.tokenizer, cfg).compress(
        text, ratio=ratio, query=query
    )
    with _config(pipe, merged_spans=merged):
        got = pipe.prepare(text, ratio, query)
    lengths = want.spans[:, 1] - want.spans[:, 0]
    assert (lengths > 1).any() == (merged == "keep")  # auto: merged spans dropped
    assert want.stats["dropped_tokens"] == len(want.input_ids) - lengths.sum()
    assert (want.stats["dropped_tokens"] > 0) == (merged != "keep")
    np.testing.assert_array_equal(got.spans, want.spans)
    moved = bool((np.diff(want.spans[:, 0]) < 0).any())  # ranked sentences read out of order
    assert not moved or (query is not None and merged == "auto")  # ranked_order "auto"
    np.testing.assert_array_equal(got.positions, want.position_ids[0].numpy())
    np.testing.assert_allclose(got.embeds, want.inputs_embeds[0].numpy(), atol=1e-5)
    assert got.first_new_position == want.next_position


def test_with_a_query_positions_are_indices_and_generation_continues_after_them(pipe):
    text = _prompt()
    with_q = pipe.prepare(text, 4.0, QUESTION)
    n = len(with_q.spans)
    assert with_q.positions.tolist() == list(range(n))
    assert with_q.first_new_position == n < with_q.prompt_tokens
    implicit = pipe.prepare(text, 4.0, None)  # the last paragraph (the question) ranks
    assert implicit.positions.tolist() == list(range(len(implicit.spans)))
    with _no_ranking(pipe):  # no ranking: the original positions, gaps and all
        without = pipe.prepare(text, 4.0, None)
    np.testing.assert_array_equal(without.positions, without.spans[:, 0])
    assert without.first_new_position == without.prompt_tokens


@contextlib.contextmanager
def _config(pipe, **changes):
    """The pipeline's compression config with `changes`, meanwhile."""
    keep = pipe.compression
    pipe.compression = dataclasses.replace(keep, **changes)
    try:
        yield
    finally:
        pipe.compression = keep


def _no_ranking(pipe):
    """The pipeline's config without the implicit query, meanwhile."""
    return _config(pipe, implicit_query=False)


def test_the_query_keeps_the_relevant_sentence_verbatim(pipe):
    text = _prompt()
    enc = pipe.tokenize(text)
    start = text.find(NEEDLE)
    needle = [i for i, (a, b) in enumerate(enc.offsets) if start <= a and b <= start + len(NEEDLE)]
    for ratio in (2.4,):  # (at 4x and 8x the random tiny model ranks other sentences higher)
        with_q = pipe.prepare(text, ratio, QUESTION)
        kept = set(with_q.spans[with_q.spans[:, 1] - with_q.spans[:, 0] == 1, 0].tolist())
        assert set(needle) <= kept, ratio  # every needle token is its own position
        implicit = pipe.prepare(text, ratio, None)  # the last paragraph is the question
        kept1 = set(implicit.spans[implicit.spans[:, 1] - implicit.spans[:, 0] == 1, 0].tolist())
        assert set(needle) <= kept1, ratio
        with _no_ranking(pipe):
            without = pipe.prepare(text, ratio, None)
        kept0 = set(without.spans[without.spans[:, 1] - without.spans[:, 0] == 1, 0].tolist())
        assert not set(needle) <= kept0, ratio  # without any query it is merged away
        assert abs(len(with_q.positions) - len(enc.ids) / ratio) <= 0.02 * len(enc.ids) / ratio + 1


def test_with_a_query_the_relevant_sentence_is_read_right_before_the_question(pipe):
    text = _prompt()
    enc = pipe.tokenize(text)
    q_at = text.rfind("\n\n" + QUESTION)  # the break, then the question
    question = int(np.searchsorted(np.asarray(enc.offsets)[:, 1], q_at, side="right"))
    assert pipe.tokenizer.decode([int(enc.ids[question])]).startswith("\n")  # the break
    start = text.find(NEEDLE)
    needle = [i for i, (a, b) in enumerate(enc.offsets) if start <= a and b <= start + len(NEEDLE)]
    with _config(pipe, query_relevance="bm25"):  # (the random tiny model's maxsim ranks the
        got = pipe.prepare(text, 2.4, QUESTION)  # recency window's long sentences first)
    order = got.spans[:, 0].tolist()
    at = order.index(question)  # the break and the question paragraph come last, in order
    assert order[at:] == list(range(question, len(enc.ids)))
    assert order[at - len(needle) : at] == needle  # the most relevant sentence read last
    assert sorted(order) == sorted(set(order)) and len(order) == len(got.positions)
    with _config(pipe, ranked_order="text", query_relevance="bm25"):  # text order
        plain = pipe.prepare(text, 2.4, QUESTION)
    assert plain.spans[:, 0].tolist() == sorted(order)  # the same tokens, another order
    implicit = pipe.prepare(text, 2.4, None).spans[:, 0].tolist()
    assert implicit == sorted(implicit)  # without a query the last paragraph is text: no move


def test_with_a_query_the_recency_windows_sentences_are_scored_in_both_paths(compressor, pipe):
    """A reading order ranks the window's sentences too (relevance.states_needed): a needle in
    the window gets encoder states, and both paths still agree on the spans. (The reading
    itself: test_compressor's SmolLM2 test; the random tiny model's scores rank at random.)"""
    from semedge.compressor.relevance import states_needed

    base = sample_text()[:2400]
    cut = base.find(". ", int(len(base) * 0.85)) + 2  # a sentence boundary in the window
    text = base[:cut] + NEEDLE + " " + base[cut:] + "\n\n" + QUESTION
    enc = pipe.tokenize(text)
    T = len(enc.ids)
    start = text.find(NEEDLE)
    needle = [i for i, (a, b) in enumerate(enc.offsets) if start <= a and b <= start + len(NEEDLE)]
    cfg = dataclasses.replace(pipe.compression, ratio=2.4, query=QUESTION)
    assert needle[0] >= T - cfg.recency_tokens(T)  # the needle lies in the recency window
    offsets = np.asarray(enc.offsets)
    assert states_needed(text, offsets, cfg)[needle].all()
    assert not states_needed(text, offsets, dataclasses.replace(cfg, query=None))[needle].any()
    got = pipe.prepare(text, 2.4, QUESTION)
    want = compressor.compress(text, ratio=2.4, query=QUESTION)
    np.testing.assert_array_equal(got.spans, want.spans)


def test_reading_order_moves_ranked_sentences_before_the_question_least_relevant_first():
    from semedge.compressor.budget import reading_order

    units = np.repeat(np.arange(6), 3)  # 6 sentences of 3 tokens; the last is the question
    scores = np.array([0.1, 0.9, 0.0, 0.5, 0.2, 0.0])
    kept = np.array([0, 3, 4, 5, 9, 10, 11, 12, 13, 14, 15, 16, 17])
    ranked = np.zeros(18, bool)
    ranked[[3, 4, 5, 9, 10, 11]] = True  # sentences 1 and 3 kept for relevance
    got = reading_order(kept, ranked, units, scores, question_at=15)
    assert got.tolist() == [0, 12, 13, 14, 9, 10, 11, 3, 4, 5, 15, 16, 17]
    none = reading_order(kept, np.zeros(18, bool), units, scores, question_at=15)
    assert none.tolist() == kept.tolist()
    ranked[[1, 2]] = True  # sentence 0: token 0 kept as a sink, the rest for relevance
    got = reading_order(np.sort(np.r_[kept, 1, 2]), ranked, units, scores, question_at=15,
                        pinned=1)  # fmt: skip
    assert got.tolist() == [0, 1, 2, 12, 13, 14, 9, 10, 11, 3, 4, 5, 15, 16, 17]  # not split


def test_reading_order_reads_a_recent_sentence_that_outranks_a_far_one_with_the_ranked():
    """k = 2 sentences were kept for relevance (1 and 3); sentence 4, kept whole in the recency
    window, outranks sentence 3, so 1 and 4 are read before the question and 3 stays in its
    place; a sentence holding a pinned (sink) token never moves, however relevant."""
    from semedge.compressor.budget import reading_order

    units = np.repeat(np.arange(6), 3)
    scores = np.array([0.1, 0.9, 0.0, 0.5, 0.95, 0.0])
    kept = np.array([3, 4, 5, 9, 10, 11, 12, 13, 14, 15, 16, 17])
    ranked = np.zeros(18, bool)
    ranked[[3, 4, 5, 9, 10, 11]] = True
    got = reading_order(kept, ranked, units, scores, question_at=15)
    assert got.tolist() == [9, 10, 11, 3, 4, 5, 12, 13, 14, 15, 16, 17]
    scores[4] = 0.2  # sentence 1 holds a sink (token 3): it stays, so only one (3) is moved
    pinned = reading_order(kept, ranked, units, scores, question_at=15, pinned=4)
    assert pinned.tolist() == [3, 4, 5, 12, 13, 14, 9, 10, 11, 15, 16, 17]


@pytest.mark.parametrize("ratio", [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0])
@pytest.mark.parametrize("query", [None, QUESTION])
def test_every_ratio_1_to_8_works_on_a_512_token_prompt(pipe, ratio, query):
    text = _prompt(8000)
    ids = pipe.tokenize(text).ids
    text = pipe.decode_tokens(ids[-512:])  # about 512 tokens
    got = pipe.prepare(text, ratio, query)
    T = got.prompt_tokens
    assert 480 <= T <= 560
    n = len(got.positions)
    assert abs(T / n - ratio) <= 0.02 * ratio + ratio / n, (T, n, ratio)


def test_a_prompt_longer_than_the_export_is_compressed_to_fit(pipe):
    limit = pipe.max_positions
    text = sample_text()
    while len(pipe.tokenize(text).ids) < 1.5 * limit:
        text = text + " " + text
    T = len(pipe.tokenize(text).ids)
    with pytest.raises(InputError, match="pass --ratio"):
        pipe.prepare(text, None, None, max_new_tokens=8)
    got = pipe.prepare(text, 4.0, None, max_new_tokens=8)
    assert got.positions[-1] < limit - 8 and np.all(np.diff(got.positions) > 0)
    assert got.first_new_position == got.positions[-1] + 1
    assert got.spans[-1, 1] == T  # every token is still covered
    res = pipe.generate(text, max_new_tokens=8, ratio=4.0)
    assert res.prompt_tokens == T and len(res.tokens) >= 1


def test_an_empty_query_is_refused(pipe):
    with pytest.raises(InputError, match="query"):
        pipe.prepare(_prompt(), 2.4, "   ")


def test_unit_relevance_ranks_shared_rare_tokens_first_and_discounts_common_ones():
    from semedge.compressor.relevance import unit_relevance
    from semedge.compressor.spans import protect_relevant_units

    rng = np.random.default_rng(0)
    units = np.repeat(np.arange(10), 10)  # 10 sentences of 10 tokens
    ids = rng.integers(100, 200, 100)
    ids[::10] = 5  # token 5 opens every sentence: no evidence
    ids[34] = 777  # a rare token only sentence 3 holds
    hidden = rng.normal(size=(100, 16))
    q_ids = np.array([5, 777])
    q_states = rng.normal(size=(2, 16))
    scores = unit_relevance(hidden, q_states, units, ids, q_ids)
    assert int(np.argmax(scores)) == 3
    # the common token alone barely separates sentences; the rare one does
    common_only = unit_relevance(hidden, q_states[:1], units, ids, q_ids[:1])
    assert np.ptp(common_only) < np.ptp(scores)
    # protection takes the best units that fit the share of the free budget
    out = protect_relevant_units(np.zeros(100, bool), units, scores, budget=40, share=0.5)
    assert out[30:40].all() and out.sum() <= 0.5 * 40


def test_implicit_query_is_the_last_paragraph_at_most_64_tokens():
    from semedge.compressor.relevance import implicit_query

    def offsets_of(pieces):
        ends = np.cumsum([len(p) for p in pieces])
        return "".join(pieces), np.stack([ends - [len(p) for p in pieces], ends], axis=1)

    pieces = ["First", " line", ".", "\n", " \n", "Question", ":", " why", "?", "\n", "Answer",
              ":", " because", "\n\n"]  # fmt: skip
    text, offsets = offsets_of(pieces)
    idx = implicit_query(text, offsets)
    got = [pieces[i] for i in idx]  # after the blank (whitespace-only) line, trailing blanks out
    assert got == ["Question", ":", " why", "?", "\n", "Answer", ":", " because"]
    assert implicit_query(text, offsets, max_tokens=2).tolist() == idx[-2:].tolist()
    text, offsets = offsets_of(["no", " blank", " line", "\n", "at all"])
    assert implicit_query(text, offsets).tolist() == [0, 1, 2, 3, 4]
    assert implicit_query(text, offsets, max_tokens=3).tolist() == [2, 3, 4]


def test_implicit_query_spans_equal_between_pytorch_and_runtime(compressor, pipe):
    text = _prompt()
    assert pipe.compression.implicit_query and compressor.config.implicit_query  # the default
    want = compressor.compress(text, ratio=2.4)
    got = pipe.prepare(text, 2.4, None)
    np.testing.assert_array_equal(got.spans, want.spans)
    assert (np.diff(want.spans[:, 0]) > 0).all()  # no query given: text order
    np.testing.assert_array_equal(got.positions, want.position_ids[0].numpy())
    assert got.first_new_position == want.next_position
    with _no_ranking(pipe):
        without = pipe.prepare(text, 2.4, None)
    assert not np.array_equal(got.spans, without.spans)  # the last paragraph steered the spans


def test_a_unit_that_splits_a_free_run_pays_for_the_extra_span():
    from semedge.compressor.spans import min_spans, protect_relevant_units

    units = np.repeat(np.arange(3), 10)  # 30 free tokens: one run, one span at least
    scores = np.array([0.0, 1.0, 0.5])  # the middle unit first
    # with it: 10 protected + 2 runs either side = 12 positions
    assert not protect_relevant_units(np.zeros(30, bool), units, scores, 11, 1.0)[10:20].any()
    got = protect_relevant_units(np.zeros(30, bool), units, scores, 12, 1.0)
    assert got[10:20].all() and not got[:10].any() and not got[20:].any()
    assert min_spans(got, 30) == 12  # what the mask costs fits the budget exactly


def test_bm25_relevance_ranks_the_sentence_with_the_rare_query_token_first(pipe):
    from semedge.compressor.relevance import query_scores

    text = _prompt()
    enc = pipe.tokenize(text)
    ids = np.asarray(enc.ids, np.int64)
    offsets = np.asarray(enc.offsets, np.int64)
    q_ids = np.asarray(pipe.tokenizer.encode("amber-falcon", add_special_tokens=False).ids)
    cfg = dataclasses.replace(pipe.compression, query_relevance="bm25")
    _, (units, scores) = query_scores(pipe.encode(ids), pipe.encode(q_ids), ids, q_ids, text,
                                      offsets, cfg)  # fmt: skip
    needle_unit = units[int(np.searchsorted(offsets[:, 0], text.find(NEEDLE)))]
    question_unit = units[int(np.searchsorted(offsets[:, 0], text.find(QUESTION)))]
    top = [u for u in np.argsort(-scores) if u != question_unit][0]
    assert top == needle_unit


def test_rank_fusion_rewards_agreement_and_keeps_never_ranked_units_out():
    from semedge.compressor.relevance import rank_fusion

    a = np.array([0.9, 0.5, 0.1, -np.inf, 0.4])
    b = np.array([0.2, 7.0, 0.0, 3.0, 5.0])  # BM25-like: unbounded, ties at 0
    fused = rank_fusion(a, b)
    assert fused[3] == -np.inf  # never ranked in one list: never ranked
    assert np.argmax(fused) == 1  # 2nd and 1st beats 1st and 4th
    assert min(fused[0], fused[4]) > fused[2]  # both lists rank 2 low
    np.testing.assert_allclose(rank_fusion(a), np.where(np.isfinite(a), 1 / (60 + np.array(
        [1, 2, 4, 5, 3])), -np.inf))  # fmt: skip


def test_units_without_a_word_are_never_ranked():
    from semedge.compressor.relevance import query_scores
    from semedge.config import CompressionConfig

    pieces = [
        "Red",
        " fox",
        ".",
        " \n",
        " \n",
        "Blue",
        " sky",
        ".",
        " --",
        "\n",
        "Red",
        " car",
        ".",
    ]
    ends = np.cumsum([len(p) for p in pieces])
    text, offsets = "".join(pieces), np.stack([ends - [len(p) for p in pieces], ends], axis=1)
    ids = np.arange(len(pieces), dtype=np.int64)
    ids[10] = ids[0]  # "Red" twice
    hidden = np.random.default_rng(0).normal(size=(len(pieces), 8))
    for relevance in ("maxsim", "cosine", "bm25", "hybrid"):
        cfg = CompressionConfig(query_relevance=relevance)
        _, (units, scores) = query_scores(hidden, hidden[[0]], ids, ids[[0]], text, offsets, cfg)
        blank = {int(units[i]) for i in (3, 4, 8, 9)}  # " \n" lines and the lone " --"
        words = {int(units[i]) for i in (0, 5, 10)}
        assert all(scores[u] == -np.inf for u in blank), relevance
        assert all(np.isfinite(scores[u]) for u in words), relevance
