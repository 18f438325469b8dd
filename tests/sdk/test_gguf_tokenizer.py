"""The SentencePiece-vocabulary BPE on a hand-made vocabulary: merges follow the merged piece's
score, bytes fall back, BOS is added, control pieces are special; and (with sentencepiece
installed) it equals SentencePiece on random strings over that vocabulary."""

from __future__ import annotations

import random

import pytest

from semedge.models.gguf_tokenizer import (
    BYTE,
    CONTROL,
    NORMAL,
    USER_DEFINED,
    SpmVocab,
    tokenizer_from_spm_vocab,
)

# (piece, score): "bc" outranks "ab", so "abc" is built as a + bc; "▁▁" is a normal piece
_NORMAL = [("▁", -1.0), ("a", -2.0), ("b", -3.0), ("c", -4.0), ("bc", -5.0), ("ab", -6.0),
           ("abc", -7.0), ("▁a", -8.0), ("▁▁", -9.0), ("ca", -10.0), ("▁abc", -11.0)]  # fmt: skip


def _vocab() -> SpmVocab:
    pieces = [("<pad>", CONTROL), ("<eos>", CONTROL), ("<bos>", CONTROL), ("<unk>", CONTROL),
              ("<start_of_turn>", CONTROL), ("\n", USER_DEFINED), ("  ", USER_DEFINED)]  # fmt: skip
    rows = [(p, -1000.0, t) for p, t in pieces]
    rows += [(f"<0x{b:02X}>", 0.0, BYTE) for b in range(256)]
    rows += [(p, s, NORMAL) for p, s in _NORMAL]
    return SpmVocab(
        tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows),
        bos_id=2, eos_id=1, unk_id=3, pad_id=0, add_bos=True,
    )  # fmt: skip


def test_merges_follow_the_merged_pieces_score():
    tok = tokenizer_from_spm_vocab(_vocab())
    assert tok.encode("abc").tokens == ["<bos>", "abc"]
    assert tok.encode("abca").tokens == ["<bos>", "abc", "a"]  # bc first, then a+bc; not ca
    assert tok.encode("cab").tokens == ["<bos>", "c", "ab"]  # ab (-6) outranks ca (-10)
    assert tok.encode(" abc").tokens == ["<bos>", "▁abc"]  # no dummy prefix added


def test_bytes_fall_back_and_whitespace_is_escaped():
    tok = tokenizer_from_spm_vocab(_vocab())
    assert tok.encode("é", add_special_tokens=False).tokens == ["<0xC3>", "<0xA9>"]
    assert tok.encode("a  b", add_special_tokens=False).tokens == ["a", "▁▁", "b"]  # not "  "
    assert tok.encode("a\nb", add_special_tokens=False).tokens == ["a", "\n", "b"]
    assert tok.decode(tok.encode("é abc\n").ids, skip_special_tokens=True) == "é abc\n"


def test_control_pieces_are_special_tokens():
    tok = tokenizer_from_spm_vocab(_vocab())
    assert tok.encode("<start_of_turn>a").ids == [2, 4, 7 + 256 + 1]


def test_equals_sentencepiece_on_random_strings():
    pytest.importorskip("sentencepiece", reason="pip install -e '.[gemma3]'")
    from tests.sdk.spm_reference import spm_from_vocab

    vocab = _vocab()
    tok, spm = tokenizer_from_spm_vocab(vocab), spm_from_vocab(vocab)
    tok.encode_special_tokens = True
    rng = random.Random(0)
    texts = [
        "".join(rng.choice("abc  \néx") for _ in range(rng.randint(1, 30))) for _ in range(500)
    ]
    for text in texts:
        assert tok.encode(text, add_special_tokens=False).ids == spm.encode(text), repr(text)
