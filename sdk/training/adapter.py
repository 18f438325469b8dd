"""The SemToken span adapter (torch): a zero-initialised residual MLP on merged span embeddings.

Untrained it is the identity. It only changes spans of more than one token, so the LM reads
uncompressed text exactly as before. `semedge.adapter_math` applies the same weights in numpy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from semedge.adapter_math import (
    ADAPTER_FORMAT,
    ADAPTER_JSON,
    ADAPTER_SCHEMA,
    RMS_EPS,
    adapter_compression,
    check_adapter_for,
    embedding_fingerprint,
    read_adapter_dir,
    resolve_adapter_dir,
)
from semedge.artifacts import staged_dir
from semedge.constants import ADAPTER_WEIGHTS
from semedge.deps import require
from semedge.training.heads import AuxiliaryHeads

torch = require("torch")
nn = torch.nn

log = logging.getLogger(__name__)

__all__ = [
    "SpanAdapter",
    "save_adapter",
    "load_adapter",
    "default_adapter_dir",
    "model_fingerprint",
    "DEFAULT",
]

DEFAULT = "DEFAULT"


class SpanAdapter(AuxiliaryHeads, nn.Module):
    """Span projector: y = x·(1 + gain[len]) + W2·silu(W1·x̂ + U·onehot(len) + b1) + b2.

    Called as the compressor's `adapter`: `adapter(merged (n, D), lengths (n,)) -> (n, D)`.
    `recon_head` (a residual D -> D map read out through the LM's own output layer) serves the
    span-reconstruction auxiliary task only and is dropped at export (`auxiliary_modules()`).

    Args:
        hidden_size: D, the LM's embedding width.
        width: H, the MLP's hidden width.
        buckets: L, span lengths >= L share the last length feature.
    """

    AUXILIARY_MODULES = ("recon_head",)
    compression = None  # the CompressionConfig it was trained with, set by load_adapter

    def __init__(self, hidden_size: int, width: int = 64, buckets: int = 16) -> None:
        super().__init__()
        self.hidden_size, self.width, self.buckets = hidden_size, width, buckets
        self.w1 = nn.Linear(hidden_size, width)
        self.u = nn.Linear(buckets, width, bias=False)
        self.w2 = nn.Linear(width, hidden_size)
        self.gain = nn.Parameter(torch.zeros(buckets))
        self.recon_head = nn.Linear(hidden_size, hidden_size)
        with torch.no_grad():  # zero-init outputs: the untrained adapter is the identity
            self.w2.weight.zero_()
            self.w2.bias.zero_()
            self.u.weight.normal_(0.0, 0.02)
            self.recon_head.weight.zero_()
            self.recon_head.bias.zero_()

    def forward(self, merged: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(n, D) merged embeddings, (n,) lengths -> (n, D); singleton spans pass unchanged."""
        x = merged.float()
        lengths = lengths.to(x.device).long()
        xn = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS)
        f = nn.functional.one_hot(lengths.clamp(1, self.buckets) - 1, self.buckets).float()
        h = nn.functional.silu(self.w1(xn) + self.u(f))  # (n, H)
        y = x * (1.0 + f @ self.gain)[:, None] + self.w2(h)  # (n, D)
        return torch.where((lengths > 1)[:, None], y, x).to(merged.dtype)

    def reconstruct(self, hidden: torch.Tensor) -> torch.Tensor:
        """(m, D) LM states at merged positions -> (m, D) to read out with the LM's output layer."""
        return hidden + self.recon_head(hidden)

    def export_tensors(self) -> dict[str, torch.Tensor]:
        """The primary-path tensors under their adapter.safetensors names (no recon head)."""
        return {
            "span.w1": self.w1.weight, "span.b1": self.w1.bias, "span.u": self.u.weight,
            "span.w2": self.w2.weight, "span.b2": self.w2.bias, "span.gain": self.gain,
        }  # fmt: skip

    def load_tensors(self, tensors: dict[str, Any]) -> None:
        """Inverse of export_tensors (numpy or torch tensors)."""
        with torch.no_grad():
            for name, p in self.export_tensors().items():
                p.copy_(torch.as_tensor(tensors[name]))


def model_fingerprint(model: Any) -> str:
    """A short hash of the LM's first embedding rows: tells models of equal width apart."""
    emb = model.get_input_embeddings().weight
    return embedding_fingerprint(emb[: min(16, emb.shape[0])].detach().float().cpu().numpy())


def default_adapter_dir() -> Path:
    """The adapter shipped in the package (trained for SmolLM2)."""
    return resolve_adapter_dir(DEFAULT)


def save_adapter(
    directory: Path | str, adapter: SpanAdapter, meta: dict[str, Any], overwrite: bool = False
) -> Path:
    """Write adapter.safetensors (primary path only) + adapter.json atomically.

    Args:
        directory: the new adapter directory (must not exist).
        adapter: the trained adapter.
        meta: what to record: model_id, fingerprint, ratio, strategy, steps, metrics...
        overwrite: replace an existing directory (atomically, once the new one is whole).

    Raises:
        ArtifactError: `directory` exists or cannot be written.
    """
    st = require("safetensors.torch")
    tensors = {
        k: v.detach().float().contiguous().cpu() for k, v in adapter.export_tensors().items()
    }
    info = {
        "format": ADAPTER_FORMAT, "schema_version": ADAPTER_SCHEMA,
        "hidden_size": adapter.hidden_size, "width": adapter.width, "buckets": adapter.buckets,
        **meta,
    }  # fmt: skip
    with staged_dir(directory, overwrite=overwrite) as tmp:
        st.save_file(tensors, tmp / ADAPTER_WEIGHTS, metadata={"format": ADAPTER_FORMAT})
        (tmp / ADAPTER_JSON).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return Path(directory)


def load_adapter(spec: str | Path | None, model: Any) -> SpanAdapter | None:
    """Load an adapter for `model`: "DEFAULT" (the shipped one), a directory, or None (no adapter).

    Args:
        spec: DEFAULT | adapter directory | None.
        model: the LM the adapter will feed (a transformers model or LoadedModel).

    Returns:
        The SpanAdapter in eval mode (its `compression` attribute is the CompressionConfig it
        was trained with, or None for adapters that did not record one), or None when spec is
        None.

    Raises:
        InputError: the adapter was trained for another model.
        ArtifactError: the directory is not a readable adapter.
    """
    if spec is None:
        return None
    model = getattr(model, "model", model)
    directory = resolve_adapter_dir(spec)
    weights, meta = read_adapter_dir(directory)
    check_adapter_model(meta, model, directory)
    adapter = SpanAdapter(int(meta["hidden_size"]), int(meta["width"]), int(meta["buckets"]))
    adapter.load_tensors(weights)
    adapter.compression = adapter_compression(meta)  # what it was trained with (None: unknown)
    return adapter.eval().requires_grad_(False)


def check_adapter_model(meta: dict[str, Any], model: Any, where: Path | str) -> None:
    """Refuse an adapter trained for another model (width or embedding fingerprint differ).

    Raises:
        InputError: the adapter does not belong to `model`.
    """
    name = getattr(model.config, "_name_or_path", "") or "this model"
    width = int(model.get_input_embeddings().weight.shape[1])
    check_adapter_for(meta, where, width, model_fingerprint(model), Path(str(name)).name)
