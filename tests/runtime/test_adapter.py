"""The export's MT2ST span adapter is applied at merge time, to multi-token spans only."""

from __future__ import annotations

import json
import shutil

import numpy as np
from safetensors.numpy import save_file
from semedge.artifacts import load_manifest, write_manifest
from semedge.runtime import Pipeline

from tests.runtime.toy_export import D, sample_text


def test_adapter_changes_merged_spans_only(toy_export, tmp_path):
    export = tmp_path / "with-adapter"
    shutil.copytree(toy_export, export)
    rng = np.random.default_rng(1)
    H, L = 4, 8
    shapes = {"span.w1": (H, D), "span.u": (H, L), "span.b1": (H,), "span.w2": (D, H),
              "span.b2": (D,), "span.gain": (L,)}  # fmt: skip
    save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()},
              str(export / "adapter.safetensors"))  # fmt: skip
    manifest = load_manifest(export)
    manifest.config["adapter"] = "adapter.safetensors"
    write_manifest(export, manifest)
    assert json.loads((export / "manifest.json").read_text())["files"]["adapter.safetensors"]
    text = sample_text()[:600]
    plain = Pipeline.from_pretrained(toy_export).prepare(text, ratio=2.4)
    adapted = Pipeline.from_pretrained(export).prepare(text, ratio=2.4)
    np.testing.assert_array_equal(plain.spans, adapted.spans)
    multi = (plain.spans[:, 1] - plain.spans[:, 0]) > 1
    assert multi.any()
    np.testing.assert_array_equal(plain.embeds[~multi], adapted.embeds[~multi])
    assert not np.allclose(plain.embeds[multi], adapted.embeds[multi])
