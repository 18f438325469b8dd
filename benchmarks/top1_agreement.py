"""Top-1 agreement and perplexity against the fp32 export on held-out text, per export (and for
PyTorch's own bf16 model against its fp32 one), on the precision gate's windows of any text.

    python benchmarks/top1_agreement.py --reference EXPORT --text ../shared/data/wikitext-2/valid.txt \
        --windows 32 --exports ALL_INT8,FLOOR [--torch-bf16] [--json OUT]

An export with an fp32 decode fallback (`calibrate int8 --fallback-margin`) is scored with it
and again with it off. Each window prefills 128 tokens and scores the next 32 teacher-forced
through the runtime's prefill and decode graphs (`calibration.quality_gate`, what `export onnx --precision` gates on);
the last `--windows` windows of the text are used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _torch_bf16(model: str, windows: list[np.ndarray], context: int) -> dict:
    """PyTorch eager bf16 against PyTorch fp32 on the same windows (full-sequence logits)."""
    import torch

    from semedge.models import load_model

    lm, _ = load_model(model)
    lm.eval()

    def run() -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate(
                [lm(torch.as_tensor(w[None])).logits[0, context - 1 : -1].float().numpy()
                 for w in windows]
            )  # fmt: skip

    fp32 = run()
    lm.to(torch.bfloat16)
    bf16 = run()
    target = np.concatenate([w[context:] for w in windows])
    return {"export": f"torch-bf16 ({model})", "tokens": int(target.size),
            "top1": float(np.mean(fp32.argmax(-1) == bf16.argmax(-1))),
            "ppl": _ppl(bf16, target), "ppl_reference": _ppl(fp32, target)}  # fmt: skip


def _ppl(z: np.ndarray, target: np.ndarray) -> float:
    z = z.astype(np.float64)
    m = z.max(-1)
    lse = np.log(np.exp(z - m[:, None]).sum(-1)) + m
    return float(np.exp((lse - z[np.arange(target.size), target]).mean()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, required=True, help="the fp32 export")
    ap.add_argument("--text", type=Path, required=True, help="UTF-8 held-out text")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--exports", default="", help="comma list of exports to compare")
    ap.add_argument("--torch-bf16", action="store_true", help="also PyTorch bf16 vs fp32")
    ap.add_argument("--model", default="smollm2", help="model spec for --torch-bf16")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    from semedge.calibration.precision import PrecisionConfig
    from semedge.calibration.quality_gate import held_out_windows, score_pipeline
    from semedge.runtime import Pipeline
    from semedge.textio import read_text_file

    cfg = PrecisionConfig(eval_windows=a.windows)
    text = read_text_file(a.text)
    with Pipeline.from_pretrained(a.reference, providers="cpu") as pipe:
        windows, _ = held_out_windows(pipe.tokenizer, text, cfg)
        ref_nll, ref_arg = score_pipeline(pipe, windows, cfg.eval_context)
    rows = []
    for d in [x for x in a.exports.split(",") if x]:
        with Pipeline.from_pretrained(d, providers="cpu") as pipe:
            margins = [pipe.fallback_margin, 0.0] if pipe.fallback_margin else [0.0]
            for m in margins:  # an export with an fp32 decode fallback: with it, then without
                pipe.fallback_margin = m
                nll, arg = score_pipeline(pipe, windows, cfg.eval_context)
                name = d if m or len(margins) == 1 else f"{d} (fallback off)"
                rows.append({"export": name, "tokens": int(arg.size),
                             "top1": float(np.mean(arg == ref_arg)), "ppl": float(np.exp(nll.mean())),
                             "ppl_reference": float(np.exp(ref_nll.mean()))})  # fmt: skip
    if a.torch_bf16:
        rows.append(_torch_bf16(a.model, windows, cfg.eval_context))
    print("| export | tokens | top-1 vs fp32 | ppl | ppl fp32 |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['export']} | {r['tokens']} | {r['top1']:.4f} | {r['ppl']:.3f} | "
              f"{r['ppl_reference']:.3f} |")  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps({"text": a.text.name, "windows": a.windows, "rows": rows},
                                     indent=1))  # fmt: skip


if __name__ == "__main__":
    from semedge.errors import SemedgeError

    try:
        main()
    except SemedgeError as err:  # bad arguments or data: one line, exit 1
        sys.exit(f"Error: {err}")
