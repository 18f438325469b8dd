"""`semedge serve`: an OpenAI-compatible HTTP server on an export, or the bundled Triton server."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["command"]


@click.command(name="serve")
@click.argument("export_dir", required=False, type=click.Path(path_type=Path))
@click.option("--triton", "triton_repo", type=click.Path(path_type=Path), default=None,
              help="Serve this Triton repository (semedge export triton --backend python) with "
                   "the tritonserver bundled in nvidia-pytriton instead.")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default; there is no authentication).")  # fmt: skip
@click.option("--port", type=int, default=8000, show_default=True, help="0 picks a free port.")
@click.option("--model-name", default=None, help="The `model` clients send [the export's model].")
@click.option("--adapter", default=None, help="MT2ST span adapter: DEFAULT or a directory.")
@click.option(
    "--provider", default="cpu", show_default=True, help="cpu | cuda | tensorrt | openvino."
)
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads per session.")
@click.option("--max-batch", type=int, default=None, help="Requests decoding together [8].")
@click.option(
    "--batch-wait-ms",
    type=float,
    default=None,
    help="An idle worker waits this long for more requests [10].",
)
@click.option("--workers", type=int, default=None, help="Batches running at once [1].")
@click.option("--max-batch-positions", type=int, default=None,
              help="Rows x cache length per batch [8192]; bounds memory.")  # fmt: skip
@click.option("--prefill-chunk", type=int, default=None,
              help="Read prompts this many positions at a time (bounds attention memory); "
                   "0: whole prompts [512 on long prompts on ORT CPU].")  # fmt: skip
@click.option("--max-request-bytes", type=int, default=None, help="Largest request body [1 MiB].")
@click.option("--default-max-tokens", type=int, default=None, help="max_tokens when unset [64].")
@click.option("--triton-home", type=click.Path(path_type=Path), default=None,
              help="Where nvidia-pytriton is unpacked [$SEMEDGE_TRITON_HOME, .venv/triton].")  # fmt: skip
def command(export_dir, triton_repo, host, port, model_name, adapter, provider, threads,
            max_batch, batch_wait_ms, workers, max_batch_positions, prefill_chunk,
            max_request_bytes, default_max_tokens, triton_home) -> None:  # fmt: skip
    """Serve EXPORT_DIR at http://HOST:PORT/v1 (completions, chat, models, health, metrics)."""
    from semedge.config import replace_set
    from semedge.errors import InputError

    if triton_repo is not None:
        if export_dir is not None:
            raise InputError("give EXPORT_DIR or --triton REPO, not both")
        from semedge.runtime.serving.triton_server import serve_triton

        serve_triton(triton_repo, host, port, triton_home)
        return
    if export_dir is None:
        raise InputError("give EXPORT_DIR (a semedge export) or --triton REPO")
    from semedge.artifacts import load_manifest
    from semedge.runtime.serving import EngineConfig, ServeConfig, serve_export

    engine = replace_set(EngineConfig(), max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                         workers=workers, max_batch_positions=max_batch_positions,
                         prefill_chunk=prefill_chunk)  # fmt: skip
    name = model_name or Path(str(load_manifest(export_dir).config.get("model", "semedge"))).name
    config = replace_set(ServeConfig(model_id=name, engine=engine),
                         max_request_bytes=max_request_bytes,
                         default_max_tokens=default_max_tokens)  # fmt: skip
    serve_export(export_dir, host, port, config, provider, adapter, threads)
