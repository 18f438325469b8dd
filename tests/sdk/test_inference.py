"""Compressed-context inference: ratio-1 equality with transformers, KV-cache decoding with
position gaps, continuation scoring, and the real SmolLM2 (slow)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semedge.compressor import (
    SemTokenCompressor,
    generate_compressed,
    prefill,
    score_continuation,
)
from semedge.config import CompressionConfig
from semedge.errors import InputError
from semedge.models import load_model


@pytest.fixture(scope="module")
def article(wikitext_test) -> str:
    return wikitext_test.read_text(encoding="utf-8")[:3000]


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return {fam: load_model(path) for fam, path in tiny_models.items()}


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_ratio_one_generation_equals_model_generate(loaded, article, family):
    model, tok = loaded[family]
    prompt = SemTokenCompressor(model, tok).compress(article[:800], ratio=1.0)
    ids = torch.as_tensor(prompt.input_ids)[None]
    with torch.no_grad():
        ref = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
            pad_token_id=tok.pad_token_id,
        )[0, ids.shape[1] :].tolist()  # fmt: skip
    assert generate_compressed(model, tok, prompt, max_new_tokens=12) == ref


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_ratio_one_score_equals_full_model_nll(loaded, article, family):
    model, tok = loaded[family]
    prompt = SemTokenCompressor(model, tok).compress(article[:800], ratio=1.0)
    target = tok(article[800:900])["input_ids"]
    ids = torch.as_tensor(np.concatenate([prompt.input_ids, target]))[None]
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    T = prompt.original_tokens
    want = -sum(float(logp[T - 1 + j, t]) for j, t in enumerate(target))
    nll, m = score_continuation(model, prompt, target)
    assert m == len(target) and nll == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("ranked", [False, True], ids=["gaps", "index-positions"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_cached_decoding_matches_recompute_with_position_gaps(loaded, article, family, ranked):
    """Decoding with the KV cache after a compressed prefill equals re-running the whole
    compressed sequence each step: positions continue from T with the gaps visible (no ranked
    sentences), or from n after index positions (the default, which ranks sentences)."""
    model, tok = loaded[family]
    cfg = CompressionConfig(recency_window=8, implicit_query=ranked)
    prompt = SemTokenCompressor(model, tok, cfg).compress(article[:1500], ratio=2.5)
    got = generate_compressed(model, tok, prompt, max_new_tokens=8, eos_token_id=-1)
    embeds, pos, T, want = prompt.inputs_embeds, prompt.position_ids, prompt.next_position, []
    n = prompt.compressed_tokens
    assert T == (n if ranked else prompt.original_tokens)
    emb = model.get_input_embeddings()
    with torch.no_grad():
        for i in range(8):
            logits = model(
                inputs_embeds=embeds, position_ids=pos, attention_mask=torch.ones(pos.shape)
            ).logits
            nxt = int(logits[0, -1].argmax())
            want.append(nxt)
            embeds = torch.cat([embeds, emb(torch.tensor([[nxt]]))], dim=1)
            pos = torch.cat([pos, torch.tensor([[T + i]])], dim=1)
    assert got == want
    # scoring the generated continuation agrees with prefill's next-token distribution
    logits, _ = prefill(model, prompt)
    nll, _ = score_continuation(model, prompt, got[:1])
    assert nll == pytest.approx(-float(torch.log_softmax(logits[0, -1], -1)[got[0]]), rel=1e-4)


def test_sampling_is_seeded_and_stops_at_eos(loaded, article):
    model, tok = loaded["gpt2"]
    prompt = SemTokenCompressor(model, tok).compress(article[:600], ratio=1.0)
    kw = dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9, seed=3, eos_token_id=-1)
    a = generate_compressed(model, tok, prompt, max_new_tokens=10, **kw)
    b = generate_compressed(model, tok, prompt, max_new_tokens=10, **kw)
    assert a == b and len(a) == 10
    first = generate_compressed(model, tok, prompt, max_new_tokens=1)[0]
    assert generate_compressed(model, tok, prompt, 10, eos_token_id=first) == [first]


def test_positions_beyond_the_context_are_rejected(loaded, article):
    model, tok = loaded["llama"]
    prompt = SemTokenCompressor(model, tok).compress(article[:600], ratio=1.0)
    with pytest.raises(InputError, match="positions"):
        generate_compressed(model, tok, prompt, max_new_tokens=5000)
    with pytest.raises(InputError, match="empty"):
        score_continuation(model, prompt, [])


@pytest.mark.slow
def test_smollm2_compresses_a_wikitext_article_and_generates(wikitext_test):
    model, tok = load_model("smollm2")
    text = wikitext_test.read_text(encoding="utf-8")
    start = text.index(" = Robert")
    article = text[start : start + 12000]
    comp = SemTokenCompressor(model, tok)
    prompt = comp.compress(article, ratio=2.4)
    assert prompt.original_tokens > 2000
    assert abs(prompt.stats["ratio"] - 2.4) <= 0.02 * 2.4
    new = generate_compressed(model, tok, prompt, max_new_tokens=20)
    assert len(new) >= 1 and tok.decode(new).strip()
    target = tok(text[start + 12000 : start + 12600])["input_ids"][:64]
    nll, m = score_continuation(model, prompt, target)
    full = comp.compress(article, ratio=1.0)
    nll_full, _ = score_continuation(model, full, target)
    # a compressed context must still be far better than no knowledge of the text at all
    assert math.exp(nll / m) < 200 and math.exp(nll_full / m) < 200


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_plain_prompt_is_the_ratio_one_prompt(loaded, article, family):
    """eval's full/truncate baselines and training's teacher share one uncompressed prompt."""
    from semedge.compressor import continuation_logits, plain_prompt

    model, tok = loaded[family]
    ratio_one = SemTokenCompressor(model, tok).compress(article[:800], ratio=1.0)
    plain = plain_prompt(model, ratio_one.input_ids)
    np.testing.assert_array_equal(plain.spans, ratio_one.spans)
    assert torch.equal(plain.position_ids.long(), ratio_one.position_ids.long())
    torch.testing.assert_close(plain.inputs_embeds, ratio_one.inputs_embeds)
    target = tok(article[800:860])["input_ids"]
    logits = continuation_logits(model, plain, target)
    assert logits.shape == (len(target), model.config.vocab_size)
    assert score_continuation(model, plain, target)[0] == pytest.approx(
        score_continuation(model, ratio_one, target)[0], rel=1e-6
    )
