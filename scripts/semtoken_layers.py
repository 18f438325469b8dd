"""Measure the SemToken `lm` encoder depth k on SmolLM2 (the docs/semtoken.md table).

For each k: continuation perplexity of `--target` WikiText-2 test tokens after a `--context`
token context compressed at `--ratio` (spans from the first k layers), plus encoder time.
Usage: python scripts/semtoken_layers.py [--layers 0,1,2,4,8] [--windows 2] [--repr mean]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2" / "test.txt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="0,1,2,4,8")
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--target", type=int, default=128)
    ap.add_argument("--ratio", type=float, default=2.4)
    ap.add_argument("--repr", default="mean")
    ap.add_argument("--minilm", action="store_true")
    ap.add_argument("--data", default=str(WIKITEXT))
    args = ap.parse_args()

    import numpy as np
    import torch

    from semedge.compressor import SemTokenCompressor, score_continuation
    from semedge.config import CompressionConfig
    from semedge.models import load_model

    torch.manual_seed(0)
    model, tok = load_model("smollm2")
    ids = np.asarray(tok(Path(args.data).read_text("utf-8"))["input_ids"], dtype=np.int64)
    span = args.context + args.target
    starts = np.linspace(0, len(ids) - span, args.windows + 2).astype(int)[1:-1]
    base = CompressionConfig(ratio=args.ratio, span_repr=args.repr)
    variants = [("full", base, 1.0)] + [
        (f"lm k={k}", dataclasses.replace(base, encoder_layers=int(k)), args.ratio)
        for k in args.layers.split(",")
    ]
    if args.minilm:
        variants.append(("minilm", dataclasses.replace(base, encoder="minilm"), args.ratio))
    rows = {}
    for name, cfg, ratio in variants:
        comp = SemTokenCompressor(model, tok, cfg)
        nll = n = 0.0
        enc_s = 0.0
        for s in starts:
            ctx, tgt = ids[s : s + args.context], ids[s + args.context : s + span]
            t0 = time.perf_counter()
            prompt = comp.compress(input_ids=ctx, ratio=ratio)
            enc_s += time.perf_counter() - t0
            a, b = score_continuation(model, prompt, tgt)
            nll, n = nll + a, n + b
        rows[name] = {"ppl": math.exp(nll / n), "compress_s": enc_s / len(starts)}
        print(json.dumps({name: rows[name]}), flush=True)


if __name__ == "__main__":
    main()
