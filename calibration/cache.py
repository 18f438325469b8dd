"""Calibration cache: collected activation ranges keyed by graph + data hash (torch-free).

A rerun with the same graph, text and settings finds `<root>/<key>.json` and skips collection
(no calibration feeds are built, no calibration pass is run). The ranges file is ONNX Runtime's
own format (`save_tensors_data`), so `quantize_static(calibration_cache_path=...)` reads it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from semedge.artifacts import atomic_write_text, sha256_file
from semedge.config import cache_dir
from semedge.errors import ArtifactError

__all__ = ["RangeCache", "default_cache_root"]


def default_cache_root() -> Path:
    """$SEMEDGE_CACHE/calibration (see semedge.config.cache_dir)."""
    return cache_dir() / "calibration"


@dataclass(frozen=True)
class RangeCache:
    """A directory of range files; one per (graph SHA-256, data fingerprint, method, symmetry)."""

    root: Path

    def key(self, graph: Path, fingerprint: str, **settings: object) -> str:
        """Cache key: the graph's SHA-256, the data fingerprint and the range settings."""
        h = hashlib.sha256(sha256_file(graph).encode())
        h.update(fingerprint.encode())
        h.update(json.dumps(settings, sort_keys=True, default=str).encode())
        return h.hexdigest()[:32]

    def path(self, key: str) -> Path:
        return Path(self.root) / f"{key}.json"

    def hit(self, key: str) -> bool:
        """True when ranges for `key` were collected before and still parse."""
        path = self.path(key)
        if not path.is_file():
            return False
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            path.unlink(missing_ok=True)  # a torn or corrupt entry: recollect
            return False
        return True

    def prepare(self, key: str, fingerprint: str, graph: Path) -> Path:
        """Create the cache directory and a sidecar describing the entry; return the ranges path."""
        try:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ArtifactError(f"cannot create calibration cache {self.root}: {err}") from err
        meta = {"graph": str(graph), "data_sha256": fingerprint, "created": time.time()}
        atomic_write_text(Path(self.root) / f"{key}.meta.json", json.dumps(meta) + "\n")
        return self.path(key)
