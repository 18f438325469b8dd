"""Can a frozen LM use far context at all once it is not contiguous? (no adapter, no merging)

At the same position budget P = T/R as truncation, keep the last P - k tokens verbatim and spend
k positions on far tokens, also VERBATIM, at their original positions, chosen by:

  tok      the k rarest far tokens (unigram counts of WikiText-2 valid)
  word     whole far words by their rarest token, until k tokens
  even     k far tokens evenly spread
  first    the first k tokens of the window (the start of the context, contiguous)
  retC     the far chunks of C tokens sharing the most rare tokens with the last 512 context
           tokens (retrieval by overlap), k/C of them, in order

Verbatim tokens are the best case for any span representation: if these do not beat truncation,
a projector of merged spans on a frozen LM cannot either. Usage (about 40 min on 2 cores):

    python benchmarks/far_context_probe.py --windows 12 --out benchmarks/results/far_context_probe.json
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from _windows import add_window_args

from semedge import load_model
from semedge.eval.windows import tokenize_text, window_starts
from semedge.textio import read_text_file

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"


@torch.inference_mode()
def _nll(model, ctx: np.ndarray, pos: np.ndarray, target: np.ndarray, next_pos: int) -> float:
    ids = torch.as_tensor(np.concatenate([ctx, target[:-1]]))[None]
    positions = np.concatenate([pos, next_pos + np.arange(len(target) - 1)])
    out = model(input_ids=ids, position_ids=torch.as_tensor(positions)[None],
                attention_mask=torch.ones_like(ids), use_cache=False,
                logits_to_keep=len(target))  # fmt: skip
    logits = out.logits[0].float()  # position P-1 predicts target 0
    loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(target), reduction="sum")
    return float(loss)


def _word_ids(tokenizer, ids: np.ndarray) -> np.ndarray:
    """A word index per token: a word starts at a token that begins with a space or newline."""
    texts = tokenizer.convert_ids_to_tokens(ids.tolist())
    starts = [i == 0 or t.startswith(("Ġ", "Ċ")) for i, t in enumerate(texts)]
    return np.cumsum(starts)


def far_keep(far, recent, k, mode, rarity, tokenizer, chunk=64) -> np.ndarray:
    """Which far tokens to keep (a bool mask over `far`)."""
    keep = np.zeros(len(far), bool)
    if mode == "tok":
        keep[np.argsort(-rarity[far])[:k]] = True
    elif mode == "word":
        words = _word_ids(tokenizer, far)
        score = np.zeros(words.max() + 1)
        np.maximum.at(score, words, rarity[far])
        used = 0
        for w in np.argsort(-score):
            m = words == w
            if used + m.sum() <= k:
                keep |= m
                used += int(m.sum())
            if used >= k:
                break
    elif mode == "even":
        keep[np.linspace(0, len(far) - 1, k).round().astype(int)] = True
    elif mode == "first":
        keep[:k] = True
    elif mode == "ret":
        query = set(recent[-512:].tolist())
        scores = []
        for c in range(len(far) // chunk):
            seg = set(far[c * chunk : (c + 1) * chunk].tolist())
            scores.append(sum(rarity[t] for t in seg if t in query and rarity[t] > 8))
        for c in np.argsort(scores)[::-1][: k // chunk]:
            keep[c * chunk : (c + 1) * chunk] = True
    else:
        raise ValueError(mode)
    return keep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", default=str(DATA / "test.txt"))
    ap.add_argument("--counts", default=str(DATA / "valid.txt"), help="text for unigram counts")
    add_window_args(ap)
    a = ap.parse_args()
    torch.set_num_threads(2)
    model, tok = load_model("smollm2")
    ids_all = tokenize_text(read_text_file(a.text), tok)
    counts = np.bincount(tokenize_text(read_text_file(a.counts), tok), minlength=len(tok))
    rarity = -np.log((counts + 0.5) / counts.sum())
    T, S = a.context, a.target
    P = round(T / a.ratio)
    variants = [(mode, k, 0) for mode in ("tok", "word", "even") for k in (128, 256, 384)]
    variants += [("first", k, 0) for k in (64, 128, 256)]
    variants += [("ret", k, c) for k in (64, 128, 256) for c in (32, 64, 128) if c <= k]
    nll = collections.defaultdict(float)
    starts = window_starts(len(ids_all), T + S, a.windows)
    for i, s in enumerate(starts):
        ids, target = ids_all[s : s + T], ids_all[s + T : s + T + S]
        nll["full"] += _nll(model, ids, np.arange(T), target, T)
        nll["truncate"] += _nll(model, ids[T - P :], np.arange(T - P, T), target, T)
        for mode, k, chunk in variants:
            recent = np.arange(T - (P - k), T)
            keep = far_keep(ids[: recent[0]], ids[recent], k, mode, rarity, tok, chunk or 64)
            idx = np.concatenate([np.nonzero(keep)[0], recent])
            name = f"{mode}{chunk or ''}_{k}"
            nll[name] += _nll(model, ids[idx], idx, target, T)
        done = S * (i + 1)
        print(f"window {i + 1}/{len(starts)}: full {math.exp(nll['full'] / done):.2f} "
              f"truncate {math.exp(nll['truncate'] / done):.2f}", flush=True)  # fmt: skip
    ppl = {k: round(math.exp(v / (S * len(starts))), 3) for k, v in nll.items()}
    print(f"{'variant':14s} {'ppl':>7s} {'vs truncate':>12s}")
    for name, v in ppl.items():
        print(f"{name:14s} {v:7.2f} {v / ppl['truncate']:11.3f}x")
    if a.out:
        info = {"args": vars(a), "positions": P, "windows": len(starts), "ppl": ppl}
        Path(a.out).write_text(json.dumps(info, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
