"""Passkey retrieval: a random 5-digit key hidden at a random depth in real filler text.

The model reads [instruction | filler with the key sentence | question] and answers greedily;
exact match of the first 5-digit number it generates. The filler is real text: the shipped
WikiText-2 excerpt (semedge/assets) or any UTF-8 file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from semedge.config import CompressionConfig
from semedge.errors import InputError
from semedge.eval.baselines import truncate_keep
from semedge.eval.prompts import PromptBuilder, parse_methods
from semedge.eval.windows import check_window_fits, tokenize_text

__all__ = [
    "PASSKEY_METHODS",
    "PasskeySample",
    "PasskeyReport",
    "default_filler",
    "make_passkey_sample",
    "evaluate_passkey",
]

PASSKEY_METHODS = ("full", "semtoken", "truncate")
INSTRUCTION = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about it.\n\n"
)
KEY_SENTENCE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "\n\nWhat is the pass key? The pass key is"
_MAX_NEW_TOKENS = 12


def default_filler() -> str:
    """The shipped filler: ~48 kB of WikiText-2 (validation split) prose, CC BY-SA 3.0."""
    return resources.files("semedge").joinpath("assets/wikitext2_excerpt.txt").read_text("utf-8")


@dataclass(frozen=True)
class PasskeySample:
    """One haystack: `input_ids` (T,) with the key sentence at tokens [key_start, key_end)."""

    input_ids: np.ndarray
    passkey: str
    depth: float  # where the key sentence starts within the filler, 0 (first) .. 1 (last)
    key_start: int
    key_end: int
    question: str = QUESTION.strip()


def make_passkey_sample(
    filler_ids: np.ndarray, tokenizer, context: int, depth: float, rng: np.random.Generator
) -> PasskeySample:
    """Hide a random 5-digit key at `depth` (0..1) of a `context`-token haystack.

    The key sentence goes in at the sentence boundary of the filler nearest to `depth`.

    Raises:
        InputError: the filler is too short for `context` tokens, or depth is outside [0, 1].
    """
    if not 0.0 <= depth <= 1.0:
        raise InputError(f"depth must be in [0, 1], got {depth}")
    key = str(int(rng.integers(10000, 100000)))
    head = tokenize_text(INSTRUCTION, tokenizer)
    ksent = tokenize_text(KEY_SENTENCE.format(key=key), tokenizer)
    tail = tokenize_text(QUESTION, tokenizer)
    n_fill = context - len(head) - len(ksent) - len(tail)
    if n_fill < 16 or len(filler_ids) < n_fill:
        raise InputError(
            f"the filler has {len(filler_ids)} tokens but a {context}-token haystack needs "
            f"{max(n_fill, 16)}; pass a longer --data file or a larger --context"
        )
    start = int(rng.integers(0, len(filler_ids) - n_fill + 1))
    fill = filler_ids[start : start + n_fill]
    at = _sentence_boundary(fill, tokenizer, int(round(depth * n_fill)))
    ids = np.concatenate([head, fill[:at], ksent, fill[at:], tail]).astype(np.int64)
    k0 = len(head) + at
    return PasskeySample(ids, key, at / n_fill, k0, k0 + len(ksent))


def _sentence_boundary(fill: np.ndarray, tokenizer, target: int) -> int:
    """The index after a sentence-ending token nearest to `target` (itself if none)."""
    pieces = tokenizer.convert_ids_to_tokens(fill.tolist())
    ends = [i + 1 for i, p in enumerate(pieces) if p.rstrip().endswith((".", "\u010a", "\n"))]
    return min(ends, key=lambda i: abs(i - target)) if ends else target


@dataclass(frozen=True)
class PasskeyReport:
    """`semedge eval passkey` result; `to_dict()` is what --json prints."""

    model: str
    context: int
    ratio: float
    samples: list[dict[str, Any]]
    methods: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict)

    def accuracy(self, method: str, dropped: bool | None = None) -> float | None:
        """Exact-match rate of `method`, optionally only where truncation dropped the key."""
        rows = [s for s in self.samples if dropped is None or s["key_dropped"] == dropped]
        return float(np.mean([s[method]["correct"] for s in rows])) if rows else None

    def to_dict(self) -> dict[str, Any]:
        summary = {
            m: {
                "accuracy": self.accuracy(m),
                "accuracy_key_dropped": self.accuracy(m, dropped=True),
                "accuracy_key_kept": self.accuracy(m, dropped=False),
                "tokens": float(np.mean([s[m]["tokens"] for s in self.samples])),
            }
            for m in self.methods
        }
        return {
            "model": self.model,
            "context": self.context,
            "ratio": self.ratio,
            "n_samples": len(self.samples),
            "key_dropped_by_truncate": int(sum(s["key_dropped"] for s in self.samples)),
            "results": summary,
            "samples": self.samples,
            "config": self.config,
        }


def evaluate_passkey(
    model,
    tokenizer,
    context: int,
    ratio: float = 2.4,
    samples: int = 8,
    filler: str | None = None,
    methods: tuple[str, ...] | str = PASSKEY_METHODS,
    config: CompressionConfig | None = None,
    query_aware: bool = True,
    model_name: str = "model",
    seed: int = 0,
    progress: bool = False,
    adapter=None,
) -> PasskeyReport:
    """Passkey exact-match accuracy per method over `samples` haystacks of `context` tokens.

    Depths are stratified: sample i lies at a random depth in [i/N, (i+1)/N).
    With `query_aware`, SemToken gets the question as its query (spans like it stay fine).

    Raises:
        InputError: bad sizes, too little filler, unknown methods.
    """
    from tqdm.auto import tqdm

    from semedge.compressor.inference import generate_compressed

    methods = parse_methods(methods)
    if samples < 1:
        raise InputError(f"samples must be >= 1, got {samples}")
    check_window_fits(context, _MAX_NEW_TOKENS, _max_positions(model))
    config = config or CompressionConfig()
    builder = PromptBuilder(model, tokenizer, config, seed=seed, adapter=adapter)
    filler_ids = tokenize_text(filler if filler is not None else default_filler(), tokenizer)
    rng = np.random.default_rng(seed)
    rows = []
    for i in tqdm(range(samples), desc="eval passkey", unit="sample", disable=not progress):
        sample = make_passkey_sample(
            filler_ids, tokenizer, context, (i + rng.random()) / samples, rng
        )
        cut = context - truncate_keep(context, ratio)
        row: dict[str, Any] = {
            "passkey": sample.passkey,
            "depth": round(sample.depth, 4),
            "key_dropped": bool(sample.key_end <= cut),
        }
        query = sample.question if query_aware else None
        for m in methods:
            prompt = builder.build(m, sample.input_ids, ratio, query=query)
            new = generate_compressed(model, tokenizer, prompt, _MAX_NEW_TOKENS, eos_token_id=-1)
            answer = tokenizer.decode(new)
            found = re.search(r"\d{5}", answer)
            row[m] = {
                "answer": answer.strip(),
                "correct": bool(found and found.group(0) == sample.passkey),
                "tokens": prompt.compressed_tokens,
            }
        rows.append(row)
    return PasskeyReport(model_name, context, float(ratio), rows, methods, config.to_dict())


def _max_positions(model) -> int | None:
    from semedge.eval.perplexity import _max_positions as mp

    return mp(model)
