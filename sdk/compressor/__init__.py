"""SemToken compression: merge semantically redundant tokens into fewer LM positions.

Light on import: `semedge.compressor.spans` (numpy) is torch-free and imported by the runtime;
the PyTorch names below load lazily (PEP 562).
"""

from __future__ import annotations

from semedge._lazy import lazy_exports

_LAZY = {
    "SemTokenCompressor": "semedge.compressor.compressor",
    "CompressedPrompt": "semedge.compressor.compressor",
    "compress": "semedge.compressor.compressor",
    "merge_spans_torch": "semedge.compressor.compressor",
    "LMEncoder": "semedge.compressor.encoders",
    "MiniLMEncoder": "semedge.compressor.encoders",
    "plain_prompt": "semedge.compressor.inference",
    "prefill": "semedge.compressor.inference",
    "continuation_logits": "semedge.compressor.inference",
    "generate_compressed": "semedge.compressor.inference",
    "score_continuation": "semedge.compressor.inference",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
