"""Artifact directories: atomic writes and manifest.json (torch-free: imported by semedge.runtime).

A directory is one deployable unit. Check order on load: format -> schema -> files and hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semedge.constants import MANIFEST, SCHEMA_VERSION
from semedge.errors import ArtifactError

__all__ = [
    "Manifest",
    "staged_dir",
    "atomic_write_text",
    "atomic_write_bytes",
    "sha256_file",
    "write_manifest",
    "load_manifest",
    "verify_manifest",
]


@contextmanager
def staged_dir(final: Path | str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp sibling of `final`; rename it to `final` only if the block succeeds.

    Raises:
        ArtifactError: `final` exists (and not `overwrite`) or its parent is not writable.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise ArtifactError(f"{final} already exists; choose another path or pass --overwrite")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as err:
        raise ArtifactError(f"cannot write to {final.parent}: {err.strerror}") from err
    try:
        yield tmp
        if final.exists():  # overwrite: swap out the old directory only once the new one is whole
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write `data` to `path` through a temp file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ArtifactError(f"cannot write {path}: {err.strerror}") from err
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write UTF-8 `text` to `path` through a temp file and rename."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Manifest:
    """What a semedge artifact directory holds; `files` maps relative path -> {sha256, bytes}."""

    format: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    graphs: dict[str, Any] = field(
        default_factory=dict
    )  # per graph: inputs/outputs name->dtype,shape
    config: dict[str, Any] = field(default_factory=dict)  # compression defaults, max_context, model
    created_by: dict[str, str] = field(default_factory=dict)  # package versions
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific (engines: GPU, TRT, ...)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "schema_version": self.schema_version,
            "created_by": self.created_by,
            "files": self.files,
            "graphs": self.graphs,
            "config": self.config,
            **self.extra,
        }


def write_manifest(directory: Path | str, manifest: Manifest) -> Path:
    """Hash every file under `directory` (except the manifest) into `manifest` and write it last."""
    directory = Path(directory)
    manifest.files = {
        p.relative_to(directory).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    return atomic_write_text(directory / MANIFEST, json.dumps(manifest.to_dict(), indent=2) + "\n")


def load_manifest(
    directory: Path | str, expect_format: str | tuple[str, ...] | None = None
) -> Manifest:
    """Read and check `directory/manifest.json` (format, schema) without hashing files.

    Raises:
        ArtifactError: the directory or manifest is missing, unreadable or of another format.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory; pass a semedge export directory")
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory} has no {MANIFEST}; is it a semedge export directory?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); re-export the directory") from err
    fmt = data.get("format")
    wanted = (expect_format,) if isinstance(expect_format, str) else expect_format
    if wanted and fmt not in wanted:
        raise ArtifactError(f"{path} has format {fmt!r}, expected {' or '.join(wanted)}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(
            f"{path} has schema_version {data.get('schema_version')!r}, this semedge reads "
            f"{SCHEMA_VERSION}; re-export with this version"
        )
    known = {"format", "schema_version", "created_by", "files", "graphs", "config"}
    return Manifest(
        format=fmt,
        files=data.get("files", {}),
        graphs=data.get("graphs", {}),
        config=data.get("config", {}),
        created_by=data.get("created_by", {}),
        extra={k: v for k, v in data.items() if k not in known},
        schema_version=data["schema_version"],
    )


def verify_manifest(directory: Path | str, manifest: Manifest | None = None) -> Manifest:
    """Check every listed file exists with the recorded size and SHA-256.

    Raises:
        ArtifactError: naming the first missing or tampered file.
    """
    directory = Path(directory)
    manifest = manifest or load_manifest(directory)
    for rel, meta in manifest.files.items():
        path = directory / rel
        if not path.is_file():
            raise ArtifactError(f"{path} is listed in {MANIFEST} but missing; re-export")
        if path.stat().st_size != meta.get("bytes") or sha256_file(path) != meta.get("sha256"):
            raise ArtifactError(
                f"{path} does not match its SHA-256 in {MANIFEST} (tampered or corrupt); re-export"
            )
    return manifest
