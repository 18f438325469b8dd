"""semedge's ONNX export on ONNX Runtime (CPU) versus PyTorch eager, side by side in one run.

    python benchmarks/export_vs_torch.py EXPORT_DIR [-m smollm2] [--lengths 512,1024,2048,4096]
        [--decode-tokens 32] [--repeats 3] [--threads N] [--json]

Prefill: best of `repeats` wall times per length, the two backends interleaved (so a noisy
neighbour hurts both alike); ratio = torch seconds / semedge seconds (> 1: the export is faster).
Decode: greedy tokens/s after a 512-token prompt. Both sides compute logits for the last position
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
    """semedge's export: embed.onnx + prefill.onnx, then decode.onnx, ORT CPU, level ALL."""

    name = "semedge"

    def __init__(self, export_dir: Path, threads: int | None = None) -> None:
        from semedge import constants as C
        from semedge.artifacts import load_manifest
        from semedge.export.graphs import past_names
        from semedge.export.optimize import session_from_path

        self.C = C
        cfg = load_manifest(export_dir).config
        self.past = past_names(cfg["num_layers"])
        self.embed = session_from_path(export_dir / C.EMBED_ONNX, threads)
        self.prefill_s = session_from_path(export_dir / C.PREFILL_ONNX, threads)
        self.decode_s = session_from_path(export_dir / C.DECODE_ONNX, threads)

    def prefill(self, ids: np.ndarray):
        C = self.C
        emb = self.embed.run(None, {C.INPUT_IDS: ids})[0]
        pos = np.arange(ids.shape[1], dtype=np.int64)[None]
        feeds = {C.INPUTS_EMBEDS: emb, C.POSITION_IDS: pos, C.ATTENTION_MASK: np.ones_like(ids)}
        out = self.prefill_s.run(None, feeds)
        return out[0][:, -1], out[1:]

    def decode(self, token: int, position: int, past):
        C = self.C
        feeds = {
            C.INPUT_IDS: np.array([[token]], np.int64),
            C.POSITION_IDS: np.array([[position]], np.int64),
            C.ATTENTION_MASK: np.ones((1, past[0].shape[2] + 1), np.int64),
            **dict(zip(self.past, past, strict=True)),
        }
        out = self.decode_s.run(None, feeds)
        return out[0][:, -1], out[1:]


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


def run(args: argparse.Namespace) -> dict:
    import os

    threads = args.threads or os.cpu_count() or 1
    runners = [torch_runner(args.model, threads), semedge_runner(Path(args.export_dir), threads)]
    if getattr(args, "optimum", False):  # third column: benchmarks/optimum_baseline.py
        from optimum_baseline import optimum_runner  # benchmarks/ is sys.path[0] for this script

        runners.append(optimum_runner(threads=threads))
    tok = runners[0].tokenizer
    rows = []
    for n in args.lengths:
        ids = text_ids(tok, n)
        secs = prefill_seconds(runners, ids, args.repeats)
        logit_diff = float(np.abs(runners[0].prefill(ids)[0] - runners[1].prefill(ids)[0]).max())
        rows.append({"tokens": n, **{f"{k}_s": v for k, v in secs.items()},
                     "ratio": secs["torch"] / secs["semedge"], "max_abs_dlogits": logit_diff})  # fmt: skip
        if "optimum" in secs:  # ratio = Optimum time / semedge time; logits semedge vs Optimum
            opt_diff = np.abs(runners[2].prefill(ids)[0] - runners[1].prefill(ids)[0]).max()
            rows[-1].update(ratio_optimum=secs["optimum"] / secs["semedge"],
                            max_abs_dlogits_optimum=float(opt_diff))  # fmt: skip
    ids = text_ids(tok, 512)
    tps = {}
    for r in runners:
        decode_tokens_per_s(r, ids, 4)  # warm-up
        tps[r.name], toks = decode_tokens_per_s(r, ids, args.decode_tokens)
        tps[r.name + "_tokens"] = toks
    opt_tokens, sem_tokens = tps.pop("optimum_tokens", None), tps["semedge_tokens"]
    same = tps.pop("torch_tokens") == tps.pop("semedge_tokens")
    decode = {"prompt_tokens": 512, "steps": args.decode_tokens, "torch_tok_s": tps["torch"],
              "semedge_tok_s": tps["semedge"], "ratio": tps["semedge"] / tps["torch"],
              "same_greedy_tokens": same}  # fmt: skip
    if opt_tokens is not None:
        decode.update(optimum_tok_s=tps["optimum"], ratio_optimum=tps["semedge"] / tps["optimum"],
                      same_greedy_tokens_optimum=opt_tokens == sem_tokens)  # fmt: skip
    return {"threads": threads, "prefill": rows, "decode": decode}


def print_table(res: dict) -> None:
    print(f"prefill (threads={res['threads']}; ratio = torch time / semedge ORT time)")
    print(f"{'tokens':>7} {'torch s':>9} {'semedge s':>10} {'ratio':>6} {'max|dlogits|':>13}")
    for r in res["prefill"]:
        print(f"{r['tokens']:>7} {r['torch_s']:>9.3f} {r['semedge_s']:>10.3f} "
              f"{r['ratio']:>5.2f}x {r['max_abs_dlogits']:>13.2e}")  # fmt: skip
    if "ratio_optimum" in res["prefill"][0]:
        print("vs Optimum (ratio = Optimum ORT time / semedge ORT time)")
        for r in res["prefill"]:
            print(f"{r['tokens']:>7} optimum {r['optimum_s']:>9.3f}s  {r['ratio_optimum']:>5.2f}x "
                  f"max|dlogits| vs Optimum {r['max_abs_dlogits_optimum']:.2e}")  # fmt: skip
    d = res["decode"]
    print(
        f"decode after {d['prompt_tokens']} tokens, {d['steps']} steps: torch "
        f"{d['torch_tok_s']:.1f} tok/s, semedge {d['semedge_tok_s']:.1f} tok/s, "
        f"ratio {d['ratio']:.2f}x, same greedy tokens: {d['same_greedy_tokens']}"
    )
    if "optimum_tok_s" in d:
        print(f"decode vs Optimum: optimum {d['optimum_tok_s']:.1f} tok/s, semedge/optimum "
              f"{d['ratio_optimum']:.2f}x, same greedy tokens: {d['same_greedy_tokens_optimum']}")  # fmt: skip


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
