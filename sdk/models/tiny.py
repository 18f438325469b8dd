"""Tiny random causal LMs (Llama, Qwen2, Gemma 3, GPT-2) with a real BPE tokenizer, for tests and demos.

Fixed seed, a few hundred kB on disk, built in a second: every stage of semedge runs on them.
"""

from __future__ import annotations

from pathlib import Path

from semedge.deps import require
from semedge.errors import InputError

__all__ = ["make_tiny_model", "TINY_FAMILIES"]

TINY_FAMILIES = ("llama", "qwen2", "gpt2", "gemma3")
_BOS = "<bos>"  # Gemma 3 adds a BOS, as its real tokenizer does

# Training text for the tiny BPE: varied English with digits and punctuation.
_CORPUS = """
The river rises in the northern hills and flows south through farmland for 214 kilometres.
In 1887 the town built a stone bridge; it was rebuilt in 1952 after a flood destroyed it.
Engineers measure latency in milliseconds, and memory in megabytes or gigabytes.
A language model reads tokens, predicts the next token, and keeps a cache of keys and values.
She said: "Compression keeps the meaning while using fewer positions." He agreed, quietly.
Prices rose by 3.5 percent in March, while exports fell 12 percent over the same period.
The quick brown fox jumps over the lazy dog. The lazy dog sleeps in the warm afternoon sun.
Long documents repeat themselves: the same phrase, the same phrase, the same phrase again.
Questions and answers, tables and lists, code and prose all become sequences of integers.
""".strip()


def _train_tokenizer(vocab_size: int, bos: bool = False):
    tokenizers = require("tokenizers")
    transformers = require("transformers")
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", *([_BOS] if bos else [])],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    names = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    if bos:
        bos_id = tok.token_to_id(_BOS)
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=f"{_BOS} $A", pair=f"{_BOS} $A $B:1", special_tokens=[(_BOS, bos_id)]
                ),
            ]
        )
        names["bos_token"] = _BOS
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **names)


def _config(family: str, vocab: int, max_positions: int):
    transformers = require("transformers")
    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "gemma3":
        # Gemma 3's features at toy size: local (window 16) / global layers with their own RoPE
        # bases, QK-norm, sandwich norms, sqrt(D)-scaled embeddings, a scale != 1/sqrt(head_dim)
        return transformers.Gemma3TextConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
            num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=24, sliding_window=16,
            layer_types=["sliding_attention"] * 2 + ["full_attention"] + ["sliding_attention"] * 2
            + ["full_attention"], rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
            max_position_embeddings=max_positions, tie_word_embeddings=True,
            **{**common, "bos_token_id": 1},
        )  # fmt: skip
    if family == "llama":
        return transformers.LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=max_positions, tie_word_embeddings=True,
            **common,
        )  # fmt: skip
    if family == "qwen2":
        return transformers.Qwen2Config(
            hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=max_positions, tie_word_embeddings=True,
            **common,
        )  # fmt: skip
    if family == "gpt2":
        return transformers.GPT2Config(
            n_embd=64, n_layer=4, n_head=4, n_positions=max_positions, **common
        )
    raise InputError(f"unknown tiny family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")


def make_tiny_model(
    family: str, out_dir: Path | str, seed: int = 0, max_positions: int = 2048
) -> Path:
    """Build a tiny random causal LM with a trained BPE tokenizer and save it to `out_dir`.

    Args:
        family: "llama", "qwen2", "gpt2" or "gemma3".
        out_dir: where to save (a Hugging Face model directory).
        seed: torch seed for the random weights.
        max_positions: the model's context length.

    Returns:
        `out_dir` as a Path.

    Raises:
        InputError: unknown family.
    """
    torch = require("torch")
    transformers = require("transformers")
    tok = _train_tokenizer(vocab_size=384, bos=family == "gemma3")
    config = _config(family, len(tok), max_positions)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger-than-default weights give peaked, order-sensitive logits
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.08)
    if family == "gemma3":
        model.config.bos_token_id = model.generation_config.bos_token_id = tok.bos_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir
