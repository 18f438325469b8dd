"""Chunked prefill vs the whole prompt in one call, side by side on one export.

For each prompt length, the same prepared prompt is prefilled (Generator.append_prompts, the
runtime's own path) whole and with each --chunks size, the sizes alternating within every round;
the best of --rounds per setting is kept. Prints seconds and the speed ratio against the whole
prompt, checks that every setting picks the same next token, and writes --json.

    python benchmarks/prefill_chunks.py [--export DIR] --lengths 1024,2048,4096 --chunks 256,512,1024
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


def measure(pipe, n: int, chunks: list[int], rounds: int) -> dict:
    from semedge.runtime import GenerationConfig
    from semedge.runtime.generator import Generator
    from semedge.runtime.profiling import prompt_of_tokens

    prompt = pipe.prepare(prompt_of_tokens(pipe, n))
    best: dict[int, float] = {}
    tokens: dict[int, int] = {}
    for _ in range(rounds):
        for c in chunks:
            gen = Generator(pipe, GenerationConfig(max_new_tokens=1, prefill_chunk=c))
            t0 = time.perf_counter()
            logits = gen.append_prompts([prompt])
            best[c] = min(best.get(c, float("inf")), time.perf_counter() - t0)
            tokens[c] = int(logits[0, -1].argmax())
    whole = best[0]
    return {
        "tokens": len(prompt.positions),
        "whole_s": whole,
        "chunked": [
            {"chunk": c, "seconds": best[c], "speedup": whole / best[c]} for c in chunks if c
        ],  # fmt: skip
        "same_next_token": len(set(tokens.values())) == 1,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", type=Path, default=None, help="export dir [SmolLM2, cached]")
    ap.add_argument("--lengths", default="1024,2048,4096")
    ap.add_argument("--chunks", default="256,512,1024")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from semedge.export import cached_export
    from semedge.runtime import Pipeline
    from semedge.runtime.profiling import device_name

    lengths = [int(x) for x in a.lengths.split(",") if x]
    chunks: list[int] = [0, *(int(x) for x in a.chunks.split(",") if x)]  # 0: the whole prompt
    export = a.export or cached_export()
    rows = []
    with Pipeline.from_pretrained(export, providers="cpu", threads=a.threads) as pipe:
        for n in lengths:
            row = measure(pipe, n, chunks, a.rounds)
            rows.append(row)
            cells = " | ".join(
                f"{c['seconds']:.3f} s ({c['speedup']:.2f}x)" for c in row["chunked"]
            )
            print(f"| {row['tokens']} | {row['whole_s']:.3f} s | {cells} | {row['same_next_token']} |",
                  flush=True)  # fmt: skip
    print(
        f"({device_name('cpu')}; columns: whole prompt, then chunks {a.chunks}; best of "
        f"{a.rounds} alternating rounds; last column: every setting picks the same next token)"
    )
    if a.json:
        from semedge.artifacts import atomic_write_text

        data = {
            "device": device_name("cpu"),
            "export": str(export),
            "rounds": a.rounds,
            "rows": rows,
        }
        atomic_write_text(a.json, json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
