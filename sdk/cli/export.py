"""`semedge export`: `onnx` here; `parity` from semedge.cli.export_parity; `check-trt`, `trt`,
`triton` from semedge.cli.export_trt."""

from __future__ import annotations

import click

from semedge.cli.export_parity import parity
from semedge.cli.export_trt import check_trt, triton, trt

__all__ = ["command"]


@click.group(name="export")
def command() -> None:
    """Export to ONNX (with a parity gate), TensorRT engines, Triton repositories."""


def _lengths(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    from semedge.errors import InputError

    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        msg = f"--parity-lengths wants comma-separated token counts like 16,512, got {text!r}"
        raise InputError(msg) from None


@command.command(name="onnx")
@click.option(
    "-m",
    "--model",
    "model",
    default="smollm2",
    show_default=True,
    help="'smollm2', 'gemma3-270m' or a local Hugging Face causal-LM directory.",
)
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--adapter", type=click.Path(), help="MT2ST span-adapter directory to ship.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), help="Weights/activations (fp32).")
@click.option("--opset", type=int, help="ONNX opset, 14..20 (17).")
@click.option("--max-context", type=int, help="Declared context in tokens (the model's limit).")
@click.option(
    "--atol", type=float, help="Parity budget on |dlogits| and |dKV| (fp32 1e-3, fp16 0.25)."
)
@click.option("--full-logits", is_flag=True, default=None, help="Prefill returns (B,T,V) logits.")
@click.option(
    "--attention",
    type=click.Choice(["fused", "plain"]),
    help="fused: ORT GroupQueryAttention (fast on CPU); plain: standard ONNX ops.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "fp16", "bf16", "int8"]),
    help="Behind a quality gate: fp16, int8 (dynamic, per-channel, sensitive layers fp32), "
    "bf16 (OpenVINO on AMX/AVX512-BF16), auto (the fastest that passes, measured here).",
)
@click.option("--quality-data", type=click.Path(dir_okay=False), help="Held-out text for the gate "
              "[the bundled WikiText-2 excerpt].")  # fmt: skip
@click.option("--max-ppl-increase", type=float, help="Gate: perplexity budget, percent [1].")
@click.option("--min-top1", type=float, help="Gate: top-1 agreement with fp32 [0.98].")
@click.option("--parity-lengths", help="Prompt lengths the gate checks, e.g. 16,512,4096.")
@click.option("--no-validate", is_flag=True, help="Skip the parity gate.")
@click.option("--overwrite", is_flag=True, default=None, help="Replace an existing OUT_DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def onnx_command(model, out_dir, adapter, dtype, opset, max_context, atol, full_logits,
                 attention, precision, quality_data, max_ppl_increase, min_top1, parity_lengths,
                 no_validate, overwrite, as_json) -> None:  # fmt: skip
    """Export MODEL to OUT_DIR: embed, encoder, prefill, decode graphs + tokenizer + manifest."""
    if precision is not None:
        from semedge.calibration.precision import check_precision

        check_precision(precision, attention, dtype)  # before any heavy work
    elif quality_data or max_ppl_increase is not None or min_top1 is not None:
        from semedge.errors import InputError

        raise InputError("--quality-data/--max-ppl-increase/--min-top1 set the --precision gate; "
                         "pass --precision too")  # fmt: skip
    from semedge.cli.common import echo_json, echo_table
    from semedge.config import replace_set
    from semedge.errors import AccuracyError
    from semedge.export import ExportConfig, ParityConfig, export_onnx
    from semedge.export.parity import ParityReport

    cfg = replace_set(
        ExportConfig(), dtype=dtype, opset=opset, max_context=max_context, atol=atol,
        full_logits=full_logits, attention=attention, adapter=adapter, overwrite=overwrite,
        validate=False if no_validate else None,
        parity=ParityConfig(lengths=_lengths(parity_lengths)),
    )  # fmt: skip
    if precision is not None:
        _precision(model, out_dir, cfg, precision, quality_data, max_ppl_increase, min_top1,
                   as_json)  # fmt: skip
        return
    try:
        report = export_onnx(model, out_dir, cfg)
    except AccuracyError as err:
        if isinstance(err.report, ParityReport):  # show the table that failed, then the line
            _show(err.report, as_json, echo_json, echo_table)
        raise
    if as_json:
        echo_json(report.to_dict())
    elif report.parity is not None:
        _show(report.parity, False, echo_json, echo_table)
    click.echo(f"wrote {report.out_dir} in {report.seconds:.1f} s", err=True)


def _precision(model, out_dir, cfg, precision, data, max_ppl, min_top1, as_json) -> None:
    from semedge.calibration.precision import PrecisionConfig, PrecisionReport, export_precision
    from semedge.cli.common import echo_json, echo_table
    from semedge.config import replace_set
    from semedge.errors import AccuracyError

    pcfg = replace_set(PrecisionConfig(), max_ppl_increase=max_ppl, min_top1=min_top1)
    try:
        report = export_precision(model, out_dir, precision, cfg, pcfg, data)
    except AccuracyError as err:
        if isinstance(err.report, PrecisionReport) and not as_json:
            echo_table(err.report.HEADERS, err.report.rows())
        raise
    if as_json:
        echo_json(report.to_dict())
    else:
        echo_table(report.HEADERS, report.rows())
    click.echo(f"wrote {report.out_dir} ({report.precision} on {report.provider}) in "
               f"{report.seconds:.1f} s", err=True)  # fmt: skip


def _show(parity, as_json, echo_json, echo_table) -> None:
    if as_json:
        echo_json({"passed": parity.passed, "parity": parity.to_dict()})
    else:
        echo_table(parity.HEADERS, parity.rows())


command.add_command(parity)
command.add_command(check_trt)
command.add_command(trt)
command.add_command(triton)
