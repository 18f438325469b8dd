"""A `tokenizers` BPE tokenizer rebuilt from a GGUF's SentencePiece vocabulary (`tokenizer.ggml.model
= llama`: pieces, scores and token types, no merges), as SentencePiece's BPE encodes it.

transformers' own GGUF conversion drops the merges for such vocabularies (Gemma 3 then tokenizes
"world" as `w or ld`); here the merges are derived from the pieces: a pair (a, b) whose concatenation
is a piece merges with the rank of that piece's score, as SentencePiece's BPE picks the adjacent pair
whose merged piece scores highest. Imports gguf/tokenizers lazily (torch-free).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semedge.deps import require
from semedge.errors import ArtifactError

__all__ = ["SpmVocab", "spm_vocab_from_gguf", "tokenizer_from_spm_vocab", "tokenizer_from_gguf"]

# SentencePiece's ModelProto.SentencePiece.Type, which GGUF's token_type copies
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"  # "▁": SentencePiece's escaped whitespace


@dataclass(frozen=True)
class SpmVocab:
    """A SentencePiece vocabulary as a GGUF stores it."""

    pieces: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = True
    add_eos: bool = False
    add_space_prefix: bool = False  # SentencePiece's add_dummy_prefix


def _array(field) -> list:
    """A GGUF array field's values, read straight from its parts (Field.contents() is ~50x slower)."""
    return [field.parts[i] for i in field.data]


def _scalar(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.parts[field.data[0]][0].item()


def spm_vocab_from_gguf(path: str | os.PathLike) -> SpmVocab:
    """Read the SentencePiece vocabulary of a GGUF (`tokenizer.ggml.model = llama`).

    Raises:
        ArtifactError: the file is not a readable GGUF or holds no SentencePiece vocabulary.
    """
    gguf = require("gguf")
    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError, IndexError, KeyError) as err:
        raise ArtifactError(f"{path} is not a readable GGUF ({err}); re-create it") from err
    model = reader.fields.get("tokenizer.ggml.model")
    kind = bytes(model.parts[model.data[0]]).decode() if model is not None else None
    if kind != "llama" or "tokenizer.ggml.scores" not in reader.fields:
        raise ArtifactError(
            f"{path} holds no SentencePiece vocabulary (tokenizer.ggml.model={kind})"
        )
    fields = reader.fields
    pieces = tuple(bytes(p).decode("utf-8") for p in _array(fields["tokenizer.ggml.tokens"]))
    scores = tuple(float(s[0]) for s in _array(fields["tokenizer.ggml.scores"]))
    types = tuple(int(t[0]) for t in _array(fields["tokenizer.ggml.token_type"]))
    if not len(pieces) == len(scores) == len(types):
        raise ArtifactError(f"{path}: tokens, scores and token types differ in length")
    return SpmVocab(
        pieces, scores, types,
        bos_id=_scalar(reader, "tokenizer.ggml.bos_token_id"),
        eos_id=_scalar(reader, "tokenizer.ggml.eos_token_id"),
        unk_id=_scalar(reader, "tokenizer.ggml.unknown_token_id"),
        pad_id=_scalar(reader, "tokenizer.ggml.padding_token_id"),
        add_bos=bool(_scalar(reader, "tokenizer.ggml.add_bos_token", True)),
        add_eos=bool(_scalar(reader, "tokenizer.ggml.add_eos_token", False)),
        add_space_prefix=bool(_scalar(reader, "tokenizer.ggml.add_space_prefix", False)),
    )  # fmt: skip


def _merges(vocab: SpmVocab, ids: dict[str, int]) -> list[tuple[str, str]]:
    """Every split (a, b) of a normal piece into two pieces, ordered by the merged piece's score
    (highest first), then by the parts' ids: SentencePiece BPE merges the best-scoring pair."""
    ranked = []
    for piece, score, kind in zip(vocab.pieces, vocab.scores, vocab.types, strict=True):
        if kind != NORMAL or len(piece) < 2:
            continue
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            if a in ids and b in ids:
                ranked.append((-score, ids[piece], ids[a], ids[b], a, b))
    ranked.sort()
    return [(a, b) for *_, a, b in ranked]


def tokenizer_from_spm_vocab(vocab: SpmVocab) -> Any:
    """A `tokenizers.Tokenizer` that encodes as SentencePiece BPE with this vocabulary.

    Byte fallback for characters outside the vocabulary, whitespace as "▁", a dummy prefix only if
    the vocabulary asks for one, BOS/EOS added as it says; control pieces are special tokens and
    user-defined pieces are matched whole before BPE (as SentencePiece does).
    """
    tokenizers = require("tokenizers")
    from tokenizers import AddedToken, decoders, models, normalizers, processors

    ids = {}
    for i, piece in enumerate(vocab.pieces):
        ids.setdefault(piece, i)  # first id wins on (rare) duplicate pieces
    unk = vocab.pieces[vocab.unk_id] if vocab.unk_id is not None else None
    bpe = models.BPE(
        vocab=ids, merges=_merges(vocab, ids), unk_token=unk, byte_fallback=True, fuse_unk=True
    )
    tok = tokenizers.Tokenizer(bpe)
    steps = [normalizers.Prepend(_SPACE)] if vocab.add_space_prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", _SPACE)])
    decode = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if vocab.add_space_prefix:
        decode.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(decode)
    kinds = zip(vocab.pieces, vocab.types, strict=True)
    tok.add_special_tokens(
        [AddedToken(p, special=True, normalized=False) for p, t in kinds if t in (CONTROL, UNKNOWN)]
    )
    # SentencePiece matches user-defined pieces after escaping whitespace, so one spelt with raw
    # spaces ("  ", Gemma's ids 138..) never matches: leave those out, as it does
    tok.add_tokens(
        [
            AddedToken(p, special=False, normalized=False)
            for p, t in zip(vocab.pieces, vocab.types, strict=True)
            if t == USER_DEFINED and " " not in p
        ]
    )
    tok.post_processor = _post_processor(vocab, processors)
    return tok


def _post_processor(vocab: SpmVocab, processors) -> Any:
    bos = [vocab.pieces[vocab.bos_id]] if vocab.add_bos and vocab.bos_id is not None else []
    eos = [vocab.pieces[vocab.eos_id]] if vocab.add_eos and vocab.eos_id is not None else []
    single = " ".join([*bos, "$A", *eos])
    pair = " ".join([*bos, "$A", *eos, *bos, "$B:1", *eos])
    special = [(p, vocab.pieces.index(p)) for p in dict.fromkeys([*bos, *eos])]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def tokenizer_from_gguf(path: str | os.PathLike) -> Any:
    """A transformers PreTrainedTokenizerFast for a GGUF with a SentencePiece vocabulary.

    Args:
        path: the .gguf file.

    Returns:
        transformers.PreTrainedTokenizerFast with bos/eos/unk/pad set from the GGUF.

    Raises:
        ArtifactError: not a readable GGUF, or no SentencePiece vocabulary in it.
    """
    transformers = require("transformers")
    vocab = spm_vocab_from_gguf(Path(path))
    names = {
        f"{role}_token": vocab.pieces[i]
        for role, i in (
            ("bos", vocab.bos_id),
            ("eos", vocab.eos_id),
            ("unk", vocab.unk_id),
            ("pad", vocab.pad_id),
        )  # fmt: skip
        if i is not None
    }
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_from_spm_vocab(vocab), **names
    )
