"""Command-line options shared by the benchmarks that score continuations after long windows."""

from __future__ import annotations

import argparse


def add_window_args(ap: argparse.ArgumentParser) -> None:
    """--context/--target/--ratio/--windows (T=2048, S=256, R=2.4, 12 windows) and --out."""
    ap.add_argument("--context", type=int, default=2048, help="context tokens per window (T)")
    ap.add_argument("--target", type=int, default=256, help="continuation tokens scored (S)")
    ap.add_argument("--ratio", type=float, default=2.4, help="compression ratio R")
    ap.add_argument("--windows", type=int, default=12, help="windows spread over the text")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
