"""semedge: long-context LMs from PyTorch to the edge.

Importing `semedge` is cheap and torch-free: public names load lazily (PEP 562), so
`import semedge.runtime` works on a box without torch.
"""

from __future__ import annotations

from semedge._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, extra=("__version__",))
