"""semedge.export: ONNX export with a parity gate (and, from its own modules, TensorRT/Triton).

Light on import: public names load lazily (PEP 562); torch and onnx load only when used.
"""

from __future__ import annotations

from semedge._lazy import lazy_exports

# public name -> module that defines it
_LAZY = {
    "export_onnx": "semedge.export.onnx_export",
    "ExportConfig": "semedge.export.onnx_export",
    "ExportReport": "semedge.export.onnx_export",
    "ParityConfig": "semedge.export.parity",
    "ParityReport": "semedge.export.parity",
    "check_parity": "semedge.export.parity",
    "graph_specs": "semedge.export.graphs",
    "cached_export": "semedge.export.cache",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
