"""The CPU's matrix-engine features (from /proc/cpuinfo flags) and what each precision needs.

Torch-free: the export records `cpu_features()` in its manifest; the runtime warns once when it
runs on a CPU that lacks a feature the export was tuned on; `semedge doctor` shows them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

__all__ = ["MATRIX_FLAGS", "NEEDS", "cpu_features", "missing_features", "warn_if_missing"]

log = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
# the flags that decide which matrix engine runs a precision fast
MATRIX_FLAGS = ("amx_bf16", "amx_int8", "avx512_vnni", "avx512_bf16", "avx_vnni", "avx512f")
# precision -> flags of which at least one must be present for it to run on the matrix engine
NEEDS = {
    "bf16": ("amx_bf16", "avx512_bf16"),
    "int8": ("amx_int8", "avx512_vnni", "avx_vnni"),
}


def cpu_features(cpuinfo: Path | str = CPUINFO) -> list[str]:
    """The MATRIX_FLAGS this CPU has (empty where /proc/cpuinfo is unreadable: not Linux x86)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
            break
    return [f for f in MATRIX_FLAGS if f in flags]


def missing_features(tuned_on: Iterable[str], have: Iterable[str] | None = None) -> list[str]:
    """Features of `tuned_on` that this CPU (`have`, default `cpu_features()`) lacks."""
    have = set(cpu_features() if have is None else have)
    return [f for f in tuned_on if f not in have]


def warn_if_missing(name: str, config: dict, have: Iterable[str] | None = None) -> list[str]:
    """Log one warning when the export `name` was tuned on CPU features this CPU lacks."""
    tuned = config.get("cpu_features") or []
    missing = missing_features(tuned, have)
    if missing:
        log.warning(
            "%s was tuned for %s precision on a CPU with %s; this CPU lacks %s, so it may run "
            "slower than an fp32 export (re-export here with --precision auto)",
            name, config.get("precision", "fp32"), ", ".join(tuned), ", ".join(missing),
        )  # fmt: skip
    return missing
