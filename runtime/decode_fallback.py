"""The fp32 fallback of a quantized decode graph, the runtime's side (torch-free).

A calibrated copy (`calibrate int8 --fallback-margin`) ships the export's fp32 decode graph as
decode_exact.onnx and records a logit margin; the Generator re-runs a decode step through that
graph when `near_tie` says a running row's two most likely next tokens are closer than the margin
(docs/calibration.md). The margin's choice lives in calibration.fallback.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semedge.constants import DECODE_EXACT_ONNX
from semedge.errors import ArtifactError

__all__ = ["fallback_margin", "near_tie"]


def fallback_margin(config: dict, backends: dict[str, Any], path: Path) -> float:
    """The manifest's decode fallback margin (0: none).

    Raises:
        ArtifactError: a margin that is not a finite number >= 0, or one without its graph.
    """
    record = config.get("decode_fallback")
    if not record:
        return 0.0
    margin = record.get("margin") if isinstance(record, dict) else None
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1e6:
        raise ArtifactError(
            f"{path}/manifest.json decode_fallback margin {margin!r} is not a number >= 0; "
            "re-calibrate"
        )
    if margin and "decode_exact" not in backends:
        raise ArtifactError(
            f"{path}/manifest.json sets a decode fallback but {DECODE_EXACT_ONNX} is not listed; "
            "re-calibrate"
        )
    return float(margin)


def near_tie(logits: np.ndarray, live: Sequence[int], margin: float) -> bool:
    """Whether one of the `live` rows of (B, V) `logits` has its two most likely next tokens
    less than `margin` apart: where a quantized graph's small logit error can flip the top
    token (the fp32 graph then re-runs the step for every row). No live rows: every row."""
    rows = list(live) or list(range(len(logits)))
    z = np.array(logits[rows], dtype=np.float32)  # a copy: the top logit is masked below
    idx, top = np.arange(len(rows)), z.argmax(-1)
    best = z[idx, top]
    z[idx, top] = -np.inf  # two linear passes: 30x faster than np.partition at 49k tokens
    return bool((best - z.max(-1) < margin).any())
