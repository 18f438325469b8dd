"""`semedge export`: ONNX export with a parity gate, TensorRT checks and engines, Triton repositories."""

from __future__ import annotations

import click
from semedge.export.cli_trt import COMMANDS as TRT_COMMANDS


@click.group(name="export", help="Export to ONNX (with a parity gate), TensorRT engines, Triton.")
def command() -> None:
    """`semedge export SUBCOMMAND`."""


# TODO(#4): helper-4's `onnx` subcommand goes here (`@command.command("onnx")`).

for _cmd in TRT_COMMANDS:  # check-trt, trt, triton (export/cli_trt.py)
    command.add_command(_cmd)
