"""Rendering `semedge eval suite` results: a table and the PNG (needle-depth heatmap per method,
and accuracy vs ratio), written atomically."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semedge.artifacts import atomic_write_bytes
from semedge.deps import require

if TYPE_CHECKING:
    from semedge.eval.suite import SuiteReport

__all__ = ["suite_table", "write_suite_plot"]


def _sample_key(r: dict) -> tuple:
    return r["task"], r["sample"], r.get("seed", 0)


def _full_on_same_samples(report: SuiteReport) -> dict[tuple, float]:
    """(context, ratio, method) -> full context's task-averaged accuracy on the samples that
    method ran (runs with other seeds or sample counts may be pooled in one report)."""
    full: dict[tuple, dict[tuple, float]] = defaultdict(dict)
    ran: dict[tuple, set] = defaultdict(set)
    for r in report.rows:
        key = (r["context"], r["ratio"])
        if r["method"] == "full":
            full[key][_sample_key(r)] = r["score"]
        ran[(*key, r["method"])].add(_sample_key(r))
    out = {}
    for (c, q, m), keys in ran.items():
        by_task: dict[str, list[float]] = defaultdict(list)
        for k in keys & full[(c, q)].keys():
            by_task[k[0]].append(full[(c, q)][k])
        if by_task:
            out[(c, q, m)] = float(np.mean([np.mean(v) for v in by_task.values()]))
    return out


def suite_table(report: SuiteReport) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows): per context, ratio and method, accuracy over tasks, vs full context on
    the same samples, and the samples per task."""
    rows, full = [], _full_on_same_samples(report)
    counts: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in report.rows:
        counts[(r["context"], r["ratio"], r["method"])][r["task"]] += 1
    for r in report.summary():
        key = (r["context"], r["ratio"], r["method"])
        ref = full.get(key)
        rel = r["accuracy"] / ref if ref else float("nan")
        far = "-" if r["accuracy_far"] is None else round(r["accuracy_far"], 3)
        rows.append([r["context"], r["ratio"], r["method"], round(r["accuracy"], 3),
                     round(rel, 3), far, round(r["positions"], 1), r["tasks"],
                     min(counts[key].values())])  # fmt: skip
    return ["context", "ratio", "method", "accuracy", "x full", "accuracy far", "positions",
            "tasks", "samples"], rows  # fmt: skip


def _depth_grid(rows: list[dict], method: str, ratio: float, contexts: list[int], bins: int):
    grid = np.full((len(contexts), bins), np.nan)
    for ci, c in enumerate(contexts):
        sel = [r for r in rows if r["method"] == method and r["context"] == c
               and r["ratio"] == ratio and r["has_needle"]]  # fmt: skip
        for b in range(bins):
            scores = [r["score"] for r in sel if min(int(r["depth"] * bins), bins - 1) == b]
            if scores:
                grid[ci, b] = float(np.mean(scores))
    return grid


def write_suite_plot(report: SuiteReport, path: Path | str, bins: int = 5) -> Path:
    """Heatmaps (needle depth x context, per method, at the first compressed ratio) and
    accuracy vs ratio (one line per method). PNG, atomic write.

    Raises:
        BackendUnavailable: matplotlib is not installed.
    """
    mpl = require("matplotlib", extra="torch")
    mpl.use("Agg")
    plt = require("matplotlib.pyplot", extra="torch")
    rows, summary = report.rows, report.summary()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    contexts = sorted({r["context"] for r in rows})
    ratios = sorted({r["ratio"] for r in rows})
    shown = ratios[0]
    cols = len(methods) + 1
    fig, axes = plt.subplots(1, cols, figsize=(2.2 * cols + 1, 2.8), dpi=110, squeeze=False)
    for ax, m in zip(axes[0], methods, strict=False):
        grid = _depth_grid(rows, m, shown, contexts, bins)
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_title(m, fontsize=8)
        ax.set_xticks(range(bins), [f"{(b + 0.5) / bins:.1f}" for b in range(bins)], fontsize=6)
        ax.set_yticks(range(len(contexts)), [str(c) for c in contexts], fontsize=6)
        ax.set_xlabel("needle depth", fontsize=7)
    axes[0][0].set_ylabel("context", fontsize=7)
    ax = axes[0][-1]
    for m in methods:
        for c in contexts:
            pts = [(r["ratio"], r["accuracy"]) for r in summary
                   if r["method"] == m and r["context"] == c]  # fmt: skip
            if pts:
                xs, ys = zip(*sorted(pts), strict=False)
                ax.plot(
                    xs, ys, marker="o", ms=3, lw=1, label=f"{m} {c}" if len(contexts) > 1 else m
                )
    ax.set_xlabel("ratio", fontsize=7)
    ax.set_ylabel("accuracy (tasks averaged)", fontsize=7)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=5)
    fig.suptitle(f"{report.model}: long-context suite (heatmaps at ratio {shown:g})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
