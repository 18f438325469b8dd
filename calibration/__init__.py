"""semedge.calibration: INT8/FP16 calibration of exports and compression-ratio calibration.

Public names load lazily (PEP 562): importing the package pulls in neither onnx nor torch.
"""

from __future__ import annotations

from semedge._lazy import lazy_exports

_LAZY = {
    "Int8Config": "semedge.calibration.int8",
    "calibrate_int8": "semedge.calibration.int8",
    "Fp16Config": "semedge.calibration.fp16",
    "convert_fp16": "semedge.calibration.fp16",
    "RatioConfig": "semedge.calibration.ratio",
    "calibrate_ratio": "semedge.calibration.ratio",
    "Int8Report": "semedge.calibration.report",
    "Fp16Report": "semedge.calibration.report",
    "RatioReport": "semedge.calibration.report",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
