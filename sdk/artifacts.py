"""Artifact directories: manifest.json, confinement and verification (torch-free: imported by
semedge.runtime). Writes (staged_dir, atomic_write_*) live in semedge.staging, re-exported here.

A directory is one deployable unit. Check order on load: format -> schema -> files and hashes.
The one rule: code loads only files the manifest lists, each verified (size, SHA-256) first, and
every path read from a manifest, adapter, config or ONNX external-data field stays inside its
directory (`confined`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from semedge import constants as C
from semedge.constants import MANIFEST, SCHEMA_VERSION
from semedge.errors import ArtifactError
from semedge.onnx_refs import onnx_external_locations
from semedge.staging import atomic_write_bytes, atomic_write_text, staged_dir, sweep_stale

__all__ = [
    "Manifest",
    "staged_dir",
    "atomic_write_text",
    "atomic_write_bytes",
    "sha256_file",
    "sweep_stale",
    "confined",
    "copy_verified",
    "manifest_from_dict",
    "compression_from_record",
    "listed_file",
    "onnx_external_locations",
    "write_manifest",
    "load_manifest",
    "verify_manifest",
]


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


# ------------------------------------------------------------------ confinement
def confined(root: Path | str, rel: Any, what: str = "path") -> Path:
    """`root/rel`, provided `rel` is a relative name that resolves inside `root`.

    Args:
        root: the directory `rel` must stay in.
        rel: a path read from a manifest, adapter, config or ONNX external-data field.
        what: what `rel` is, for the message ("manifest entry", "external data of decode.onnx").

    Raises:
        ArtifactError: `rel` is not a string, is empty, absolute, has `..`, or a symlink on the
            way leads outside `root`.
    """
    root = Path(root)
    if not isinstance(rel, str) or not rel.strip() or "\x00" in rel or rel in (".", "./"):
        raise ArtifactError(f"{what} {rel!r} in {root} is not a relative file name; re-export")
    posix, win = PurePosixPath(rel.replace("\\", "/")), PureWindowsPath(rel)
    if posix.is_absolute() or win.drive or win.root or ".." in posix.parts:
        raise ArtifactError(
            f"{what} {rel!r} escapes {root} (absolute or '..'); refusing to read or write it"
        )
    base, target = root.resolve(), (root / rel).resolve()
    if target == base or base not in target.parents:
        raise ArtifactError(
            f"{what} {rel!r} in {root} resolves outside it (symlink to {target}); refusing it"
        )
    return root / rel


# ------------------------------------------------------------------ schema
_HEX64 = re.compile(r"[0-9a-f]{64}")
_POSITIVE = ("max_context", "max_positions", "num_layers", "num_kv_heads", "head_dim",
             "hidden_size", "vocab_size", "local_kv_slots")  # fmt: skip
_TEXT = ("model", "model_type", "dtype", "logits")
_SECTIONS = ("created_by", "graphs", "config")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _schema_error(path: Path, where: str, value: Any, expected: str) -> ArtifactError:
    shown = (
        repr(value) if len(repr(value)) <= 60 else f"{type(value).__name__} {repr(value)[:50]}..."
    )
    return ArtifactError(
        f"{path}: {where} must be {expected}, got {shown}; re-export the directory with semedge"
    )


def _check_files(path: Path, files: Any) -> None:
    if not isinstance(files, dict):
        raise _schema_error(path, "'files'", files, "an object {path: {sha256, bytes}}")
    for rel, meta in files.items():
        confined(path.parent, rel, f"{MANIFEST} entry")
        if not isinstance(meta, dict):
            raise _schema_error(path, f"files[{rel!r}]", meta, "an object {sha256, bytes}")
        if not isinstance(meta.get("sha256"), str) or not _HEX64.fullmatch(meta["sha256"]):
            raise _schema_error(path, f"files[{rel!r}].sha256", meta.get("sha256"), "64 hex digits")
        if not _int(meta.get("bytes")) or meta["bytes"] < 0:
            raise _schema_error(path, f"files[{rel!r}].bytes", meta.get("bytes"), "an integer >= 0")


def _check_config(path: Path, config: dict[str, Any]) -> None:
    for key in _POSITIVE:
        v = config.get(key)
        if v is not None and not (_int(v) and v > 0):
            raise _schema_error(path, f"config.{key}", v, "a positive integer")
    for key in _TEXT:
        if config.get(key) is not None and not isinstance(config[key], str):
            raise _schema_error(path, f"config.{key}", config[key], "a string")
    for key in ("eos_token_id", "bos_token_id"):
        v = config.get(key)
        ok = v is None or (_int(v) and v >= 0) or (
            isinstance(v, list) and all(_int(i) and i >= 0 for i in v))  # fmt: skip
        if not ok:
            raise _schema_error(path, f"config.{key}", v, "a token id or a list of them")
    local, layers = config.get("local_layers"), config.get("num_layers")
    if local is not None and not (isinstance(local, list) and all(
            _int(i) and 0 <= i < (layers if _int(layers) else 0) for i in local)):  # fmt: skip
        raise _schema_error(path, "config.local_layers", local, "a list of layer indices")
    peak = config.get("hidden_peak")
    if peak is not None and not (isinstance(peak, (int, float)) and not isinstance(peak, bool)
                                 and math.isfinite(peak) and peak >= 0):  # fmt: skip
        raise _schema_error(path, "config.hidden_peak", peak, "a finite number >= 0")
    adapter = config.get("adapter")
    if adapter is not None:
        confined(path.parent, adapter, "config.adapter")
    for key in ("compression", "encoder", "quantization"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise _schema_error(path, f"config.{key}", config[key], "an object")


def _check_engines(path: Path, engines: Any) -> None:
    if not isinstance(engines, dict):
        raise _schema_error(path, "'engines'", engines, "an object {graph: {file, ...}}")
    for graph, entry in engines.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise _schema_error(path, f"engines[{graph!r}]", entry, "an object with a 'file'")
        confined(path.parent, entry["file"], f"engines[{graph!r}].file")
        if not isinstance(entry.get("profiles", []), list):
            raise _schema_error(path, f"engines[{graph!r}].profiles", entry["profiles"], "a list")


def manifest_from_dict(data: Any, path: Path) -> Manifest:
    """Schema-check a parsed manifest.json (types, required keys, confined paths).

    Raises:
        ArtifactError: naming the first bad field, its value and what was expected.
    """
    if not isinstance(data, dict):
        raise _schema_error(path, "the manifest", data, "a JSON object")
    if not isinstance(data.get("format"), str):
        raise _schema_error(path, "'format'", data.get("format"), "a string (semedge-export, ...)")
    if "files" not in data:
        raise ArtifactError(f"{path} has no 'files' section; re-export the directory")
    _check_files(path, data["files"])
    for key in _SECTIONS:
        if not isinstance(data.get(key, {}), dict):
            raise _schema_error(path, f"'{key}'", data[key], "an object")
    for name, spec in data.get("graphs", {}).items():
        if not isinstance(spec, dict) or not all(
            isinstance(spec.get(k, {}), dict) for k in ("inputs", "outputs")
        ):
            raise _schema_error(path, f"graphs[{name!r}]", spec, "an object {inputs, outputs}")
    _check_config(path, data.get("config", {}))
    if "engines" in data:
        _check_engines(path, data["engines"])
    known = {"format", "schema_version", "created_by", "files", "graphs", "config"}
    return Manifest(
        format=data["format"], files=data["files"], graphs=data.get("graphs", {}),
        config=data.get("config", {}), created_by=data.get("created_by", {}),
        extra={k: v for k, v in data.items() if k not in known},
        schema_version=data["schema_version"],
    )  # fmt: skip


# ------------------------------------------------------------------ write / load / verify
def write_manifest(directory: Path | str, manifest: Manifest) -> Path:
    """Hash every file under `directory` (except the manifest) into `manifest` and write it last.

    Raises:
        ArtifactError: a symlink in `directory` (an artifact holds real files only).
    """
    directory = Path(directory)
    files = {}
    for dirpath, dirs, names in os.walk(directory):
        for name in sorted(dirs + names):
            p = Path(dirpath) / name
            if p.is_symlink():
                raise ArtifactError(f"{p} is a symlink; an artifact directory holds files only")
        for name in sorted(names):
            p = Path(dirpath) / name
            rel = p.relative_to(directory).as_posix()
            if rel != MANIFEST:
                files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest.files = dict(sorted(files.items()))
    return atomic_write_text(directory / MANIFEST, json.dumps(manifest.to_dict(), indent=2) + "\n")


def load_manifest(
    directory: Path | str, expect_format: str | tuple[str, ...] | None = None
) -> Manifest:
    """Read and schema-check `directory/manifest.json` (format, schema) without hashing files.

    Raises:
        ArtifactError: the directory or manifest is missing, unreadable, malformed or of another
            format.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory; pass a semedge export directory")
    path = directory / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise ArtifactError(f"{directory} has no {MANIFEST}; is it a semedge export directory?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); re-export the directory") from err
    except (OSError, RecursionError) as err:
        raise ArtifactError(f"cannot read {path}: {err}") from err
    fmt = data.get("format") if isinstance(data, dict) else None
    wanted = (expect_format,) if isinstance(expect_format, str) else expect_format
    if wanted and fmt not in wanted:
        raise ArtifactError(f"{path} has format {fmt!r}, expected {' or '.join(wanted)}")
    if isinstance(data, dict) and data.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(
            f"{path} has schema_version {data.get('schema_version')!r}, this semedge reads "
            f"{SCHEMA_VERSION}; re-export with this version"
        )
    return manifest_from_dict(data, path)


# files a loader picks up by name or suffix: present but unlisted means tampered
_LOADABLE_NAMES = {C.EMBED_ONNX, C.ENCODER_ONNX, C.PREFILL_ONNX, C.DECODE_ONNX, C.TOKENIZER_JSON,
                   C.SEMEDGE_CONFIG, C.ADAPTER_WEIGHTS, "adapter.json"}  # fmt: skip
_LOADABLE_SUFFIXES = (".onnx", ".plan", ".engine", ".data", ".onnx_data", ".safetensors")


def _check_listed_file(directory: Path, rel: str, meta: dict[str, Any], hashes: bool,
                       listed: dict[str, Any]) -> None:  # fmt: skip
    path = confined(directory, rel, f"{MANIFEST} entry")
    if path.is_symlink() or not path.is_file():
        raise ArtifactError(f"{path} is listed in {MANIFEST} but missing; re-export")
    if path.stat().st_size != meta["bytes"] or (hashes and sha256_file(path) != meta["sha256"]):
        raise ArtifactError(
            f"{path} does not match its SHA-256 in {MANIFEST} (tampered or corrupt); re-export"
        )
    if path.suffix == ".onnx":
        for loc in onnx_external_locations(path):
            where = confined(path.parent, loc, f"external data of {rel}")
            if where.relative_to(directory).as_posix() not in listed:
                raise ArtifactError(
                    f"{rel} reads external data {loc!r}, which {MANIFEST} does not list "
                    "(tampered?); re-export"
                )


def verify_manifest(
    directory: Path | str, manifest: Manifest | None = None, hashes: bool = True
) -> Manifest:
    """Check every listed file (size and SHA-256) and that no loadable file is unlisted.

    Args:
        directory: the artifact directory.
        manifest: its loaded manifest (read when None).
        hashes: also compare SHA-256 (False: sizes, listing and confinement only).

    Raises:
        ArtifactError: naming the first missing, tampered, unlisted or escaping file.
    """
    directory = Path(directory)
    manifest = manifest or load_manifest(directory)
    for rel, meta in manifest.files.items():
        _check_listed_file(directory, rel, meta, hashes, manifest.files)
    for dirpath, _, names in os.walk(directory):
        for name in names:
            p = Path(dirpath) / name
            rel = p.relative_to(directory).as_posix()
            loadable = name in _LOADABLE_NAMES or name.endswith(_LOADABLE_SUFFIXES)
            if rel not in manifest.files and rel != MANIFEST and loadable:
                raise ArtifactError(
                    f"{p} is not listed in {MANIFEST} (added, or its entry removed: tampered?); "
                    "remove it or re-export"
                )
    return manifest


def listed_file(directory: Path | str, manifest: Manifest, rel: str, what: str = "file") -> Path:
    """The path of `rel` inside `directory`, provided the manifest lists it (the only way code
    should name a file it loads from an artifact).

    Raises:
        ArtifactError: `rel` is not listed, escapes `directory`, or is missing.
    """
    directory = Path(directory)
    path = confined(directory, rel, what)
    if rel not in manifest.files:
        state = "present but unlisted (tampered?)" if path.exists() else "missing"
        raise ArtifactError(
            f"{path} ({what}) is not listed in {directory / MANIFEST}: {state}; re-export"
        )
    if path.is_symlink() or not path.is_file():
        raise ArtifactError(f"{path} ({what}) is listed in {MANIFEST} but missing; re-export")
    return path


def copy_verified(
    src: Path | str, manifest: Manifest, dest: Path | str, skip: Collection[str] = ()
) -> None:
    """Copy the files `manifest` lists (but `skip` and the manifest) from `src` into `dest`, each
    path confined to both directories, and check every copy against its recorded SHA-256, so a
    copier writes exactly what was verified (the one way stages copy an artifact's files).

    Raises:
        ArtifactError: a path escapes, a file is missing or differs from the manifest.
    """
    src, dest = Path(src), Path(dest)
    for rel, meta in manifest.files.items():
        if rel in skip or rel == MANIFEST:
            continue
        source, target = confined(src, rel, f"{MANIFEST} entry"), confined(dest, rel, "copy of")
        if source.is_symlink() or not source.is_file():
            raise ArtifactError(f"{source} is listed in {MANIFEST} but missing; re-export")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
        if target.stat().st_size != meta["bytes"] or sha256_file(target) != meta["sha256"]:
            raise ArtifactError(
                f"{source} does not match its SHA-256 in {MANIFEST} (tampered or changed while "
                "copying); re-export"
            )


def compression_from_record(record: Any, where: Path | str) -> Any:
    """The CompressionConfig a manifest or adapter.json records (None/empty: the defaults).

    Raises:
        ArtifactError: the record is not an object or its fields are not a valid config.
    """
    from semedge.config import CompressionConfig

    if not record:
        return CompressionConfig()
    if not isinstance(record, dict):
        raise ArtifactError(f"{where}: compression must be an object, got {record!r}; re-export")
    try:
        return CompressionConfig.from_dict(record)
    except (TypeError, ValueError, KeyError) as err:  # InputError is a ValueError
        raise ArtifactError(
            f"{where}: recorded compression settings are invalid ({err}); re-export"
        ) from err
