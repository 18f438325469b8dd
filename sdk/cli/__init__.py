"""The `semedge` command: one lazily loaded module per verb, one error handler for all of them.

Exit codes: 0 ok, 1 a SemedgeError (bad input, artifact, accuracy budget), 2 usage,
3 internal error (a bug), 130 Ctrl-C. Heavy imports happen inside command bodies only.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from semedge import __version__
from semedge.config import debug_enabled
from semedge.errors import SemedgeError

__all__ = ["main", "SemedgeGroup"]

# verb -> module defining `command`; the order is the order `semedge --help` lists them in
COMMANDS = {
    "compress": "semedge.cli.compress",
    "eval": "semedge.cli.eval",
    "train": "semedge.cli.train",
    "export": "semedge.cli.export",
    "calibrate": "semedge.cli.calibrate",
    "run": "semedge.cli.run",
    "profile": "semedge.cli.profile",
    "serve": "semedge.cli.serve",
    "doctor": "semedge.cli.doctor",
}

HELP = {
    "compress": "SemToken-compress a text file and show the merged spans.",
    "eval": "Measure quality: perplexity and passkey retrieval under compression.",
    "train": "Train models and SemToken adapters with MT2ST.",
    "export": "Export to ONNX (with a parity gate), TensorRT engines, Triton repositories.",
    "calibrate": "INT8/FP16 calibration and compression-ratio calibration.",
    "run": "Generate text from an export with the torch-free runtime.",
    "profile": "Per-stage latency profile of an export.",
    "serve": "Serve an export: OpenAI-compatible HTTP, or the bundled Triton server.",
    "doctor": "Check the installation: packages, providers, GPU, TensorRT.",
}


class SemedgeGroup(click.Group):
    """Root group: loads verbs lazily and turns SemedgeErrors into one stderr line, exit 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        return importlib.import_module(COMMANDS[name]).command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # list verbs from HELP so `semedge --help` imports no command module
        with formatter.section("Commands"):
            formatter.write_dl([(name, HELP[name]) for name in COMMANDS])

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except SemedgeError as err:
            raise click.ClickException(str(err)) from None
        except KeyboardInterrupt:
            ctx.exit(130)
        except OSError as err:  # disk full, permissions, a vanished file: the user's to fix
            where = f" ({err.filename})" if err.filename else ""
            raise click.ClickException(f"{err.strerror or err}{where}") from None
        except Exception as err:  # a bug: still one line unless debugging
            if debug_enabled():
                raise
            msg = str(err).splitlines()[0] if str(err) else ""
            click.echo(
                f"internal error: {type(err).__name__}: {msg} (SEMEDGE_DEBUG=1 for traceback)",
                err=True,
            )
            ctx.exit(3)


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    root = logging.getLogger("semedge")
    root.handlers[:] = [handler]
    root.setLevel(level)
    noisy = logging.DEBUG if verbose >= 2 else logging.ERROR
    for name in ("onnxruntime", "transformers", "torch", "onnxscript", "accelerate"):
        logging.getLogger(name).setLevel(noisy)


@click.group(cls=SemedgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="semedge")
@click.option("-v", "--verbose", count=True, help="More logging (-vv: third-party logs too).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """semedge: long-context LMs from PyTorch to the edge."""
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet
    _configure_logging(verbose, quiet)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="semedge")
