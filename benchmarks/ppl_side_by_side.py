"""WikiText-2 continuation perplexity of CompressionConfig variants, side by side in one run.

What `semedge eval ppl` computes (semedge.eval.perplexity.evaluate_perplexity), on the model cast
to bf16 and one thread, for several configs at once (the README's SemToken-on-WikiText table):

    python benchmarks/ppl_side_by_side.py '{"default": {}}' --methods truncate,semtoken
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2" / "test.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", help="JSON {name: CompressionConfig overrides}")
    ap.add_argument("--methods", default="truncate,semtoken")
    ap.add_argument("--data", type=Path, default=WIKITEXT)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--target", type=int, default=256)
    ap.add_argument("--ratio", type=float, default=2.4)
    ap.add_argument("--windows", type=int, default=6)
    a = ap.parse_args()
    import numpy as np
    import torch

    from semedge.config import CompressionConfig
    from semedge.eval.perplexity import evaluate_perplexity
    from semedge.models import load_model

    torch.set_num_threads(1)
    model, tok = load_model("smollm2")
    model = model.to(torch.bfloat16)
    text = a.data.read_text(encoding="utf-8")
    ids = np.asarray(tok(text, add_special_tokens=False)["input_ids"], np.int64)
    for name, overrides in json.loads(a.variants).items():
        rep = evaluate_perplexity(model, tok, ids, a.context, a.target, a.ratio, a.windows,
                                  a.methods, CompressionConfig(**overrides))  # fmt: skip
        cells = ", ".join(f"{m} {r.ppl:.3f} ({r.tokens:.0f} positions)"
                          for m, r in rep.results.items())  # fmt: skip
        print(f"{name}: {cells}", flush=True)


if __name__ == "__main__":
    main()
