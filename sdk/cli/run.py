"""`semedge run`: generate text from an export with the torch-free runtime."""

from __future__ import annotations

import sys

import click

PROVIDER_CHOICES = ("cpu", "cuda", "tensorrt", "openvino", "trt-engine")


@click.command(name="run")
@click.argument("export_dir", type=click.Path(path_type=str))
@click.option(
    "--prompt-file",
    "-f",
    required=True,
    type=click.Path(path_type=str),
    help="UTF-8 text file holding the prompt.",
)
@click.option(
    "--ratio",
    type=float,
    default=None,
    help="SemToken compression ratio, e.g. 2.4 (default: the full prompt).",
)
@click.option("--query", default=None, help="Query-aware compression: keep spans like this fine.")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option(
    "--provider",
    default="cpu",
    show_default=True,
    help="cpu | cuda | tensorrt (ONNX Runtime EPs) | openvino | trt-engine (native TensorRT).",
)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=int, default=0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--stream", is_flag=True, help="Print tokens as they are generated.")
@click.option("--adapter", default=None,
              help="MT2ST span adapter (DEFAULT or a directory) and its compression layout.")  # fmt: skip
@click.option("--prefill-chunk", type=int, default=None,
              help="Read the prompt this many positions at a time: attention memory grows with "
                   "chunk x context instead of context^2; 0: whole [512 on long prompts on "
                   "ORT CPU, where it is faster].")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def command(export_dir, prompt_file, ratio, query, max_new_tokens, provider, temperature, top_k,
            top_p, seed, stop, stream, adapter, prefill_chunk, as_json) -> None:  # fmt: skip
    """Generate from EXPORT_DIR (made by `semedge export onnx`) for the prompt in --prompt-file."""
    from semedge.errors import InputError
    from semedge.runtime import GenerationConfig, Pipeline
    from semedge.textio import read_text_file

    if stream and as_json:
        raise InputError("--stream and --json cannot be combined; pick one")
    text = read_text_file(prompt_file)
    config = GenerationConfig(max_new_tokens=max_new_tokens, ratio=ratio, query=query,
                              stop=tuple(stop), temperature=temperature, top_k=top_k, top_p=top_p,
                              seed=seed, prefill_chunk=prefill_chunk)  # fmt: skip
    with Pipeline.from_pretrained(export_dir, providers=provider) as loaded:
        pipe = loaded.with_adapter(adapter) if adapter else loaded
        if stream:
            for piece in pipe.stream(text, config):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return
        result = pipe.generate(text, config)
    if as_json:
        from semedge.cli.common import echo_json

        echo_json({**result.to_dict(), "provider": provider, "ratio": ratio})
    else:
        click.echo(result.text)
