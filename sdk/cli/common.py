"""Shared CLI plumbing: progress decision, JSON/table output (stdout carries results only)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

__all__ = ["show_progress", "echo_json", "echo_table"]


def show_progress(ctx: click.Context | None = None) -> bool:
    """Progress bars only on an interactive stderr and without -q."""
    ctx = ctx or click.get_current_context(silent=True)
    quiet = bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("quiet"))
    return sys.stderr.isatty() and not quiet


def echo_json(obj: Any) -> None:
    """Exactly one JSON object on stdout."""
    click.echo(json.dumps(obj, indent=2, default=float))


def echo_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned text table on stdout."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    click.echo(line)
    click.echo("  ".join("-" * w for w in widths))
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
