"""Hypothesis fuzz of the other files semedge reads: adapter directories (adapter.json +
adapter.safetensors) and the manifest's recorded compression config. Every input either loads or
is a one-line SemedgeError (never another exception type), and nothing outside is touched."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semedge.adapter_math import ADAPTER_FORMAT, TENSOR_NAMES, adapter_compression, read_adapter_dir
from semedge.errors import SemedgeError
from semedge.runtime import Pipeline
from tests.sdk.fs_audit import FsAudit, tree_snapshot

leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                 st.text(max_size=8), st.sampled_from(["../x", "/etc/hostname", "mean", "0" * 16]))  # fmt: skip
value = st.recursive(
    leaf, lambda k: st.one_of(st.lists(k, max_size=3), st.dictionaries(st.text(max_size=6), k, max_size=3)),
    max_leaves=6,
)  # fmt: skip
COMPRESSION_KEYS = ["ratio", "max_span", "recency_window", "recency_fraction", "sink_tokens",
                    "threshold", "span_repr", "protected_strings", "encoder_window", "extra", "junk"]  # fmt: skip
compression = st.dictionaries(st.sampled_from(COMPRESSION_KEYS), value, max_size=4)
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


def _safetensors(tensors: dict[str, tuple[str, list[int], bytes]], header_junk: bytes) -> bytes:
    header = {name: {"dtype": dt, "shape": shape, "data_offsets": [0, len(data)]}
              for name, (dt, shape, data) in tensors.items()}  # fmt: skip
    raw = json.dumps(header).encode() + header_junk
    body = b"".join(d for _, _, d in tensors.values())
    return struct.pack("<Q", len(raw)) + raw + body


tensor = st.tuples(
    st.sampled_from(["F32", "F16", "I64", "BOOL", "X9"]),
    st.lists(st.integers(-1, 5), max_size=3),
    st.binary(max_size=64),
)


@SETTINGS
@given(
    meta=st.one_of(value, st.fixed_dictionaries(
        {"format": st.sampled_from([ADAPTER_FORMAT, "x"]), "schema_version": st.sampled_from([1, "1", 2]),
         "hidden_size": value, "compression": st.one_of(compression, value)})),
    tensors=st.dictionaries(st.sampled_from([*TENSOR_NAMES, "other"]), tensor, max_size=7),
    junk=st.sampled_from([b"", b"  ", b"\xff", b"}"]),
    raw=st.one_of(st.none(), st.binary(max_size=40)),
)  # fmt: skip
def test_fuzzed_adapter_dirs_are_semedge_errors(tmp_path_factory, meta, tensors, junk, raw):
    base = tmp_path_factory.mktemp("adapter-fuzz")
    ad = base / "ad"
    ad.mkdir()
    (base / "outside.bin").write_bytes(b"x")
    (ad / "adapter.json").write_text(json.dumps(meta))
    (ad / "adapter.safetensors").write_bytes(
        raw if raw is not None else _safetensors(tensors, junk)
    )
    before = tree_snapshot(base, skip=ad)
    with FsAudit(allowed=ad) as audit:
        try:
            _, got = read_adapter_dir(ad)
            adapter_compression(got)
        except SemedgeError as err:
            assert "\n" not in str(err)
    assert audit.outside == [] and tree_snapshot(base, skip=ad) == before


def test_a_valid_adapter_still_loads(tmp_path):
    from safetensors.numpy import save_file

    d, h, n = 8, 4, 3
    shapes = {"span.w1": (h, d), "span.u": (h, n), "span.b1": (h,), "span.w2": (d, h),
              "span.b2": (d,), "span.gain": (n,)}  # fmt: skip
    save_file(
        {k: np.zeros(s, np.float32) for k, s in shapes.items()},
        str(tmp_path / "adapter.safetensors"),
    )
    (tmp_path / "adapter.json").write_text(
        json.dumps({"format": ADAPTER_FORMAT, "schema_version": 1})
    )
    weights, _ = read_adapter_dir(tmp_path)
    assert weights["span.w1"].shape == (h, d)


def test_symlinked_adapter_file_is_refused(tmp_path):
    (tmp_path / "ad").mkdir()
    (tmp_path / "adapter.json").write_text("{}")
    (tmp_path / "ad" / "adapter.json").symlink_to(tmp_path / "adapter.json")
    (tmp_path / "ad" / "adapter.safetensors").write_bytes(b"")
    with pytest.raises(SemedgeError, match="resolves outside"):
        read_adapter_dir(tmp_path / "ad")


@SETTINGS
@given(record=st.one_of(compression, value))
def test_fuzzed_recorded_compression_is_an_artifact_error(toy_export, tmp_path_factory, record):
    export = tmp_path_factory.mktemp("cfg-fuzz") / "export"
    shutil.copytree(toy_export, export)
    data = json.loads((export / "manifest.json").read_text())
    data["config"]["compression"] = record
    (export / "manifest.json").write_text(json.dumps(data))
    with FsAudit(allowed=export) as audit:
        try:
            Pipeline.from_pretrained(export, verify=False).close()
        except SemedgeError as err:
            assert "\n" not in str(err)
    assert audit.outside == []
