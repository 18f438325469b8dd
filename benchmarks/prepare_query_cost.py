"""What a query costs in `Pipeline.prepare` (tokenize + encoder + span search + embeddings).

One suite prompt (multivalue, about `--context` tokens) at `--ratio`, prepared without a query,
with the task's question as query, and with the query but the recency window left unscored
(`ranked_order="text"`: no reading order, so the encoder skips the window, as it did with a
query before the window was scored). Min and median over `--rounds` alternating rounds, and
the tokens each setting sent through the encoder graph (its windows overlap; the query's own
tokens included).

    python benchmarks/prepare_query_cost.py [--export DIR] [--context 2048] [--ratio 2.4]
        [--compare OTHER_EXPORT_DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, default=None, help="default: the cached SmolLM2 export")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--ratio", type=float, default=2.4)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compare", type=Path, default=None,
                    help="a second export (e.g. with an int8 encoder), timed in the same rounds")  # fmt: skip
    a = ap.parse_args()
    import semedge.eval.suite as suite
    from semedge.constants import INPUT_IDS
    from semedge.eval.passkey import default_filler
    from semedge.runtime import Pipeline

    export = a.export
    if export is None:
        from semedge.export import cached_export

        export = cached_export("smollm2")
    pipes = {"": Pipeline.from_pretrained(export, threads=a.threads)}
    if a.compare is not None:  # e.g. a `calibrate int8 --encoder int8` copy, rounds alternating
        pipes = {f"1 {export.name}: ": pipes[""], f"2 {a.compare.name}: ": Pipeline.from_pretrained(
            a.compare, threads=a.threads)}  # fmt: skip
    pipe = next(iter(pipes.values()))

    def count(texts: list[str]) -> list[int]:
        return [len(pipe.tokenize(t).ids) for t in texts]

    filler = suite.FillerText(default_filler(), count)
    sample = suite.suite_sample("multivalue", 0, a.context, 3, 10, 0, filler, count)
    settings = [
        ("no query", None, "auto"),
        ("query", sample.question, "auto"),
        ("query, window unscored", sample.question, "text"),
    ]
    times: dict[str, list[float]] = {}
    encoded: dict[str, int] = {}  # tokens through the encoder graph (windows overlap)
    seen: list[int] = []
    for p in pipes.values():
        encoder = p.backends["encoder"]

        def counted(feeds, names, run=encoder.run):
            seen.append(feeds[INPUT_IDS].shape[1])
            return run(feeds, names)

        encoder.run = counted
    for _ in range(a.rounds):
        for label, p in pipes.items():
            shipped = p.compression
            for name, query, order in settings:
                p.compression = dataclasses.replace(shipped, ranked_order=order)
                seen.clear()
                t0 = time.perf_counter()
                p.prepare(sample.prompt, a.ratio, query)
                times.setdefault(label + name, []).append(time.perf_counter() - t0)
                p.compression = shipped
                encoded[label + name] = sum(seen)
    n_tokens = count([sample.prompt])[0]
    for p in pipes.values():
        p.close()
    print(f"prepare, {n_tokens} tokens, R={a.ratio:g}, {a.threads} threads")
    for name, ts in times.items():
        print(f"{name:24s} min {min(ts) * 1e3:7.1f} ms  median {np.median(ts) * 1e3:7.1f} ms  "
              f"encoder tokens {encoded[name]}")  # fmt: skip


if __name__ == "__main__":
    main()
