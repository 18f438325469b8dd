"""Chunked prefill (GenerationConfig.prefill_chunk): the prompt's first chunk goes through the
prefill graph, the rest through the decode graph over the growing KV cache. Logits and greedy
tokens equal the whole-prompt prefill's, on fused and plain attention, on the tiny Gemma 3 whose
window (16) the chunks cross, batched and compressed; exports that cannot take chunks refuse."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from semedge import constants as C
from semedge.config import CompressionConfig
from semedge.errors import InputError
from semedge.runtime import GenerationConfig, Pipeline
from semedge.runtime.generator import Generator
from semedge.runtime.kv_cache import KVCache

PROSE = ("The river rises in the northern hills and flows south through farmland, past mills, "
         "bridges and the old market town, before it widens into a marsh near the coast. "
         "In 1871 a railway reached the town, and within twenty years it had tripled. ")  # fmt: skip
TEXT = PROSE * 3


@pytest.fixture(scope="module", params=["tiny_export", "tiny_export_gemma3", "tiny_export_plain"])
def pipe(request):
    with Pipeline.from_pretrained(request.getfixturevalue(request.param)) as p:
        yield p


def _prefill(pipe, prompts, chunk):
    gen = Generator(pipe, GenerationConfig(max_new_tokens=4, prefill_chunk=chunk))
    logits = gen.append_prompts(prompts)
    return gen, logits


@pytest.mark.parametrize("chunk", [1, 7, 16, 40])
def test_chunked_logits_and_cache_equal_the_whole_prompt(pipe, chunk):
    prompt = pipe.prepare(TEXT)
    whole, ref = _prefill(pipe, [prompt], 0)
    gen, got = _prefill(pipe, [prompt], chunk)
    assert len(prompt.positions) > 40  # every chunk size leaves several chunks
    np.testing.assert_allclose(got, ref, atol=1e-4)
    for name, arr in whole.cache.host_arrays().items():
        np.testing.assert_allclose(gen.cache.host_arrays()[name], arr, atol=1e-4, err_msg=name)
    for _ in range(4):  # decoding goes on from the chunked cache
        a, b = whole.generate_next_token(), gen.generate_next_token()
        np.testing.assert_array_equal(a, b)


def test_chunked_batch_of_unequal_prompts_equals_whole(pipe):
    prompts = [pipe.prepare(TEXT), pipe.prepare(PROSE)]  # the short one is left-padded
    _, ref = _prefill(pipe, prompts, 0)
    _, got = _prefill(pipe, prompts, 9)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    _, alone = _prefill(pipe, prompts[1:], 0)  # the padded row is still the short prompt's
    np.testing.assert_allclose(got[1:], alone, atol=1e-4)


def test_generate_with_chunks_equals_generate_compressed_too(pipe):
    for ratio in (None, 2.0):
        ref = pipe.generate(TEXT, max_new_tokens=6, ratio=ratio, prefill_chunk=0)
        got = pipe.generate(TEXT, max_new_tokens=6, ratio=ratio, prefill_chunk=11)
        assert got.tokens == ref.tokens
        assert got.prompt_tokens == ref.prompt_tokens


def test_merged_spans_stretch_the_first_chunk(tiny_export):
    """Mean spans (the paper's preset) are no token's embedding: they must go through the
    prefill graph, so the first chunk reaches past the last of them."""
    with Pipeline.from_pretrained(tiny_export) as p:
        p.compression = dataclasses.replace(CompressionConfig.paper(), encoder_layers=1)
        prompt = p.prepare(TEXT, ratio=2.0)
        tokens = prompt.position_tokens()
        merged = np.flatnonzero(tokens < 0)
        assert len(merged) and np.all((prompt.spans[merged, 1] - prompt.spans[merged, 0]) > 1)
        assert np.all(tokens[tokens >= 0] == prompt.ids[prompt.spans[tokens >= 0, 0]])
        gen = Generator(p, GenerationConfig(max_new_tokens=2, prefill_chunk=4))
        assert gen._plan_chunks([prompt], len(prompt.positions))[0] == max(4, merged[-1] + 1)
        _, ref = _prefill(p, [prompt], 0)
        _, got = _prefill(p, [prompt], 4)
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_exports_that_cannot_take_chunks_refuse_in_one_line(toy_export, tiny_export):
    with Pipeline.from_pretrained(toy_export) as toy:  # decode.onnx declares one token
        assert "one token" in toy.chunked_prefill_error()
        with pytest.raises(InputError, match="prefill_chunk 8 cannot run on this export"):
            toy.generate("hello there " * 20, max_new_tokens=2, prefill_chunk=8)
        assert toy.generate("hello there " * 20, max_new_tokens=2, prefill_chunk=10_000).tokens
    with Pipeline.from_pretrained(tiny_export) as p:
        assert p.chunked_prefill_error() is None
        p.config = {**p.config, "logits": "all"}
        assert "all-position logits" in p.chunked_prefill_error()


@pytest.mark.parametrize("bad", [-1, -3, 2.5, True, "8"])
def test_bad_prefill_chunk_is_an_input_error(bad):
    with pytest.raises(InputError, match="prefill_chunk"):
        GenerationConfig(prefill_chunk=bad)


def test_cache_row_views_are_the_rows_of_the_batch_views():
    def alloc(n, dtype):
        arr = np.zeros(n, dtype)
        return arr.ctypes.data, arr, arr

    cache = KVCache(alloc, 3, 2, 2, 4, 50, local_layers=frozenset({1}), local_slots=6)
    cache.length = 9
    for b in range(2):
        for view in (cache.past, lambda row: cache.present(3, row)):
            whole, row = view(None), view(b)
            for name, buf in row.items():
                buf.host[...] = 7.0 + b
                assert buf.shape[0] == 1
                np.testing.assert_array_equal(whole[name].host[b : b + 1], buf.host)
    for name, buf in cache.present(3).items():  # both rows landed, nothing else moved
        assert set(np.unique(buf.host[0])) == {7.0} and set(np.unique(buf.host[1])) == {8.0}
        if name.startswith(C.PRESENT_KEY.split("{")[0]) and ".1." in name:
            assert buf.shape[2] == 6  # the local layer's window, not 12


def test_the_serving_engine_reads_prompts_in_chunks(tiny_export, monkeypatch):
    """`semedge serve --prefill-chunk N`: every prefill of the engine is chunked, and the
    answers equal Pipeline.generate's."""
    from semedge.runtime.serving.batching import Job
    from semedge.runtime.serving.engine import Engine, EngineConfig

    calls = []
    real = Generator._prefill_chunks

    def spy(self, tokens, pos, mask, start, chunk):
        calls.append((start, chunk))
        return real(self, tokens, pos, mask, start, chunk)

    monkeypatch.setattr(Generator, "_prefill_chunks", spy)
    with Pipeline.from_pretrained(tiny_export) as p:
        jobs = [Job(TEXT, GenerationConfig(max_new_tokens=5)),
                Job(PROSE, GenerationConfig(max_new_tokens=3, ratio=None))]  # fmt: skip
        engine = Engine(p, EngineConfig(max_batch=4, prefill_chunk=9))
        try:
            for job in jobs:
                engine.submit(job)
            assert all(job.done.wait(60) for job in jobs)
        finally:
            engine.close()
        assert calls and all(c == (9, 9) for c in calls)
        for job in jobs:
            assert job.error is None
            want = p.generate(job.prompt, max_new_tokens=job.config.max_new_tokens, prefill_chunk=0)
            assert job.result.tokens == want.tokens
    with pytest.raises(InputError, match="--prefill-chunk"):
        EngineConfig(prefill_chunk=-1)


def test_the_default_chunks_long_prompts_on_plain_fp32_cpu_exports_only(tiny_export, toy_export,
                                                                        monkeypatch):  # fmt: skip
    from semedge.runtime.pipeline import AUTO_PREFILL_CHUNK as AUTO

    with Pipeline.from_pretrained(tiny_export) as p:
        assert (
            p.prefill_chunk_for(None, AUTO + 1) == AUTO and p.prefill_chunk_for(None, AUTO) is None
        )
        assert p.prefill_chunk_for(0, 10 * AUTO) is None and p.prefill_chunk_for(7, 5) == 7
        calls = []
        real = Generator._prefill_chunks
        monkeypatch.setattr(Generator, "_prefill_chunks",
                            lambda self, *a: calls.append(a[-1]) or real(self, *a))  # fmt: skip
        long = (TEXT * 3)[:1800]  # about 1,000 tokens: two chunks
        auto = p.generate(long, max_new_tokens=3)
        assert auto.prompt_tokens > AUTO and calls == [AUTO]
        assert auto.tokens == p.generate(long, max_new_tokens=3, prefill_chunk=0).tokens
        assert calls == [AUTO]  # 0: the whole prompt, no chunks
        for key, value in (("precision", "bf16"), ("decode_precision", "int8-weight-only")):
            monkeypatch.setattr(p, "config", {**p.config, key: value})
            assert p.prefill_chunk_for(None, 10 * AUTO) is None, key
            monkeypatch.undo()
    with Pipeline.from_pretrained(toy_export) as toy:  # cannot take chunks: the default is whole
        assert toy.prefill_chunk_for(None, 10 * AUTO) is None
