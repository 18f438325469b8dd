"""Probe: does SemToken's query mode keep the needle verbatim, and what do its merged spans cost?

For suite prompts (the same generators as `semedge eval suite`, own seeds), per variant of
CompressionConfig (JSON): the share of needle tokens kept as singleton spans ("recall") and, with
--gen, the answer's score. A variant's "mode": "spans" (the product) or "compact" (positions
compacted). The earlier manual "drop" modes are the product's own settings now:
`{"merged_spans": "drop"}` (the residue left out) with `{"span_position": "first"}` for the
original positions. SmolLM2 bf16, one thread.

    python benchmarks/query_residue_probe.py --tasks niah_word,multivalue,recall --samples 10 \
        --ratios 2.4,4 --gen --out probe.jsonl \
        --variants '{"keep": {"merged_spans": "keep"}, "drop": {"merged_spans": "drop"}}'
"""

import argparse
import json

import numpy as np
import torch

from semedge.compressor.relevance import sentence_units
from semedge.config import CompressionConfig
from semedge.eval import methods as M
from semedge.eval.passkey import default_filler
from semedge.eval.suite import TorchRunner, suite_sample
from semedge.eval.tasks import FillerText, parse_tasks, score_answer
from semedge.models import load_model

ap = argparse.ArgumentParser()
ap.add_argument("--tasks", default="niah_number,niah_word,multikey,multivalue,multiquery")
ap.add_argument("--samples", type=int, default=6)
ap.add_argument("--ratios", default="2.4,4")
ap.add_argument("--context", type=int, default=2048)
ap.add_argument("--variants", default='{"cur": {}}')
ap.add_argument("--gen", action="store_true")
ap.add_argument("--noquery", action="store_true")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--out", default=None)
a = ap.parse_args()
torch.set_num_threads(1)
model, tok = load_model("smollm2")
model = model.to(torch.bfloat16)
variants = json.loads(a.variants)
modes = {k: v.pop("mode", "spans") for k, v in variants.items()}
runners = {k: TorchRunner(model, tok, CompressionConfig(**v)) for k, v in variants.items()}
r0 = next(iter(runners.values()))
text = FillerText(default_filler(), r0.count_tokens)
tasks = a.tasks.split(",")
alltasks = parse_tasks("all")
res = {}
out = open(a.out, "a") if a.out else None
for task in tasks:
    for i in range(a.samples):
        s = suite_sample(task, alltasks.index(task), a.context, i, a.samples, a.seed, text,
                         r0.count_tokens)  # fmt: skip
        tk = r0.tokenize(s.prompt)
        # needle token sets
        nd = []
        for st, en in s.needles:
            nd.append(np.flatnonzero((tk.offsets[:, 0] < en) & (tk.offsets[:, 1] > st)))
        for ratio in [float(x) for x in a.ratios.split(",")]:
            for name, rn in runners.items():
                p = rn.semtoken(tk, ratio, None if a.noquery else s.question)
                sp = p.spans
                single = np.zeros(len(tk.ids), bool)
                L = sp[:, 1] - sp[:, 0]
                single[sp[L == 1, 0]] = True
                rec = float(np.mean([single[n].all() for n in nd])) if nd else None
                row = {"task": task, "i": i, "ratio": ratio, "v": name, "recall": rec, "n": len(sp)}
                if a.gen:
                    mode = modes.get(name, "spans")
                    if mode == "compact":
                        p = p.fit_positions(len(sp))
                    ans, used = rn.generate(p, s.max_new_tokens)
                    row["score"] = score_answer(ans, s.answers)
                    row["ans"] = ans[:40]
                res.setdefault((name, ratio), []).append(row)
                if out:
                    out.write(json.dumps(row) + "\n")
                    out.flush()
            units = sentence_units(tk.text, tk.offsets)
            plan = M.plan_retrieve(
                tk.ids, units, r0.query_ids(s.question), r0.must_keep(tk, ratio, s.question), ratio
            )
            kept = np.zeros(len(tk.ids), bool)
            kept[plan.source] = True
            rec = float(np.mean([kept[n].all() for n in nd])) if nd else None
            res.setdefault(("retrieve", ratio), []).append({"recall": rec})
    print(
        task,
        {
            f"{k[0]}@{k[1]}": round(np.mean([r["recall"] for r in v if r["recall"] is not None]), 2)
            for k, v in res.items()
        },
        flush=True,
    )
for k, v in res.items():
    rc = [r["recall"] for r in v if r["recall"] is not None]
    sc = [r["score"] for r in v if "score" in r]
    print(k, "recall", round(np.mean(rc), 3), "score", round(np.mean(sc), 3) if sc else "-", len(v))
