"""`semedge train adapter`: train the SemToken span adapter with MT2ST and write it to a directory."""

from __future__ import annotations

from pathlib import Path

import click

from semedge.cli import HELP

STRATEGIES = ("diminish", "switch", "mtl", "stl")


@click.group(name="train", help=HELP["train"])
def command() -> None:
    """Group: `semedge train adapter ...`."""


@command.command(name="adapter")
@click.option("--model", "model_spec", default="smollm2", show_default=True,
              help="'smollm2', 'gemma3-270m' or a local Hugging Face model directory.")  # fmt: skip
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="UTF-8 training text (e.g. wikitext-2/valid.txt).")  # fmt: skip
@click.option("--ratio", type=float, default=None, help="Compression ratio R (default 2.4).")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=None,
              help="MT2ST auxiliary schedule (default diminish; mtl/stl are baselines).")  # fmt: skip
@click.option("--steps", type=int, default=None, help="Optimizer steps (default 80).")
@click.option("--windows", type=int, default=None, help="Training windows (default 24).")
@click.option("--context", type=int, default=None, help="Context tokens per window (2048).")
@click.option("--target", type=int, default=None, help="Continuation tokens per window (128).")
@click.option("--lr", type=float, default=None, help="AdamW learning rate (3e-3).")
@click.option("--recency-fraction", type=float, default=None,
              help="Share of the positions kept as verbatim recent tokens (0.96).")  # fmt: skip
@click.option("--max-span", type=int, default=None, help="Longest merged span (64).")
@click.option("--checkpoint-dir", type=click.Path(path_type=Path), default=None,
              help="Save resumable checkpoints here.")  # fmt: skip
@click.option("--checkpoint-every", type=int, default=None, help="Steps between checkpoints.")
@click.option("--resume", is_flag=True, help="Continue from --checkpoint-dir.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Adapter directory.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def adapter(model_spec, data, ratio, strategy, steps, windows, context, target, lr,
            recency_fraction, max_span, checkpoint_dir, checkpoint_every, resume, out, overwrite,
            as_json) -> None:  # fmt: skip
    """Train a SemToken span adapter for MODEL with MT2ST (the LM stays frozen).

    Windows are compressed with CompressionConfig.adapter_default() (the recent tokens verbatim,
    the far context merged into long spans); adapter.json records it, and eval/export use it.
    """
    from semedge.cli.common import echo_json, echo_table, show_progress
    from semedge.config import CompressionConfig, replace_set
    from semedge.training.adapter_train import AdapterTrainConfig, train_adapter_to_dir

    compression = replace_set(CompressionConfig.adapter_default(),
                              recency_fraction=recency_fraction, max_span=max_span)  # fmt: skip
    config = replace_set(AdapterTrainConfig(), ratio=ratio, strategy=strategy, steps=steps,
                         windows=windows, context=context, target=target, lr=lr,
                         checkpoint_every=checkpoint_every, compression=compression)  # fmt: skip
    summary = train_adapter_to_dir(model_spec, data, out, config, checkpoint_dir, resume,
                                   overwrite, show_progress())  # fmt: skip
    if as_json:
        echo_json(summary)
        return
    keys = ("out", "model_id", "strategy", "ratio", "steps", "final_primary_loss",
            "train_flops", "train_wall_s", "aux_calls")  # fmt: skip
    echo_table(["field", "value"], [[k, summary[k]] for k in keys])


@command.command(name="compare")
@click.option("--model", "model_spec", default="smollm2", show_default=True,
              help="'smollm2', 'gemma3-270m' or a local Hugging Face model directory.")  # fmt: skip
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Training text.")
@click.option("--test-data", type=click.Path(path_type=Path), required=True, help="Held-out text.")
@click.option("--strategies", default=",".join(STRATEGIES), show_default=True)
@click.option("--ratio", type=float, default=None, help="Compression ratio R (default 2.4).")
@click.option("--steps", type=int, default=None, help="Optimizer steps per strategy (80).")
@click.option("--windows", type=int, default=None, help="Training windows (24).")
@click.option("--test-windows", type=int, default=8, show_default=True)
@click.option("--context", type=int, default=None, help="Context tokens per window (2048).")
@click.option("--target", type=int, default=None, help="Continuation tokens per window (128).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def compare(model_spec, data, test_data, strategies, ratio, steps, windows, test_windows,
            context, target, as_json) -> None:  # fmt: skip
    """Train one adapter per MT2ST strategy on the same budget; compare ppl, FLOPs, wall time."""
    from semedge.cli.common import echo_json, echo_table, show_progress
    from semedge.config import replace_set
    from semedge.errors import InputError
    from semedge.eval.windows import tokenize_text
    from semedge.models import load_model
    from semedge.textio import read_text_file
    from semedge.training.adapter_train import AdapterTrainConfig
    from semedge.training.compare import compare_strategies

    names = tuple(s.strip() for s in strategies.split(",") if s.strip())
    bad = [s for s in names if s not in STRATEGIES]
    if bad or not names:
        raise InputError(f"unknown strategies {bad}; choose from {', '.join(STRATEGIES)}")
    config = replace_set(AdapterTrainConfig(), ratio=ratio, steps=steps, windows=windows,
                         context=context, target=target)  # fmt: skip
    train_text, test_text = read_text_file(data), read_text_file(test_data)
    model, tok = load_model(model_spec)
    result = compare_strategies(model, tok, tokenize_text(train_text, tok),
                                tokenize_text(test_text, tok), config, names, test_windows,
                                show_progress())  # fmt: skip
    if as_json:
        echo_json(result.to_dict())
    else:
        echo_table(*result.table())
