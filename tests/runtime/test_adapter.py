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


def test_runtime_follows_the_adapter_layout_recorded_in_the_export(toy_export, tmp_path):
    from semedge.config import CompressionConfig

    export = tmp_path / "adapter-layout"
    shutil.copytree(toy_export, export)
    layout = CompressionConfig.adapter_default(ratio=2.4)
    manifest = load_manifest(export)
    manifest.config["compression"] = layout.to_dict()
    write_manifest(export, manifest)
    pipe = Pipeline.from_pretrained(export)
    assert pipe.compression == layout
    text = sample_text()[:1000]
    got = pipe.prepare(text, ratio=2.4)
    T = len(got.ids)
    lengths = got.spans[:, 1] - got.spans[:, 0]
    recent = layout.recency_tokens(T)
    assert (lengths[-recent:] == 1).all() and got.spans[-recent, 0] == T - recent
    assert lengths[:-recent].min() > 1 and lengths.max() <= 64  # the far part is spans only
    default = Pipeline.from_pretrained(toy_export).prepare(text, ratio=2.4)
    assert len(default.spans) != len(got.spans) or not np.array_equal(default.spans, got.spans)


def test_with_adapter_matches_the_pytorch_compressor(tiny_export, tiny_models, tmp_path):
    import pytest

    torch = pytest.importorskip("torch")
    from semedge.compressor import SemTokenCompressor
    from semedge.config import CompressionConfig
    from semedge.errors import InputError
    from semedge.models import load_model
    from semedge.training.adapter import SpanAdapter, load_adapter, model_fingerprint, save_adapter

    model, tok = load_model(tiny_models["llama"])
    layout = CompressionConfig.adapter_default(ratio=2.4)
    torch.manual_seed(0)
    ad = SpanAdapter(64, 8)
    with torch.no_grad():
        ad.w2.weight.normal_(0.0, 0.5)
        ad.w2.bias.fill_(0.1)
    meta = {"model_id": "llama", "compression": layout.to_dict()}
    save_adapter(tmp_path / "ad", ad, {**meta, "fingerprint": model_fingerprint(model)})
    base = Pipeline.from_pretrained(tiny_export)
    pipe = base.with_adapter(tmp_path / "ad")
    assert pipe.compression == layout
    text = sample_text()[:1500]
    got = pipe.prepare(text, ratio=2.4)
    want = SemTokenCompressor(model, tok, layout, adapter=load_adapter(tmp_path / "ad", model))
    ref = want.compress(text=text, ratio=2.4)
    np.testing.assert_array_equal(got.spans, np.asarray(ref.spans))
    np.testing.assert_allclose(got.embeds, ref.inputs_embeds[0].float().numpy(), atol=1e-4)
    assert (got.spans[:, 1] - got.spans[:, 0]).max() > 8  # the far context really merged
    # the pipeline it came from is untouched, and an adapter of another model is refused
    assert base.compression != layout and base._adapter is None
    pipe.close()  # the copy borrows base's sessions: closing it must leave base running
    assert len(base.generate(text[:300], max_new_tokens=2).tokens) == 2
    qwen, _ = load_model(tiny_models["qwen2"])
    save_adapter(tmp_path / "other", ad, {**meta, "fingerprint": model_fingerprint(qwen)})
    with pytest.raises(InputError, match="trained for model"):
        Pipeline.from_pretrained(tiny_export).with_adapter(tmp_path / "other")
