"""`semedge export`: `onnx` here; `check-trt`, `trt`, `triton` from semedge.cli.export_trt."""

from __future__ import annotations

import click

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
@click.option("--parity-lengths", help="Prompt lengths the gate checks, e.g. 16,512,4096.")
@click.option("--no-validate", is_flag=True, help="Skip the parity gate.")
@click.option("--overwrite", is_flag=True, default=None, help="Replace an existing OUT_DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def onnx_command(model, out_dir, adapter, dtype, opset, max_context, atol, full_logits,
                 attention, parity_lengths, no_validate, overwrite, as_json) -> None:  # fmt: skip
    """Export MODEL to OUT_DIR: embed, encoder, prefill, decode graphs + tokenizer + manifest."""
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


def _show(parity, as_json, echo_json, echo_table) -> None:
    if as_json:
        echo_json({"passed": parity.passed, "parity": parity.to_dict()})
    else:
        echo_table(parity.HEADERS, parity.rows())


command.add_command(check_trt)
command.add_command(trt)
command.add_command(triton)
