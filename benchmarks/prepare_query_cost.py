"""What a query costs in `Pipeline.prepare` (tokenize + encoder + span search + embeddings).

One suite prompt (multivalue, about `--context` tokens) at `--ratio`, prepared without a query,
with the task's question as query, and with the query but the recency window left unscored
(`ranked_order="text"`: no reading order, so the encoder skips the window, as it did with a
query before the window was scored). Min and median over `--rounds` alternating rounds, and
the tokens each setting sent through the encoder graph (its windows overlap; the query's own
tokens included).

    python benchmarks/prepare_query_cost.py [--export DIR] [--context 2048] [--ratio 2.4]
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
    a = ap.parse_args()
    import semedge.eval.suite as suite
    from semedge.constants import INPUT_IDS
    from semedge.eval.passkey import default_filler
    from semedge.runtime import Pipeline

    export = a.export
    if export is None:
        from semedge.export import cached_export

        export = cached_export("smollm2")
    with Pipeline.from_pretrained(export, threads=a.threads) as pipe:

        def count(texts: list[str]) -> list[int]:
            return [len(pipe.tokenize(t).ids) for t in texts]

        filler = suite.FillerText(default_filler(), count)
        sample = suite.suite_sample("multivalue", 0, a.context, 3, 10, 0, filler, count)
        settings = [
            ("no query", None, "auto"),
            ("query", sample.question, "auto"),
            ("query, window unscored", sample.question, "text"),
        ]
        times: dict[str, list[float]] = {name: [] for name, _, _ in settings}
        encoded: dict[str, int] = {}  # tokens through the encoder graph (windows overlap)
        encoder = pipe.backends["encoder"]
        seen: list[int] = []
        run = encoder.run

        def counted(feeds, names):
            seen.append(feeds[INPUT_IDS].shape[1])
            return run(feeds, names)

        encoder.run = counted
        shipped = pipe.compression
        for _ in range(a.rounds):
            for name, query, order in settings:
                pipe.compression = dataclasses.replace(shipped, ranked_order=order)
                seen.clear()
                t0 = time.perf_counter()
                pipe.prepare(sample.prompt, a.ratio, query)
                times[name].append(time.perf_counter() - t0)
                pipe.compression = shipped
                encoded[name] = sum(seen)
        n_tokens = count([sample.prompt])[0]
    print(f"prepare, {n_tokens} tokens, R={a.ratio:g}, {a.threads} threads")
    for name, ts in times.items():
        print(f"{name:24s} min {min(ts) * 1e3:7.1f} ms  median {np.median(ts) * 1e3:7.1f} ms  "
              f"encoder tokens {encoded[name]}")  # fmt: skip


if __name__ == "__main__":
    main()
