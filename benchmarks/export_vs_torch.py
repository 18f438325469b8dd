"""semedge's ONNX export on ONNX Runtime (CPU) versus PyTorch eager, side by side in one run.

    python benchmarks/export_vs_torch.py EXPORT_DIR [-m smollm2] [--lengths 512,1024,2048,4096]
        [--decode-tokens 32] [--repeats 3] [--threads N] [--optimum] [--json]
        [--torch-bf16] [--torch-int8] [--openvino PLAIN_EXPORT_DIR] [--ov-precision bf16]
        [--genai GENAI_MODEL_DIR] [--smoke]

Extra columns: PyTorch eager bf16 (`model.to(torch.bfloat16)`), PyTorch dynamic int8
(`torch.ao.quantization.quantize_dynamic`), semedge's `--attention plain` export on the runtime's
OpenVINO provider, and onnxruntime-genai's model (its own model builder's output). A baseline that
cannot run here is skipped with a printed reason. `--smoke`: tiny lengths, one repeat, 2 decode
tokens (the test suite runs it on the tiny model; no timing is asserted).

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

    capacity = 512  # decode steps the KV cache reserves after each prefill

    def __init__(self, export_dir: Path, threads: int | None = None, name: str = "semedge") -> None:
        from semedge.runtime import Pipeline

        self.name = name
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


class TorchBf16Runner(TorchRunner):
    """PyTorch eager in bf16: what a user tries first (`model.to(torch.bfloat16)`)."""

    name = "torch_bf16"

    def __init__(self, base: TorchRunner) -> None:
        import copy

        import torch

        self.model = copy.deepcopy(base.model).to(torch.bfloat16)
        self.tokenizer = base.tokenizer

    def prefill(self, ids: np.ndarray):
        import torch

        with torch.no_grad():
            out = self.model(torch.from_numpy(ids), use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float().numpy(), out.past_key_values

    def decode(self, token: int, position: int, past):
        import torch

        with torch.no_grad():
            out = self.model(
                torch.tensor([[token]]), position_ids=torch.tensor([[position]]),
                past_key_values=past, use_cache=True,
            )  # fmt: skip
        return out.logits[:, -1].float().numpy(), out.past_key_values


class TorchInt8Runner(TorchRunner):
    """PyTorch's own dynamic int8 (nn.Linear weights int8, activations quantized per batch)."""

    name = "torch_int8"

    def __init__(self, base: TorchRunner) -> None:
        import copy

        import torch

        self.model = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(base.model), {torch.nn.Linear}, dtype=torch.qint8
        )
        self.tokenizer = base.tokenizer


class OpenVinoRunner(SemedgeRunner):
    """semedge's plain-attention export on the runtime's OpenVINO provider (bf16 on AMX)."""

    def __init__(self, export_dir: Path, threads: int, precision: str = "bf16") -> None:
        import tokenizers

        from semedge import constants as C
        from semedge.artifacts import load_manifest
        from semedge.runtime import Pipeline
        from semedge.runtime.backends.providers import openvino_backends

        self.name = f"openvino_{precision}"
        manifest = load_manifest(export_dir)
        manifest.config = {**manifest.config, "precision": precision}  # as --precision records it
        backends = openvino_backends(Path(export_dir), manifest, threads)
        for b in backends.values():
            b.load()
        tok = tokenizers.Tokenizer.from_file(str(Path(export_dir) / C.TOKENIZER_JSON))
        self.pipe = Pipeline(Path(export_dir), manifest, tok, backends)


DECODE_ROOM = 1024  # tokens a genai generator may add after its prompt (decode_tokens_per_s)


class GenaiRunner:
    """onnxruntime-genai's own model (its model builder's CPU int4/int8 output of the same LM)."""

    name = "genai"

    def __init__(self, model_dir: Path, threads: int) -> None:
        import onnxruntime_genai as og

        self.og = og
        cfg = og.Config(str(model_dir))
        self.model = og.Model(cfg)
        self.threads = threads

    def _generator(self, ids: np.ndarray, new: int):
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=int(ids.shape[1]) + new, do_sample=False)
        gen = og.Generator(self.model, params)
        gen.append_tokens(ids.astype(np.int32))
        return gen

    def prefill(self, ids: np.ndarray):
        gen = self._generator(ids, DECODE_ROOM)  # room for the decode steps that follow
        return np.asarray(gen.get_logits(), np.float32).reshape(-1)[None], gen

    def decode(self, token: int, position: int, past):
        past.append_tokens(np.array([[token]], np.int32))
        return np.asarray(past.get_logits(), np.float32).reshape(-1)[None], past


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
    skipped = {}
    extra = [
        ("torch_bf16", args.torch_bf16, lambda: TorchBf16Runner(runners[0])),
        ("torch_int8", args.torch_int8, lambda: TorchInt8Runner(runners[0])),
        ("openvino", args.openvino, lambda: OpenVinoRunner(Path(args.openvino), threads,
                                                           args.ov_precision)),
        ("genai", args.genai, lambda: GenaiRunner(Path(args.genai), threads)),
    ]  # fmt: skip
    for i, d in enumerate(x for x in (args.calibrated or "").split(",") if x):
        name = "calibrated" if i == 0 else f"calibrated_{Path(d).name}"
        extra.append((name, d, lambda d=d, name=name: SemedgeRunner(Path(d), threads, name)))
    for name, wanted, make in extra:
        if not wanted:
            continue
        try:
            runner = make()
            runner.prefill(text_ids(runners[0].tokenizer, 8))  # proves it runs here
            runners.append(runner)
        except Exception as err:  # any engine failing to start is a skip with its reason
            skipped[name] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"
            print(f"skipping {name}: {skipped[name]}", file=sys.stderr)
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
        gflop = prefill_gflop(runners[0].model.config, n)
        for r in runners:
            row[f"{r.name}_gflops"] = gflop / secs[r.name]
        rows.append(row)
    peaks = matmul_peaks(threads) if args.peak else {}
    ids = text_ids(tok, args.decode_prompt)
    decode = {"prompt_tokens": args.decode_prompt, "steps": args.decode_tokens}
    tokens = {}
    for r in runners:
        decode_tokens_per_s(r, ids, 4)  # warm-up
    for _ in range(args.decode_repeats):  # rounds alternate the runners; each keeps its best
        for r in runners:
            tok_s, tokens[r.name] = decode_tokens_per_s(r, ids, args.decode_tokens)
            decode[f"{r.name}_tok_s"] = max(decode.get(f"{r.name}_tok_s", 0.0), tok_s)
    decode["rounds"] = args.decode_repeats
    for r in others:
        decode[f"vs_{r.name}"] = decode["semedge_tok_s"] / decode[f"{r.name}_tok_s"]
        decode[f"same_greedy_tokens_{r.name}"] = tokens[r.name] == tokens["semedge"]
    return {"threads": threads, "backends": [r.name for r in runners], "prefill": rows,
            "decode": decode, "skipped": skipped, "load": _load(), "peaks": peaks}  # fmt: skip


def prefill_gflop(config, tokens: int) -> float:
    """Matrix FLOPs of one prefill: 2 x weights x T for the layers' GEMMs plus causal attention
    (QK^T and PV: 2 x 2 x T^2/2 x heads x head_dim per layer) and the last position's LM head."""
    L, D, H = config.num_hidden_layers, config.hidden_size, config.num_attention_heads
    hd = getattr(config, "head_dim", None) or D // H
    kv = config.num_key_value_heads
    per_layer = D * (H + 2 * kv) * hd + H * hd * D + 3 * D * config.intermediate_size
    gemm = 2.0 * L * per_layer * tokens
    attn = 2.0 * L * H * hd * tokens * tokens  # 2 GEMMs x 2 FLOPs x T^2/2 (causal)
    return (gemm + attn + 2.0 * D * config.vocab_size) / 1e9


def matmul_peaks(threads: int, n: int = 2048) -> dict[str, float]:
    """Measured GFLOP/s of a (n x 576) @ (576 x 1536) torch matmul: fp32 (FMA) and bf16 (AMX /
    AVX512-BF16 where present), best of 5; the engines' practical peaks on this shape."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, 576, dtype=dt), torch.randn(576, 1536, dtype=dt)
        a @ b
        best = min(_timed(lambda a=a, b=b: a @ b) for _ in range(5))
        out[name] = 2.0 * n * 576 * 1536 / best / 1e9
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _load() -> str:
    import os

    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def print_table(res: dict) -> None:
    names = res["backends"]
    others = [n for n in names if n != "semedge"]
    print(f"threads={res['threads']}, load {res['load']}; speed-up = other backend's time / "
          "semedge ORT time")  # fmt: skip
    head = ["tokens", *(f"{n} s" for n in names), *(f"vs {n}" for n in others)]
    head += [f"max|dlogits| {n}" for n in others]
    print(" | ".join(head))
    for r in res["prefill"]:
        cells = [str(r["tokens"]), *(f"{r[n + '_s']:.3f}" for n in names)]
        cells += [f"{r['vs_' + n]:.2f}x" for n in others]
        cells += [f"{r['max_abs_dlogits_' + n]:.1e}" for n in others]
        print(" | ".join(cells))
    print("prefill GFLOP/s: " + "; ".join(
        f"{r['tokens']}: " + ", ".join(f"{n} {r[n + '_gflops']:.0f}" for n in names)
        for r in res["prefill"]))  # fmt: skip
    if res["peaks"]:
        print("measured matmul peaks (GFLOP/s): "
              + ", ".join(f"{k} {v:.0f}" for k, v in res["peaks"].items()))  # fmt: skip
    for name, why in res["skipped"].items():
        print(f"skipped {name}: {why}")
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
    p.add_argument("--torch-bf16", action="store_true", help="add PyTorch eager bf16")
    p.add_argument("--torch-int8", action="store_true", help="add PyTorch dynamic int8")
    p.add_argument("--openvino", metavar="PLAIN_EXPORT", help="add this --attention plain export "
                   "on the OpenVINO provider")  # fmt: skip
    p.add_argument("--ov-precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--genai", metavar="DIR", help="add an onnxruntime-genai model directory")
    p.add_argument("--calibrated", metavar="DIR[,DIR]", help="add calibrated copies of the "
                   "export (`semedge calibrate int8|fp16`) on the same runtime")  # fmt: skip
    p.add_argument("--decode-prompt", type=int, default=512)
    p.add_argument("--decode-repeats", type=int, default=1,
                   help="decode rounds, runners alternating; best tok/s of each")  # fmt: skip
    p.add_argument("--peak", action="store_true", help="measure fp32/bf16 matmul GFLOP/s peaks")
    p.add_argument("--smoke", action="store_true", help="tiny lengths, 1 repeat, 2 decode tokens")
    args = p.parse_args(argv)
    args.lengths = [int(x) for x in args.lengths.split(",")]
    if args.smoke:
        args.lengths, args.repeats, args.decode_tokens, args.decode_prompt = [16], 1, 2, 16
    res = run(args)
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
    else:
        print_table(res)


if __name__ == "__main__":
    main()
