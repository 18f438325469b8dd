"""semedge's ONNX export on ONNX Runtime (CPU) versus PyTorch eager, side by side in one run.

    python benchmarks/export_vs_torch.py EXPORT_DIR [-m smollm2] [--lengths 512,1024,2048,4096]
        [--decode-tokens 32] [--repeats 3] [--threads N] [--optimum] [--json]

Prefill: best of `repeats` wall times per length, the two backends interleaved (so a noisy
neighbour hurts both alike); ratio = torch seconds / semedge seconds (> 1: the export is faster).
Decode: greedy tokens/s after a 512-token prompt; the semedge side is the runtime itself
(`Generator.append_prompts` / `append_tokens`). Both sides compute logits for the last position
only (torch: `logits_to_keep=1`), as generation does. One function per backend (`*_runner`):
benchmarks/optimum_baseline.py adds the Optimum column with the same runner interface.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

TEXT_REPEAT = (
    "The history of the valley begins with farming villages along the river. In 1871 a railway "
    "reached the town, and within twenty years its population had tripled. Engineers built a "
    "bridge, a mill and a school; the mill burned down in 1903 and was rebuilt the next spring. "
)


class TorchRunner:
    """PyTorch eager (the Hugging Face model, DynamicCache), last-position logits only."""

    name = "torch"

    def __init__(self, model_spec: str) -> None:
        from semedge.models import load_model

        self.model, self.tokenizer = load_model(model_spec)

    def prefill(self, ids: np.ndarray):
        import torch

        with torch.no_grad():
            out = self.model(torch.from_numpy(ids), use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].numpy(), out.past_key_values

    def decode(self, token: int, position: int, past):
        import torch

        with torch.no_grad():
            out = self.model(
                torch.tensor([[token]]), position_ids=torch.tensor([[position]]),
                past_key_values=past, use_cache=True,
            )  # fmt: skip
        return out.logits[:, -1].numpy(), out.past_key_values


class SemedgeRunner:
    """semedge's export through its runtime (Pipeline + Generator: I/O-bound KV cache), ORT CPU."""

    name = "semedge"
    capacity = 512  # decode steps the KV cache reserves after each prefill

    def __init__(self, export_dir: Path, threads: int | None = None) -> None:
        from semedge.runtime import Pipeline

        self.pipe = Pipeline.from_pretrained(export_dir, providers="cpu", threads=threads)

    def prefill(self, ids: np.ndarray):
        from semedge.runtime import GenerationConfig, Generator
        from semedge.runtime.pipeline import PreparedPrompt

        row = ids[0]
        prompt = PreparedPrompt(
            row, self.pipe.embed(row), np.arange(len(row), dtype=np.int64), None
        )
        gen = Generator(self.pipe, GenerationConfig(max_new_tokens=self.capacity))
        logits = gen.append_prompts([prompt])
        return logits[:, -1], gen  # the Generator holds the KV cache

    def decode(self, token: int, position: int, past):
        return past.append_tokens(np.array([token]))[:, -1], past  # positions tracked by `past`


def torch_runner(model_spec: str, threads: int) -> TorchRunner:
    import torch

    torch.set_num_threads(threads)
    return TorchRunner(model_spec)


def semedge_runner(export_dir: Path, threads: int) -> SemedgeRunner:
    return SemedgeRunner(export_dir, threads)


def text_ids(tokenizer, n: int) -> np.ndarray:
    ids = tokenizer(TEXT_REPEAT * (n // 40 + 2), add_special_tokens=False)["input_ids"]
    return np.asarray(ids[:n], dtype=np.int64)[None]


def prefill_seconds(runners: list, ids: np.ndarray, repeats: int) -> dict[str, float]:
    """Best wall time per runner; runners alternate within each repeat."""
    best = {r.name: float("inf") for r in runners}
    for r in runners:  # warm-up (ORT allocates its arena on the first run of a shape)
        r.prefill(ids)
    for _ in range(repeats):
        for r in runners:
            t0 = time.perf_counter()
            r.prefill(ids)
            best[r.name] = min(best[r.name], time.perf_counter() - t0)
    return best


def decode_tokens_per_s(runner, ids: np.ndarray, steps: int) -> tuple[float, list[int]]:
    """Greedy-decode `steps` tokens after prefilling `ids`."""
    logits, past = runner.prefill(ids)
    tokens = [int(logits[0].argmax())]
    t0 = time.perf_counter()
    for i in range(steps):
        logits, past = runner.decode(tokens[-1], ids.shape[1] + i, past)
        tokens.append(int(logits[0].argmax()))
    return steps / (time.perf_counter() - t0), tokens


def optimum_runner(model_spec: str, threads: int):
    """The Optimum export of the same model (benchmarks/optimum_baseline.py, cached)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import optimum_baseline

    model_dir = None if model_spec == "smollm2" else Path(model_spec)
    return optimum_baseline.optimum_runner(model_dir, threads)


def run(args: argparse.Namespace) -> dict:
    import os

    threads = args.threads or os.cpu_count() or 1
    runners = [torch_runner(args.model, threads), semedge_runner(Path(args.export_dir), threads)]
    if args.optimum:
        runners.append(optimum_runner(args.model, threads))
    tok, ours = runners[0].tokenizer, runners[1]
    others = [r for r in runners if r is not ours]
    rows = []
    for n in args.lengths:
        ids = text_ids(tok, n)
        secs = prefill_seconds(runners, ids, args.repeats)
        row = {"tokens": n, **{f"{k}_s": v for k, v in secs.items()}}
        ref = ours.prefill(ids)[0]
        for r in others:  # ratio > 1: semedge is faster; logits compared at the last position
            row[f"vs_{r.name}"] = secs[r.name] / secs["semedge"]
            row[f"max_abs_dlogits_{r.name}"] = float(np.abs(r.prefill(ids)[0] - ref).max())
        rows.append(row)
    ids = text_ids(tok, 512)
    decode = {"prompt_tokens": 512, "steps": args.decode_tokens}
    tokens = {}
    for r in runners:
        decode_tokens_per_s(r, ids, 4)  # warm-up
        decode[f"{r.name}_tok_s"], tokens[r.name] = decode_tokens_per_s(r, ids, args.decode_tokens)
    for r in others:
        decode[f"vs_{r.name}"] = decode["semedge_tok_s"] / decode[f"{r.name}_tok_s"]
        decode[f"same_greedy_tokens_{r.name}"] = tokens[r.name] == tokens["semedge"]
    return {"threads": threads, "backends": [r.name for r in runners], "prefill": rows,
            "decode": decode}  # fmt: skip


def print_table(res: dict) -> None:
    names = res["backends"]
    others = [n for n in names if n != "semedge"]
    print(f"threads={res['threads']}; speed-up = other backend's time / semedge ORT time")
    head = ["tokens", *(f"{n} s" for n in names), *(f"vs {n}" for n in others)]
    head += [f"max|dlogits| {n}" for n in others]
    print(" | ".join(head))
    for r in res["prefill"]:
        cells = [str(r["tokens"]), *(f"{r[n + '_s']:.3f}" for n in names)]
        cells += [f"{r['vs_' + n]:.2f}x" for n in others]
        cells += [f"{r['max_abs_dlogits_' + n]:.1e}" for n in others]
        print(" | ".join(cells))
    d = res["decode"]
    print(f"decode after {d['prompt_tokens']} tokens, {d['steps']} steps (tok/s): "
          + ", ".join(f"{n} {d[n + '_tok_s']:.1f}" for n in names) + "; "
          + ", ".join(f"vs {n} {d['vs_' + n]:.2f}x (same tokens: "
                      f"{d['same_greedy_tokens_' + n]})" for n in others))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export_dir")
    p.add_argument("-m", "--model", default="smollm2")
    p.add_argument("--lengths", default="512,1024,2048,4096")
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--optimum", action="store_true", help="add Optimum's export (optimum-onnx)")
    args = p.parse_args(argv)
    args.lengths = [int(x) for x in args.lengths.split(",")]
    res = run(args)
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
    else:
        print_table(res)


if __name__ == "__main__":
    main()
