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


def test_regroup_mid_generation_keeps_every_row(pipe):
    """Rows of two generators at different lengths and steps, merged, go on as they would alone."""
    from semedge.runtime.generator import Generator, regroup

    words = TEXT.split()
    prompts = [" ".join(words[:n]) for n in (9, 30, 17)]
    want = [pipe.generate(p, max_new_tokens=8, ignore_eos=True).tokens for p in prompts]
    config = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    a = Generator(pipe, config)
    a.append_prompts([pipe.prepare(prompts[0]), pipe.prepare(prompts[1])])
    for _ in range(3):
        a.generate_next_token()
    b = Generator(pipe, config)
    b.append_prompts([pipe.prepare(prompts[2])])
    b.generate_next_token()
    merged = regroup([(a, [1, 0]), (b, [0])], config)  # reordered rows, a at step 3, b at step 1
    assert merged.batch == 3 and merged.cache.length == max(a.cache.length, b.cache.length)
    while not merged.is_done():
        merged.generate_next_token()
    assert merged.tokens == [want[1], want[0], want[2]]


def test_a_job_joins_a_running_batch_and_finished_rows_leave(pipe):
    from semedge.runtime.serving.batching import DecodeBatch, prepare_job

    words = TEXT.split()
    long = Job(" ".join(words[:60]), GenerationConfig(max_new_tokens=12, ignore_eos=True))
    short = Job(" ".join(words[:8]), GenerationConfig(max_new_tokens=2, ignore_eos=True))
    late = Job(" ".join(words[:25]), GenerationConfig(max_new_tokens=5, ignore_eos=True, ratio=2.0))
    batch = DecodeBatch(pipe, max_rows=4)
    for job in (long, short, late):
        assert prepare_job(pipe, job)
    batch.join(batch.admit([long, short]))
    rows = []
    for _ in range(4):
        batch.step()
        rows.append(len(batch.jobs))
    assert short.done.is_set() and not long.done.is_set()
    assert rows[-1] == 1  # the finished short row was dropped from the decode batch
    batch.join(batch.admit([late]))  # joins after long has 5 tokens
    assert len(batch.jobs) == 2
    while batch.gen is not None:
        batch.step()
    for job in (long, short, late):
        c = job.config
        want = pipe.generate(
            job.prompt, max_new_tokens=c.max_new_tokens, ignore_eos=True, ratio=c.ratio
        )
        assert job.result.tokens == want.tokens and job.result.text == want.text


def test_admit_respects_rows_positions_and_samplers(pipe):
    from semedge.runtime.serving.batching import DecodeBatch, prepare_job

    words = TEXT.split()
    jobs = [Job(" ".join(words[:40]), GenerationConfig(max_new_tokens=3)) for _ in range(3)]
    warm = Job(" ".join(words[:40]), GenerationConfig(max_new_tokens=3, temperature=0.7))
    for job in [*jobs, warm]:
        prepare_job(pipe, job)
    n = len(jobs[0].prepared.positions)
    assert len(DecodeBatch(pipe, max_rows=2).admit(jobs)) == 2
    assert len(DecodeBatch(pipe, max_rows=8, max_positions=2 * n).admit(jobs)) == 2
    assert len(DecodeBatch(pipe, max_rows=8, max_positions=1).admit(jobs)) == 1  # alone always runs
    assert len(DecodeBatch(pipe, max_rows=8).admit([jobs[0], warm, jobs[1]])) == 1  # no overtaking


def test_released_cache_blocks_are_reused(pipe):
    from semedge.runtime.kv_cache import HostPool

    pool = HostPool(pipe.decode.allocate, keep=2)
    c = pipe.new_cache(2, 40)
    c2 = type(c)(pool.allocate, c.num_layers, 2, c.n_kv_heads, c.head_dim, 40)
    blocks = {keep.ctypes.data for _, _, keep in c2._sides}
    pool.release(c2)
    smaller = type(c)(pool.allocate, c.num_layers, 1, c.n_kv_heads, c.head_dim, 30)
    assert {keep.ctypes.data for _, _, keep in smaller._sides} == blocks  # recycled, not new
    larger = type(c)(pool.allocate, c.num_layers, 4, c.n_kv_heads, c.head_dim, 40)
    assert not {keep.ctypes.data for _, _, keep in larger._sides} & blocks  # too small to reuse


def test_engine_lets_a_short_request_join_and_finish_during_a_long_one(pipe):
    """Continuous batching: a request that arrives mid-decode does not wait for the batch."""
    import threading

    from semedge.runtime.serving.engine import Engine, EngineConfig

    started = threading.Event()
    long = Job(TEXT[:200], GenerationConfig(max_new_tokens=300, ignore_eos=True),
               on_text=lambda s: started.set())  # fmt: skip
    short = Job(TEXT[300:420], GenerationConfig(max_new_tokens=3, ignore_eos=True))
    engine = Engine(pipe, EngineConfig(max_batch=4))
    try:
        engine.submit(long)
        assert started.wait(60)
        engine.submit(short)
        assert short.done.wait(60)
        assert not long.done.is_set()  # the short one joined the running batch and left first
        assert long.done.wait(120)
    finally:
        engine.close()
    for job in (long, short):
        want = pipe.generate(job.prompt, max_new_tokens=job.config.max_new_tokens, ignore_eos=True)
        assert job.result.tokens == want.tokens


def test_a_batch_that_cannot_merge_caches_runs_its_jobs_as_one(pipe, monkeypatch):
    """GPU caches cannot be regrouped: a batch takes jobs only when empty, as one padded batch."""
    from semedge.errors import UsageError
    from semedge.runtime.serving import batching
    from semedge.runtime.serving.batching import DecodeBatch, prepare_job

    def no_regroup(*args, **kwargs):
        raise UsageError("regroup() needs host (CPU) caches")

    monkeypatch.setattr(batching, "regroup", no_regroup)  # what a CUDA / TensorRT cache gets

    words = TEXT.split()
    jobs = [Job(" ".join(words[:n]), GenerationConfig(max_new_tokens=4, ignore_eos=True))
            for n in (6, 50)]  # fmt: skip
    later = Job(" ".join(words[:20]), GenerationConfig(max_new_tokens=2, ignore_eos=True))
    for job in [*jobs, later]:
        prepare_job(pipe, job)
    batch = DecodeBatch(pipe, max_rows=4)
    batch._mergeable = False  # as on a CUDA / TensorRT decode backend
    batch.join(batch.admit(jobs))  # lengths 6 and 50: two groups where caches can merge
    assert len(batch.jobs) == 2
    batch.step()
    assert batch.admit([later]) == []  # no joining a running batch
    while batch.gen is not None:
        batch.step()
    batch.join(batch.admit([later]))
    while batch.gen is not None:
        batch.step()
    for job in [*jobs, later]:
        want = pipe.generate(job.prompt, max_new_tokens=job.config.max_new_tokens, ignore_eos=True)
        assert job.error is None and job.result.tokens == want.tokens


def test_engine_runs_a_waiting_job_once_the_batch_drains_without_new_traffic(pipe):
    """A prepared job too large to join waits for rows to leave; when the batch drains and no
    other request comes, the worker must still run it (not block on the empty queue)."""
    import threading

    from semedge.runtime.serving.engine import Engine, EngineConfig

    started = threading.Event()
    first = Job(TEXT[:200], GenerationConfig(max_new_tokens=40, ignore_eos=True),
                on_text=lambda s: started.set())  # fmt: skip
    big = Job(TEXT[:600], GenerationConfig(max_new_tokens=3, ignore_eos=True))
    positions = len(pipe.prepare(big.prompt).positions)
    engine = Engine(pipe, EngineConfig(max_batch=4, max_batch_positions=positions + 10))
    try:
        engine.submit(first)
        assert started.wait(60)
        engine.submit(big)  # two rows x its length > max_batch_positions: it waits
        assert first.done.wait(60)
        assert big.done.wait(60), "the waiting job never ran"
    finally:
        engine.close()
    assert big.result.tokens == pipe.generate(big.prompt, max_new_tokens=3, ignore_eos=True).tokens


def test_rows_leaving_a_batch_trim_the_heap_at_most_once_per_interval(pipe, monkeypatch):
    from semedge.runtime.serving import heap

    trims = []
    monkeypatch.setattr(heap, "malloc_trim", lambda: trims.append(1) or True)
    monkeypatch.setattr(heap, "trim", heap.HeapTrimmer(min_interval_s=0.0))
    # three rows that finish at three different steps: three times rows leave
    jobs = [Job(TEXT[:60], GenerationConfig(max_new_tokens=k, ignore_eos=True)) for k in (1, 3, 5)]
    run_batch(pipe, jobs)
    assert all(j.error is None for j in jobs) and len(trims) == 3
    slow = heap.HeapTrimmer(min_interval_s=3600.0)
    slow(), slow(), slow()
    assert slow.calls == 1


def test_an_idle_engine_gives_its_pooled_cache_blocks_back(pipe):
    """Rows that leave hand their blocks to the pool; once nothing is queued or running, the
    worker empties the pool (an idle server's RSS falls back)."""
    import time

    from semedge.runtime.serving.engine import Engine

    engine = Engine(pipe)
    try:
        rests = engine.rests
        job = engine.submit(Job(TEXT[:120], GenerationConfig(max_new_tokens=3, ignore_eos=True)))
        assert job.done.wait(60) and job.error is None
        deadline = time.monotonic() + 10
        while engine.rests == rests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.rests > rests and pipe.kv_pool._free == []
    finally:
        engine.close()


def test_decode_threads_stop_spinning_when_a_step_returns(pipe):
    def entry(backend):
        opts = backend.session.get_session_options()
        try:
            return opts.get_session_config_entry("session.force_spinning_stop")
        except RuntimeError:  # ORT raises for a key never set
            return None

    assert pipe.decode.stop_spinning and entry(pipe.decode) == "1"
    assert not pipe.prefill.stop_spinning and entry(pipe.prefill) != "1"


def test_prefill_hands_its_arena_back_after_each_run_and_decode_keeps_it(pipe):
    assert pipe.prefill.shrink_arena and not pipe.decode.shrink_arena
    opts = pipe.prefill._run_options()
    assert opts.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    assert pipe.decode._run_options() is None
    want = pipe.generate(TEXT[:300], max_new_tokens=4, ignore_eos=True).tokens
    pipe.prefill.shrink_arena = False
    try:
        assert pipe.generate(TEXT[:300], max_new_tokens=4, ignore_eos=True).tokens == want
    finally:
        pipe.prefill.shrink_arena = True


def test_with_two_workers_an_idle_one_starts_the_new_request_not_the_busy_batch(pipe):
    """A busy worker leaves queued requests to an idle one, which starts them at once on its
    own thread (on a multi-core box two prefills then run side by side)."""
    import threading

    from semedge.runtime.serving.engine import Engine, EngineConfig

    threads: dict[str, set[str]] = {"long": set(), "short": set()}
    started = threading.Event()

    def seen(name):
        def on_text(_piece):
            threads[name].add(threading.current_thread().name)
            started.set()

        return on_text

    engine = Engine(pipe, EngineConfig(max_batch=4, workers=2))
    try:
        for _ in range(3):  # several tries: each must go to the idle worker
            started.clear()
            for seen_by in threads.values():
                seen_by.clear()
            long = Job(TEXT[:200], GenerationConfig(max_new_tokens=200, ignore_eos=True),
                       on_text=seen("long"))  # fmt: skip
            short = Job(TEXT[300:420], GenerationConfig(max_new_tokens=3, ignore_eos=True),
                        on_text=seen("short"))  # fmt: skip
            engine.submit(long)
            assert started.wait(60)
            engine.submit(short)
            assert short.done.wait(60) and long.done.wait(120)
            assert short.error is None and long.error is None
            assert len(threads["long"]) == 1 and len(threads["short"]) == 1
            assert threads["long"] != threads["short"]
    finally:
        engine.close()


def test_a_join_of_several_length_groups_copies_the_rows_once(pipe, monkeypatch):
    """Jobs too different in length to prefill together form groups; all of them and the
    running rows are merged in one regroup (each merge copies every row's cache)."""
    from semedge.runtime.serving import batching

    words = TEXT.split()
    running = Job(" ".join(words[:20]), GenerationConfig(max_new_tokens=6, ignore_eos=True))
    late = [Job(" ".join(words[:n]), GenerationConfig(max_new_tokens=4, ignore_eos=True))
            for n in (6, 40, 110)]  # fmt: skip
    batch = batching.DecodeBatch(pipe, max_rows=4, max_positions=10_000)
    for job in (running, *late):
        assert batching.prepare_job(pipe, job)
    batch.join([running])
    batch.step()
    calls = []
    real = batching.regroup
    monkeypatch.setattr(
        batching, "regroup", lambda parts, cfg: calls.append(parts) or real(parts, cfg)
    )
    batch.join(batch.admit(late))
    assert len(calls) == 1 and [len(rows) for _, rows in calls[0]] == [1, 1, 1, 1]
    while batch.gen is not None:
        batch.step()
    for job in (running, *late):
        want = pipe.generate(job.prompt, max_new_tokens=job.config.max_new_tokens, ignore_eos=True)
        assert job.result.tokens == want.tokens


def test_host_pool_keeps_the_largest_blocks_within_its_budget():
    import numpy as np

    from semedge.runtime.kv_cache import HostPool

    fresh = []

    def allocate(n, dtype):
        fresh.append(n)
        arr = np.empty(n, dtype)
        return arr.ctypes.data, arr, arr

    pool = HostPool(allocate, keep=8, keep_bytes=4 * 1000)
    pool.give([np.empty(n, np.float32) for n in (100, 300, 600, 200)])  # 4,800 bytes
    assert sorted(b.size for b in pool._free) == [300, 600]  # 100 and 200 dropped: 3,600 bytes
    pool.reserve(keep=1, keep_bytes=10)  # never lowers
    assert (pool.keep, pool.keep_bytes) == (8, 4000)
    _, view, block = pool.allocate(250, np.float32)
    assert block.size == 300 and view.size == 250 and fresh == []  # smallest that fits
    pool.allocate(700, np.float32)
    assert fresh == [700]


def test_a_serving_pool_maps_nothing_new_for_a_second_wave(pipe):
    """With the engine's reserve, a second wave of the same requests reuses every block the
    first one mapped (prefill scratch, group caches and the merged cache); with the plain
    pool's two blocks it would map new memory (page faults: slow on a VM)."""
    from semedge.runtime.serving.engine import Engine, EngineConfig

    words = TEXT.split()
    Engine(pipe, EngineConfig(max_batch=4, max_batch_positions=2048)).close()  # reserves

    def wave() -> list[Job]:
        jobs = [Job(" ".join(words[:n]), GenerationConfig(max_new_tokens=5, ignore_eos=True))
                for n in (6, 40, 110, 45)]  # fmt: skip
        run_batch(pipe, jobs, max_positions=2048)
        assert all(j.error is None for j in jobs)
        return jobs

    real, mapped = pipe.kv_pool._allocate, []
    pipe.kv_pool._allocate = lambda n, dtype: mapped.append(n) or real(n, dtype)
    try:
        wave()
        first = len(mapped)
        wave()
    finally:
        pipe.kv_pool._allocate = real
    assert first > 0 and len(mapped) == first


def test_an_engine_under_load_keeps_its_pool_between_requests(pipe, monkeypatch):
    """A request that arrives soon after the last answer (a client's next one) finds the pooled
    blocks still there: the worker rests only after REST_AFTER_S without a request."""
    import time

    from semedge.runtime.serving import engine as engine_mod

    monkeypatch.setattr(engine_mod, "REST_AFTER_S", 30.0, raising=False)
    engine = engine_mod.Engine(pipe)
    try:

        def ask() -> Job:
            return engine.submit(
                Job(TEXT[:150], GenerationConfig(max_new_tokens=3, ignore_eos=True))
            )

        assert ask().done.wait(60)
        time.sleep(0.2)  # the worker is idle now; it must not have emptied the pool
        assert engine.rests == 0 and pipe.kv_pool._free
        real, mapped = pipe.kv_pool._allocate, []
        pipe.kv_pool._allocate = lambda n, dtype: mapped.append(n) or real(n, dtype)
        try:
            job = ask()
            assert job.done.wait(60) and job.error is None
        finally:
            pipe.kv_pool._allocate = real
        assert mapped == [] and engine.rests == 0
    finally:
        engine.close()
