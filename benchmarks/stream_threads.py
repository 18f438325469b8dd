"""Requests/s through `Pipeline.generate` with S concurrent streams on T-thread ONNX Runtime sessions.

What `semedge serve --workers S --threads T` trades: one request on all cores (intra-op threads)
against several requests side by side on one thread each. Each setting loads the export with its
own thread count, warms up, then runs the same requests (prompts of --lengths tokens, alternating,
--new-tokens each, greedy) from S threads sharing one Pipeline.

    python benchmarks/stream_threads.py --export DIR [--settings 2x1,1x2,2x2,1x1] \
        [--lengths 256,1024] [--requests 8] [--new-tokens 16] [--json OUT]

A setting "TxS" is T ONNX Runtime threads per session and S streams.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path


def run_setting(export: Path, threads: int, streams: int, prompts: list[str], new: int) -> dict:
    """One setting: wall time of `prompts` generated from `streams` threads."""
    from semedge.runtime import Pipeline

    with Pipeline.from_pretrained(export, providers="cpu", threads=threads) as pipe:
        for p in prompts[:2]:  # warm-up: arenas and thread pools for both lengths
            pipe.generate(p, max_new_tokens=new)
        work, lock = list(prompts), threading.Lock()

        def stream() -> None:
            while True:
                with lock:
                    if not work:
                        return
                    prompt = work.pop()
                pipe.generate(prompt, max_new_tokens=new)

        t0 = time.perf_counter()
        pool = [threading.Thread(target=stream) for _ in range(streams)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        seconds = time.perf_counter() - t0
    return {"threads": threads, "streams": streams, "requests": len(prompts),
            "seconds": round(seconds, 3), "req_per_s": round(len(prompts) / seconds, 3)}  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--settings", default="2x1,1x2,2x2,1x1", help="THREADSxSTREAMS, comma list")
    ap.add_argument("--lengths", default="256,1024", help="prompt tokens, alternating")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    from semedge.errors import InputError
    from semedge.runtime import Pipeline
    from semedge.runtime.profiling import prompt_of_tokens

    try:
        settings = [tuple(int(x) for x in s.split("x")) for s in a.settings.split(",")]
        lengths = [int(n) for n in a.lengths.split(",")]
    except ValueError:
        raise InputError(f"--settings takes THREADSxSTREAMS items, got {a.settings!r}") from None
    if a.requests < 1 or any(t < 1 or s < 1 for t, s in settings) or any(n < 1 for n in lengths):
        raise InputError("--requests, threads, streams and lengths must be >= 1")
    with Pipeline.from_pretrained(a.export, providers="cpu") as pipe:
        prompts = [prompt_of_tokens(pipe, lengths[i % len(lengths)]) for i in range(a.requests)]
    rows = [run_setting(a.export, t, s, prompts, a.new_tokens) for t, s in settings]
    for r in rows:
        print(f"threads={r['threads']} streams={r['streams']}: {r['requests']} requests in "
              f"{r['seconds']:.2f} s = {r['req_per_s']:.3f} req/s")  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    from semedge.errors import SemedgeError

    try:
        main()
    except SemedgeError as err:
        sys.exit(f"Error: {err}")
