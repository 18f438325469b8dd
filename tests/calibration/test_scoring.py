"""Held-out scoring reads each window as the deployed model reads a prompt."""

from __future__ import annotations

import numpy as np

from semedge.calibration.scoring import leading_specials, score_graphs
from semedge.runtime import Pipeline
from semedge.runtime.generator import Generator
from semedge.runtime.sampling import GenerationConfig

TEXT = "The quick brown fox jumps over the lazy dog while the model reads every token of it."


def _first_scored_logits(pipe: Pipeline, text: str) -> tuple[np.ndarray, np.ndarray]:
    """score_graphs' first scored row for `text`'s tokens, and the runtime's own next-token
    logits after `pipe.prepare` of the same context (which adds the tokenizer's specials)."""
    ids = np.asarray(pipe.tokenizer.encode(text, add_special_tokens=False).ids, np.int64)
    context = ids.size - 4
    got = score_graphs(pipe, [ids], context).logits[0][0]
    head = pipe.tokenizer.decode(ids[:context].tolist())
    prompt = pipe.prepare(head)
    assert prompt.ids[-context:].tolist() == ids[:context].tolist()  # the round trip is exact
    gen = Generator(pipe, GenerationConfig(max_new_tokens=1))
    want = gen.append_prompts([prompt])[0, -1]
    return got, want


def test_windows_are_scored_after_the_tokenizers_bos(tiny_export_gemma3):
    with Pipeline.from_pretrained(tiny_export_gemma3, providers="cpu") as pipe:
        lead = leading_specials(pipe)
        assert lead.size == 1 and pipe.tokenize(TEXT).ids[0] == lead[0]  # Gemma 3 adds BOS
        got, want = _first_scored_logits(pipe, TEXT)
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_no_specials_added_where_the_tokenizer_adds_none(tiny_export):
    with Pipeline.from_pretrained(tiny_export, providers="cpu") as pipe:
        assert leading_specials(pipe).size == 0
        got, want = _first_scored_logits(pipe, TEXT)
        np.testing.assert_allclose(got, want, atol=1e-4)
