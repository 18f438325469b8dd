"""The runtime's greedy tokens equal the PyTorch SemToken path's on the same compressed prompt.

Fast: the tiny Llama, GPT-2 and Gemma 3 exports (fixtures `tiny_export`, `tiny_export_gpt2`,
`tiny_export_gemma3`: 2500 characters are ~20x the tiny Gemma 3's 16-slot window).
Slow: SmolLM2, exported once into the test's temp dir.
"""

from __future__ import annotations

import numpy as np
import pytest

from semedge.runtime import Pipeline
from tests.runtime.toy_export import sample_text

TEXT = sample_text()


def _torch_tokens(model_dir, pipe, text, ratio, query=None, max_new_tokens=16):
    from semedge.compressor import SemTokenCompressor
    from semedge.compressor.inference import generate_compressed
    from semedge.models import load_model

    model, tok = load_model(str(model_dir))
    prompt = SemTokenCompressor(model, tok, pipe.compression).compress(
        text, ratio=ratio, query=query
    )
    return prompt, generate_compressed(model, tok, prompt, max_new_tokens=max_new_tokens)


def _runtime_tokens(pipe, text, ratio, query=None, max_new_tokens=16):
    res = pipe.generate(text, max_new_tokens=max_new_tokens, ratio=ratio, query=query)
    eos = [next(iter(pipe.eos_ids))] if res.finish_reason == "eos" else []
    return res, res.tokens + eos  # the PyTorch path keeps the EOS it stopped on


_EXPORTS = {"llama": "tiny_export", "gpt2": "tiny_export_gpt2", "gemma3": "tiny_export_gemma3"}


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
@pytest.mark.parametrize(("ratio", "query"), [(1.0, None), (2.4, None), (2.4, "hurricane 1933")])
def test_greedy_tokens_equal_pytorch(request, tiny_models, family, ratio, query):
    export = request.getfixturevalue(_EXPORTS[family])
    text = TEXT[:2500]  # > encoder_window tokens with the tiny tokenizer: windows are exercised
    with Pipeline.from_pretrained(export) as pipe:
        prompt, want = _torch_tokens(tiny_models[family], pipe, text, ratio, query)
        res, got = _runtime_tokens(pipe, text, ratio if ratio > 1 else None, query)
    assert res.compressed_tokens == prompt.compressed_tokens
    if ratio > 1:
        np.testing.assert_array_equal(res.spans, prompt.spans)
    assert got == want


def test_batch_equals_single_on_real_export(tiny_export):
    prompts = [TEXT[:300], TEXT[1000:1900], TEXT[3000:3400]]
    with Pipeline.from_pretrained(tiny_export) as pipe:
        for ratio in (None, 2.0):
            batch = [r.tokens for r in pipe.generate(prompts, max_new_tokens=8, ratio=ratio)]
            assert batch == [
                pipe.generate(p, max_new_tokens=8, ratio=ratio).tokens for p in prompts
            ]


@pytest.mark.slow
def test_greedy_tokens_equal_pytorch_smollm2():
    from semedge.export import cached_export

    export = cached_export("smollm2")  # shared with the demo and benchmarks/e2e.py
    with Pipeline.from_pretrained(export) as pipe:
        for ratio in (1.0, 2.4):
            prompt, want = _torch_tokens("smollm2", pipe, TEXT, ratio)
            res, got = _runtime_tokens(pipe, TEXT, ratio if ratio > 1 else None)
            assert res.compressed_tokens == prompt.compressed_tokens
            assert got == want


def test_threads_on_real_export(tiny_export):
    from concurrent.futures import ThreadPoolExecutor

    prompts = [TEXT[i * 500 : i * 500 + 700] for i in range(4)]
    with Pipeline.from_pretrained(tiny_export) as pipe:
        want = [pipe.generate(p, max_new_tokens=6, ratio=2.4).tokens for p in prompts]
        with ThreadPoolExecutor(8) as pool:
            got = list(
                pool.map(
                    lambda i: pipe.generate(prompts[i % 4], max_new_tokens=6, ratio=2.4).tokens,
                    range(32),
                )
            )
    assert got == [want[i % 4] for i in range(32)]
