"""Optional heavy dependencies, imported only inside the functions that need them (torch-free)."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from semedge.errors import BackendUnavailable

__all__ = ["require", "has_module"]

_EXTRA = {
    "torch": "torch",
    "transformers": "torch",
    "gguf": "torch",
    "onnx": "torch",
    "matplotlib": "torch",
}


def require(module: str, extra: str | None = None) -> ModuleType:
    """Import `module` or raise BackendUnavailable with an install hint.

    Args:
        module: dotted module name, e.g. "onnxruntime".
        extra: the semedge extra that installs it; looked up for well-known modules when None.

    Raises:
        BackendUnavailable: the module cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = extra or _EXTRA.get(module.split(".")[0])
        hint = f"pip install 'semedge[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        raise BackendUnavailable(f"{module} is not available ({err}); {hint}") from err


def has_module(module: str) -> bool:
    """True when `module` can be found, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
