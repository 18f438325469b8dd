"""`semedge eval`: continuation perplexity and passkey retrieval under SemToken compression."""

from __future__ import annotations

import click

from semedge.cli.common import echo_json, echo_table, show_progress
from semedge.config import PRESETS

__all__ = ["command"]


@click.group(
    name="eval",
    help="Measure quality: perplexity, passkey and the long-context task suite under compression.",
)
def command() -> None:
    pass


_ADAPTER_HELP = "SemToken span adapter for the semtoken method: DEFAULT (shipped) or a directory."


def _adapter(spec: str | None, lm):
    if spec is None:
        return None
    from semedge.training.adapter import load_adapter

    return load_adapter(spec, lm)


def _config(ratio: float, encoder: str | None, knobs: dict, adapter=None):
    """config.effective_compression: --preset, else the adapter's layout, else the defaults;
    then the options the user gave."""
    from semedge.config import effective_compression

    knobs = dict(knobs)
    preset = knobs.pop("preset", None)
    trained = getattr(adapter, "compression", None)
    return effective_compression(None, trained, preset, adapter is not None, ratio=ratio,
                                 encoder=encoder, **knobs)  # fmt: skip


def _knobs(f):
    """SemToken knobs shared by both commands (None = the CompressionConfig default)."""
    opts = [
        click.option(
            "--preset",
            type=click.Choice(sorted(PRESETS)),
            help="Start from a named CompressionConfig preset (paper = mean spans) "
            "(default: the adapter's own settings, else the defaults).",
        ),
        click.option("--span-repr", type=click.Choice(["mean", "norm_mean", "first", "last"])),
        click.option("--recency-window", type=int, help="Last N context tokens kept unmerged."),
        click.option("--max-span", type=int, help="Longest merged span."),
        click.option("--encoder-layers", type=int, help="k: LM layers the lm encoder runs."),
        click.option(
            "--merged-spans",
            type=click.Choice(["auto", "keep", "drop"]),
            help="Merged spans: one position each (keep), or left out (drop; auto: drop when "
            "sentences are ranked by a query).",
        ),
        click.option(
            "--ranked-order",
            type=click.Choice(["auto", "text", "relevance"]),
            help="Ranked sentences read where they stand (text) or just before the question, "
            "most relevant last (relevance; auto: relevance when a query is given).",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _pop_knobs(kw: dict) -> dict:
    names = ("preset", "span_repr", "recency_window", "max_span", "encoder_layers", "merged_spans",
             "ranked_order")  # fmt: skip
    return {k: kw.pop(k) for k in names}


@command.command("ppl")
@click.option(
    "--data", "data", required=True, type=click.Path(path_type=str), help="UTF-8 text file."
)
@click.option(
    "--context", "context", type=int, default=2048, show_default=True, help="T: context tokens."
)
@click.option(
    "--target",
    "target",
    type=int,
    default=256,
    show_default=True,
    help="Tokens scored after the context.",
)
@click.option(
    "--ratio",
    "ratio",
    type=float,
    default=2.4,
    show_default=True,
    help="R: context tokens / positions.",
)
@click.option(
    "-m",
    "--model",
    "model",
    default="smollm2",
    show_default=True,
    help="'smollm2', 'gemma3-270m' or a HF model dir.",
)
@click.option(
    "--encoder", type=click.Choice(["lm", "minilm"]), default=None, help="SemToken encoder."
)
@click.option(
    "--windows", type=int, default=8, show_default=True, help="Windows spread over the file."
)
@click.option("--methods", default="full,semtoken,truncate,random,uniform", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random spans.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--plot", type=click.Path(path_type=str), default=None, help="Write a bar chart PNG.")
@click.option("--adapter", "adapter_spec", default=None, help=_ADAPTER_HELP)
@_knobs
def ppl(data, context, target, ratio, model, encoder, windows, methods, seed, as_json, plot,
        adapter_spec, **kw):  # noqa: PLR0913  # fmt: skip
    """Continuation perplexity of TARGET tokens after a CONTEXT window, per method."""
    from semedge.eval import evaluate_perplexity, parse_methods, ppl_table, write_ppl_plot
    from semedge.eval.windows import check_window_fits, tokenize_text
    from semedge.models import load_model, model_id
    from semedge.textio import read_text_file

    knobs = _pop_knobs(kw)
    config = _config(ratio, encoder, knobs)  # bad ratio fails before any heavy work
    methods = parse_methods(methods)
    check_window_fits(context, target, None)
    text = read_text_file(data)
    lm, tok = load_model(model)
    adapter = _adapter(adapter_spec, lm)  # refuses an adapter of another model before any work
    config = _config(ratio, encoder, knobs, adapter)
    report = evaluate_perplexity(
        lm, tok, tokenize_text(text, tok), context, target, ratio, windows, methods, config,
        model_name=model_id(model), seed=seed, progress=show_progress(), adapter=adapter,
    )  # fmt: skip
    if plot:
        write_ppl_plot(report, plot)
    if as_json:
        echo_json(report.to_dict())
    else:
        echo_table(*ppl_table(report))


@command.command("passkey")
@click.option(
    "--context", "context", type=int, default=2048, show_default=True, help="Haystack tokens."
)
@click.option("--ratio", "ratio", type=float, default=2.4, show_default=True)
@click.option("--samples", type=int, default=8, show_default=True)
@click.option("-m", "--model", "model", default="smollm2", show_default=True)
@click.option("--encoder", type=click.Choice(["lm", "minilm"]), default=None)
@click.option(
    "--data",
    "data",
    type=click.Path(path_type=str),
    default=None,
    help="Filler text file (default: shipped WikiText-2 excerpt).",
)
@click.option("--methods", default="full,semtoken,truncate", show_default=True)
@click.option("--no-query", is_flag=True, help="Do not give SemToken the question as its query.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--adapter", "adapter_spec", default=None, help=_ADAPTER_HELP)
@_knobs
def passkey(context, ratio, samples, model, encoder, data, methods, no_query, seed, as_json,
            adapter_spec, **kw):  # noqa: PLR0913  # fmt: skip
    """Find a 5-digit passkey hidden in real filler text, per method."""
    from semedge.eval import evaluate_passkey, parse_methods, passkey_table
    from semedge.eval.windows import check_window_fits
    from semedge.models import load_model, model_id
    from semedge.textio import read_text_file

    knobs = _pop_knobs(kw)
    config = _config(ratio, encoder, knobs)
    methods = parse_methods(methods)
    check_window_fits(context, 1, None)
    filler = read_text_file(data) if data else None
    lm, tok = load_model(model)
    adapter = _adapter(adapter_spec, lm)
    config = _config(ratio, encoder, knobs, adapter)
    report = evaluate_passkey(
        lm, tok, context, ratio, samples, filler, methods, config, query_aware=not no_query,
        model_name=model_id(model), seed=seed, progress=show_progress(), adapter=adapter,
    )  # fmt: skip
    if as_json:
        echo_json(report.to_dict())
    else:
        echo_table(*passkey_table(report))


def _numbers(spec: str, kind, name: str) -> list:
    """'2.4,4,8' -> [2.4, 4.0, 8.0] (one clear line for anything else)."""
    from semedge.errors import InputError

    try:
        values = [kind(x) for x in spec.split(",") if x.strip()]
    except ValueError as err:
        raise InputError(f"--{name} takes comma-separated numbers, got {spec!r}") from err
    if not values:
        raise InputError(f"--{name} is empty")
    return values


@command.command("suite")
@click.option("-m", "--model", "model", default="smollm2", show_default=True,
              help="'smollm2' or a HF model dir (the PyTorch path).")  # fmt: skip
@click.option("--export", "export_dir", type=click.Path(path_type=str), default=None,
              help="Evaluate a deployed export through semedge.runtime instead of --model.")  # fmt: skip
@click.option("--context", "contexts", default="2048", show_default=True,
              help="Prompt lengths in tokens, comma-separated.")  # fmt: skip
@click.option("--ratio", "ratios", default="2.4,4,8", show_default=True,
              help="Compression ratios, comma-separated (full runs once, reported at each).")  # fmt: skip
@click.option("--tasks", default="all", show_default=True, help="Comma-separated task names.")
@click.option("--methods", default="all", show_default=True,
              help="Comma-separated: full, truncate, head_tail, random, uniform, selective, "
              "retrieve, semtoken, semtoken_query.")  # fmt: skip
@click.option("--samples", type=int, default=10, show_default=True, help="Per task and context.")
@click.option("--data", "data", type=click.Path(path_type=str), default=None,
              help="Filler text (default: the shipped WikiText-2 excerpt).")  # fmt: skip
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="PyTorch path: run the LM in this precision.")  # fmt: skip
@click.option("--fit-positions", type=int, default=None,
              help="PyTorch path: compact compressed positions below N, as an export with "
              "--max-context N would (measures the cost of compaction).")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--prefill-chunk", type=int, default=None,
              help="With --export: read each prompt this many positions at a time (contexts "
                   "whose whole-prompt attention does not fit in memory); 0: whole prompts "
                   "[512 on long prompts on ORT CPU].")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--plot", type=click.Path(path_type=str), default=None,
              help="Write the depth heatmaps + accuracy-vs-ratio PNG.")  # fmt: skip
@_knobs
def suite(model, export_dir, contexts, ratios, tasks, methods, samples, data, dtype,
          fit_positions, seed, prefill_chunk, as_json, plot, **kw):  # noqa: PLR0913  # fmt: skip
    """Long-context tasks (RULER-style) per method, context and ratio, at equal budgets."""
    from semedge.errors import InputError
    from semedge.eval.methods import parse_suite_methods
    from semedge.eval.passkey import default_filler
    from semedge.eval.suite import run_suite
    from semedge.eval.suite_report import suite_table, write_suite_plot
    from semedge.eval.tasks import parse_tasks
    from semedge.textio import read_text_file

    contexts = _numbers(contexts, int, "context")
    ratios = _numbers(ratios, float, "ratio")
    tasks, methods = parse_tasks(tasks), parse_suite_methods(methods)
    knobs = _pop_knobs(kw)
    config = _config(2.4, None, knobs)  # each method call sets its own ratio
    filler = read_text_file(data) if data else default_filler()
    if prefill_chunk is not None and not export_dir:
        raise InputError("--prefill-chunk reads prompts on the runtime; pass --export DIR")
    if prefill_chunk is not None and prefill_chunk < 0:
        raise InputError(f"--prefill-chunk must be >= 0 (0: whole prompts), got {prefill_chunk}")
    if export_dir:
        from semedge.calibration.suite_runtime import RuntimeRunner
        from semedge.runtime import Pipeline

        pipe = Pipeline.from_pretrained(export_dir, providers="cpu")
        base = pipe.compression if not any(v is not None for v in knobs.values()) else config
        runner = RuntimeRunner(pipe, base, prefill_chunk)
        name = f"export:{pipe.config.get('model', export_dir)}"
    else:
        from semedge.eval.suite import TorchRunner
        from semedge.models import load_model, model_id

        lm, tok = load_model(model)
        if dtype == "bf16":
            lm = lm.to(__import__("torch").bfloat16)
        if fit_positions is not None and fit_positions < 128:
            raise InputError(f"--fit-positions must be >= 128, got {fit_positions}")
        runner, name = TorchRunner(lm, tok, config, fit_positions), model_id(model)
    report = run_suite(runner, tasks, contexts, ratios, methods, samples, filler, name, seed,
                       progress=show_progress())  # fmt: skip
    if plot:
        write_suite_plot(report, plot)
    if as_json:
        echo_json(report.to_dict())
    else:
        echo_table(*suite_table(report))
