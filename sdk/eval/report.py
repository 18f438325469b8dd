"""Rendering eval results: table rows for the CLI and a matplotlib bar chart (written atomically)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semedge.artifacts import atomic_write_bytes
from semedge.deps import require

if TYPE_CHECKING:
    from semedge.eval.passkey import PasskeyReport
    from semedge.eval.perplexity import PerplexityReport

__all__ = ["ppl_table", "passkey_table", "write_ppl_plot"]


def ppl_table(report: PerplexityReport) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows): method, ppl, ppl / full, context positions, achieved ratio."""
    full = report.results.get("full")
    rows = []
    for name, r in report.results.items():
        rel = r.ppl / full.ppl if full else float("nan")
        rows.append([name, round(r.ppl, 3), round(rel, 3), round(r.tokens, 1), round(r.ratio, 3)])
    return ["method", "ppl", "x full", "tokens", "ratio"], rows


def passkey_table(report: PasskeyReport) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows): accuracy overall, where truncation dropped the key, and where it kept it."""
    d = report.to_dict()
    n_drop = d["key_dropped_by_truncate"]
    n_kept = d["n_samples"] - n_drop

    def pct(v: float | None, n: int) -> str:
        return "-" if v is None else f"{100 * v:.0f}% ({round(v * n)}/{n})"

    rows = []
    for m, r in d["results"].items():
        n = d["n_samples"]
        rows.append(
            [
                m,
                pct(r["accuracy"], n),
                pct(r["accuracy_key_dropped"], n_drop),
                pct(r["accuracy_key_kept"], n_kept),
                round(r["tokens"], 1),
            ]
        )
    return ["method", "accuracy", "key dropped by truncate", "key kept", "tokens"], rows


def write_ppl_plot(report: PerplexityReport, path: Path | str) -> Path:
    """A bar chart of perplexity per method (full as a reference line), PNG, atomic write.

    Raises:
        BackendUnavailable: matplotlib is not installed.
    """
    mpl = require("matplotlib", extra="torch")
    mpl.use("Agg")
    plt = require("matplotlib.pyplot", extra="torch")
    names = list(report.results)
    ppl = [report.results[n].ppl for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    bars = ax.bar(names, ppl, color=["#4c72b0" if n != "semtoken" else "#dd8452" for n in names])
    for b, v in zip(bars, ppl, strict=True):
        ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom")
    if "full" in report.results:
        ax.axhline(report.results["full"].ppl, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("continuation perplexity")
    ax.set_title(
        f"{report.model}: T={report.context}, target={report.target}, "
        f"R={report.ratio:g}, {report.windows} windows",
        fontsize=9,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
