"""The default model's export, made once into the semedge cache (demo, benchmarks, slow tests)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from semedge.config import CompressionConfig, cache_dir

__all__ = ["cached_export"]

log = logging.getLogger(__name__)


# bump when the exported graphs change what they take or give (2: decode takes many tokens;
# 3: decode rotates q and k inside GroupQueryAttention; 4: the encoder takes keep_from)
GRAPH_LAYOUT = 4


def cached_export(model: str = "smollm2") -> Path:
    """The parity-gated ONNX export of `model` under `cache_dir()/exports`, made on first use.

    Keyed by semedge's version, the graphs' layout and its default CompressionConfig: an export
    records the compression settings it was made with, so one from a build with other defaults
    would show those instead of the current ones, and one with older graphs lacks what the
    runtime now runs (a decode graph that takes chunks).
    """
    from semedge import __version__

    record = {**CompressionConfig().to_dict(), "graph_layout": GRAPH_LAYOUT}
    key = json.dumps(record, sort_keys=True).encode()
    out = cache_dir() / "exports" / f"{model}-{__version__}-{hashlib.sha256(key).hexdigest()[:8]}"
    if not (out / "manifest.json").is_file():
        from semedge.export.onnx_export import export_onnx

        log.warning("exporting %s to %s (once; a few minutes on a laptop CPU) ...", model, out)
        export_onnx(model, out)
    return out
