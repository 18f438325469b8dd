"""An independent tokenizer for the GGUF tokenizer tests: SentencePiece itself, built from the same
pieces through a ModelProto (transformers' copy of the proto: the wheel's own clashes with the
pinned protobuf runtime)."""

from __future__ import annotations

from typing import Any


def spm_from_vocab(vocab) -> Any:
    """sentencepiece.SentencePieceProcessor for a semedge SpmVocab (BPE, byte fallback)."""
    import sentencepiece
    from transformers.utils import sentencepiece_model_pb2_new as pb

    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.vocab_size = len(vocab.pieces)
    for role in ("unk", "bos", "eos", "pad"):
        setattr(proto.trainer_spec, f"{role}_id", getattr(vocab, f"{role}_id") or -1)
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = vocab.add_space_prefix
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    for i, (piece, score, kind) in enumerate(
        zip(vocab.pieces, vocab.scores, vocab.types, strict=True)
    ):
        p = proto.pieces.add()
        p.piece, p.score = piece, score
        p.type = pb.ModelProto.SentencePiece.UNKNOWN if i == vocab.unk_id else kind
    sp = sentencepiece.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto.SerializeToString())
    return sp
