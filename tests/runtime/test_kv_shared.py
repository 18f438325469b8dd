"""The in-place (shared) KV cache: one buffer per layer bound as past and present of ONNX
Runtime's GroupQueryAttention. Its views, and generation equal to the ping-pong cache's on the
tiny Llama export (batched, padded, chunked, compressed, regrouped)."""

from __future__ import annotations

import numpy as np
import pytest

from semedge.errors import InputError, UsageError
from semedge.runtime import GenerationConfig, Pipeline
from semedge.runtime.generator import regroup
from semedge.runtime.kv_cache import KVCache

PROSE = ("The river rises in the northern hills and flows south through farmland, past mills, "
         "bridges and the old market town, before it widens into a marsh near the coast. ")  # fmt: skip


def _alloc(n, dt):
    a = np.full(n, np.nan, dt)  # NaN: a slot read before it is written shows up
    return a.ctypes.data, a, a


def test_shared_cache_views():
    cache = KVCache(_alloc, num_layers=2, batch=2, n_kv_heads=3, head_dim=4, max_len=10,
                    shared=True)  # fmt: skip
    assert cache.nbytes == 2 * 2 * 2 * 3 * 10 * 4 * 4  # one side: half of ping-pong's
    first = cache.present(5)  # the prefill's presents: contiguous (B, KV, 5, hd) scratch
    for i, buf in enumerate(first.values()):
        assert buf.shape == (2, 3, 5, 4) and buf.host.flags.c_contiguous
        buf.host[...] = np.arange(buf.host.size).reshape(buf.shape) + 1000 * i
    cache.advance(5)
    held = cache.arrays()
    for (name, buf), view in zip(first.items(), held.values(), strict=True):
        np.testing.assert_array_equal(view, buf.host, err_msg=name)  # copied into the buffer
    past, present = cache.past(), cache.present(1)
    for p, q in zip(past.values(), present.values(), strict=True):
        assert p.ptr == q.ptr and p.shape == q.shape == (2, 3, 10, 4)  # in place, whole buffer
    row = cache.present(1, row=1)["present.1.value"]
    assert row.shape == (1, 3, 10, 4) and row.ptr == present["present.1.value"].ptr + 3 * 10 * 4 * 4
    cache.advance(5)
    with pytest.raises(InputError, match="KV cache holds 10 positions"):
        cache.present(1)
    with pytest.raises(UsageError, match="sliding-window"):
        KVCache(_alloc, 2, 1, 1, 4, 8, local_layers=frozenset({0}), local_slots=3, shared=True)


@pytest.fixture(scope="module")
def pipes(tiny_export):
    with Pipeline.from_pretrained(tiny_export) as shared, \
            Pipeline.from_pretrained(tiny_export) as pingpong:  # fmt: skip
        pingpong.kv_shared = False
        yield shared, pingpong


def test_fused_cpu_exports_use_the_shared_cache(pipes, tiny_export_gemma3, tiny_export_plain):
    shared, pingpong = pipes
    assert shared.kv_shared and shared.new_cache(1, 8).shared
    assert not pingpong.new_cache(1, 8).shared
    for other in (tiny_export_gemma3, tiny_export_plain):  # sliding windows; plain attention
        with Pipeline.from_pretrained(other) as p:
            assert not p.kv_shared


@pytest.mark.parametrize("options", [
    {}, {"prefill_chunk": 7}, {"ratio": 2.0}, {"ratio": 3.0, "query": "When was the railway?"},
])  # fmt: skip
def test_generation_equals_the_ping_pong_cache(pipes, options):
    shared, pingpong = pipes
    prompts = [PROSE * 3 + "In 1871 a railway reached the town.", PROSE]  # the second is padded
    cfg = GenerationConfig(max_new_tokens=12, ignore_eos=True, **options)
    gens = [shared.generator(prompts, cfg), pingpong.generator(prompts, cfg)]
    logits = [g._logits.copy() for g in gens]
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-5)
    for _ in range(cfg.max_new_tokens):
        steps = [g.generate_next_token() for g in gens]
        np.testing.assert_array_equal(steps[0], steps[1])
    np.testing.assert_allclose(gens[0]._logits, gens[1]._logits, atol=1e-4)
    for name, arr in gens[1].cache.host_arrays().items():
        np.testing.assert_allclose(gens[0].cache.host_arrays()[name], arr, atol=1e-5, err_msg=name)


def test_regroup_moves_rows_between_shared_caches(pipes):
    """Continuous batching copies rows of caches of different lengths into one (left-padded)."""
    shared, pingpong = pipes
    cfg = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    outs = []
    for p in (shared, pingpong):
        g1, g2 = p.generator([PROSE * 2], cfg), p.generator([PROSE, PROSE[:60]], cfg)
        g1.generate_next_token()
        merged = regroup([(g1, [0]), (g2, [1])], cfg)
        outs.append([merged.generate_next_token() for _ in range(4)])
    np.testing.assert_array_equal(np.array(outs[0]), np.array(outs[1]))


def test_a_kept_binding_refuses_a_reloaded_session(tiny_export):
    """The Generator keeps one I/O binding per shared cache; a session closed and loaded again
    meanwhile is a new session: the old binding says so instead of running on freed memory."""
    with Pipeline.from_pretrained(tiny_export) as p:
        gen = p.generator([PROSE], GenerationConfig(max_new_tokens=4, ignore_eos=True))
        gen.generate_next_token()
        gen.generate_next_token()  # the binding exists now
        p.decode.close()
        p.decode.load()
        with pytest.raises(UsageError, match="closed or reloaded"):
            gen.generate_next_token()


def test_the_prefill_scratch_goes_back_to_the_pool():
    """A shared cache's contiguous prefill scratch is handed back once copied, so the next
    cache (a server's next request) reuses that memory instead of mapping new pages."""
    from semedge.runtime.kv_cache import HostPool

    pool = HostPool(_alloc)
    cache = KVCache(pool.allocate, 2, 1, 2, 4, 16, shared=True, give_back=pool.give)
    for buf in cache.present(6).values():
        buf.host[...] = 1.0
    scratch = cache._scratch[2]
    cache.advance(6)
    assert cache._scratch is None and any(b is scratch for b in pool._free)
    nxt = KVCache(pool.allocate, 2, 1, 2, 4, 16, shared=True, give_back=pool.give)
    assert nxt.present(6)["present.0.key"].host.base is scratch  # reused for the next prefill


def test_profile_reports_the_cache_kind_and_its_size(pipes):
    from semedge.runtime.profiling import profile_export

    shared, pingpong = pipes
    runs = [profile_export(p, [48], [1.0], warmup=0, runs=1, decode_tokens=3).runs[0]
            for p in (shared, pingpong)]  # fmt: skip
    assert [r["kv_cache"] for r in runs] == ["in-place", "ping-pong"]
    assert runs[0]["kv_cache_bytes"] * 2 == runs[1]["kv_cache_bytes"]
