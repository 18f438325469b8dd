"""run_batch on the toy export: mixed requests in one call equal Pipeline.generate one by one."""

from __future__ import annotations

import pytest

from semedge.errors import InputError
from semedge.runtime import GenerationConfig, Pipeline
from semedge.runtime.serving.batching import Job, run_batch, sampling_key
from tests.runtime.toy_export import sample_text

TEXT = sample_text()


@pytest.fixture(scope="module")
def pipe(toy_export):
    with Pipeline.from_pretrained(toy_export, providers=["cpu"]) as p:
        yield p


def test_mixed_requests_equal_single_generate(pipe):
    words = TEXT.split()
    cases = [(" ".join(words[:n]), GenerationConfig(max_new_tokens=k, stop=stop))
             for n, k, stop in [(12, 3, ()), (40, 9, ()), (13, 6, ("e",)), (100, 5, ()), (41, 1, ())]]  # fmt: skip
    pieces: dict[int, list[str]] = {}
    jobs = []
    for i, (prompt, config) in enumerate(cases):
        jobs.append(Job(prompt, config, on_text=lambda s, i=i: pieces.setdefault(i, []).append(s)))
    run_batch(pipe, jobs, max_positions=400)  # the 100-word prompt cannot share a batch
    for i, (job, (prompt, config)) in enumerate(zip(jobs, cases, strict=True)):
        want = pipe.generate(prompt, max_new_tokens=config.max_new_tokens, stop=config.stop)
        assert job.done.is_set() and job.error is None
        assert (job.result.text, job.result.tokens) == (want.text, want.tokens)
        assert job.result.finish_reason == want.finish_reason
        assert "".join(pieces.get(i, [])) == want.text


def test_bad_and_cancelled_jobs_leave_the_others_alone(pipe):
    ok = Job(TEXT[:80], GenerationConfig(max_new_tokens=4))
    empty = Job("   ", GenerationConfig(max_new_tokens=4))
    gone = Job(TEXT[:90], GenerationConfig(max_new_tokens=50, ignore_eos=True))
    gone.cancelled.set()
    run_batch(pipe, [ok, empty, gone])
    assert isinstance(empty.error, InputError) and empty.done.is_set()
    assert ok.result.tokens == pipe.generate(TEXT[:80], max_new_tokens=4).tokens
    assert gone.result.finish_reason == "cancelled" and len(gone.result.tokens) == 1


def test_sampling_keys():
    greedy = sampling_key(GenerationConfig())
    assert greedy == sampling_key(GenerationConfig(max_new_tokens=3, ratio=2.0))
    warm = GenerationConfig(temperature=0.7)
    assert sampling_key(warm) == sampling_key(GenerationConfig(temperature=0.7)) != greedy
    seeded = GenerationConfig(temperature=0.7, seed=1)
    assert sampling_key(seeded) != sampling_key(seeded)  # seeded requests run alone
