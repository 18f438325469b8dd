"""Quality and speed of an export's prefill + decode graphs, fp32 and quantized side by side.

Quality is measured the way the model is deployed: the runtime's Generator prefills a held-out
context, then decodes (teacher-forced) the next tokens through decode.onnx, scoring each next-token
distribution. So it works with "last"-logits exports and exercises both quantized graphs.
Torch-free.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semedge import constants as C
from semedge.errors import AccuracyError
from semedge.runtime.backends.ort import OrtBackend
from semedge.runtime.generator import Generator, step_runner
from semedge.runtime.kv_cache import KVCache, local_kv
from semedge.runtime.pipeline import Pipeline, PreparedPrompt
from semedge.runtime.sampling import GenerationConfig

__all__ = [
    "HeldOutScore",
    "score_graphs",
    "agreement",
    "check_changed",
    "divergence",
    "leading_specials",
    "prefill_ms",
    "decode_ms",
]


@dataclass
class HeldOutScore:
    """Per scored token: negative log-likelihood and argmax; ppl = exp(mean nll)."""

    nll: np.ndarray  # (N,) float64
    argmax: np.ndarray  # (N,) int64
    logits: list[np.ndarray]  # per window (k, V) float32, for |delta logits| parity
    decode_steps: int = 0  # decode graph steps run (teacher-forced)
    exact_steps: int = 0  # of them, re-run by the fp32 fallback graph (near ties)

    @property
    def ppl(self) -> float:
        return float(np.exp(self.nll.mean()))


def _nll(z: np.ndarray, target: int) -> float:
    z = z.astype(np.float64)
    m = z.max()
    return float(np.log(np.exp(z - m).sum()) + m - z[target])


def score_graphs(pipe: Pipeline, windows: list[np.ndarray], context: int) -> HeldOutScore:
    """Prefill `context` tokens of each window (after the tokenizer's leading special tokens, as
    a prompt is read), decode the rest teacher-forced through the runtime's Generator
    (`Generator.score`); score every next token.

    Args:
        pipe: the export to score (`data.with_graphs` swaps in quantized graphs).
        windows: (context + k,) token ids each.
        context: tokens given to prefill (uncompressed).
    """
    nll, arg, per_window = [], [], []
    steps = exact = 0
    lead = leading_specials(pipe)
    for ids in windows:
        head = np.concatenate([lead, ids[:context]])
        prompt = PreparedPrompt(head, pipe.embed(head), np.arange(head.size, dtype=np.int64), None)
        gen = Generator(pipe, GenerationConfig(max_new_tokens=ids.size - context))
        gen.append_prompts([prompt])
        z = gen.score(ids[None, context:])[0].astype(np.float32)  # (k, V): row r -> ids[context+r]
        per_window.append(z)
        steps, exact = steps + ids.size - context - 1, exact + gen.exact_steps
        nll.extend(_nll(r, int(t)) for r, t in zip(z, ids[context:], strict=True))
        arg.append(z.argmax(-1))
    return HeldOutScore(np.asarray(nll), np.concatenate(arg), per_window, steps, exact)


def leading_specials(pipe: Pipeline) -> np.ndarray:
    """The ids the export's tokenizer puts before any prompt (Gemma 3's BOS; none for SmolLM2).

    A window scored without them is not what the deployed model reads: Gemma 3 270M without its
    BOS has a WikiText-2 perplexity near 100, and the flat distributions flip top-1 on noise."""
    return np.asarray(pipe.tokenizer.encode("").ids, dtype=np.int64)


def agreement(a: HeldOutScore, b: HeldOutScore) -> float:
    """Fraction of scored tokens where both pick the same top-1 token."""
    return float(np.mean(a.argmax == b.argmax))


def divergence(a: HeldOutScore, b: HeldOutScore) -> float:
    """Mean KL(a || b) in nats over the scored tokens: how far b's next-token distributions
    moved from a's (a continuous measure of what flips top-1 tokens)."""
    total, n = 0.0, 0
    for za, zb in zip(a.logits, b.logits, strict=True):
        la, lb = _log_softmax(za), _log_softmax(zb)
        total += float((np.exp(la) * (la - lb)).sum())
        n += za.shape[0]
    return total / max(n, 1)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _interleaved_ms(calls: list, rounds: int) -> list[float]:
    """Median ms of each zero-argument call, after a warm-up, runs interleaved (A B A B ...)."""
    for call in calls:  # warm-up: first runs allocate
        call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for k, call in enumerate(calls):
            t0 = time.perf_counter()
            call()
            times[k].append(1e3 * (time.perf_counter() - t0))
    return [statistics.median(t) for t in times]


def prefill_ms(pipe: Pipeline, paths: list[Path], tokens: int, repeats: int = 3) -> list[float]:
    """Median prefill latency of each graph at `tokens` tokens, runs interleaved (A B A B ...)."""
    sessions = [OrtBackend(p).load() for p in paths]
    ids = np.arange(tokens, dtype=np.int64) % int(pipe.config.get("vocab_size", 1000))
    embeds = pipe.embed(ids)[None]
    calls = []
    for s in sessions:
        feeds = {
            C.INPUTS_EMBEDS: embeds.astype(s.inputs[C.INPUTS_EMBEDS][0]),
            C.POSITION_IDS: np.arange(tokens, dtype=np.int64)[None],
            C.ATTENTION_MASK: np.ones((1, tokens), np.int64),
        }
        calls.append(lambda s=s, f=feeds: s.run(f))
    return _interleaved_ms(calls, repeats)


def decode_ms(pipe: Pipeline, paths: list[Path], past_len: int, steps: int = 8) -> list[float]:
    """Median latency of one decode step after `past_len` tokens, graphs interleaved, each run
    the way the runtime's Generator runs it: over a KV cache of its kind (in place where the
    pipeline's is, with its I/O binding kept) holding random keys and values."""
    cfg = pipe.config
    layers, kv, hd = int(cfg["num_layers"]), int(cfg["num_kv_heads"]), int(cfg["head_dim"])
    local_layers, local_slots = local_kv(cfg)
    rng = np.random.default_rng(0)
    calls = []
    for path in paths:
        s = OrtBackend(path).load()
        dt = s.inputs[C.PAST_KEY.format(i=0)][0]
        cache = KVCache(s.allocate, layers, 1, kv, hd, past_len + 1, dt, "cpu", local_layers,
                        local_slots, shared=pipe.kv_shared)  # fmt: skip
        cache.length = past_len
        for view in cache.arrays().values():
            view[...] = rng.normal(0, 1, view.shape).astype(dt)
        feeds = {
            C.INPUT_IDS: np.array([[1]], np.int64),
            C.POSITION_IDS: np.array([[past_len]], np.int64),
            C.ATTENTION_MASK: np.ones((1, past_len + 1), np.int64),
        }
        step = step_runner(s, cache)  # never advanced: each call rewrites the same slot
        calls.append(lambda step=step, f=feeds: step(f))
    return _interleaved_ms(calls, steps)


def check_changed(base: HeldOutScore, quant: HeldOutScore) -> None:
    """Refuse a result whose held-out logits are bit-identical to fp32's: whatever it quantized
    (the search keeps all groups but the least sensitive) never runs on the scored path, so
    calling it int8 would mislead (seen under `export onnx --precision auto`: an int8
    candidate at ppl +0.00 %, top-1 1.000 and fp32's prefill time).

    Raises:
        AccuracyError: nothing the runtime computes changed.
    """
    same = len(base.logits) == len(quant.logits) and all(
        np.array_equal(a, b) for a, b in zip(base.logits, quant.logits, strict=True))  # fmt: skip
    if same:
        raise AccuracyError(
            "no quantization fits the budget and changes anything: within it only groups that "
            "leave the held-out logits bit-identical to fp32's could be quantized; nothing written"
        )
