"""Print the docs/eval.md markdown tables from benchmarks/results/*.json (eval_final.sh output)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

RES = Path(__file__).parent / "results"


def ppl_rows() -> None:
    d = json.loads((RES / "ppl_t2048_default.json").read_text())
    t_path = RES / "ppl_t2048_tuned.json"
    t = json.loads(t_path.read_text()) if t_path.is_file() and t_path.stat().st_size else None
    full = d["results"]["full"]["ppl"]
    print(
        f"SmolLM2, WikiText-2 test, T={d['context']}, target {d['target']}, R={d['ratio']}, "
        f"{d['windows']} windows\n"
    )
    print("| method | settings | ppl | x full | positions | achieved ratio |")
    print("|---|---|---|---|---|---|")
    rows = [
        (
            m,
            "defaults (mean, recency 64, max_span 8)"
            if m in ("semtoken", "random", "uniform")
            else "-",
            r,
        )
        for m, r in d["results"].items()
    ]
    if t:
        rows += [
            (m, "frozen_lm (first, recency 448, max_span 16)", r) for m, r in t["results"].items()
        ]
    for m, s, r in rows:
        print(
            f"| {m} | {s} | {r['ppl']:.2f} | {r['ppl'] / full:.3f} | {r['tokens']:.0f} "
            f"| {r['ratio']:.3f} |"
        )


def passkey_rows(name: str) -> None:
    p = RES / name
    if not p.is_file() or not p.stat().st_size:
        return
    d = json.loads(p.read_text())
    n, nd = d["n_samples"], d["key_dropped_by_truncate"]
    print(
        f"\nPasskey, T={d['context']}, R={d['ratio']}, {n} samples "
        f"({nd} with the key in the part truncation drops)\n"
    )
    print("| method | accuracy | key dropped by truncate | key kept | positions |")
    print("|---|---|---|---|---|")
    for m, r in d["results"].items():

        def pct(v, k):
            return "-" if v is None else f"{round(v * k)}/{k}"

        print(
            f"| {m} | {pct(r['accuracy'], n)} | {pct(r['accuracy_key_dropped'], nd)} "
            f"| {pct(r['accuracy_key_kept'], n - nd)} | {r['tokens']:.0f} |"
        )


if __name__ == "__main__":
    ppl_rows()
    for name in sys.argv[1:] or ["passkey_t2048_tuned.json"]:
        passkey_rows(name)
