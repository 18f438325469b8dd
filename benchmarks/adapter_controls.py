"""Where does the span adapter's gain come from? Controls on the same windows, side by side.

For each text: full context, truncation (the last T/R tokens), SemToken with the adapter's own
compression settings frozen (no adapter) and adapted, and two controls of the adapted prompt:
`shuffled` gives every window the far spans of another window (another article), `recency only`
drops the far spans (the verbatim recent tokens alone). If `shuffled` matches `adapter`, the gain
does not come from the far context's content. `--adapter none` scores a layout frozen (full,
truncation and frozen columns only); `--recency-fraction`/`--max-span` change the layout. Usage:

    python benchmarks/adapter_controls.py --adapter DEFAULT --windows 12 \
        --text ../shared/data/wikitext-2/test.txt --text .venv/lib/python3.12/site-packages/click/core.py
    python benchmarks/adapter_controls.py --adapter none --recency-fraction 0.75 --max-span 16 \
        --text ../shared/data/wikitext-2/test.txt --out benchmarks/results/frozen_layout_r075.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import torch
from _windows import add_window_args

from semedge import load_model
from semedge.config import CompressionConfig, replace_set
from semedge.eval.windows import tokenize_text
from semedge.textio import read_text_file
from semedge.training.adapter import load_adapter
from semedge.training.adapter_train import (
    AdapterTrainConfig,
    evaluate_examples,
    prepare_examples,
)
from semedge.training.compare import truncation_ppl


def _shuffled(examples):
    out = []
    for i, ex in enumerate(examples):
        other = examples[(i + len(examples) // 2) % len(examples)]
        far, other_far = ex.lengths > 1, other.lengths > 1
        k = int(min(far.sum(), other_far.sum()))
        e = copy.copy(ex)
        e.merged = ex.merged.clone()
        e.merged[far.nonzero()[:k, 0]] = other.merged[other_far.nonzero()[:k, 0]]
        out.append(e)
    return out


def _recency_only(examples):
    out = []
    for ex in examples:
        keep = ex.lengths == 1
        e = copy.copy(ex)
        e.merged, e.lengths, e.position_ids = (
            ex.merged[keep],
            ex.lengths[keep],
            ex.position_ids[keep],
        )
        out.append(e)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapter", default="DEFAULT", help="DEFAULT, a directory, or none")
    ap.add_argument("--text", action="append", required=True)
    ap.add_argument("--recency-fraction", type=float, default=None, help="override the layout")
    ap.add_argument("--max-span", type=int, default=None, help="override the layout")
    add_window_args(ap)
    a = ap.parse_args()
    torch.set_num_threads(2)
    model, tok = load_model("smollm2")
    adapter = None if a.adapter.lower() == "none" else load_adapter(a.adapter, model)
    layout = getattr(adapter, "compression", None) or CompressionConfig.adapter_default()
    layout = replace_set(layout, recency_fraction=a.recency_fraction, max_span=a.max_span)
    cfg = AdapterTrainConfig(ratio=a.ratio, context=a.context, target=a.target, compression=layout)
    results = {}
    print(f"{'text':28s} {'full':>7s} {'trunc':>7s} {'frozen':>7s} {'adapter':>7s} "
          f"{'shuffled':>8s} {'recent':>7s}  windows positions")  # fmt: skip
    for path in a.text:
        ids = tokenize_text(read_text_file(path), tok)
        ex = prepare_examples(model, tok, ids, cfg, count=a.windows)
        base = evaluate_examples(model, ex, None)
        row = {
            "full": base["full_ppl"], "frozen": base["ppl"],
            "truncate": truncation_ppl(model, tok, ids, cfg, a.windows),
            "windows": len(ex), "positions": [len(e.merged) for e in ex],
        }  # fmt: skip
        if adapter is not None:
            row["adapter"] = evaluate_examples(model, ex, adapter)["ppl"]
            row["shuffled"] = evaluate_examples(model, _shuffled(ex), adapter)["ppl"]
            row["recency_only"] = evaluate_examples(model, _recency_only(ex), adapter)["ppl"]
        results[Path(path).name] = row
        cols = [row.get(k, math.nan) for k in ("adapter", "shuffled", "recency_only")]
        print(f"{Path(path).name:28s} {row['full']:7.2f} {row['truncate']:7.2f} "
              f"{row['frozen']:7.2f} {cols[0]:7.2f} {cols[1]:8.2f} {cols[2]:7.2f}  "
              f"{row['windows']:7d} {min(row['positions'])}-{max(row['positions'])}",
              flush=True)  # fmt: skip
        if math.isnan(row["frozen"]) or math.isnan(row.get("adapter", 0.0)):
            return 1
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
