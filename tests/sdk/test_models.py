"""Model loading: tiny families load and run; bad specs fail clearly; (slow) the real SmolLM2."""

from __future__ import annotations

import pytest

from semedge.errors import InputError
from semedge.models import load_model


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "gemma3"])
def test_tiny_family_loads_and_runs(tiny_models, family):
    import torch

    model, tok = load_model(tiny_models[family])
    ids = tok("The river rises in the hills.", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_unknown_model_path_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="unknown model"):
        load_model(tmp_path / "does-not-exist")


def test_directory_without_config_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no config.json"):
        load_model(tmp_path)


@pytest.mark.slow
def test_smollm2_loads_from_cache_and_predicts_paris():
    import torch

    model, tok = load_model("smollm2")
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        nxt = model(ids).logits[0, -1].argmax().item()
    assert tok.decode([nxt]).strip() == "Paris"
