"""Where does the span adapter's gain come from? Controls on the same windows, side by side.

For each text: full context, truncation (the last T/R tokens), SemToken with the adapter's own
compression settings frozen (no adapter) and adapted, and two controls of the adapted prompt:
`shuffled` gives every window the far spans of another window (another article), `recency only`
drops the far spans (the verbatim recent tokens alone). If `shuffled` matches `adapter`, the gain
does not come from the far context's content. Usage:

    python benchmarks/adapter_controls.py --adapter DEFAULT --windows 12 \
        --text ../shared/data/wikitext-2/test.txt --text .venv/lib/python3.12/site-packages/click/core.py
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import torch
from semedge import load_model
from semedge.textio import read_text_file
from semedge.training.adapter import load_adapter
from semedge.training.adapter_train import (
    AdapterTrainConfig,
    evaluate_examples,
    prepare_examples,
    tokenize_text,
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
    ap.add_argument("--adapter", default="DEFAULT")
    ap.add_argument("--text", action="append", required=True)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--target", type=int, default=256)
    ap.add_argument("--ratio", type=float, default=2.4)
    ap.add_argument("--windows", type=int, default=12)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args()
    torch.set_num_threads(2)
    model, tok = load_model("smollm2")
    adapter = load_adapter(a.adapter, model)
    cfg = AdapterTrainConfig(ratio=a.ratio, context=a.context, target=a.target)
    if adapter.compression is not None:
        cfg = AdapterTrainConfig(ratio=a.ratio, context=a.context, target=a.target,
                                 compression=adapter.compression)  # fmt: skip
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
            "adapter": evaluate_examples(model, ex, adapter)["ppl"],
            "shuffled": evaluate_examples(model, _shuffled(ex), adapter)["ppl"],
            "recency_only": evaluate_examples(model, _recency_only(ex), adapter)["ppl"],
            "windows": len(ex), "positions": [len(e.merged) for e in ex],
        }  # fmt: skip
        results[Path(path).name] = row
        print(f"{Path(path).name:28s} {row['full']:7.2f} {row['truncate']:7.2f} "
              f"{row['frozen']:7.2f} {row['adapter']:7.2f} {row['shuffled']:8.2f} "
              f"{row['recency_only']:7.2f}  {row['windows']:7d} {min(row['positions'])}-"
              f"{max(row['positions'])}", flush=True)  # fmt: skip
        if math.isnan(row["adapter"]):
            return 1
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
