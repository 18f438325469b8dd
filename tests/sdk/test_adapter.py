"""The SemToken span adapter: identity at init, numpy == torch, save/load, model checks, training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semedge.adapter_math import ADAPTER_JSON, apply_span_adapter, read_adapter_dir
from semedge.config import CompressionConfig
from semedge.errors import ArtifactError, InputError

torch = pytest.importorskip("torch")

from semedge.training.adapter import (  # noqa: E402
    SpanAdapter,
    default_adapter_dir,
    load_adapter,
    model_fingerprint,
    save_adapter,
)
from semedge.training.heads import primary_state_dict  # noqa: E402


def _randomised(d: int = 32, width: int = 16) -> SpanAdapter:
    torch.manual_seed(3)
    ad = SpanAdapter(d, width, buckets=8)
    with torch.no_grad():
        for p in ad.parameters():
            p.normal_(0.0, 0.3)
    return ad.eval()


def _inputs(n: int = 12, d: int = 32):
    g = torch.Generator().manual_seed(5)
    merged = torch.randn(n, d, generator=g) * 0.05
    lengths = torch.tensor([1, 2, 3, 1, 8, 9, 20, 2, 1, 4, 5, 1][:n])
    return merged, lengths


def test_untrained_adapter_is_identity():
    merged, lengths = _inputs()
    out = SpanAdapter(32, 16)(merged, lengths)
    assert torch.equal(out, merged)


def test_singletons_pass_unchanged_and_spans_change():
    merged, lengths = _inputs()
    with torch.no_grad():
        out = _randomised()(merged, lengths)
    single = lengths == 1
    assert torch.equal(out[single], merged[single])
    assert (out[~single] - merged[~single]).abs().amax(dim=1).min() > 1e-4


def test_numpy_and_torch_agree(tmp_path):
    ad = _randomised()
    merged, lengths = _inputs()
    with torch.no_grad():
        want = ad(merged, lengths).numpy()
    save_adapter(tmp_path / "a", ad, {"model_id": "x", "fingerprint": "0"})
    weights, meta = read_adapter_dir(tmp_path / "a")
    got = apply_span_adapter(weights, merged.numpy(), lengths.numpy())
    assert meta["hidden_size"] == 32 and meta["buckets"] == 8
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_export_drops_the_reconstruction_head(tmp_path):
    ad = _randomised()
    assert ad.auxiliary_modules() == ("recon_head",)
    assert not any(k.startswith("recon_head") for k in primary_state_dict(ad))
    save_adapter(tmp_path / "a", ad, {"model_id": "x", "fingerprint": "0"})
    weights, _ = read_adapter_dir(tmp_path / "a")
    assert not any("recon" in k for k in weights)


def test_numpy_rejects_wrong_width(tmp_path):
    save_adapter(tmp_path / "a", _randomised(), {"model_id": "x", "fingerprint": "0"})
    weights, _ = read_adapter_dir(tmp_path / "a")
    with pytest.raises(InputError, match=r"merged \(n, 32\)"):
        apply_span_adapter(weights, np.zeros((3, 16), np.float32), np.ones(3, np.int64))


def test_read_adapter_dir_rejects_non_adapter(tmp_path):
    with pytest.raises(ArtifactError, match="not a semedge adapter directory"):
        read_adapter_dir(tmp_path)


def test_load_adapter_round_trip_and_refuses_another_model(tmp_path, tiny_models):
    from semedge.models import load_model

    llama, _ = load_model(tiny_models["llama"])
    qwen, _ = load_model(tiny_models["qwen2"])
    ad = SpanAdapter(64, 16)
    with torch.no_grad():
        ad.w2.weight.normal_(0, 0.1)
    meta = {"model_id": "llama", "fingerprint": model_fingerprint(llama)}
    save_adapter(tmp_path / "a", ad, meta)
    loaded = load_adapter(tmp_path / "a", llama)
    merged, lengths = torch.randn(5, 64), torch.tensor([2, 1, 3, 4, 1])
    with torch.no_grad():
        assert torch.allclose(loaded(merged, lengths), ad(merged, lengths))
    assert load_adapter(None, llama) is None
    # same width (64), other weights: refused with a clear line
    with pytest.raises(InputError, match="trained for model 'llama'"):
        load_adapter(tmp_path / "a", qwen)
    with pytest.raises(InputError, match="trained for model 'smollm2'"):
        load_adapter("DEFAULT", llama)


def test_default_adapter_ships_for_smollm2():
    weights, meta = read_adapter_dir(default_adapter_dir())
    assert meta["model_id"] == "smollm2" and meta["hidden_size"] == 576
    assert meta["strategy"] in ("diminish", "switch", "mtl", "stl") and meta["steps"] > 0
    assert weights["span.w2"].shape == (576, meta["width"])
    assert np.abs(weights["span.w2"]).sum() > 0  # trained, not the zero init
    assert json.loads((default_adapter_dir() / ADAPTER_JSON).read_text())["ratio"] == 2.4


@pytest.fixture(scope="module")
def tiny_examples(tiny_models, wikitext_valid):
    from semedge.eval.windows import tokenize_text
    from semedge.models import load_model
    from semedge.training.adapter_train import AdapterTrainConfig, prepare_examples

    model, tok = load_model(tiny_models["llama"])
    ids = tokenize_text(wikitext_valid.read_text(encoding="utf-8")[:20000], tok)
    cfg = AdapterTrainConfig(steps=6, windows=2, context=256, target=16, topk=8, lr=1e-2)
    return model, tok, cfg, prepare_examples(model, tok, ids, cfg)


def test_adapter_training_uses_aux_tasks_then_drops_them(tiny_examples):
    from semedge.training.adapter_train import evaluate_examples, train_adapter

    model, tok, cfg, examples = tiny_examples
    ex = examples[0]
    assert ex.merged.shape[0] < 256 and int(ex.lengths.sum()) == 256
    assert ex.teacher_idx.shape == (16, 8) and (ex.recon_ids >= 0).any()
    import dataclasses

    adapter, res = train_adapter(model, examples, dataclasses.replace(cfg, strategy="switch"))
    # switch at 40 % of 6 steps = step 2: both aux tasks ran twice, then never again
    assert res.aux_calls == {"distill": 2, "recon": 2}
    assert res.cost.flops > 0 and len(res.history) == 6
    assert all("recon" not in h for h in res.history[2:])
    assert adapter.w2.weight.abs().sum() > 0  # it trained
    before = evaluate_examples(model, examples, None)["ppl"]
    after = evaluate_examples(model, examples, adapter)["ppl"]
    assert after < before  # on its own training windows


def test_compressor_applies_the_adapter(tiny_examples):
    from semedge.compressor import SemTokenCompressor

    model, tok, cfg, examples = tiny_examples
    ad = SpanAdapter(64, 16)
    with torch.no_grad():
        ad.w2.bias.fill_(0.5)
    ids = np.arange(3, 3 + 256) % 200
    keep = CompressionConfig(merged_spans="keep")  # what the adapter's compressor uses
    plain = SemTokenCompressor(model, tok, keep).compress(input_ids=ids, ratio=2.4)
    adapted = SemTokenCompressor(model, tok, adapter=ad).compress(input_ids=ids, ratio=2.4)
    multi = torch.as_tensor(plain.spans[:, 1] - plain.spans[:, 0] > 1)
    diff = (adapted.inputs_embeds[0] - plain.inputs_embeds[0]).abs().amax(dim=1)
    assert bool((diff[multi] > 0.4).all()) and bool((diff[~multi] == 0).all())


@pytest.mark.parametrize("module", ["semedge.adapter_math", "semedge.mt2st"])
def test_runtime_side_modules_import_without_torch(module):
    from tests.conftest import run_python

    proc = run_python(f"import {module}; print('ok')", block=("torch",))
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


@pytest.mark.slow
def test_default_adapter_beats_frozen_compression_on_smollm2(wikitext_test):
    from semedge.eval.windows import tokenize_text
    from semedge.models import load_model
    from semedge.training.adapter_train import (
        AdapterTrainConfig,
        evaluate_examples,
        prepare_examples,
    )

    model, tok = load_model("smollm2")
    ids = tokenize_text(wikitext_test.read_text(encoding="utf-8")[:200_000], tok)
    adapter = load_adapter("DEFAULT", model)
    # the settings it was trained with: T=2048, 96 % of the positions verbatim recent tokens
    cfg = AdapterTrainConfig(context=2048, target=128, compression=adapter.compression)
    examples = prepare_examples(model, tok, ids, cfg, count=2)
    frozen = evaluate_examples(model, examples, None)["ppl"]
    adapted = evaluate_examples(model, examples, adapter)["ppl"]
    assert adapted < 0.95 * frozen


def test_loaded_adapter_carries_the_compression_it_was_trained_with(tmp_path, tiny_models):
    from semedge.config import CompressionConfig
    from semedge.models import load_model

    llama, _ = load_model(tiny_models["llama"])
    meta = {"model_id": "llama", "fingerprint": model_fingerprint(llama)}
    trained = CompressionConfig.adapter_default(ratio=3.0)
    save_adapter(tmp_path / "new", SpanAdapter(64, 8), {**meta, "compression": trained.to_dict()})
    save_adapter(tmp_path / "old", SpanAdapter(64, 8), meta)  # written before configs were kept
    assert load_adapter(tmp_path / "new", llama).compression == trained
    assert load_adapter(tmp_path / "old", llama).compression is None
    shipped = read_adapter_dir("DEFAULT")[1]["compression"]
    assert CompressionConfig.from_dict(shipped) == CompressionConfig.adapter_default(ratio=2.4)
