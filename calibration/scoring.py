"""Quality and speed of an export's prefill + decode graphs, fp32 and quantized side by side.

Quality is measured the way the model is deployed: prefill a held-out context, then decode
(teacher-forced) the next tokens through decode.onnx, scoring each next-token distribution.
So it works with "last"-logits exports and exercises both quantized graphs. Torch-free.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from semedge import constants as C
from semedge.calibration.data import ExportGraphs, ort_session, past_from_presents

__all__ = ["HeldOutScore", "score_graphs", "agreement", "prefill_ms", "decode_ms"]


@dataclass
class HeldOutScore:
    """Per scored token: negative log-likelihood and argmax; ppl = exp(mean nll)."""

    nll: np.ndarray  # (N,) float64
    argmax: np.ndarray  # (N,) int64
    logits: list[np.ndarray]  # per window (k, V) float32, for |delta logits| parity

    @property
    def ppl(self) -> float:
        return float(np.exp(self.nll.mean()))


def _nll(z: np.ndarray, target: int) -> float:
    z = z.astype(np.float64)
    m = z.max()
    return float(np.log(np.exp(z - m).sum()) + m - z[target])


def _feed_dtype(sess, name: str):
    kind = next(i.type for i in sess.get_inputs() if i.name == name)
    return np.float16 if kind == "tensor(float16)" else np.float32


def score_graphs(
    graphs: ExportGraphs, prefill: Path, decode: Path, windows: list[np.ndarray], context: int
) -> HeldOutScore:
    """Prefill `context` tokens of each window, decode the rest; score every next token.

    Args:
        graphs: the fp32 export (tokenizer, embed.onnx, config).
        prefill, decode: the graphs to score (fp32 or quantized).
        windows: (context + k,) token ids each.
        context: tokens given to prefill.
    """
    pre, dec = ort_session(prefill), ort_session(decode)
    layers = int(graphs.config["num_layers"])
    pre_out = [o.name for o in pre.get_outputs()]
    dec_out = [o.name for o in dec.get_outputs()]
    dtype = _feed_dtype(pre, C.INPUTS_EMBEDS)
    nll, arg, per_window = [], [], []
    for ids in windows:
        embeds = graphs.embed(ids[:context])[None].astype(dtype)
        feed = {
            C.INPUTS_EMBEDS: embeds,
            C.POSITION_IDS: np.arange(context, dtype=np.int64)[None],
            C.ATTENTION_MASK: np.ones((1, context), np.int64),
        }
        res = dict(zip(pre_out, pre.run(None, feed), strict=True))
        rows = [res[C.LOGITS][0, -1]]
        for j in range(context, ids.size - 1):
            feed = {
                C.INPUT_IDS: ids[j : j + 1][None],
                C.POSITION_IDS: np.array([[j]], np.int64),
                C.ATTENTION_MASK: np.ones((1, j + 1), np.int64),
                **past_from_presents(res, layers),
            }
            res = dict(zip(dec_out, dec.run(None, feed), strict=True))
            rows.append(res[C.LOGITS][0, -1])
        z = np.stack(rows).astype(np.float32)  # (k, V): row r predicts ids[context + r]
        per_window.append(z)
        nll.extend(_nll(r, int(t)) for r, t in zip(z, ids[context:], strict=True))
        arg.append(z.argmax(-1))
    return HeldOutScore(np.asarray(nll), np.concatenate(arg), per_window)


def agreement(a: HeldOutScore, b: HeldOutScore) -> float:
    """Fraction of scored tokens where both pick the same top-1 token."""
    return float(np.mean(a.argmax == b.argmax))


def _median_ms(sess, feed: dict, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(1e3 * (time.perf_counter() - t0))
    return times


def prefill_ms(
    graphs: ExportGraphs, paths: list[Path], tokens: int, repeats: int = 3
) -> list[float]:
    """Median prefill latency of each graph at `tokens` tokens, runs interleaved (A B A B ...)."""
    sessions = [ort_session(p) for p in paths]
    ids = np.arange(tokens, dtype=np.int64) % int(graphs.config.get("vocab_size", 1000))
    embeds = graphs.embed(ids)[None]
    feeds = []
    for s in sessions:
        feeds.append(
            {
                C.INPUTS_EMBEDS: embeds.astype(_feed_dtype(s, C.INPUTS_EMBEDS)),
                C.POSITION_IDS: np.arange(tokens, dtype=np.int64)[None],
                C.ATTENTION_MASK: np.ones((1, tokens), np.int64),
            }
        )
    for s, f in zip(sessions, feeds, strict=True):  # warm-up: first runs allocate
        s.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for k, (s, f) in enumerate(zip(sessions, feeds, strict=True)):
            times[k].extend(_median_ms(s, f, 1))
    return [statistics.median(t) for t in times]


def decode_ms(
    graphs: ExportGraphs, paths: list[Path], past_len: int, steps: int = 8
) -> list[float]:
    """Median latency of one decode step after `past_len` tokens, graphs interleaved."""
    cfg = graphs.config
    layers, kv, hd = int(cfg["num_layers"]), int(cfg["num_kv_heads"]), int(cfg["head_dim"])
    rng = np.random.default_rng(0)
    sessions = [ort_session(p) for p in paths]
    feeds = []
    for s in sessions:
        dt = _feed_dtype(s, C.PAST_KEY.format(i=0))
        past = {
            name.format(i=i): rng.normal(0, 1, (1, kv, past_len, hd)).astype(dt)
            for i in range(layers)
            for name in (C.PAST_KEY, C.PAST_VALUE)
        }
        feeds.append(
            {
                C.INPUT_IDS: np.array([[1]], np.int64),
                C.POSITION_IDS: np.array([[past_len]], np.int64),
                C.ATTENTION_MASK: np.ones((1, past_len + 1), np.int64),
                **past,
            }
        )
    for s, f in zip(sessions, feeds, strict=True):
        s.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(steps):
        for k, (s, f) in enumerate(zip(sessions, feeds, strict=True)):
            times[k].extend(_median_ms(s, f, 1))
    return [statistics.median(t) for t in times]
