"""One Pipeline (tiny export) under 8 threads released together: greedy, seeded sampled and
batched requests give the sequential answers; closing while requests run fails them cleanly.
The long soak (8 x 1000 mixed calls, RSS start/end) is `slow`."""

from __future__ import annotations

import os
import threading

import pytest

from semedge.runtime import Pipeline
from tests.runtime.toy_export import sample_text

TEXT = sample_text()
PROMPTS = [TEXT[i * 400 : i * 400 + 500] for i in range(4)]
KINDS = ("greedy", "sampled", "batched", "compressed")


def _call(pipe: Pipeline, kind: str, i: int):
    p = PROMPTS[i % len(PROMPTS)]
    if kind == "greedy":
        return pipe.generate(p, max_new_tokens=4).tokens
    if kind == "sampled":
        return pipe.generate(p, max_new_tokens=4, temperature=0.9, top_p=0.9, seed=i % 3).tokens
    if kind == "batched":
        return [r.tokens for r in pipe.generate([p, PROMPTS[(i + 1) % 4][:200]], max_new_tokens=3)]
    return pipe.generate(p, max_new_tokens=3, ratio=2.0).tokens


def _reference(pipe: Pipeline, n: int) -> dict:
    return {(k, i % 12): _call(pipe, k, i) for k in KINDS for i in range(min(n, 12))}


def _hammer(pipe, threads: int, calls: int, barrier=None) -> list:
    """Run `calls` mixed requests per thread; returns (kind, i, result or exception) per call."""
    out: list = []
    lock = threading.Lock()

    def work(t):
        if barrier is not None:
            barrier.wait()
        for j in range(calls):
            kind, i = KINDS[(t + j) % len(KINDS)], (t * 7 + j) % 12
            try:
                res = _call(pipe, kind, i)
            except Exception as err:  # noqa: BLE001 (collected and checked by the caller)
                res = err
            with lock:
                out.append((kind, i, res))

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def test_eight_threads_released_together_match_sequential(tiny_export):
    with Pipeline.from_pretrained(tiny_export) as pipe:
        want = _reference(pipe, 12)
        got = _hammer(pipe, 8, 6, threading.Barrier(8))
    assert len(got) == 48
    for kind, i, res in got:
        assert res == want[(kind, i)], (kind, i, res)


def test_close_while_running_fails_requests_cleanly(tiny_export):
    pipe = Pipeline.from_pretrained(tiny_export)
    want = _reference(pipe, 12)
    barrier = threading.Barrier(9)
    results: list = []
    runner = threading.Thread(target=lambda: results.extend(_hammer(pipe, 8, 8, barrier)))
    runner.start()
    barrier.wait()  # every worker is about to start its first request
    pipe.close()
    runner.join()
    assert len(results) == 64
    for kind, i, res in results:  # a request either finished right or failed with one message
        if isinstance(res, Exception):
            assert isinstance(res, RuntimeError) and "closed" in str(res), repr(res)
        else:
            assert res == want[(kind, i)]
    with pytest.raises(RuntimeError, match="closed"):
        pipe.generate(PROMPTS[0], max_new_tokens=2)


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
def test_soak_8_threads_x_1000_mixed_calls(tiny_export, capsys):
    with Pipeline.from_pretrained(tiny_export) as pipe:
        want = _reference(pipe, 12)
        _hammer(pipe, 8, 50)  # warm up allocators before the first RSS reading
        start = _rss_mb()
        got = _hammer(pipe, 8, 1000, threading.Barrier(8))
        end = _rss_mb()
    bad = [(k, i) for k, i, res in got if res != want[(k, i)]]
    with capsys.disabled():
        print(f"\nsoak: {len(got)} calls, {len(bad)} mismatches, RSS {start:.0f} -> {end:.0f} MB")
    assert len(got) == 8000 and not bad
    assert end < start * 1.25 + 50  # no growth with the number of calls
