"""`make demo`: SemToken on the embedded SmolLM2, on the torch-free runtime users deploy.

Exports SmolLM2 once (parity-gated; cached in ~/.cache/semedge/exports), then does the main
job: a long document and a question, answered from the full context, from SemToken with the
question as its query (4x fewer positions) and from plain truncation to the same budget; then
continues the article from the full and the 2.4x default context side by side, and prints a
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


QUESTION = "Where did the hurricane make landfall in Florida?"
ANSWER_PREFIX = "\n\nQuestion: " + QUESTION + "\nAnswer: The hurricane made landfall at"
QA_RATIO = 4.0


def _timed(pipe, text, **kw):
    from semedge.runtime.trace import StageTimer

    timer = StageTimer()
    t0 = time.perf_counter()
    res = pipe.generate(text, timer=timer, **kw)
    return res, time.perf_counter() - t0


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from semedge.runtime import Pipeline
    from semedge.runtime.profiling import profile_export

    text = resources.files("semedge").joinpath("assets/sample_article.txt").read_text("utf-8")
    from semedge.export import cached_export

    export = cached_export()
    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(export, providers="cpu")
    print(f"loaded {export.name} on the runtime (no torch) in {time.perf_counter() - t0:.1f} s")

    # 1. the main job: a long document and a question, from the full and the compressed context
    doc = text + ANSWER_PREFIX
    runs = {
        "full context": _timed(pipe, doc, max_new_tokens=12),
        f"SemToken {QA_RATIO:g}x + query": _timed(
            pipe, doc, max_new_tokens=12, ratio=QA_RATIO, query=QUESTION
        ),
        f"SemToken {QA_RATIO:g}x, no query": _timed(  # the last paragraph is the implicit query
            pipe, doc, max_new_tokens=12, ratio=QA_RATIO
        ),
        "truncated to the same budget": None,
    }
    n_q = runs[f"SemToken {QA_RATIO:g}x + query"][0].compressed_tokens
    ids = pipe.tokenize(doc).ids
    runs["truncated to the same budget"] = _timed(
        pipe, pipe.decode_tokens(ids[-n_q:]), max_new_tokens=12
    )
    print(f"\nWikiText-2 article '1933 Treasure Coast hurricane' ({len(ids)} tokens) + a question:")
    print(f"  Q: {QUESTION}   (the answer is in the article's first fifth)")
    print(f"{'context':<32}{'positions':>10}{'seconds':>9}  answer")
    for name, (res, secs) in runs.items():
        answer = " ".join(res.text.split())[:60]
        print(f"{name:<32}{res.compressed_tokens:>10}{secs:>9.2f}  ...made landfall at {answer}")

    # 2. continuing the article: full context vs SemToken's defaults (no query)
    full, _ = _timed(pipe, text, max_new_tokens=NEW_TOKENS)
    sem, _ = _timed(pipe, text, max_new_tokens=NEW_TOKENS, ratio=RATIO)
    print(f"\nthe article ends: ...{' '.join(text.split()[-25:])}\n")
    titles = (f"full context ({full.compressed_tokens} positions)",
              f"SemToken {RATIO}x defaults ({sem.compressed_tokens} positions)")  # fmt: skip
    print(side_by_side(full.text, sem.text, titles))

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
