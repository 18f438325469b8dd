"""SemToken compression: merge semantically redundant tokens into fewer LM positions.

Light on import: `semedge.compressor.spans` (numpy) is torch-free and imported by the runtime;
the PyTorch names below load lazily (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "SemTokenCompressor": "semedge.compressor.compressor",
    "CompressedPrompt": "semedge.compressor.compressor",
    "compress": "semedge.compressor.compressor",
    "merge_spans_torch": "semedge.compressor.compressor",
    "LMEncoder": "semedge.compressor.encoders",
    "MiniLMEncoder": "semedge.compressor.encoders",
    "prefill": "semedge.compressor.inference",
    "generate_compressed": "semedge.compressor.inference",
    "score_continuation": "semedge.compressor.inference",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'semedge.compressor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
