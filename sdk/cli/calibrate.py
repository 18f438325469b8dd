"""`semedge calibrate int8 | fp16 | ratio`: low precision that keeps quality, per-corpus ratios."""

from __future__ import annotations

from pathlib import Path

import click

from semedge.cli.common import echo_json, echo_table
from semedge.config import replace_set

__all__ = ["command"]

_PATH = click.Path(path_type=Path)


@click.group(name="calibrate")
def command() -> None:
    """INT8/FP16 calibration of an export, and compression-ratio calibration on a corpus."""
    from semedge.deps import has_module

    if has_module("onnxruntime"):  # ORT's C++ logger prints graph-cleanup warnings otherwise
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)


@command.command("int8")
@click.argument("onnx_dir", type=_PATH)
@click.argument("out_dir", type=_PATH)
@click.option(
    "--data", type=_PATH, required=True, help="UTF-8 text: head calibrates, tail is held out."
)
@click.option("--samples", type=int, default=None, help="Calibration windows [16].")
@click.option("--seq-len", type=int, default=None, help="Tokens per calibration window [256].")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default=None)
@click.option("--target", type=click.Choice(["ort-cpu", "ort-gpu", "tensorrt"]), default=None)
@click.option("--scheme", type=click.Choice(["auto", "static", "static-sym", "dynamic", "weight-only",
                                            "weight-only-int4"]),
              default=None, help="auto: measure the target's schemes, keep the fastest in budget.")  # fmt: skip
@click.option("--max-ppl-increase", type=float, default=None, help="Percent [3].")
@click.option("--min-top1", type=float, default=None,
              help="Floor on top-1 agreement with fp32 on the held-out windows [0: none].")  # fmt: skip
@click.option("--fallback-margin", "fallback", default=None,
              help="Re-run decode steps whose top-2 logits are closer than this in fp32 "
                   "(decode_exact.onnx): off, auto (the smallest reaching --min-top1, else 0.98) "
                   "or a number [off].")  # fmt: skip
@click.option("--encoder", type=click.Choice(["fp32", "int8"]), default=None,
              help="The SemToken encoder: as exported, or weight-only int8 gated on the spans "
                   "it leads to [fp32].")  # fmt: skip
@click.option("--min-span-agreement", type=float, default=None,
              help="--encoder int8: mean Jaccard of its spans vs fp32's [0.99].")  # fmt: skip
@click.option("--granularity", type=click.Choice(["auto", "role", "layer", "node"]), default=None)
@click.option("--per-channel", is_flag=True, default=None, help="Per-channel weight scales.")
@click.option("--block-size", type=int, default=None,
              help="Weight-only block length: 16, 32, 64, 128 or 256 [32].")  # fmt: skip
@click.option("--eval-windows", type=int, default=None, help="Held-out windows [4].")
@click.option("--eval-context", type=int, default=None, help="Prefill tokens per window [128].")
@click.option("--eval-tokens", type=int, default=None, help="Scored decode tokens per window [32].")
@click.option("--speed-tokens", type=int, default=None, help="Prefill length timed [512].")
@click.option("--graphs", type=click.Choice(["both", "decode"]), default="both",
              help="Quantize both graphs, or only the decode graph (prefill stays as exported).")  # fmt: skip
@click.option(
    "--cache-dir", type=_PATH, default=None, help="Range cache [$SEMEDGE_CACHE/calibration]."
)
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def int8(onnx_dir, out_dir, data, graphs, cache_dir, overwrite, as_json, **opts) -> None:
    """Calibrate ONNX_DIR (fp32 export) to INT8 within a perplexity budget; write OUT_DIR."""
    from semedge.calibration.int8 import Int8Config, calibrate_int8
    from semedge.calibration.schemes import WEIGHT_BITS
    from semedge.constants import DECODE_ONNX

    config = replace_set(Int8Config(), **opts)
    if graphs == "decode":
        config = replace_set(config, graphs=(DECODE_ONNX,))
    report = calibrate_int8(
        onnx_dir, out_dir, data, config, cache_root=cache_dir, overwrite=overwrite
    )
    if as_json:
        echo_json(report.to_dict())
        return
    block = f", blocks of {report.block_size}" if report.block_size else ""
    click.echo(f"{report.scheme} ({report.target}{block}) -> {report.out_dir}")
    quantized = f"int{WEIGHT_BITS.get(report.scheme, 8)}"
    echo_table(["metric", "fp32", quantized, "ratio"], report.rows())
    for name in report.kept_high_precision:
        click.echo(f"kept fp32: {name}: {report.kept_reasons.get(name, '')}")


@command.command("fp16")
@click.argument("onnx_dir", type=_PATH)
@click.argument("out_dir", type=_PATH)
@click.option(
    "--data", type=_PATH, default=None, help="Held-out text for parity [bundled WikiText excerpt]."
)
@click.option("--eval-windows", type=int, default=None, help="Held-out windows [4].")
@click.option("--eval-context", type=int, default=None, help="Prefill tokens per window [128].")
@click.option("--eval-tokens", type=int, default=None, help="Scored decode tokens per window [32].")
@click.option("--min-agreement", type=float, default=None, help="Top-1 agreement gate [0.99].")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def fp16(onnx_dir, out_dir, data, overwrite, as_json, **opts) -> None:
    """Convert ONNX_DIR to fp16 (norms/softmax kept fp32) and report parity vs fp32."""
    from semedge.calibration.fp16 import Fp16Config, convert_fp16

    config = replace_set(Fp16Config(), **opts)
    report = convert_fp16(onnx_dir, out_dir, data, config, overwrite=overwrite)
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(f"fp16 -> {report.out_dir}")
    echo_table(["metric", "value"], report.rows())


@command.command("ratio")
@click.option("--data", type=_PATH, required=True, help="UTF-8 text of the corpus to fit on.")
@click.option("--ratio", type=float, required=True, help="Compression ratio to hold (e.g. 2.4).")
@click.option("-m", "--model", default=None, help="smollm2 or a model dir [smollm2].")
@click.option("--export-dir", type=_PATH, default=None, help="Export to fit with (left unchanged).")
@click.option("--out", type=_PATH, required=True, help="Where the CompressionConfig JSON goes.")
@click.option("--out-dir", type=_PATH, default=None,
              help="Write a NEW export directory: --export-dir with the fitted config.")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace --out-dir if it exists.")
@click.option("--chunk-tokens", type=int, default=None, help="Prompt length to fit for [512].")
@click.option("--prompts", type=int, default=None, help="Fit prompts [64].")
@click.option("--test-prompts", type=int, default=None, help="Held-out prompts [32].")
@click.option("--held-out", type=float, default=None, help="Fraction of --data held out [0.25].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def ratio(data, ratio, model, export_dir, out, out_dir, overwrite, as_json, **opts) -> None:
    """Fit the compressor's threshold so prompts like --data land at --ratio without a search."""
    from semedge.calibration.ratio import RatioConfig, calibrate_ratio

    config = replace_set(RatioConfig(ratio=ratio), **opts)
    report = calibrate_ratio(data, config, out, model=model, export_dir=export_dir,
                             out_dir=out_dir, overwrite=overwrite)  # fmt: skip
    if as_json:
        echo_json(report.to_dict())
        return
    echo_table(["ratio calibration", "value"], report.rows())
    click.echo(f"wrote {report.out}" + (f" and {report.out_dir}" if report.out_dir else ""))
