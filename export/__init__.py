"""semedge.export: ONNX export with a parity gate (and, from its own modules, TensorRT/Triton).

Light on import: public names load lazily (PEP 562); torch and onnx load only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_LAZY = {
    "export_onnx": "semedge.export.onnx_export",
    "ExportConfig": "semedge.export.onnx_export",
    "ExportReport": "semedge.export.onnx_export",
    "ParityConfig": "semedge.export.parity",
    "ParityReport": "semedge.export.parity",
    "check_parity": "semedge.export.parity",
    "graph_specs": "semedge.export.graphs",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'semedge.export' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
