"""The SemToken span adapter in numpy: read adapter.safetensors and apply it to merged spans.

Torch-free: imported by semedge.runtime. `semedge.training.adapter.SpanAdapter` is the torch
twin used for training; both compute exactly this (a test checks they agree):

    x̂ = x / rms(x)                                     (RMS-normalised merged embedding, (n, D))
    f = onehot(min(len, L) - 1)                         (span-length features, (n, L))
    h = silu(x̂ W1ᵀ + f Uᵀ + b1)                         ((n, H))
    y = x · (1 + gain[len]) + h W2ᵀ + b2                for spans with len > 1; y = x otherwise
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from semedge.errors import ArtifactError, InputError

__all__ = [
    "ADAPTER_JSON",
    "ADAPTER_FORMAT",
    "TENSOR_NAMES",
    "apply_span_adapter",
    "read_adapter_dir",
    "resolve_adapter_dir",
    "adapter_compression",
    "embedding_fingerprint",
    "check_adapter_for",
    "length_features",
]

ADAPTER_JSON = "adapter.json"
ADAPTER_FORMAT = "semedge-adapter"
ADAPTER_SCHEMA = 1
# tensor name -> shape in terms of D (hidden size), H (adapter width), L (length buckets)
TENSOR_NAMES = {
    "span.w1": ("H", "D"),
    "span.u": ("H", "L"),
    "span.b1": ("H",),
    "span.w2": ("D", "H"),
    "span.b2": ("D",),
    "span.gain": ("L",),
}
RMS_EPS = 1e-6


def length_features(lengths: np.ndarray, buckets: int) -> np.ndarray:
    """(n,) span lengths -> (n, L) one-hot of min(len, L) - 1 (float32)."""
    idx = np.clip(np.asarray(lengths, dtype=np.int64), 1, buckets) - 1
    return np.eye(buckets, dtype=np.float32)[idx]


def apply_span_adapter(
    weights: dict[str, np.ndarray], merged: np.ndarray, lengths: np.ndarray
) -> np.ndarray:
    """Apply the span adapter to merged span embeddings (singleton spans pass unchanged).

    Args:
        weights: the tensors of adapter.safetensors (see TENSOR_NAMES).
        merged: (n, D) merged span embeddings.
        lengths: (n,) tokens per span.

    Returns:
        (n, D) adapted embeddings, merged's dtype.

    Raises:
        InputError: shapes that do not match the adapter.
    """
    x = np.asarray(merged, dtype=np.float32)
    lengths = np.asarray(lengths, dtype=np.int64)
    w1, u, b1 = weights["span.w1"], weights["span.u"], weights["span.b1"]
    w2, b2, gain = weights["span.w2"], weights["span.b2"], weights["span.gain"]
    if x.ndim != 2 or x.shape[1] != w1.shape[1] or lengths.shape != (x.shape[0],):
        raise InputError(
            f"adapter expects merged (n, {w1.shape[1]}) and lengths (n,), "
            f"got {x.shape} and {lengths.shape}"
        )
    xn = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + RMS_EPS)
    f = length_features(lengths, u.shape[1])
    z = xn @ w1.T + f @ u.T + b1  # (n, H)
    h = z / (1.0 + np.exp(-z))  # SiLU
    y = x * (1.0 + f @ gain)[:, None] + h @ w2.T + b2  # (n, D)
    out = np.where((lengths > 1)[:, None], y, x)
    return out.astype(np.asarray(merged).dtype, copy=False)


def embedding_fingerprint(rows: np.ndarray) -> str:
    """A short hash of an LM's first (up to 16) embedding rows: tells models of equal width apart.

    The same value from the PyTorch model (training) and from an fp32 export's embed graph.
    """
    import hashlib

    rows = np.asarray(rows, dtype=np.float32)[:16]
    return hashlib.sha256(rows.round(5).tobytes()).hexdigest()[:16]


def check_adapter_for(
    meta: dict[str, Any], where: Path | str, width: int, fingerprint: str | None, name: str
) -> None:
    """Refuse an adapter trained for another model: another width, or other embedding weights.

    Args:
        meta: the adapter.json dict.
        where: the adapter directory (for the message).
        width: the model's hidden size.
        fingerprint: `embedding_fingerprint` of the model's embedding rows, or None where they
            cannot be compared exactly (an fp16 export): then the recorded model id must be `name`.
        name: the model's name (for the message, and the comparison above).

    Raises:
        InputError: the adapter does not belong to the model.
    """
    recorded = meta.get("hidden_size")
    if recorded != width or isinstance(recorded, bool):
        why = f"hidden size {recorded} vs {width}"
    elif fingerprint is not None and meta.get("fingerprint") != fingerprint:
        why = f"embedding fingerprint {meta.get('fingerprint')} vs {fingerprint}"
    elif fingerprint is None and meta.get("model_id") != name:
        why = f"model id {meta.get('model_id')!r} vs {name!r}"
    else:
        return
    raise InputError(
        f"adapter {where} was trained for model {meta.get('model_id', '?')!r}, not for "
        f"{name!r} ({why}); train one for this model with `semedge train adapter` or drop --adapter"
    )


def resolve_adapter_dir(spec: str | Path) -> Path:
    """An adapter spec as a directory: DEFAULT (any case) is the one shipped in the package."""
    if str(spec).upper() == "DEFAULT":
        return Path(__file__).resolve().parent / "assets" / "adapters" / "default"
    return Path(spec)


def adapter_compression(meta: dict[str, Any]) -> Any:
    """The CompressionConfig an adapter was trained with (adapter.json `meta`), or None if
    unrecorded."""
    from semedge.artifacts import compression_from_record

    recorded = meta.get("compression")
    if not isinstance(recorded, dict):
        return None
    return compression_from_record({**recorded, "target_tokens": None}, f"{ADAPTER_JSON}")


def read_adapter_dir(directory: Path | str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read an adapter directory (adapter.safetensors + adapter.json) with safetensors.numpy.

    Returns:
        (weights, meta): numpy tensors by name and the adapter.json dict.

    Raises:
        ArtifactError: missing files, another format, or tensors missing from the file.
    """
    from safetensors.numpy import load_file

    from semedge.artifacts import confined
    from semedge.constants import ADAPTER_WEIGHTS

    directory = resolve_adapter_dir(directory)
    if not directory.is_dir():
        raise ArtifactError(
            f"{directory} is not a semedge adapter directory; train one with "
            "`semedge train adapter` or pass DEFAULT"
        )
    meta_path = confined(directory, ADAPTER_JSON, "adapter file")  # no symlink out of it
    weights_path = confined(directory, ADAPTER_WEIGHTS, "adapter file")
    if not meta_path.is_file() or not weights_path.is_file():
        raise ArtifactError(
            f"{directory} is not a semedge adapter directory (needs {ADAPTER_JSON} and "
            f"{ADAPTER_WEIGHTS}); train one with `semedge train adapter` or pass DEFAULT"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        weights = load_file(weights_path)
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ArtifactError(f"cannot read adapter in {directory}: {err}") from err
    except Exception as err:  # safetensors raises its own SafetensorError on a corrupt header
        raise ArtifactError(f"cannot read adapter in {directory}: {err}") from err
    if not isinstance(meta, dict):
        raise ArtifactError(f"{meta_path} is not a JSON object; retrain the adapter")
    if meta.get("format") != ADAPTER_FORMAT or meta.get("schema_version") != ADAPTER_SCHEMA:
        raise ArtifactError(
            f"{meta_path} is not a {ADAPTER_FORMAT} v{ADAPTER_SCHEMA} file; retrain the adapter"
        )
    missing = [k for k in TENSOR_NAMES if k not in weights]
    if missing:
        raise ArtifactError(f"{weights_path} lacks tensors {missing}; retrain the adapter")
    _check_shapes(weights, weights_path)
    return weights, meta


def _check_shapes(weights: dict[str, np.ndarray], path: Path) -> None:
    """Every tensor has the shape TENSOR_NAMES gives it in one consistent (D, H, L), float."""
    w1, u = weights["span.w1"], weights["span.u"]
    dims = {"H": w1.shape[0], "D": w1.shape[-1], "L": u.shape[-1]} if w1.ndim == 2 == u.ndim else {}
    for name, spec in TENSOR_NAMES.items():
        t = weights[name]
        want = tuple(dims.get(d, -1) for d in spec)
        if t.shape != want or min(want, default=0) < 1 or t.dtype.kind != "f":
            raise ArtifactError(
                f"{path}: tensor {name} has shape {t.shape} ({t.dtype}), expected {spec} = {want} "
                "float; retrain the adapter"
            )
