"""`make demo`: SemToken on the embedded SmolLM2, on the torch-free runtime users deploy.

Exports SmolLM2 once (parity-gated; cached in ~/.cache/semedge/exports), then continues a
WikiText-2 article from the full and from the 2.4x-compressed context side by side (default
SemToken, and the shipped MT2ST span adapter with the layout it was trained for), and prints a
short per-stage profile.
"""

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


def cached_export(model: str = "smollm2"):
    """The parity-gated ONNX export of `model`, made once into the semedge cache."""
    from semedge import __version__
    from semedge.config import cache_dir

    out = cache_dir() / "exports" / f"{model}-{__version__}"
    if not (out / "manifest.json").is_file():
        from semedge.export import export_onnx

        print(f"exporting {model} to {out} (once; a few minutes on a laptop CPU) ...", flush=True)
        export_onnx(model, out)
    return out


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from semedge.runtime import Pipeline
    from semedge.runtime.profiling import profile_export
    from semedge.runtime.trace import StageTimer

    text = resources.files("semedge").joinpath("assets/sample_article.txt").read_text("utf-8")
    export = cached_export()
    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(export, providers="cpu")
    print(f"loaded {export.name} on the runtime (no torch) in {time.perf_counter() - t0:.1f} s")
    adapted = pipe.with_adapter("DEFAULT")  # same sessions, numpy span adapter + its layout
    results = {}
    for name, runner, ratio in (("full", pipe, None), ("semtoken", pipe, RATIO),
                                ("+adapter", adapted, RATIO)):  # fmt: skip
        timer = StageTimer()
        t0 = time.perf_counter()
        res = runner.generate(text, max_new_tokens=NEW_TOKENS, ratio=ratio, timer=timer)
        s = {
            k: sum(timer.durations_ms(k)) / 1000
            for k in ("encode", "merge", "prefill", "decode_token")
        }
        results[name] = (res, s, time.perf_counter() - t0)

    print(f"\nWikiText-2 test article '1933 Treasure Coast hurricane' ({len(text)} chars)")
    print(f"{'context':<10}{'positions':>10}{'ratio':>8}{'compress s':>12}{'prefill s':>11}"
          f"{'decode s':>10}{'total s':>9}")  # fmt: skip
    for name, (res, s, total) in results.items():
        print(f"{name:<10}{res.compressed_tokens:>10}{res.token_reduction:>8.2f}"
              f"{s['encode'] + s['merge']:>12.2f}{s['prefill']:>11.2f}{s['decode_token']:>10.2f}"
              f"{total:>9.2f}")  # fmt: skip
    full, sem = results["full"][0], results["semtoken"][0]
    print(f"\nthe article ends: ...{' '.join(text.split()[-25:])}\n")
    titles = (f"full context ({full.compressed_tokens} positions)",
              f"SemToken {RATIO}x ({sem.compressed_tokens} positions)")  # fmt: skip
    print(side_by_side(full.text, sem.text, titles))
    ad = results["+adapter"][0]
    print(f"\nSemToken {RATIO}x + the shipped MT2ST span adapter ({ad.compressed_tokens} positions: "
          "the last 96 % verbatim, the older text in ~60-token spans):")  # fmt: skip
    print(textwrap.fill(" ".join(ad.text.split()), 2 * COL + 3))

    print("\nprofile (semedge profile EXPORT --lengths 1024 --runs 1), p50 ms per stage:")
    rep = profile_export(pipe, lengths=(1024,), ratios=(1.0, RATIO), warmup=0, runs=1,
                         decode_tokens=8)  # fmt: skip
    stages = ("tokenize", "encode", "merge", "prefill", "decode_token")
    print(f"{'ratio':>6}{'positions':>10}" + "".join(f"{s:>14}" for s in stages) + f"{'ttft':>10}")
    for r in rep.runs:
        print(f"{r['ratio']:>6g}{r['compressed_tokens']:>10}"
              + "".join(f"{r['stages'][s]['p50_ms']:>14.1f}" for s in stages)
              + f"{r['ttft_ms']:>10.0f}")  # fmt: skip
    pipe.close()


if __name__ == "__main__":
    main()
