"""The torch-free base: configs, atomic writes, manifests."""

from __future__ import annotations

import json

import pytest

from semedge.artifacts import Manifest, load_manifest, staged_dir, verify_manifest, write_manifest
from semedge.config import CompressionConfig
from semedge.errors import ArtifactError, InputError


def test_compression_config_rejects_ratio_below_one():
    with pytest.raises(InputError, match="ratio must be >= 1.0"):
        CompressionConfig(ratio=0.5)


def test_compression_config_round_trips_and_keeps_unknown_keys():
    cfg = CompressionConfig(ratio=3.0, protected_strings=("Paris",))
    data = cfg.to_dict() | {"future_knob": 7}
    back = CompressionConfig.from_dict(json.loads(json.dumps(data)))
    assert back == cfg and back.extra["future_knob"] == 7


def test_staged_dir_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_dir(final) as tmp:
        (tmp / "a.txt").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_manifest_detects_tampering(tmp_path):
    final = tmp_path / "art"
    with staged_dir(final) as tmp:
        (tmp / "w.bin").write_bytes(b"\x00" * 16)
        write_manifest(tmp, Manifest(format="semedge-export"))
    verify_manifest(final)
    (final / "w.bin").write_bytes(b"\x01" + b"\x00" * 15)
    with pytest.raises(ArtifactError, match="w.bin does not match its SHA-256"):
        verify_manifest(final)


def test_load_manifest_rejects_other_format(tmp_path):
    with staged_dir(tmp_path / "e") as tmp:
        write_manifest(tmp, Manifest(format="semedge-engine"))
    with pytest.raises(ArtifactError, match="expected semedge-export"):
        load_manifest(tmp_path / "e", expect_format="semedge-export")
