"""`make demo`: SemToken on the embedded SmolLM2 — compress a WikiText-2 article 2.4x and continue it
from the full and from the compressed context, side by side."""

from __future__ import annotations

import logging
import sys
import textwrap
import time
from importlib import resources

RATIO = 2.4
NEW_TOKENS = 40
COL = 46


def side_by_side(left: str, right: str, titles: tuple[str, str]) -> str:
    a = textwrap.wrap(" ".join(left.split()), COL) or [""]
    b = textwrap.wrap(" ".join(right.split()), COL) or [""]
    rows = [f"{titles[0]:<{COL}} | {titles[1]}", f"{'-' * COL}-+-{'-' * COL}"]
    for i in range(max(len(a), len(b))):
        rows.append(f"{(a[i] if i < len(a) else ''):<{COL}} | {b[i] if i < len(b) else ''}")
    return "\n".join(rows)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import torch
    from semedge.compressor import SemTokenCompressor, generate_compressed
    from semedge.models import load_model

    torch.manual_seed(0)
    text = resources.files("semedge").joinpath("assets/sample_article.txt").read_text("utf-8")
    t0 = time.perf_counter()
    model, tok = load_model("smollm2")
    print(f"loaded SmolLM2-135M in {time.perf_counter() - t0:.1f} s")
    comp = SemTokenCompressor(model, tok)
    results = {}
    for name, ratio in (("full", 1.0), ("semtoken", RATIO)):
        t0 = time.perf_counter()
        prompt = comp.compress(text, ratio=ratio)
        t1 = time.perf_counter()
        timings: dict[str, float] = {}
        new = generate_compressed(model, tok, prompt, NEW_TOKENS, timings=timings)
        total = time.perf_counter() - t0
        results[name] = (prompt, tok.decode(new), timings, t1 - t0, total)

    print(f"\nWikiText-2 test article '1933 Treasure Coast hurricane' ({len(text)} chars)")
    print(f"{'context':<10}{'positions':>10}{'ratio':>8}{'compress s':>12}{'prefill s':>11}"
          f"{'decode s':>10}{'total s':>9}")  # fmt: skip
    for name, (prompt, _, tm, comp_s, total) in results.items():
        print(f"{name:<10}{prompt.compressed_tokens:>10}{prompt.stats['ratio']:>8.2f}"
              f"{comp_s:>12.2f}{tm['prefill_ms'] / 1000:>11.2f}{tm['decode_ms'] / 1000:>10.2f}"
              f"{total:>9.2f}")  # fmt: skip
    full, sem = results["full"], results["semtoken"]
    print(f"\nthe article ends: ...{' '.join(text.split()[-25:])}\n")
    titles = (f"full context ({full[0].compressed_tokens} positions)",
              f"SemToken {RATIO}x ({sem[0].compressed_tokens} positions)")  # fmt: skip
    print(side_by_side(full[1], sem[1], titles))


if __name__ == "__main__":
    main()
