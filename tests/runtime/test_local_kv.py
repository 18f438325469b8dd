"""Sliding-window layers keep only their window's last slots (the tiny Gemma 3: window 16, layers
L L G L L G): the export's graphs take and return W - 1 slots on local layers, the runtime's cache
holds no more, and generation past the window, batched or not, equals PyTorch's greedy tokens."""

from __future__ import annotations

import numpy as np
import pytest

from semedge import constants as C
from semedge.artifacts import load_manifest
from semedge.runtime import GenerationConfig, Pipeline
from semedge.runtime.kv_cache import KVCache, local_kv
from semedge.runtime.serving.batching import Job, run_batch

PROSE = ("The river rises in the northern hills and flows south through farmland, past mills, "
         "bridges and the old market town, before it widens into a marsh near the coast. ")  # fmt: skip
LOCAL, GLOBAL = (0, 1, 3, 4), (2, 5)


@pytest.fixture(scope="module")
def pipe(tiny_export_gemma3):
    with Pipeline.from_pretrained(tiny_export_gemma3) as p:
        yield p


def test_manifest_and_graphs_give_local_layers_their_own_dims(tiny_export_gemma3):
    manifest = load_manifest(tiny_export_gemma3)
    assert local_kv(manifest.config) == (frozenset(LOCAL), 15)
    decode = manifest.graphs["decode"]
    for i in LOCAL:
        assert decode["inputs"][C.PAST_KEY.format(i=i)]["shape"][2] == "local_past_sequence_length"
        assert decode["outputs"][C.PRESENT_VALUE.format(i=i)]["shape"][2] == (
            "local_total_sequence_length"
        )
    for i in GLOBAL:
        assert decode["inputs"][C.PAST_KEY.format(i=i)]["shape"][2] == "past_sequence_length"


def test_cache_holds_the_window_on_local_layers_only():
    def alloc(n, dtype):
        arr = np.zeros(n, dtype)
        return arr.ctypes.data, arr, arr

    full = KVCache(alloc, 6, 2, 1, 8, 100)
    windowed = KVCache(alloc, 6, 2, 1, 8, 100, local_layers=frozenset(LOCAL), local_slots=15)
    assert windowed.nbytes == full.nbytes * (2 * 100 + 4 * 15) // (6 * 100)
    windowed.length = 40
    past, present = windowed.past(), windowed.present(1)
    for i in range(6):
        want = 15 if i in LOCAL else 40
        assert past[C.PAST_KEY.format(i=i)].shape == (2, 1, want, 8)
        assert present[C.PRESENT_KEY.format(i=i)].shape == (
            2,
            1,
            min(want + 1, 15) if i in LOCAL else 41,
            8,
        )
    by_side: dict[int, list] = {}
    for b in (*past.values(), *present.values()):
        by_side.setdefault(b.host.base.ctypes.data, []).append((b.host.ctypes.data, b.host.nbytes))
    for spans in by_side.values():  # no two tensors of one side overlap
        spans.sort()
        assert all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:], strict=False))


def test_generation_past_the_window_keeps_windowed_caches_and_equals_torch(pipe, tiny_models):
    import torch

    from semedge.models import load_model

    model, tok = load_model(tiny_models["gemma3"])
    prompt = PROSE * 2  # far past the 16-slot window
    gen = pipe.generator(prompt, GenerationConfig(max_new_tokens=24))
    past = gen.cache.past()
    n = gen.cache.length
    assert n > 40
    for i in LOCAL:
        assert past[C.PAST_KEY.format(i=i)].shape[2] == 15
    for i in GLOBAL:
        assert past[C.PAST_KEY.format(i=i)].shape[2] == n
    ids = torch.as_tensor([tok(prompt)["input_ids"]])
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1] :].tolist()
    got = pipe.generate(prompt, max_new_tokens=24, ignore_eos=True).tokens
    assert got == want[: len(got)] and len(got) == 24


def test_batches_mixing_rows_shorter_and_longer_than_the_window(pipe):
    """Rows shorter than the window are padded inside the local caches; joins copy each layer's
    own slots right-aligned."""
    words = (PROSE * 2).split()
    cases = [(" ".join(words[:n]), k) for n, k in [(3, 20), (40, 6), (8, 12), (25, 3), (55, 9)]]
    jobs = [Job(p, GenerationConfig(max_new_tokens=k, ignore_eos=True)) for p, k in cases]
    run_batch(pipe, jobs, max_positions=120)  # not all fit at once: rows join as others leave
    for job, (prompt, k) in zip(jobs, cases, strict=True):
        assert job.error is None
        assert job.result.tokens == pipe.generate(prompt, max_new_tokens=k, ignore_eos=True).tokens


def test_tensorrt_decode_profile_caps_local_pasts_at_the_window(tiny_export_gemma3):
    from semedge.export.profiles import engine_profiles

    manifest = load_manifest(tiny_export_gemma3).to_dict()
    decode = engine_profiles(manifest)["decode"]
    for i in LOCAL:  # (min, opt, max) shapes: never more than the window's 15 slots
        assert [s[2] for s in decode[C.PAST_KEY.format(i=i)]] == [1, 15, 15]
    for i in GLOBAL:
        top = decode[C.PAST_KEY.format(i=i)][2][2]
        assert top == manifest["config"]["max_context"] - 1 > 15
