"""SemTokenCompressor on the tiny model families: identity at ratio 1, ratio control, protection,
windowed encoders, query-aware mode, adapters, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from semedge.compressor import CompressedPrompt, SemTokenCompressor, merge_spans_torch
from semedge.compressor.encoders import LMEncoder, MiniLMEncoder, encode_lm_windows
from semedge.compressor.spans import check_spans, merge_embeddings
from semedge.compressor.windows import align_to_tokens, encoder_windows
from semedge.config import CompressionConfig
from semedge.errors import InputError
from semedge.models import load_model


@pytest.fixture(scope="module")
def article(wikitext_test) -> str:
    text = wikitext_test.read_text(encoding="utf-8")
    return text[:4000]


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return {fam: load_model(path) for fam, path in tiny_models.items()}


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEncoder()


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_ratio_one_reproduces_the_uncompressed_logits(loaded, article, family):
    model, tok = loaded[family]
    prompt = SemTokenCompressor(model, tok).compress(article[:1500], ratio=1.0)
    assert prompt.compressed_tokens == prompt.original_tokens
    ids = torch.as_tensor(prompt.input_ids)[None]
    with torch.no_grad():
        ref = model(ids).logits
        got = model(
            inputs_embeds=prompt.inputs_embeds,
            position_ids=prompt.position_ids,
            attention_mask=torch.ones_like(ids),
        ).logits
    assert torch.equal(ref, got)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_compress_hits_ratio_and_builds_inputs(loaded, article, family):
    model, tok = loaded[family]
    cfg = CompressionConfig(recency_window=32, protected_strings=("Theatre",), implicit_query=False)
    prompt = SemTokenCompressor(model, tok, cfg).compress(article, ratio=2.4)
    T, n = prompt.original_tokens, prompt.compressed_tokens
    check_spans(prompt.spans, T)
    assert abs(T / n - 2.4) <= 0.02 * 2.4
    assert prompt.stats["ratio"] == pytest.approx(T / n)
    assert prompt.position_ids[0].tolist() == prompt.spans[:, 0].tolist()
    # digits, protected strings and the recency window stay singletons
    lengths = prompt.spans[:, 1] - prompt.spans[:, 0]
    multi = prompt.spans[lengths > 1]
    texts = [tok.decode([i]) for i in prompt.input_ids]
    for s, e in multi.tolist():
        assert not any(any(c.isdigit() for c in texts[j]) for j in range(s, e))
        assert e <= T - 32
        assert "Theatre" not in "".join(texts[s:e]) and "Theat" not in "".join(texts[s:e])
    # the merged embeddings are the numpy reference merge of the token embeddings
    table = model.get_input_embeddings().weight.detach().numpy()
    want = merge_embeddings(table[prompt.input_ids], prompt.spans, cfg.span_repr)
    np.testing.assert_allclose(prompt.inputs_embeds[0].numpy(), want, rtol=1e-5, atol=1e-6)
    d = prompt.to_dict()
    assert d["original_tokens"] == T and d["compressed_tokens"] == n and len(d["spans"]) == n


def test_text_and_input_ids_give_the_same_spans(loaded, article):
    model, tok = loaded["llama"]
    comp = SemTokenCompressor(model, tok, CompressionConfig(recency_window=16))
    a = comp.compress(article[:2500], ratio=2.0)
    b = comp.compress(input_ids=torch.as_tensor(a.input_ids), ratio=2.0)
    assert np.array_equal(a.spans, b.spans)
    c = comp.compress(article[:2500], target_tokens=900)
    assert abs(c.original_tokens / 900 - c.stats["ratio"]) <= 0.02 * c.original_tokens / 900


@pytest.mark.parametrize("mode", ["mean", "norm_mean", "first", "last"])
def test_torch_merge_matches_numpy_reference(mode):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    spans = np.array([[0, 1], [1, 5], [5, 6], [6, 14], [14, 50]])
    got = merge_spans_torch(torch.from_numpy(emb), spans, mode).numpy()
    np.testing.assert_allclose(got, merge_embeddings(emb, spans, mode), rtol=1e-5, atol=1e-6)
    gaps = np.array([[2, 3], [5, 9], [20, 21], [30, 50]])  # dropped tokens count nowhere
    got = merge_spans_torch(torch.from_numpy(emb), gaps, mode).numpy()
    np.testing.assert_allclose(got, merge_embeddings(emb, gaps, mode), rtol=1e-5, atol=1e-6)
    if mode == "mean":
        np.testing.assert_allclose(got[1], emb[5:9].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_span_repr_and_position_options(loaded, article):
    model, tok = loaded["qwen2"]
    base = CompressionConfig(recency_window=16)
    comp = SemTokenCompressor(model, tok, base)
    mean = comp.compress(article[:2000], ratio=2.0)
    import dataclasses

    last = SemTokenCompressor(
        model, tok, dataclasses.replace(base, span_repr="first", span_position="last")
    ).compress(article[:2000], ratio=2.0)
    assert np.array_equal(mean.spans, last.spans)  # same spans, different representation
    assert last.position_ids[0].tolist() == (last.spans[:, 1] - 1).tolist()
    table = model.get_input_embeddings().weight.detach()
    assert torch.equal(
        last.inputs_embeds[0], table[torch.as_tensor(last.input_ids[last.spans[:, 0]])]
    )


def test_adapter_only_touches_merged_spans(loaded, article):
    model, tok = loaded["llama"]
    calls = []

    def adapter(merged, lengths):
        calls.append(lengths.clone())
        return merged * 2.0

    cfg = CompressionConfig(recency_window=16)
    # with an adapter, merged spans are kept (auto -> keep); a plain compressor would drop them
    assert SemTokenCompressor(model, tok, cfg, adapter=adapter).config.merged_spans == "keep"
    assert SemTokenCompressor(model, tok, cfg).config.drops_merged()
    cfg = dataclasses.replace(cfg, merged_spans="keep")
    plain = SemTokenCompressor(model, tok, cfg).compress(article[:2000], ratio=2.0)
    adapted = SemTokenCompressor(model, tok, cfg, adapter=adapter).compress(
        article[:2000], ratio=2.0
    )
    multi = torch.as_tensor(plain.spans[:, 1] - plain.spans[:, 0] > 1)
    assert bool((calls[0] > 1).all()) and len(calls[0]) == int(multi.sum())
    assert torch.equal(adapted.inputs_embeds[0, ~multi], plain.inputs_embeds[0, ~multi])
    assert torch.allclose(adapted.inputs_embeds[0, multi], 2 * plain.inputs_embeds[0, multi])
    unit = SemTokenCompressor(model, tok, cfg, adapter=adapter).compress(article[:500], ratio=1.0)
    assert len(calls) == 1 and unit.compressed_tokens == unit.original_tokens


def test_encoder_windows_tile_the_text():
    for T, W in [(1, 8), (7, 8), (8, 8), (9, 8), (1000, 64), (1000, 1024)]:
        plan = encoder_windows(T, W)
        kept = [i for s, e, k in plan for i in range(k, e)]
        assert kept == list(range(T))
        assert all(e - s <= W and (k - s >= W // 4 or s == 0) for s, e, k in plan)


def test_encoder_windows_cover_only_the_needed_runs():
    T, W = 1000, 64
    needed = np.zeros(T, bool)
    needed[:300] = True
    needed[940:] = True
    plan = encoder_windows(T, W, needed=needed)
    kept = [i for s, e, k in plan for i in range(k, e)]
    assert kept == np.flatnonzero(needed).tolist()
    full = encoder_windows(T, W)
    assert plan[: len([p for p in full if p[1] <= 300])] == [p for p in full if p[1] <= 300]
    assert all(e - s <= W and (k - s >= W // 4 or s == 0) for s, e, k in plan)
    assert sum(e - s for s, e, _ in plan) < sum(e - s for s, e, _ in full) / 2


def test_only_the_states_the_span_search_reads_are_encoded(loaded, article):
    """With merged spans dropped (the default) and no query, the encoder skips the recency window
    but the prompt's last paragraph; with a query (a reading order) it reads everything before
    the question; merging (merged_spans="keep") encodes every token."""
    from semedge.compressor.relevance import question_start, sentence_units, states_needed

    model, tok = loaded["llama"]
    text = article[:3000] + "\n\nWhat is the article about?"
    seen: list[int] = []
    processed = {}
    for merged, query in [("keep", None), ("auto", None), ("auto", "the storm")]:
        comp = SemTokenCompressor(model, tok, CompressionConfig(merged_spans=merged))
        enc = comp.encoder("lm")
        forward = enc.forward
        enc.forward = lambda ids, mask, f=forward: (seen.append(ids.shape[1]), f(ids, mask))[1]
        try:
            prompt = comp.compress(text, ratio=2.4, query=query)
        finally:
            enc.forward = forward
        cfg = dataclasses.replace(comp.config, ratio=2.4, query=query)
        ids = tok(text, return_offsets_mapping=True)
        offsets = np.asarray(ids["offset_mapping"])
        T = len(offsets)
        needed = states_needed(text, offsets, cfg)
        q_tokens = len(tok(query, add_special_tokens=False)["input_ids"]) if query else 0
        processed[merged, query] = sum(seen) - q_tokens  # tokens through the encoder
        seen.clear()
        if merged == "keep":
            assert needed is None and processed[merged, query] >= T
            continue
        assert processed[merged, query] < processed["keep", None]
        recent = cfg.recency_tokens(T)
        units = sentence_units(text, offsets)
        assert needed[: T - recent].all()  # every sentence before the window is scored
        if query is None:  # text order: the window is kept unscored, but the implicit query
            assert not needed[T - recent : T - 8].all()
            assert needed[-3:].all()
            assert units[np.flatnonzero(needed[: T - 8])[-1]] >= units[T - recent - 1]
        else:  # a reading order: the window's sentences compete to be read before the question
            at = question_start(text, offsets)
            assert needed[:at].all() and not needed[at:].any()
        kept = np.concatenate([np.arange(s, e) for s, e in prompt.spans])
        assert set(range(T - recent, T)) <= set(kept.tolist())


def test_smollm2_reads_a_needle_from_the_recency_window_with_the_far_one_before_the_question(
    wikitext_test,
):
    """Two needles answer the question, one far, one in the recency window: with a query both
    are read just before it (the window's sentences are scored: relevance.states_needed), not
    the far one alone while the recent one stays among the other recent text."""
    model, tok = load_model("smollm2")
    text = wikitext_test.read_text(encoding="utf-8")
    body = text[text.index(" = Robert") :][:7000]
    needles = [
        f"One of the special magic numbers for vivid-garden is: {n}." for n in (4817263, 5923301)
    ]
    question = "What are all the special magic numbers for vivid-garden mentioned in the text?"
    cuts = [body.find(". ", int(len(body) * f)) + 2 for f in (0.2, 0.9)]
    prompt = (body[: cuts[0]] + needles[0] + " " + body[cuts[0] : cuts[1]] + needles[1] + " "
              + body[cuts[1] :] + "\n\n" + question)  # fmt: skip
    comp = SemTokenCompressor(model, tok)
    got = comp.compress(prompt, ratio=2.4, query=question)
    enc = tok(prompt, return_offsets_mapping=True)
    offsets = np.asarray(enc["offset_mapping"])
    T = len(offsets)

    def tokens(s: str) -> list[int]:
        a = prompt.find(s)
        return [i for i, (x, y) in enumerate(offsets.tolist()) if a <= x and y <= a + len(s)]

    recent = dataclasses.replace(comp.config, ratio=2.4).recency_tokens(T)
    far, near = tokens(needles[0]), tokens(needles[1])
    assert far[-1] < T - recent <= near[0]  # one far needle, one in the recency window
    order = got.spans[:, 0].tolist()
    at = order.index(int(np.searchsorted(offsets[:, 1], prompt.rfind("\n\n"), side="right")))
    read_last = order[at - len(far) - len(near) - 2 : at]  # (a sentence's leading space)
    assert set(far + near) <= set(read_last)  # both needles, right before the question


def test_lm_encoder_windows_match_a_single_pass(loaded):
    model, tok = loaded["llama"]
    enc = LMEncoder(model, layers=2)
    ids = np.random.default_rng(0).integers(1, 300, size=300)
    full = encode_lm_windows(enc, ids, window=1024)
    windowed = encode_lm_windows(enc, ids, window=64)
    assert full.shape == windowed.shape == (300, 64)
    np.testing.assert_allclose(windowed[:64], full[:64], rtol=1e-4, atol=1e-5)  # causal
    with torch.no_grad():
        states = model(torch.as_tensor(ids)[None], output_hidden_states=True).hidden_states[2]
    np.testing.assert_allclose(full, states[0].numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="exceeds"):
        LMEncoder(model, layers=99)


def test_long_text_beyond_the_model_context_compresses(loaded, article):
    model, tok = loaded["gpt2"]  # tiny models hold 2048 positions
    long = (article + "\n") * 4
    prompt = SemTokenCompressor(model, tok, CompressionConfig(encoder_window=512)).compress(
        long, ratio=3.0
    )
    assert prompt.original_tokens > 2048
    assert abs(prompt.stats["ratio"] - 3.0) <= 0.06


def test_minilm_encoder_aligns_long_text_to_lm_tokens(loaded, article, minilm):
    model, tok = loaded["llama"]
    long = article[:2200]  # > 256 MiniLM pieces: several windows
    vecs, offsets = minilm.pieces(long)
    assert len(vecs) > minilm.max_length and vecs.shape[1] == 384
    assert np.all(np.diff(offsets[:, 0]) >= 0)
    enc = tok(long, return_offsets_mapping=True)
    states = minilm.token_states(long, np.asarray(enc["offset_mapping"]))
    assert states.shape == (len(enc["input_ids"]), 384) and np.isfinite(states).all()
    comp = SemTokenCompressor(model, tok, CompressionConfig(encoder="minilm", recency_window=16))
    comp._encoders[("minilm", 0)] = minilm  # reuse the loaded encoder
    prompt = comp.compress(long, ratio=2.4)
    assert abs(prompt.stats["ratio"] - 2.4) <= 0.02 * 2.4 and prompt.stats["encoder"] == "minilm"


def test_align_to_tokens_means_overlapping_pieces():
    vecs = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    pieces = np.array([[0, 3], [3, 6], [7, 9]])
    tokens = np.array([[0, 6], [6, 7], [7, 8], [8, 9]])  # [6, 7) is a gap -> next piece
    out = align_to_tokens(vecs, pieces, tokens)
    np.testing.assert_allclose(out, [[0.5, 0.5], [2, 2], [2, 2], [2, 2]])


@pytest.mark.parametrize("encoder", ["lm", "minilm"])
def test_query_aware_mode_keeps_query_tokens_finer(loaded, article, minilm, encoder):
    model, tok = loaded["llama"]
    cfg = CompressionConfig(encoder=encoder, recency_window=16, protect_digits=False)
    comp = SemTokenCompressor(model, tok, cfg)
    comp._encoders[("minilm", 0)] = minilm
    query = "television series"
    plain = comp.compress(article[:2500], ratio=3.0)
    aware = comp.compress(article[:2500], ratio=3.0, query=query)
    assert abs(aware.stats["ratio"] - 3.0) <= 0.06 and aware.stats["query"] == query
    q_ids = set(tok(query)["input_ids"])
    hit = np.isin(plain.input_ids, list(q_ids))

    def singles(prompt: CompressedPrompt) -> int:
        single = prompt.spans[prompt.spans[:, 1] - prompt.spans[:, 0] == 1, 0]
        return int(hit[single].sum())

    assert singles(aware) > singles(plain)


def test_bad_inputs_raise_clear_errors(loaded):
    model, tok = loaded["llama"]
    comp = SemTokenCompressor(model, tok)
    with pytest.raises(InputError, match="empty"):
        comp.compress("   ")
    with pytest.raises(InputError, match="too short for ratio 2.4"):
        comp.compress("A short text of a few words.", ratio=2.4)
    with pytest.raises(InputError, match="ratio must be >= 1.0"):
        comp.compress("Some text here.", ratio=0.5)
    with pytest.raises(InputError, match="text or input_ids"):
        comp.compress()


def test_units_without_a_letter_or_digit_are_never_ranked_in_any_script():
    from semedge.compressor.relevance import _alnum_chars, _without_empty_units

    text = "Ωμέγα ½.\n \n— … 中文字。\n¼ ⅓.\n𝔘x"
    assert _alnum_chars(text).tolist() == [c.isalnum() for c in text]
    pieces = ["Ωμέγα", " ½.", "\n \n", "— …", " 中文字。", "\n", "¼ ⅓.", "\n", "𝔘x"]
    ends = np.cumsum([len(p) for p in pieces])
    offsets = np.stack([ends - [len(p) for p in pieces], ends], axis=1)
    units = np.arange(len(pieces))
    got = _without_empty_units(np.ones(len(pieces)), units, text, offsets)
    want = [any(c.isalnum() for c in p) for p in pieces]
    assert np.isfinite(got).tolist() == want and not all(want)
