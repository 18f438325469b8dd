"""The INT8 schemes, each a wrapper over onnxruntime.quantization with node exclusions.

- "static"      : Q/DQ with calibrated activation ranges (uint8 asymmetric activations, int8
                  symmetric weights) - ORT CPU fuses DQ -> MatMul -> Q into int8 GEMMs;
- "static-sym"  : Q/DQ with int8 symmetric activations and weights (zero point 0), what TensorRT
                  (which dropped implicit INT8 calibration) and the CUDA/TensorRT EPs consume;
- "dynamic"     : int8 weights, activations quantized per call (MatMulInteger);
- "weight-only" : 8-bit block-wise MatMulNBits with int8 compute (accuracy_level 4), blocks of 32
  by default (`--block-size`: shorter blocks also quantize the activations in shorter blocks, a
  lower perplexity for a slower step; docs/calibration.md);
- "weight-only-int4" : the same with 4-bit weights (what onnxruntime-genai's model builder makes
  for CPUs): half the weight bytes a memory-bound decode step reads.

Only MatMul/Gemm nodes whose weight is a constant initializer are candidates: activation x
activation products (attention scores) stay in float.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from semedge.deps import require
from semedge.errors import ArtifactError, InputError

__all__ = [
    "SCHEMES",
    "QuantSettings",
    "weight_matmuls",
    "weight_hints",
    "quantize_graph",
    "ensure_node_names",
]

log = logging.getLogger(__name__)

SCHEMES = ("static", "static-sym", "dynamic", "weight-only", "weight-only-int4")
WEIGHT_BITS = {"weight-only": 8, "weight-only-int4": 4}  # MatMulNBits schemes
BLOCK_SIZES = (16, 32, 64, 128, 256)  # what MatMulNBits takes
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


@dataclass(frozen=True)
class QuantSettings:
    """How one graph is quantized."""

    scheme: str = "static"
    method: str = "minmax"  # activation range estimator for the static schemes
    per_channel: bool = False  # per-output-channel weight scales
    percentile: float = 99.999  # for method "percentile"
    nbits_block: int = 32  # weight-only block length

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise InputError(f"scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")
        if self.method not in METHODS:
            raise InputError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.nbits_block not in BLOCK_SIZES:
            raise InputError(
                f"--block-size must be one of {', '.join(map(str, BLOCK_SIZES))}, "
                f"got {self.nbits_block}"
            )

    @property
    def symmetric(self) -> bool:
        return self.scheme == "static-sym"

    @property
    def needs_ranges(self) -> bool:
        return self.scheme in ("static", "static-sym")


def weight_matmuls(model) -> dict[str, str]:
    """MatMul/Gemm nodes with a constant weight: node name -> weight initializer name."""
    inits = {i.name for i in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    out = {}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1:
            if node.input[1] in inits or node.input[1] in consts:
                out[node.name] = node.input[1]
    return out


def _constant_weights(model) -> list:
    """Constant nodes that feed a MatMul/Gemm weight (ORT's quantizers skip those)."""
    feeds = {n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm")}
    return [
        n for n in model.graph.node
        if n.op_type == "Constant" and n.output[0] in feeds and n.attribute[0].name == "value"
    ]  # fmt: skip


def ensure_node_names(src: Path, scratch: Path) -> Path:
    """`src`, or a copy in `scratch` ready to quantize: unique node names (exclusions go by
    name) and Constant-node GEMM weights (packed q/k/v, gate/up) moved to initializers."""
    model = _load(src, external=False)
    names = [n.name for n in model.graph.node]
    if all(names) and len(set(names)) == len(names) and not _constant_weights(model):
        return src
    model = _load(src)
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    consts = _constant_weights(model)
    for node in consts:
        tensor = require("onnx").TensorProto()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        model.graph.initializer.append(tensor)
    dead = {id(n) for n in consts}
    keep = [n for n in model.graph.node if id(n) not in dead]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    scratch.mkdir(parents=True, exist_ok=True)
    require("onnx").save(model, str(scratch / src.name))
    return scratch / src.name


def weight_hints(model) -> dict[str, str]:
    """Node name -> "<weight name> [KxN]" for each weight MatMul/Gemm (grouping hints)."""
    onnx = require("onnx")
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            shapes[n.output[0]] = tuple(onnx.numpy_helper.to_array(n.attribute[0].t).shape)
    out = {}
    for node, weight in weight_matmuls(model).items():
        dims = shapes.get(weight, ())
        out[node] = f"{weight} [{'x'.join(map(str, dims))}]" if len(dims) == 2 else weight
    return out


def _load(path: Path, external: bool = True):
    onnx = require("onnx")
    try:
        return onnx.load(str(path), load_external_data=external)
    except Exception as err:  # protobuf DecodeError and friends on a corrupt file
        raise ArtifactError(f"{path} is not a readable ONNX model ({err}); re-export") from err


def quantize_graph(
    src: Path,
    dst: Path,
    settings: QuantSettings,
    exclude: list[str] | None = None,
    reader_factory: Callable[[], object] | None = None,
    cache_path: Path | None = None,
) -> list[str]:
    """Quantize `src` into `dst` under `settings`, leaving `exclude`d nodes in float.

    Args:
        src: the fp32 ONNX graph.
        dst: where to write the quantized graph (a single file, weights inline).
        settings: the scheme and range method.
        exclude: node names to keep in float.
        reader_factory: builds the calibration data reader; called only on a cache miss.
        cache_path: ONNX Runtime range-cache file; reused when it exists.

    Returns:
        The names of the nodes that were quantized.
    """
    model = _load(src)
    weights = weight_matmuls(model)
    exclude_set = set(exclude or [])
    todo = [n for n in weights if n not in exclude_set]
    if not todo:
        raise InputError(f"{src.name}: every quantizable node is excluded")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_root():
        if settings.scheme in WEIGHT_BITS:
            _weight_only(model, dst, todo, settings)
        elif settings.scheme == "dynamic":
            _dynamic(src, dst, todo)
        else:
            _static(src, dst, todo, settings, reader_factory, cache_path)
    return todo


@contextmanager
def _quiet_root() -> Iterator[None]:
    """onnxruntime.quantization warns through the root logger, whose first use would install a
    stderr handler (logging.lastResort via basicConfig); park a NullHandler there meanwhile."""
    root = logging.getLogger()
    null = logging.NullHandler()
    added = not root.handlers
    if added:
        root.addHandler(null)
    try:
        yield
    finally:
        if added:
            root.removeHandler(null)


def _dynamic(src: Path, dst: Path, todo: list[str]) -> None:
    q = require("onnxruntime.quantization")
    q.quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=["MatMul", "Gemm"],
        nodes_to_quantize=todo,
        weight_type=q.QuantType.QInt8,
        extra_options={"MatMulConstBOnly": True},
    )


def _gemms_as_matmuls(model, names: set[str]) -> None:
    """Rewrite the named Gemm nodes (alpha 1, no transA, constant 2-D weight) as MatMul over
    a (K, N) copy of the weight (+ Add for a non-zero bias), keeping their names, so that
    MatMulNBits (MatMul only) quantizes them too: the LM head, whose (V, D) weight is the
    tied embedding table read by Gemm(transB=1), is a fifth of SmolLM2's weight bytes and
    was left in fp32. The embedding lookup keeps the float table."""
    onnx = require("onnx")
    nh = onnx.numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in model.graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}  # fmt: skip
    nodes = list(model.graph.node)
    out_nodes = []
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        c = node.input[2] if len(node.input) > 2 else ""
        ok = (node.op_type == "Gemm" and node.name in names and node.input[1] in inits
              and attrs.get("alpha", 1.0) == 1.0 and not attrs.get("transA", 0)
              and (not c or c in inits or c in consts))  # fmt: skip
        if not ok:
            out_nodes.append(node)
            continue
        w = nh.to_array(inits[node.input[1]])
        w = w.T if attrs.get("transB", 0) else w
        weight = nh.from_array(w.copy(), f"{node.name}.weight_kn")
        model.graph.initializer.append(weight)
        bias = None
        c = node.input[2] if len(node.input) > 2 else ""
        if c:  # a computed bias stays a Gemm: every exported one is a constant
            b = nh.to_array(inits[c] if c in inits else consts[c]) * attrs.get("beta", 1.0)
            bias = nh.from_array(b.astype(w.dtype), f"{node.name}.bias") if b.any() else None
        mm_out = f"{node.output[0]}.matmul" if bias is not None else node.output[0]
        out_nodes.append(onnx.helper.make_node(
            "MatMul", [node.input[0], weight.name], [mm_out], name=node.name))  # fmt: skip
        if bias is not None:
            model.graph.initializer.append(bias)
            out_nodes.append(onnx.helper.make_node(
                "Add", [mm_out, bias.name], [node.output[0]], name=f"{node.name}.add"))  # fmt: skip
    del model.graph.node[:]
    model.graph.node.extend(out_nodes)
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _weight_only(model, dst: Path, todo: list[str], settings: QuantSettings) -> None:
    _gemms_as_matmuls(model, set(todo))
    keep = set(todo)  # nodes_to_include is not honoured by every ORT version: exclude the rest
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in keep]
    nbits = require("onnxruntime.quantization.matmul_nbits_quantizer")
    quantizer = nbits.MatMulNBitsQuantizer(
        model,
        bits=WEIGHT_BITS[settings.scheme],
        block_size=settings.nbits_block,
        is_symmetric=True,
        accuracy_level=4,  # int8 compute: the fast path on AVX-512 VNNI / ARM dot-product CPUs
        nodes_to_exclude=others,
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def _static(src, dst, todo, settings, reader_factory, cache_path) -> None:
    q = require("onnxruntime.quantization")
    sym = settings.symmetric
    extra = {
        "ActivationSymmetric": sym,
        "WeightSymmetric": True,
        "CalibTensorRangeSymmetric": sym,
        "MatMulConstBOnly": True,
    }
    if settings.method == "percentile":
        extra["CalibPercentile"] = settings.percentile
    have_cache = cache_path is not None and cache_path.is_file()
    reader = None if have_cache else (reader_factory() if reader_factory else None)
    if reader is None and not have_cache:
        raise InputError("static quantization needs calibration data (--data)")
    q.quantize_static(
        str(src),
        str(dst),
        calibration_data_reader=reader,
        quant_format=q.QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"],
        nodes_to_quantize=todo,
        per_channel=settings.per_channel,
        activation_type=q.QuantType.QInt8 if sym else q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        calibrate_method=getattr(q.CalibrationMethod, METHODS[settings.method]),
        extra_options=extra,
        calibration_cache_path=str(cache_path) if cache_path is not None else None,
    )
