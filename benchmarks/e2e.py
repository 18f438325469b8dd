"""End to end on the deployed runtime: SemToken-compressed (R=2.4) vs full prompt, then the
runtime's generate vs PyTorch eager generate (and Optimum's ORTModelForCausalLM when installed).

Each row is one generation of compress + prefill + N decode tokens (EOS ignored), timed with the
runtime's stage spans; ratios are printed side by side from the same run.

    python benchmarks/e2e.py [--export DIR] [--contexts 2048,4096] [--ratio 2.4]
        [--new-tokens 64] [--provider cpu] [--runs 1] [--baselines torch,torch_bf16,optimum]
        [--genai GENAI_MODEL_DIR] [--json OUT]

Goal (issue 6): >= 2.0x end to end at >= 2.4x token reduction, compression overhead <= 10 % of the
compressed prefill. Without --export, SmolLM2 is exported once into
`semedge.config.cache_dir()/exports/smollm2-<version>` (minutes).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("e2e")


def run_once(
    pipe, prompt: str, ratio: float | None, new_tokens: int, chunk: int | None = None
) -> dict:
    """One timed generation: total wall time and per-stage sums (ms)."""
    from semedge.runtime import GenerationConfig
    from semedge.runtime.trace import StageTimer

    timer = StageTimer()
    cfg = GenerationConfig(
        max_new_tokens=new_tokens, ratio=ratio, ignore_eos=True, prefill_chunk=chunk
    )
    t0 = time.perf_counter()
    gen = pipe.generator(prompt, cfg, timer)
    while not gen.is_done():
        gen.generate_next_token()
    total = (time.perf_counter() - t0) * 1e3
    stage = {s: sum(timer.durations_ms(s)) for s in ("tokenize", "encode", "merge", "prefill")}
    stage["decode"] = sum(timer.durations_ms("decode_token"))
    x = gen.prompts[0]
    return {"total_ms": total, **{f"{k}_ms": v for k, v in stage.items()},
            "tokens": x.prompt_tokens, "positions": len(x.positions),
            "generated": gen.tokens[0]}  # fmt: skip


def _median(rows: list[dict]) -> dict:
    out = dict(rows[0])
    for k in rows[0]:
        if k.endswith("_ms"):
            out[k] = statistics.median(r[k] for r in rows)
    return out


def compressed_vs_full(pipe, contexts, ratio, new_tokens, runs, chunk=None) -> list[dict]:
    from semedge.runtime.profiling import prompt_of_tokens

    rows = []
    for n in contexts:
        prompt = prompt_of_tokens(pipe, n)
        run_once(pipe, prompt, ratio, 2, chunk)  # warm-up (allocations, thread pools)
        full = _median([run_once(pipe, prompt, None, new_tokens, chunk) for _ in range(runs)])
        comp = _median([run_once(pipe, prompt, ratio, new_tokens, chunk) for _ in range(runs)])
        overhead = comp["encode_ms"] + comp["merge_ms"]
        rows.append({
            "context": full["tokens"], "positions": comp["positions"],
            "token_reduction": full["tokens"] / comp["positions"],
            "full_ms": full["total_ms"], "compressed_ms": comp["total_ms"],
            "speedup": full["total_ms"] / comp["total_ms"],
            "prefill_speedup": full["prefill_ms"] / comp["prefill_ms"],
            "full_prefill_ms": full["prefill_ms"], "compressed_prefill_ms": comp["prefill_ms"],
            "compress_overhead_ms": overhead,
            "overhead_pct_of_prefill": 100 * overhead / comp["prefill_ms"],
            "full_decode_ms": full["decode_ms"], "compressed_decode_ms": comp["decode_ms"],
        })  # fmt: skip
        log.info("context %d done", n)
    return rows


def runtime_vs_torch(
    pipe, model_spec: str, context: int, new_tokens: int, bf16: bool = False
) -> dict:
    """Full-prompt greedy generate: semedge runtime vs transformers eager, fp32 or bf16
    (`model.to(torch.bfloat16)`, what a user tries first); same tokens?"""
    import torch

    from semedge.models import load_model
    from semedge.runtime.profiling import prompt_of_tokens

    prompt = prompt_of_tokens(pipe, context)
    rt = run_once(pipe, prompt, None, new_tokens)
    model, tok = load_model(model_spec)
    model = model.to(torch.bfloat16) if bf16 else model
    ids = torch.tensor([pipe.tokenize(prompt).ids])
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    with torch.inference_mode():
        model.generate(ids[:, :32], max_new_tokens=2, do_sample=False)  # warm-up
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        torch_ms = (time.perf_counter() - t0) * 1e3
    same = out[0, ids.shape[1] :].tolist() == rt["generated"]
    return {"context": rt["tokens"], "runtime_ms": rt["total_ms"], "torch_eager_ms": torch_ms,
            "speedup": torch_ms / rt["total_ms"], "same_tokens": same,
            "torch_dtype": "bf16" if bf16 else "fp32"}  # fmt: skip


def runtime_vs_optimum(pipe, context: int, new_tokens: int) -> dict | None:
    """Full-prompt greedy generate: semedge runtime vs Optimum's ORTModelForCausalLM."""
    from semedge.deps import has_module

    if not has_module("optimum.onnxruntime"):
        log.warning("optimum-onnx is not installed: skipping the Optimum comparison")
        return None
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    from semedge.runtime.profiling import prompt_of_tokens

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from optimum_baseline import optimum_export  # the cached optimum-cli export

    model = ORTModelForCausalLM.from_pretrained(optimum_export().parent, use_cache=True)
    prompt = prompt_of_tokens(pipe, context)
    rt = run_once(pipe, prompt, None, new_tokens)
    ids = torch.tensor([pipe.tokenize(prompt).ids])
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    model.generate(ids[:, :32], max_new_tokens=2, do_sample=False)
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    opt_ms = (time.perf_counter() - t0) * 1e3
    same = out[0, ids.shape[1] :].tolist() == rt["generated"]
    return {"context": rt["tokens"], "runtime_ms": rt["total_ms"], "optimum_ms": opt_ms,
            "speedup": opt_ms / rt["total_ms"], "same_tokens": same}  # fmt: skip


def runtime_vs_genai(pipe, genai_dir: Path, context: int, new_tokens: int, ratio: float) -> dict:
    """Greedy generate of `new_tokens` from the same prompt: onnxruntime-genai's own model (its
    model builder's int4/int8 output: `make genai`) on the full prompt, against the runtime on
    the full prompt and at `ratio` (what a user of either would ship)."""
    import numpy as np
    import onnxruntime_genai as og

    from semedge.runtime.profiling import prompt_of_tokens

    model = og.Model(og.Config(str(genai_dir)))
    prompt = prompt_of_tokens(pipe, context)
    ids = np.asarray([pipe.tokenize(prompt).ids], dtype=np.int32)

    def genai_generate(ids: np.ndarray, new: int) -> tuple[float, list[int]]:
        params = og.GeneratorParams(model)
        n = ids.shape[1] + new
        params.set_search_options(max_length=n, min_length=n, do_sample=False)
        t0 = time.perf_counter()
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.generate_next_token()
        ms = (time.perf_counter() - t0) * 1e3
        return ms, list(gen.get_sequence(0))[ids.shape[1] :]

    genai_generate(ids[:, :32], 2)  # warm-up
    genai_ms, genai_tokens = genai_generate(ids, new_tokens)
    full = run_once(pipe, prompt, None, new_tokens)
    comp = run_once(pipe, prompt, ratio, new_tokens)
    pairs = zip(genai_tokens, full["generated"], strict=False)
    agree = next((i for i, (a, b) in enumerate(pairs) if a != b),
                 min(len(genai_tokens), len(full["generated"])))  # fmt: skip
    return {"context": full["tokens"], "genai_model": Path(genai_dir).name,
            "genai_ms": genai_ms, "runtime_ms": full["total_ms"],
            "runtime_compressed_ms": comp["total_ms"], "speedup": genai_ms / full["total_ms"],
            "compressed_speedup": genai_ms / comp["total_ms"],
            "same_first_tokens": agree}  # fmt: skip


def print_tables(rows, baselines, ratio, new_tokens, header) -> None:
    print(f"\n{header}: compress + prefill + {new_tokens} decode tokens, R={ratio}")
    print(f"{'context':>7} {'kept':>5} {'reduct':>6} {'full ms':>9} {'R ms':>9} {'e2e x':>6} "
          f"{'prefill x':>9} {'overhead':>9} {'goal':>5}")  # fmt: skip
    for r in rows:
        ok = (
            r["speedup"] >= 2.0
            and r["token_reduction"] >= 2.4 - 0.005  # round(T / R) positions: 4096 / 1707 = 2.3995
            and r["overhead_pct_of_prefill"] <= 10
        )
        print(f"{r['context']:>7} {r['positions']:>5} {r['token_reduction']:>5.2f}x "
              f"{r['full_ms']:>9.0f} {r['compressed_ms']:>9.0f} {r['speedup']:>5.2f}x "
              f"{r['prefill_speedup']:>8.2f}x {r['overhead_pct_of_prefill']:>8.1f}% "
              f"{'yes' if ok else 'no':>5}")  # fmt: skip
    for b in baselines:
        if "genai_ms" in b:
            print(f"runtime vs onnxruntime-genai {b['genai_model']} (full prompt, {b['context']} "
                  f"tokens): genai {b['genai_ms']:.0f} ms, runtime {b['runtime_ms']:.0f} ms -> "
                  f"{b['speedup']:.2f}x; runtime at R={ratio} {b['runtime_compressed_ms']:.0f} "
                  f"ms -> {b['compressed_speedup']:.2f}x; the first {b['same_first_tokens']} "
                  "tokens agree")  # fmt: skip
            continue
        other = "torch_eager_ms" if "torch_eager_ms" in b else "optimum_ms"
        name = "PyTorch eager" if other == "torch_eager_ms" else "Optimum ORTModelForCausalLM"
        name += f" {b['torch_dtype']}" if "torch_dtype" in b else ""
        print(f"runtime vs {name} (full prompt, {b['context']} tokens): runtime "
              f"{b['runtime_ms']:.0f} ms, {name} {b[other]:.0f} ms -> {b['speedup']:.2f}x; "
              f"same tokens: {b['same_tokens']}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--export", type=Path, default=None, help="export dir (default: SmolLM2, cached)"
    )
    ap.add_argument("--model", default="smollm2", help="model spec for the export and baselines")
    ap.add_argument("--contexts", default="2048,4096")
    ap.add_argument("--ratio", type=float, default=2.4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--provider", default="cpu")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--baselines", default="torch,optimum", help="comma list, or '' for none")
    ap.add_argument("--baseline-context", type=int, default=2048)
    ap.add_argument("--genai", type=Path, default=None,
                    help="an onnxruntime-genai model directory (make genai) as a baseline")  # fmt: skip
    ap.add_argument("--prefill-chunk", type=int, default=None,
                    help="read prompts this many positions at a time (both sides); 0: whole "
                         "prompts [the runtime's default: 512 on long prompts on ORT CPU]")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", stream=sys.stderr)
    from semedge.export import cached_export
    from semedge.runtime import Pipeline
    from semedge.runtime.profiling import device_name

    export = a.export or cached_export(a.model)
    contexts = [int(c) for c in a.contexts.split(",") if c]
    with Pipeline.from_pretrained(export, providers=a.provider) as pipe:
        rows = compressed_vs_full(pipe, contexts, a.ratio, a.new_tokens, a.runs, a.prefill_chunk)
        wanted = {b for b in a.baselines.split(",") if b}
        baselines = []
        cpu = a.provider in ("cpu", "openvino")
        if "torch" in wanted and cpu:
            baselines.append(runtime_vs_torch(pipe, a.model, a.baseline_context, a.new_tokens))
        if "torch_bf16" in wanted and cpu:
            baselines.append(
                runtime_vs_torch(pipe, a.model, a.baseline_context, a.new_tokens, bf16=True)
            )
        if "optimum" in wanted and a.provider == "cpu":
            opt = runtime_vs_optimum(pipe, a.baseline_context, a.new_tokens)
            baselines += [opt] if opt else []
        if a.genai is not None:
            baselines.append(
                runtime_vs_genai(pipe, a.genai, a.baseline_context, a.new_tokens, a.ratio)
            )
    header = f"{device_name(a.provider)} / {a.provider} / {Path(export).name}"
    print_tables(rows, baselines, a.ratio, a.new_tokens, header)
    if a.json:
        from semedge.artifacts import atomic_write_text

        data = {"device": device_name(a.provider), "provider": a.provider, "ratio": a.ratio,
                "new_tokens": a.new_tokens, "prefill_chunk": a.prefill_chunk, "rows": rows,
                "baselines": baselines}  # fmt: skip
        atomic_write_text(a.json, json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
