"""What the exported graphs look like: tensor names, dtypes, symbolic shapes, KV naming.

Torch-free (the exporter, the manifest and the parity gate read it). Names come from
semedge.constants; dims are named once here, as onnxruntime-genai names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from semedge import constants as C
from semedge.runtime.kv_cache import kv_layer

__all__ = [
    "BATCH",
    "SEQ",
    "PAST",
    "TOTAL",
    "TensorSpec",
    "GraphSpec",
    "graph_specs",
    "past_names",
    "present_names",
]

BATCH = "batch_size"  # B
SEQ = "sequence_length"  # T: new tokens this call
PAST = "past_sequence_length"  # P: cached KV slots
TOTAL = "total_sequence_length"  # P + T: KV slots after this call
# a sliding-window layer's cache holds only its window's last slots (runtime.kv_cache.local_kv)
LOCAL_SEQ = "local_sequence_length"  # min(T, W - 1): what a local layer keeps of a prefill
LOCAL_PAST = "local_past_sequence_length"  # min(P, W - 1)
LOCAL_TOTAL = "local_total_sequence_length"  # min(P + 1, W - 1)
KEPT = "kept_sequence_length"  # T - keep_from: the encoder rows returned (the rest are context)

_ONNX_DTYPE = {"int64": 7, "float32": 1, "float16": 10}  # onnx.TensorProto enum values


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype ("int64" | "float32" | "float16"), shape."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]  # ints are fixed, strings are symbolic dims

    @property
    def onnx_dtype(self) -> int:
        return _ONNX_DTYPE[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    """A graph file with its ordered inputs and outputs."""

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """name -> {axis: dim name} for every symbolic dim (torch.onnx.export's format)."""
        return {
            t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            for t in (*self.inputs, *self.outputs)
        }

    def to_dict(self) -> dict[str, Any]:
        """The manifest's entry for this graph."""
        return {
            "file": self.file,
            "inputs": {t.name: t.to_dict() for t in self.inputs},
            "outputs": {t.name: t.to_dict() for t in self.outputs},
        }


def past_names(num_layers: int) -> list[str]:
    """past_key_values.{i}.key, past_key_values.{i}.value, ... in layer order."""
    return [n.format(i=i) for i in range(num_layers) for n in (C.PAST_KEY, C.PAST_VALUE)]


def present_names(num_layers: int) -> list[str]:
    """present.{i}.key, present.{i}.value, ... in layer order."""
    return [n.format(i=i) for i in range(num_layers) for n in (C.PRESENT_KEY, C.PRESENT_VALUE)]


def graph_specs(
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    hidden_size: int,
    vocab_size: int,
    float_dtype: str = "float32",
    full_logits: bool = False,
    local_layers: frozenset[int] = frozenset(),
) -> dict[str, GraphSpec]:
    """The four graphs of an export, keyed "embed", "encoder", "prefill", "decode".

    Args:
        num_layers, num_kv_heads, head_dim, hidden_size, vocab_size: the LM's dimensions.
        float_dtype: "float32" or "float16" (embeddings, hidden states, logits, KV).
        full_logits: prefill returns logits for every position (B, T, V), else (B, 1, V).
        local_layers: sliding-window layers whose KV tensors hold only the window's slots.
    """
    f, i64 = float_dtype, "int64"
    local_dim = {SEQ: LOCAL_SEQ, PAST: LOCAL_PAST, TOTAL: LOCAL_TOTAL}

    def kv(names: list[str], length: str) -> tuple[TensorSpec, ...]:
        def dim(name: str) -> str:
            return local_dim[length] if kv_layer(name) in local_layers else length

        return tuple(TensorSpec(n, f, (BATCH, num_kv_heads, dim(n), head_dim)) for n in names)

    ids = TensorSpec(C.INPUT_IDS, i64, (BATCH, SEQ))
    embeds = TensorSpec(C.INPUTS_EMBEDS, f, (BATCH, SEQ, hidden_size))
    positions = TensorSpec(C.POSITION_IDS, i64, (BATCH, SEQ))
    logits = TensorSpec(C.LOGITS, f, (BATCH, SEQ if full_logits else 1, vocab_size))
    return {
        "embed": GraphSpec(C.EMBED_ONNX, (ids,), (embeds,)),
        "encoder": GraphSpec(
            C.ENCODER_ONNX,
            (
                ids,
                TensorSpec(C.ATTENTION_MASK, i64, (BATCH, SEQ)),
                TensorSpec(C.KEEP_FROM, i64, (1,)),
            ),
            (TensorSpec(C.ENCODER_HIDDEN, f, (BATCH, KEPT, hidden_size)),),
        ),
        "prefill": GraphSpec(
            C.PREFILL_ONNX,
            (embeds, positions, TensorSpec(C.ATTENTION_MASK, i64, (BATCH, SEQ))),
            (logits, *kv(present_names(num_layers), SEQ)),
        ),
        "decode": GraphSpec(
            C.DECODE_ONNX,
            (
                ids,  # one token per step, or a chunk of a long prompt (chunked prefill)
                positions,
                TensorSpec(C.ATTENTION_MASK, i64, (BATCH, TOTAL)),
                *kv(past_names(num_layers), PAST),
            ),
            (
                TensorSpec(C.LOGITS, f, (BATCH, 1, vocab_size)),
                *kv(present_names(num_layers), TOTAL),
            ),
        ),
    }
