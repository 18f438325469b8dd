"""`semedge export parity EXPORT_DIR`: re-run the parity gate on an existing export.

The export's own gate runs at export time on the lengths it was given. This runs the same gate
(`semedge.export.parity.check_parity`: PyTorch fp32 against the runtime on ONNX Runtime's CPU
provider) on a finished export, at lengths of the user's choosing, without re-exporting: how a
user checks a 32K export at 8K or 16K tokens once the machine has the memory for it.
"""

from __future__ import annotations

import click

__all__ = ["parity"]


@click.command(name="parity")
@click.argument("export_dir", type=click.Path(file_okay=False))
@click.option("-m", "--model", "model", help="The exported model [the export's own, if embedded].")
@click.option("--lengths", required=True, help="Prompt lengths in tokens, e.g. 4096,8192.")
@click.option("--atol", type=float, help="Budget on |dlogits| and |dKV| [the export's dtype's].")
@click.option("--decode-steps", type=int, default=4, show_default=True)
@click.option("--no-batch", is_flag=True, help="Skip the left-padded batch case.")
@click.option("--no-compressed", is_flag=True, help="Skip the SemToken-compressed case.")
@click.option("--prefill-chunk", type=int, default=None,
              help="Read each prompt this many tokens at a time on both sides (lengths whose "
                   "whole-prompt attention does not fit in memory).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def parity(export_dir, model, lengths, atol, decode_steps, no_batch, no_compressed,
           prefill_chunk, as_json) -> None:  # fmt: skip
    """Compare EXPORT_DIR with the PyTorch model it came from at --lengths; exit 1 on a miss."""
    from pathlib import Path

    from semedge import constants as C
    from semedge.artifacts import load_manifest, verify_manifest
    from semedge.cli.common import echo_json, echo_table
    from semedge.cli.export import _lengths
    from semedge.config import CompressionConfig
    from semedge.errors import AccuracyError, InputError
    from semedge.export.parity import ParityConfig, check_parity, default_atol
    from semedge.models.loader import EMBEDDED_MODELS, load_model, model_id

    directory = Path(export_dir)
    manifest = verify_manifest(directory, load_manifest(directory, expect_format=C.FORMAT_EXPORT))
    cfg = manifest.config
    made_from = str(cfg.get("model", ""))
    if model is None:
        if made_from not in EMBEDDED_MODELS:
            raise InputError(
                f"{directory} was exported from {made_from!r}; pass -m with its directory"
            )
        model = made_from
    if model_id(model) != made_from:
        raise InputError(f"{directory} was exported from {made_from!r}, not {model_id(model)!r}")
    if cfg.get("adapter") and not no_compressed:
        raise InputError("this export ships a span adapter; pass --no-compressed (the compressed "
                         "case of an adapter export is checked at export time)")  # fmt: skip
    grid = _lengths(lengths)
    limit = int(cfg["max_context"])
    if not grid or max(grid) > limit - decode_steps:
        raise InputError(f"--lengths must be 2..{limit - decode_steps} tokens (the export's "
                         f"context {limit} less --decode-steps), got {lengths!r}")  # fmt: skip
    gate = ParityConfig(lengths=grid, decode_steps=decode_steps, batch=not no_batch,
                        compressed=not no_compressed, prefill_chunk=prefill_chunk)  # fmt: skip
    budget = atol if atol is not None else default_atol(str(cfg.get("dtype", "fp32")))
    loaded = load_model(model)
    compression = (
        CompressionConfig.from_dict(cfg["compression"]) if cfg.get("compression") else None
    )
    report = check_parity(loaded.model.eval(), loaded.tokenizer, directory, limit, budget, gate,
                          compression)  # fmt: skip
    if as_json:
        echo_json({"export": str(directory), "passed": report.passed, "parity": report.to_dict()})
    else:
        echo_table(report.HEADERS, report.rows())
    if not report.passed:
        w = report.worst()
        raise AccuracyError(
            f"parity failed: {w.case} at {w.tokens} tokens has max |dlogits| {w.max_abs:.3g}, "
            f"max |dKV| {w.kv_max_abs:.3g} > atol {budget:g}"
        )
