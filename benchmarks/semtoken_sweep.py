"""Research sweep: which SemToken settings keep a frozen LM's continuation perplexity lowest.

Caches, per window, the input embeddings and every early layer's hidden states (one forward
of the full context that also gives the `full` NLL), then scores each variant with one forward
of its compressed context. Usage:

    python benchmarks/semtoken_sweep.py --context 1024 --target 128 --windows 4 --ratio 2.4 \
        --variants base,first,norm_mean --out /tmp/sweep.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from semedge import load_model
from semedge.compressor import spans as S
from semedge.compressor.compressor import CompressedPrompt
from semedge.compressor.inference import score_continuation
from semedge.config import CompressionConfig
from semedge.errors import InputError
from semedge.eval.baselines import random_spans, truncate_keep, uniform_spans
from semedge.eval.windows import tokenize_text, window_starts
from semedge.textio import read_text_file

BASE = dict(recency_window=128, sink_tokens=4, encoder_layers=2, span_repr="mean",
            span_position="first", max_span=8, density_alpha=1.0)  # fmt: skip
# variant name -> overrides of BASE (plus research-only keys: "spans", "pos", "boundary")
VARIANTS: dict[str, dict] = {
    "base": {},
    "first": {"span_repr": "first"},
    "last": {"span_repr": "last"},
    "norm_mean": {"span_repr": "norm_mean"},
    "mean_lastpos": {"span_position": "last"},
    "norm_mean_lastpos": {"span_repr": "norm_mean", "span_position": "last"},
    "last_lastpos": {"span_repr": "last", "span_position": "last"},
    "uniform": {"spans": "uniform"},
    "random": {"spans": "random"},
}


def cache_windows(model, tok, ids, starts, context, target, layers):
    rows = []
    for s in starts:
        ctx = ids[s : s + context]
        tgt = ids[s + context : s + context + target]
        x = torch.as_tensor(np.concatenate([ctx, tgt]))[None]
        with torch.inference_mode():
            out = model(x, output_hidden_states=True, use_cache=False)
            logits = out.logits[0, context - 1 : -1].float()
            full = float(torch.nn.functional.cross_entropy(logits, x[0, context:], reduction="sum"))
            hid = {k: out.hidden_states[k][0, :context].float().numpy() for k in layers}
            emb = model.get_input_embeddings()(x[:, :context])[0].float().numpy()
        texts = [tok.decode([int(i)]) for i in ctx]
        rows.append(dict(ctx=ctx, tgt=tgt, hid=hid, emb=emb, full=full, texts=texts))
    return rows


def save_cache(path, rows):
    arrays = {}
    for i, r in enumerate(rows):
        arrays.update({f"{i}_ctx": r["ctx"], f"{i}_tgt": r["tgt"], f"{i}_emb": r["emb"]})
        arrays[f"{i}_full"] = np.array(r["full"])
        arrays[f"{i}_texts"] = np.array(r["texts"], dtype=object).astype(str)
        arrays.update({f"{i}_hid{k}": h for k, h in r["hid"].items()})
    np.savez(path, **arrays)


def load_cache(path, layers):
    z = np.load(path, allow_pickle=False)
    n = len([k for k in z.files if k.endswith("_ctx")])
    rows = []
    for i in range(n):
        hid = {k: z[f"{i}_hid{k}"] for k in layers if f"{i}_hid{k}" in z.files}
        if len(hid) != len(layers):
            return None
        rows.append(
            dict(
                ctx=z[f"{i}_ctx"],
                tgt=z[f"{i}_tgt"],
                emb=z[f"{i}_emb"],
                hid=hid,
                full=float(z[f"{i}_full"]),
                texts=z[f"{i}_texts"].tolist(),
            )
        )
    return rows


_ORIG_COS = S._neighbour_cos
_BREAKS: list[np.ndarray | None] = [None]


def _cos_with_breaks(x, max_span):
    """_neighbour_cos, but a span may not reach past a boundary token (research-only rule)."""
    cos = _ORIG_COS(x, max_span)
    brk = _BREAKS[0]
    if brk is None:
        return cos
    cb = np.concatenate([[0], np.cumsum(brk)])  # breaks before index
    T = x.shape[0]
    for d in range(1, cos.shape[1] + 1):
        i = np.arange(T - d)
        crossed = cb[i + d + 1] - cb[i + 1] > 0  # a break at any of i+1 .. i+d
        cos[: T - d, d - 1][crossed] = -np.inf
    return cos


S._neighbour_cos = _cos_with_breaks


def boundary_mask(texts, kind):
    """(T,) True where a token starts a new clause/sentence: spans never reach across it."""
    ends = (".", "!", "?", ";", ":", ",") if kind == "punct" else (".", "!", "?")
    prev = [""] + list(texts[:-1])
    return np.array(
        [
            p.rstrip().endswith(ends) or "\n" in p or "\n" in t
            for p, t in zip(prev, texts, strict=True)
        ]
    )


def variant_spans(row, cfg, v, tok, ratio):
    _BREAKS[0] = boundary_mask(row["texts"], v["boundary"]) if v.get("boundary") else None
    special = np.isin(row["ctx"], tok.all_special_ids)
    prot = S.protected_mask(row["texts"], special, cfg)
    extra = v.get("protect")
    if extra:
        prot |= extra(row["texts"])
    n = len(row["ctx"])
    if v.get("spans") == "uniform":
        return uniform_spans(n, ratio, prot)
    if v.get("spans") == "random":
        return random_spans(n, ratio, prot, seed=int(row["ctx"][0]))
    return S.find_spans(row["hid"][cfg.encoder_layers], prot, cfg)[0]


def _nll(model, emb, pos, next_position: int, spans, tgt) -> float:
    """Summed continuation NLL; only the length of input_ids (the next position) is read."""
    ids = np.zeros(next_position, dtype=np.int64)
    return score_continuation(model, CompressedPrompt(ids, spans, emb, pos), tgt)[0]


def score(model, row, cfg, v, tok, ratio):
    spans = variant_spans(row, cfg, v, tok, ratio)
    emb = S.merge_embeddings(row["emb"], spans, mode=cfg.span_repr)
    pos = S.span_positions(spans, mode=cfg.span_position)
    nxt = len(row["ctx"])
    if v.get("pos") == "compact":
        pos, nxt = np.arange(len(spans)), len(spans)
    emb, pos = torch.as_tensor(emb)[None], torch.as_tensor(pos)[None]
    return _nll(model, emb, pos, nxt, spans, row["tgt"]), len(spans)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--data", default=str(Path(__file__).parents[2] / "shared/data/wikitext-2/test.txt")
    )
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--target", type=int, default=128)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--ratio", type=float, default=2.4)
    ap.add_argument("--variants", default="base")
    ap.add_argument("--base", default="{}", help="JSON overrides of BASE for every variant")
    ap.add_argument("--grid", default="{}", help="JSON {name: overrides} of extra variants")
    ap.add_argument("--cache", default=None, help="npz cache of the per-window states")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    model, tok = load_model("smollm2")
    ids = tokenize_text(read_text_file(a.data), tok)
    starts = window_starts(len(ids), a.context + a.target, a.windows)
    base = {**BASE, **json.loads(a.base)}
    VARIANTS.update(json.loads(a.grid))
    names = [n for n in a.variants.split(",") if n] + list(json.loads(a.grid))
    layers = sorted(
        {1, 2, 3, 4, 6, base["encoder_layers"]}
        | {VARIANTS[n].get("encoder_layers", base["encoder_layers"]) for n in names}
    )
    t0 = time.time()
    rows = load_cache(a.cache, layers) if a.cache and Path(a.cache).is_file() else None
    if rows is None:
        rows = cache_windows(model, tok, ids, starts, a.context, a.target, layers)
        if a.cache:
            save_cache(a.cache, rows)
    n_tgt = a.target * len(rows)
    full = math.exp(sum(r["full"] for r in rows) / n_tgt)
    trunc = 0.0
    for r in rows:
        k = truncate_keep(a.context, a.ratio)
        emb = torch.as_tensor(r["emb"][-k:])[None]
        trunc += _nll(model, emb, torch.arange(k)[None], k, None, r["tgt"])
    res = {"full": full, "truncate": math.exp(trunc / n_tgt)}
    print(f"full {full:.3f}  truncate {res['truncate']:.3f}  ({time.time() - t0:.0f}s)", flush=True)
    for name in names:
        v = VARIANTS[name]
        fields = {f.name for f in dataclasses.fields(CompressionConfig)}
        cfg = CompressionConfig(
            ratio=a.ratio, **{k: val for k, val in {**base, **v}.items() if k in fields}
        )
        t1 = time.time()
        nll, npos = 0.0, []
        try:
            scored = [score(model, r, cfg, v, tok, a.ratio) for r in rows]
        except InputError as err:
            print(f"{name:24s} infeasible: {err}", flush=True)
            continue
        for x, n in scored:
            nll += x
            npos.append(n)
        res[name] = math.exp(nll / n_tgt)
        print(
            f"{name:24s} ppl {res[name]:8.3f}  ratio {a.context / np.mean(npos):.3f}  ({time.time() - t1:.0f}s)",
            flush=True,
        )
    if a.out:
        Path(a.out).write_text(
            json.dumps({"args": vars(a), "base": base, "results": res}, indent=1)
        )


if __name__ == "__main__":
    sys.exit(main())
