"""The long-context suite run task by task into a JSONL file (resumable), then its tables.

Same code as `semedge eval suite` (semedge.eval.suite.run_suite), for long runs on shared
machines: each finished task's per-sample rows are appended to --out at once, tasks already
in the file are skipped, and `--report` prints the tables of a file without running anything.

    python benchmarks/long_context_suite.py --out suite.jsonl --context 2048 --ratio 2.4,4 \
        --samples 4 --dtype bf16 --threads 1 [--tasks ...] [--methods ...] [--fit-positions N]
    python benchmarks/long_context_suite.py --out suite.jsonl --report [--markdown] [--plot PNG]
        [--paired semtoken_query,retrieve] [--join other.jsonl,...]

`--label NAME` records a run's rows under NAME instead of its one method's name, so two settings
of one method (`--config`, or the code before and after a change) can sit in one report and be
paired on the same prompts: `--report --join new.jsonl --paired NAME,semtoken_query`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _joined(path: Path, join: str | None) -> list[dict]:
    """The rows of `path` and of every file in the comma list `join`."""
    extra = [Path(p) for p in (join or "").split(",") if p]
    for p in extra:
        if not p.is_file():
            raise SystemExit(f"Error: --join {p}: no such file")
    return [r for f in (path, *extra) for r in _rows(f)]


def report(rows: list[dict], markdown: bool, plot: Path | None = None) -> None:
    from semedge.eval.suite import SuiteReport
    from semedge.eval.suite_report import suite_table, write_suite_plot

    rep = SuiteReport("smollm2", rows)
    if plot is not None:
        print(f"wrote {write_suite_plot(rep, plot)}", file=sys.stderr)
    headers, table = suite_table(rep)
    if markdown:
        print("| " + " | ".join(headers) + " |\n|" + "---|" * len(headers))
        for r in table:
            print("| " + " | ".join(str(v) for v in r) + " |")
    else:
        print("\t".join(headers))
        for r in table:
            print("\t".join(str(v) for v in r))
    print("\nper task (accuracy):")
    res = rep.results()
    methods = list(dict.fromkeys(r["method"] for r in res))
    keys = sorted({(r["context"], r["ratio"], r["task"]) for r in res})
    print("context ratio task " + " ".join(methods))
    for c, q, t in keys:
        acc = {
            r["method"]: r["accuracy"]
            for r in res
            if (r["context"], r["ratio"], r["task"]) == (c, q, t)
        }
        print(f"{c} {q} {t} " + " ".join(f"{acc.get(m, float('nan')):.2f}" for m in methods))


def paired(rows: list[dict], a: str, b: str) -> list[str]:
    """Accuracy of method `a` minus method `b` on the same prompts, per context and ratio: the
    9-task mean of per-task mean differences, with a 95 % paired bootstrap interval (prompts
    resampled within each task, 4,000 draws, seeded), and both methods' means on those prompts
    (what "x full" divides where full context ran on fewer prompts)."""
    import numpy as np

    pairs: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if r["method"] in (a, b):
            key = (r["context"], r["ratio"], r["task"], r.get("seed", 0), r["sample"])
            pairs.setdefault(key, {})[r["method"]] = r["score"]
    out = []
    for c, q in sorted({k[:2] for k in pairs}):
        diff: dict[str, list[float]] = {}
        score_a: dict[str, list[float]] = {}
        for k, v in pairs.items():
            if k[:2] == (c, q) and a in v and b in v:
                diff.setdefault(k[2], []).append(v[a] - v[b])
                score_a.setdefault(k[2], []).append(v[a])
        if not diff:
            continue
        mean_a = float(np.mean([np.mean(x) for x in score_a.values()]))
        arrays = [np.asarray(d) for d in diff.values()]
        rng = np.random.default_rng(0)
        boot = [np.mean([rng.choice(d, len(d)).mean() for d in arrays]) for _ in range(4000)]
        lo, hi = np.percentile(boot, [2.5, 97.5])
        n = sum(len(d) for d in arrays)
        mean = float(np.mean([d.mean() for d in arrays]))
        out.append(f"{c} {q:g}x {a} - {b}: {mean:+.3f} (95 % CI {lo:+.3f} .. {hi:+.3f}), "
                   f"{n} prompts, {len(arrays)} tasks; on them {a} {mean_a:.3f}, "
                   f"{b} {mean_a - mean:.3f}")  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--plot", type=Path, default=None, help="with --report: the heatmap PNG")
    ap.add_argument("--paired", default=None, metavar="A,B",
                    help="with --report: method A minus method B on the same prompts, with a "
                         "95 %% paired bootstrap interval")  # fmt: skip
    ap.add_argument("--join", default=None, metavar="FILES",
                    help="with --report: more result files (comma list) read with --out")  # fmt: skip
    ap.add_argument("--label", default=None,
                    help="record the rows under this name instead of the (one) method's")  # fmt: skip
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--context", default="2048")
    ap.add_argument("--ratio", default="2.4")
    ap.add_argument("--tasks", default="all")
    ap.add_argument("--methods", default="all")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--fit-positions", type=int, default=None)
    ap.add_argument("--config", default="{}", help="CompressionConfig overrides as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=None,
                    help="filler text (default: the shipped excerpt, ~11K SmolLM2 tokens)")  # fmt: skip
    a = ap.parse_args()
    if a.report:
        rows = _joined(a.out, a.join)
        report(rows, a.markdown, a.plot)
        if a.paired:
            first, _, second = a.paired.partition(",")
            print("\n" + "\n".join(paired(rows, first, second)))
        return
    if a.label and len(a.methods.split(",")) != 1:
        raise SystemExit("Error: --label names the rows of one method; pass one --methods")
    import torch

    from semedge.config import CompressionConfig
    from semedge.eval.passkey import default_filler
    from semedge.eval.suite import TorchRunner, run_suite
    from semedge.eval.tasks import parse_tasks
    from semedge.models import load_model

    if a.threads:
        torch.set_num_threads(a.threads)
    model, tok = load_model(a.model)
    if a.dtype == "bf16":
        model = model.to(torch.bfloat16)
    runner = TorchRunner(model, tok, CompressionConfig(**json.loads(a.config)), a.fit_positions)
    filler = a.data.read_text(encoding="utf-8") if a.data else default_filler()
    done = {(r["task"], r.get("seed", 0)) for r in _rows(a.out)}  # resume: per task and seed
    for task in parse_tasks(a.tasks):
        if (task, a.seed) in done:
            continue
        t0 = time.perf_counter()
        rep = run_suite(runner, task, [int(c) for c in a.context.split(",")],
                        [float(r) for r in a.ratio.split(",")], a.methods, a.samples,
                        filler, a.model, a.seed)  # fmt: skip
        with a.out.open("a", encoding="utf-8") as f:
            for r in rep.rows:
                f.write(json.dumps({**r, "method": a.label or r["method"]}) + "\n")
        print(f"{task}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    report(_rows(a.out), a.markdown)


if __name__ == "__main__":
    from semedge.errors import SemedgeError

    try:
        main()
    except SemedgeError as err:  # bad arguments or data: one line, exit 1
        sys.exit(f"Error: {err}")
