"""semedge: long-context LMs from PyTorch to the edge.

Importing `semedge` is cheap and torch-free: public names load lazily (PEP 562), so
`import semedge.runtime` works on a box without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "SemedgeError": "semedge.errors",
    "InputError": "semedge.errors",
    "ArtifactError": "semedge.errors",
    "BackendUnavailable": "semedge.errors",
    "AccuracyError": "semedge.errors",
    "CompressionConfig": "semedge.config",
    "load_model": "semedge.models",
    "SemTokenCompressor": "semedge.compressor",
    "CompressedPrompt": "semedge.compressor",
    "compress": "semedge.compressor",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'semedge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
