"""Decode cost at long context, side by side: exports whose sliding-window layers keep only their
window (local_kv_slots in the manifest) against exports whose every layer keeps every position,
and the runtime's two KV cache kinds (in place vs ping-pong, `--kv auto,ping-pong`).

For each export, cache kind and context P: a KV cache of P positions (zeros: the cost does not
depend on the values), then `--steps` decode steps through the runtime's decode graph with the
cache bound as the Generator binds it (an in-place cache: bound once, only the token, position
and mask re-bound per step). Prints KV MB and ms/token per row, and the ratio to the first row of
the same context.

    python benchmarks/decode_kv.py --exports OLD_EXPORT,NEW_EXPORT --contexts 2048,8192,16384
    python benchmarks/decode_kv.py --exports EXPORT --contexts 512,2048 --kv auto,ping-pong

Timing only: no token is checked (tests/runtime/test_local_kv.py checks the tokens).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from semedge import constants as C
from semedge.errors import InputError, SemedgeError
from semedge.runtime import Pipeline
from semedge.runtime.generator import step_runner
from semedge.runtime.kv_cache import local_kv
from semedge.runtime.profiling import device_name


def measure(pipe: Pipeline, context: int, steps: int) -> dict:
    cache = pipe.new_cache(1, context + steps + 1)
    cache.length = context
    for view in cache.arrays().values():
        view[...] = 0.0
    mask = np.ones((1, context), dtype=np.int64)
    times, step = [], step_runner(pipe.decode, cache)  # bound as Generator._decode binds it
    for s in range(steps + 1):  # the first step warms the session for this shape
        mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
        feeds = {C.INPUT_IDS: np.array([[5]], dtype=np.int64),
                 C.POSITION_IDS: np.array([[context + s]], dtype=np.int64), C.ATTENTION_MASK: mask}  # fmt: skip
        t0 = time.perf_counter()
        step(feeds)
        cache.advance(1)
        times.append(time.perf_counter() - t0)
    return {"context": context, "kv_cache": "in-place" if cache.shared else "ping-pong",
            "kv_mb": round(cache.nbytes / 2**20, 1), "kv_bytes": cache.nbytes,
            "ms_per_token": round(1000 * statistics.median(times[1:]), 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exports", required=True, help="comma list of export dirs")
    ap.add_argument("--contexts", default="2048,8192,16384")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument(
        "--kv", default="auto", help="comma list: auto (the runtime's choice), ping-pong"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = []
    kinds = args.kv.split(",")
    if set(kinds) - {"auto", "ping-pong"}:
        raise InputError(f"--kv takes auto and ping-pong, got {args.kv!r}")
    for path in args.exports.split(","):
        with Pipeline.from_pretrained(path) as pipe:
            layers, slots = local_kv(pipe.config)
            runtime_choice = pipe.kv_shared
            for kind in kinds:
                pipe.kv_shared = runtime_choice and kind == "auto"
                for ctx in (int(c) for c in args.contexts.split(",")):
                    row = {"export": path, "local_layers": len(layers), "local_slots": slots,
                           **measure(pipe, ctx, args.steps)}  # fmt: skip
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    base: dict[int, dict] = {}
    for r in rows:
        base.setdefault(r["context"], r)
    print(f"\n{device_name('cpu')}\n| export | local layers x slots | KV cache | context | KV MB | "
          "ms/token | vs first |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        b = base[r["context"]]
        print(f"| {r['export']} | {r['local_layers']} x {r['local_slots']} | {r['kv_cache']} | "
              f"{r['context']} | {r['kv_mb']} | {r['ms_per_token']} | "
              f"{b['ms_per_token'] / r['ms_per_token']:.2f}x |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"cpu": device_name("cpu"), "rows": rows}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    try:
        main()
    except SemedgeError as err:
        sys.exit(f"Error: {err}")
