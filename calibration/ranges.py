"""Per-node activation ranges of an ONNX graph on real feeds: the nodes fp16 cannot hold.

Gemma 3 270M's residual stream reaches ~1.0e5 on WikiText-2 from layer 7 on (fp16's largest
finite value is 65504), where SmolLM2's stays near 2.4e4. An op-type block list cannot see that:
the overflowing nodes are plain Adds. So the fp16 conversion measures instead: every float node
output of the fp32 graph is fetched on calibration feeds, and a node whose largest |value| comes
within `headroom` of the fp16 limit stays fp32. Torch-free (onnx, onnxruntime, numpy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semedge.constants import FP16_MAX
from semedge.deps import require
from semedge.errors import ArtifactError

__all__ = ["FP16_MAX", "node_ranges", "too_wide_for_fp16"]

_MASK_FILL = 1e30  # |x| at or past this is an attention-mask fill, which fp16 clamps harmlessly
_FLOAT, _INT64, _BOOL = 1, 7, 9
_SHAPE_ONLY = {"Shape", "Size"}  # read only their input's shape
_INT_OUT = {"Shape", "Size", "NonZero", "ArgMax", "ArgMin"}
_BOOL_OUT = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or",
             "Xor", "IsNaN", "IsInf"}  # fmt: skip


def _output_types(model) -> dict[str, int]:
    """Element type of every node output, propagated from inputs and initializers.

    ONNX shape inference stops at contrib ops (GroupQueryAttention) and ORT's symbolic inference
    gives up on these graphs, so types follow simple per-op rules: Cast/Constant say theirs,
    shape and comparison ops give int64/bool, Where takes its branches', the rest their first
    typed input's.
    """
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    for n in model.graph.node:
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "Cast":
            t = attrs["to"].i
        elif n.op_type in ("Constant", "ConstantOfShape"):
            a = attrs.get("value")
            t = a.t.data_type if a is not None else (_FLOAT if "value_float" in attrs else _INT64)
        elif n.op_type in _INT_OUT:
            t = _INT64
        elif n.op_type in _BOOL_OUT:
            t = _BOOL
        elif n.op_type == "Where":
            t = types.get(n.input[1], 0)
        else:
            t = next((types[i] for i in n.input if i and types.get(i)), 0)
        for o in n.output:
            if o:
                types[o] = t
    return types


def _magnitude(value: np.ndarray) -> float:
    """Largest |x| that is an activation: mask fills (-inf, finfo.min) are not, NaN is wide."""
    a = np.abs(value.astype(np.float32, copy=False))
    if np.isnan(a).any():
        return float("inf")
    return float(np.where(a < _MASK_FILL, a, 0.0).max())


def node_ranges(graph: Path | str, feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Largest |value| each named node reads or writes over `feeds` (fp32 graph), by node name.

    Raises:
        ArtifactError: the graph cannot be read or run with every output fetched.
    """
    onnx = require("onnx")
    ort = require("onnxruntime")
    try:
        model = onnx.load(str(graph))
    except Exception as err:
        raise ArtifactError(f"{graph} is not a readable ONNX model ({err}); re-export") from err
    types = _output_types(model)
    present = {o.name for o in model.graph.output}
    inputs = {i.name for i in model.graph.input}
    for n in model.graph.node:
        for o in n.output:
            if o and types.get(o) == _FLOAT and o not in present:
                model.graph.output.append(onnx.helper.make_tensor_value_info(o, _FLOAT, None))
    # a node's range covers what it reads as well: an fp16 node fed a wide fp32 tensor
    # overflows in the Cast in front of it
    reads = {
        n.name: [t for t in (*n.input, *n.output) if t and types.get(t) == _FLOAT]
        for n in model.graph.node
        if n.name and n.op_type not in _SHAPE_ONLY
    }
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # node by node
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:
        raise ArtifactError(f"{graph}: cannot fetch its node outputs ({err})") from err
    del model
    names = [o.name for o in session.get_outputs()]
    tensors: dict[str, float] = {}
    for feed in feeds:
        feed = {k: v for k, v in feed.items() if k in inputs}
        fetched = zip(names, session.run(names, feed), strict=True)
        for name, value in (*fetched, *feed.items()):
            if value.size and np.issubdtype(value.dtype, np.floating):
                tensors[name] = max(tensors.get(name, 0.0), _magnitude(value))
    ranges = {
        node: max((tensors[t] for t in used if t in tensors), default=0.0)
        for node, used in reads.items()
    }
    return ranges


def too_wide_for_fp16(ranges: dict[str, float], headroom: float = 4.0) -> list[str]:
    """Nodes whose measured range exceeds FP16_MAX / headroom (non-finite counts as too wide)."""
    limit = FP16_MAX / headroom
    return sorted(n for n, r in ranges.items() if not r <= limit)
