"""Model loading: the embedded SmolLM2 default or any local Hugging Face causal LM."""

from __future__ import annotations

from semedge.models.loader import LoadedModel, load_model, model_id
from semedge.models.tiny import TINY_FAMILIES, make_tiny_model

__all__ = ["load_model", "LoadedModel", "model_id", "make_tiny_model", "TINY_FAMILIES"]
