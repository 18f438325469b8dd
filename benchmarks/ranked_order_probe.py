"""Scratch probe behind `ranked_order` (docs/eval.md): does it help to read the kept far
sentences just before the question instead of where they stand?

For each suite sample (T=2048, SmolLM2 bf16, PyTorch path) it answers from the same kept tokens
in different reading orders, for SemToken with the question as query (text order: `sq`) and for
the `retrieve` baseline (`rt`):

- `*_re`: every kept token before the recency window (but the 4 sinks) moved, in text order, to
  just before the prompt's last blank line;
- `*_rel`: the same, sentences least relevant first (SemToken: MaxSim; retrieve: BM25), so the
  most relevant is read right before the question.

The shipped rule (budget.reading_order) is `*_rel` restricted to the sentences kept *for
relevance* (a sentence partly kept as sinks stays whole where it is); this probe predates it.

    python benchmarks/ranked_order_probe.py TASKS RATIO SAMPLES SEED OUT.jsonl VARIANTS [FILLER]
    e.g. ... niah_number,multikey 4 10 0 probe.jsonl sq,sq_rel,rt,rt_rel
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

import semedge.compressor.compressor as C
from semedge.compressor.relevance import bm25_scores, sentence_units
from semedge.config import CompressionConfig
from semedge.eval import methods as M
from semedge.eval.passkey import default_filler
from semedge.eval.suite import TorchRunner, suite_sample
from semedge.eval.tasks import FillerText, parse_tasks, score_answer
from semedge.models import load_model

SINKS = 4


def reorder(kept, tok, T, recent, units=None, scores=None):
    """`kept` (sorted) with its far tokens moved before the last blank line (see above)."""
    q0 = tok.text.rfind("\n\n")
    qi = int(np.searchsorted(tok.offsets[:, 0], q0)) if q0 >= 0 else T
    qi = max(qi, T - recent)
    far = kept[(kept >= SINKS) & (kept < T - recent)]
    if units is not None:
        s = scores[units[far]]
        far = far[np.lexsort((far, np.where(np.isfinite(s), s, -1e9)))]
    rec = kept[(kept >= T - recent) & (kept < qi)]
    return np.concatenate([kept[kept < SINKS], rec, far, kept[kept >= qi]])


def main() -> None:
    tasks, ratio, n, seed = (
        sys.argv[1].split(","),
        float(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
    )
    out, variants = open(sys.argv[5], "a"), sys.argv[6].split(",")  # noqa: SIM115
    filler = open(sys.argv[7]).read() if len(sys.argv) > 7 else default_filler()  # noqa: SIM115
    torch.set_num_threads(1)
    model, tk = load_model("smollm2")
    r = TorchRunner(model.to(torch.bfloat16), tk, CompressionConfig(ranked_order="text"))
    text, all_tasks = FillerText(filler, r.count_tokens), parse_tasks("all")
    seen = {}
    find_spans = C.find_spans

    def spy(hidden, prot, cfg, qs=None, us=None, at=None):  # keep the sentence scores
        seen["us"] = us
        return find_spans(hidden, prot, cfg, qs, us, at)

    C.find_spans = spy
    for task in tasks:
        for i in range(n):
            s = suite_sample(task, all_tasks.index(task), 2048, i, n, seed, text, r.count_tokens)
            tok = r.tokenize(s.prompt)
            T = len(tok.ids)
            recent = r._cfg(ratio, s.question).recency_tokens(T)
            sq = np.asarray(r.semtoken(tok, ratio, s.question).spans)[:, 0]
            units, scores = seen["us"]
            rt = r.plan("retrieve", tok, ratio, s.question, seed + i).source
            bu = sentence_units(tok.text, tok.offsets)
            bs = bm25_scores(tok.ids, bu, r.query_ids(s.question))
            plans = {
                "sq": sq, "sq_re": reorder(sq, tok, T, recent),
                "sq_rel": reorder(sq, tok, T, recent, units, scores),
                "rt": rt, "rt_re": reorder(rt, tok, T, recent),
                "rt_rel": reorder(rt, tok, T, recent, bu, bs),
            }  # fmt: skip
            res = {}
            for name in variants:
                kept = np.asarray(plans[name], np.int64)
                plan = M.ContextPlan(kept, np.arange(len(kept)), len(kept))
                answer, _ = r.generate(r.inputs(tok, plan), s.max_new_tokens)
                res[name] = score_answer(answer, s.answers)
            row = {"task": task, "i": i, "seed": seed, "ratio": ratio, **res}
            out.write(json.dumps(row) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
