"""`semedge compress FILE --ratio R`: SemToken-compress a text file and show the merged spans."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from semedge.cli import HELP
from semedge.cli.common import echo_json, echo_table


def span_view(tokenizer, input_ids, spans, max_chars: int = 0) -> str:
    """Readable spans: merged spans in [brackets], every compressed position separated by '|',
    tokens left out (dropped merged spans) as <k dropped>, and where ranked sentences were
    moved to be read before the question (ranked_order), <moved: ... :moved>."""
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    covered = np.zeros(len(input_ids) + 1, dtype=np.int64)
    for s, e in spans.tolist():
        covered[s:e] = 1
    kept_before = np.concatenate([[0], np.cumsum(covered[:-1])])  # kept tokens before index i

    def dropped(a: int, b: int) -> str | None:
        k = (b - a) - int(kept_before[b] - kept_before[a])
        return f"<{k} dropped>" if k > 0 else None

    parts, size, shown, prev, moved = [], 0, 0, 0, False
    for s, e in spans.tolist():
        if s < prev and not moved:
            parts.append("<moved:")
            moved = True
        elif s >= prev:
            if moved:
                parts.append(":moved>")
                moved = False
            gap = dropped(prev, s)
            if gap:
                parts.append(gap)
            prev = e
        piece = tokenizer.decode(input_ids[s:e].tolist())
        piece = f"[{piece}]" if e - s > 1 else piece
        parts.append(piece)
        shown += 1
        size += len(piece) + 1
        if max_chars and size >= max_chars:
            parts.append(f" ... ({len(spans) - shown} more positions)")
            break
    else:
        if moved:
            parts.append(":moved>")
        gap = dropped(prev, len(input_ids))
        if gap:
            parts.append(gap)
    return "|".join(parts)


@click.command(name="compress", help=HELP["compress"])
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--ratio", type=float, default=None, help="Positions in / out (default 2.4).")
@click.option("--target-tokens", type=int, default=None, help="Positions wanted (overrides ratio).")
@click.option("--encoder", type=click.Choice(["lm", "minilm"]), default=None,
              help="Span encoder: the LM's first layers (lm, default) or MiniLM.")  # fmt: skip
@click.option("--query", default=None, help="Query-aware: tokens similar to it stay fine.")
@click.option("--protect", multiple=True, help="A string whose tokens never merge (repeatable).")
@click.option("--model", "model_spec", default="smollm2", show_default=True,
              help="'smollm2', 'gemma3-270m' or a local Hugging Face model directory.")  # fmt: skip
@click.option("--recency-window", type=int, default=None, help="Last N tokens never merge.")
@click.option("--max-span", type=int, default=None, help="Longest merged span.")
@click.option("--merged-spans", type=click.Choice(["auto", "keep", "drop"]), default=None,
              help="Merged spans: one position each (keep) or left out (drop; auto, the "
              "default: drop when sentences are ranked by a query).")  # fmt: skip
@click.option("--ranked-order", type=click.Choice(["auto", "text", "relevance"]), default=None,
              help="Ranked sentences read where they stand (text) or just before the question, "
              "most relevant last (relevance; auto, the default: relevance with --query).")  # fmt: skip
@click.option("--max-chars", type=int, default=4000, show_default=True,
              help="Characters of the span view to print (0: all).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(file, ratio, target_tokens, encoder, query, protect, model_spec, recency_window,
            max_span, merged_spans, ranked_order, max_chars, as_json) -> None:  # fmt: skip
    from semedge.checks import check_int
    from semedge.compressor import SemTokenCompressor
    from semedge.config import CompressionConfig, replace_set
    from semedge.models import load_model
    from semedge.textio import read_text_file

    check_int(max_chars, "--max-chars", 0)
    options = dict(ratio=ratio, target_tokens=target_tokens, encoder=encoder,
                   recency_window=recency_window, max_span=max_span,
                   merged_spans=merged_spans, ranked_order=ranked_order)  # fmt: skip
    if protect:
        options["protected_strings"] = tuple(protect)
    config = replace_set(CompressionConfig(), **options)  # validates ratio etc. before loading
    text = read_text_file(file)
    model, tokenizer = load_model(model_spec)
    prompt = SemTokenCompressor(model, tokenizer, config).compress(text, query=query)
    if as_json:
        echo_json({"file": str(file), "model": str(model_spec), **prompt.to_dict()})
        return
    stats = {k: v for k, v in prompt.stats.items() if v is not None}
    echo_table(["stat", "value"], [[k, v] for k, v in stats.items()])
    click.echo()
    click.echo(span_view(tokenizer, prompt.input_ids, prompt.spans, max_chars))
