"""The long-context suite: task generators, scoring, budgets of every baseline, the JSON report."""

from __future__ import annotations

import numpy as np
import pytest

from semedge.errors import InputError
from semedge.eval import methods as M
from semedge.eval.passkey import default_filler
from semedge.eval.tasks import TASKS, FillerText, make_sample, parse_tasks, score_answer


@pytest.fixture(scope="module")
def tok(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models["llama"])


@pytest.fixture(scope="module")
def filler(tok):
    count = lambda texts: [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]  # noqa: E731
    return FillerText(default_filler(), count), count


def test_score_is_the_share_of_references_found():
    assert score_answer(" The numbers are 123 and 456.", ("123", "456")) == 1.0
    assert score_answer("only 123", ("123", "456")) == 0.5
    assert score_answer("ALPHA-beta", ("alpha-BETA",)) == 1.0  # case-insensitive
    assert score_answer("nothing", ("123",)) == 0.0
    with pytest.raises(InputError):
        score_answer("x", ())


@pytest.mark.parametrize("task", TASKS)
def test_every_task_builds_a_prompt_of_the_asked_length_with_its_needles(task, filler, tok):
    text, count = filler
    s = make_sample(task, 1024, text, 0.3, 7, count)
    n = len(tok(s.prompt)["input_ids"])
    assert 0.85 * 1024 <= n <= 1024 + 16, n
    assert s.prompt.endswith(s.question) and s.answers
    for a, b in s.needles:  # the needles are where they say, and hold the answers they need
        assert 0 <= a < b <= len(s.prompt)
    if task.startswith("niah") or task in ("multikey", "multiquery", "multivalue"):
        assert s.answers[0] in s.prompt[s.needles[0][0] : s.needles[0][1]]
        assert s.answers[0] not in s.question  # the question does not give the answer away
    if task == "variable_tracking":
        assert all(name in s.prompt for name in s.answers)
    if task == "recall":
        needle = s.prompt[s.needles[0][0] : s.needles[0][1]]
        assert all(ref in needle for ref in s.answers)
    # same seed, same sample; another seed, another sample
    assert make_sample(task, 1024, text, 0.3, 7, count) == s
    assert make_sample(task, 1024, text, 0.3, 8, count).prompt != s.prompt


def test_every_answer_fits_its_generation_budget():
    """A byte-level tokenizer spends at most one token per ASCII character: the budget must
    hold the whole answer so, or the task scores 0 for every method (niah_uuid had 28 tokens
    for 36-character UUIDs)."""
    from semedge.eval.tasks import TASK_MAKERS

    for name, make in TASK_MAKERS.items():
        for seed in range(20):
            spec = make(np.random.default_rng(seed))
            need = len(" " + ", ".join(spec.answers) + ".")
            assert spec.max_new_tokens >= need, (name, spec.max_new_tokens, need)


def test_needle_depth_follows_the_asked_depth(filler):
    text, count = filler
    where = []
    for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
        s = make_sample("niah_number", 2048, text, depth, 3, count)
        where.append(s.needles[0][0] / len(s.prompt))
    assert where == sorted(where) and where[0] < 0.1 and where[-1] > 0.85


def test_bad_task_inputs_are_one_clear_error(filler):
    text, count = filler
    with pytest.raises(InputError, match="unknown task"):
        parse_tasks("niah_number,nope")
    with pytest.raises(InputError, match="depth"):
        make_sample("niah_number", 1024, text, 1.5, 0, count)
    with pytest.raises(InputError, match="filler has"):
        make_sample("niah_number", 100_000, text, 0.5, 0, count)
    with pytest.raises(InputError, match="sentences"):
        FillerText("one. two.", count)
    assert parse_tasks("all") == TASKS


@pytest.mark.parametrize("ratio", [1.0, 1.5, 2.4, 4.0, 8.0])
def test_every_baseline_keeps_exactly_the_budget(ratio):
    rng = np.random.default_rng(0)
    T = 1000
    ids = rng.integers(5, 300, T)
    units = np.repeat(np.arange(50), 20)
    must = np.zeros(T, bool)
    must[:4] = True
    must[-int(0.5 * M.budget_for(T, ratio)) :] = True
    protected = must.copy()
    n = M.budget_for(T, ratio)
    plans = {
        "truncate": M.plan_truncate(T, ratio),
        "head_tail": M.plan_head_tail(T, ratio),
        "selective": M.plan_selective(rng.random(T), must, ratio),
        "retrieve": M.plan_retrieve(ids, units, ids[100:110], must, ratio),
        "uniform": M.plan_spans(M.spans_for("uniform", T, ratio, protected), T),
        "random": M.plan_spans(M.spans_for("random", T, ratio, protected, 1), T),
    }
    for name, plan in plans.items():
        assert plan.tokens == n, (name, plan.tokens, n)
        assert np.all(np.diff(plan.positions) > 0) and np.all(np.diff(plan.source) > 0), name
        if name in ("selective", "retrieve"):
            assert set(np.flatnonzero(must)) <= set(plan.source.tolist()), name
    assert M.plan_truncate(T, ratio).source[-1] == T - 1


def test_retrieve_keeps_the_sentences_that_match_the_query():
    T = 400
    ids = np.full(T, 7)
    units = np.repeat(np.arange(20), 20)
    ids[200:220] = np.arange(100, 120)  # unit 10 holds the query's rare tokens
    must = np.zeros(T, bool)
    must[-20:] = True
    plan = M.plan_retrieve(ids, units, np.array([105, 111, 7]), must, ratio=10.0)
    assert set(range(200, 220)) <= set(plan.source.tolist())


def test_selective_drops_the_least_informative_tokens():
    info = np.zeros(100)
    info[[10, 30, 50]] = 9.0
    must = np.zeros(100, bool)
    must[-5:] = True
    plan = M.plan_selective(info, must, ratio=100 / 8)
    assert plan.source.tolist() == [10, 30, 50, 95, 96, 97, 98, 99]


def test_unknown_methods_are_refused():
    with pytest.raises(InputError, match="unknown method"):
        M.parse_suite_methods("full,magic")
    assert M.parse_suite_methods("all") == M.SUITE_METHODS


def test_compact_positions_fit_the_limit_and_keep_the_recent_spacing():
    from semedge.compressor.spans import compact_positions

    pos = np.concatenate([np.arange(0, 6000, 10), np.arange(6000, 6400)])  # far spans + recent
    out = compact_positions(pos, 2048)
    assert out[-1] == 2047 and np.all(np.diff(out) > 0)
    np.testing.assert_array_equal(np.diff(out[-400:]), 1)  # the recent tokens stay contiguous
    assert np.all(out >= np.arange(len(out)))
    np.testing.assert_array_equal(compact_positions(pos, 10_000), pos)  # fits: unchanged
    with pytest.raises(InputError):
        compact_positions(np.arange(3000), 2048)


def test_suite_table_compares_with_full_context_on_the_same_samples():
    from semedge.eval.suite import SuiteReport
    from semedge.eval.suite_report import suite_table

    def row(method, sample, seed, score, task="niah_word"):
        return {"task": task, "context": 2048, "ratio": 2.4, "method": method, "sample": sample,
                "seed": seed, "far": False, "has_needle": True, "score": score,
                "positions": 853, "seconds": 1.0}  # fmt: skip

    rows = [row("full", i, s, 1.0 if s == 0 else 0.0) for s in (0, 1) for i in range(2)]
    rows += [row("semtoken", i, s, 0.5) for s in (0, 1) for i in range(2)]  # both seeds
    rows += [row("head_tail", i, 0, 0.5) for i in range(2)]  # seed 0 only
    headers, table = suite_table(SuiteReport("m", rows))
    got = {r[headers.index("method")]: r for r in table}
    rel, n = headers.index("x full"), headers.index("samples")
    assert got["semtoken"][rel] == 1.0 and got["semtoken"][n] == 4  # full: 0.5 on all four
    assert got["head_tail"][rel] == 0.5 and got["head_tail"][n] == 2  # full: 1.0 on seed 0
