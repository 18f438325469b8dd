"""Static TensorRT-readiness checks of ONNX graphs: no GPU and no tensorrt needed.

Each finding names the graph, the node, its op, a severity and the PyTorch module the node came
from. The limits follow onnx-tensorrt's operator support matrix (TensorRT 10.x, docs/operators.md).
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semedge.artifacts import confined, load_manifest
from semedge.constants import FORMAT_ENGINE, FORMAT_EXPORT
from semedge.deps import require
from semedge.errors import ArtifactError

if TYPE_CHECKING:
    import onnx

__all__ = ["TrtFinding", "TrtCheckReport", "check_onnx_file", "check_onnx_dir", "load_onnx"]

log = logging.getLogger(__name__)

ERROR, WARNING = "error", "warning"
TOPK_MAX_K = 3840  # TensorRT's ITopKLayer limit on K
OPSET_MIN, OPSET_MAX = 9, 24  # onnx-tensorrt for TensorRT 10.15; 10.0 documents 9..20
OPSET_WIDELY_PARSED = 20  # TensorRT 10.0 (and JetPack 6's 10.3) may not parse newer opsets

# ai.onnx operators onnx-tensorrt marks "N" (no importer) in its support matrix
UNSUPPORTED_OPS = frozenset(
    """AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad
    Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger
    MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional
    OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt
    SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap
    SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit
    TfIdfVectorizer Unique""".split()
)
REDUCE_OPS = frozenset(
    "ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd "
    "ReduceSum ReduceSumSquare".split()
)
# onnx.TensorProto elem types: 11 DOUBLE; 8 STRING; 14/15 COMPLEX; 4/12/13 UINT16/32/64; 5 INT16
DTYPE_ERRORS = {8: "string", 14: "complex64", 15: "complex128", 4: "uint16", 12: "uint32",
                13: "uint64", 5: "int16"}  # fmt: skip
INT64, DOUBLE, UINT8 = 7, 11, 2
SMALL_CONST = 4096  # larger initializers: payload dropped for shape inference


@dataclass(frozen=True)
class TrtFinding:
    """One TensorRT limit a graph runs into."""

    graph: str  # file name, e.g. "prefill.onnx"
    node: str  # ONNX node name ("" for graph-level findings)
    op: str  # op type ("" for graph-level findings)
    severity: str  # "error": TensorRT will not build it; "warning": builds, but slower or fragile
    module: str  # source PyTorch module path from the node name / metadata ("" when unknown)
    message: str

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


@dataclass
class TrtCheckReport:
    """Findings over one or more graphs; truthy (`passed`) when no error-level finding exists."""

    graphs: list[str] = field(default_factory=list)
    findings: list[TrtFinding] = field(default_factory=list)

    @property
    def errors(self) -> list[TrtFinding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[TrtFinding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def passed(self) -> bool:
        return not self.errors

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "graphs": self.graphs,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.to_dict() for f in self.findings],
        }


def load_onnx(path: Path | str, load_external_data: bool = False) -> onnx.ModelProto:
    """Load an ONNX file, wrapping onnx's parse errors.

    Raises:
        ArtifactError: the file is missing or is not a readable ONNX model.
    """
    onnx = require("onnx")
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} not found; re-export with `semedge export onnx`")
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as err:  # DecodeError, ValueError, OSError: all mean a corrupt file
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ArtifactError(f"{path} is not a valid ONNX model ({msg}); re-export it") from err


def source_module(node: onnx.NodeProto) -> str:
    """The PyTorch module path a node came from ("model.layers.0.self_attn"), or ""."""
    meta = {p.key: p.value for p in node.metadata_props}
    # dynamo exporter: "/".join("module.path: Class" ...) + "/node_name: aten.op" (the last one
    # is the FX node, not a module); name_scopes is the same list of paths
    if ns := meta.get("namespace"):
        scopes = [part.split(":")[0].strip() for part in ns.split("/")[:-1]]
        if scopes and scopes[-1]:
            return scopes[-1]
    if scopes_text := meta.get("pkg.torch.onnx.name_scopes"):
        try:
            scopes = [s for s in ast.literal_eval(scopes_text)[:-1] if s]
            return scopes[-1] if scopes else ""
        except (ValueError, SyntaxError):
            pass
    # TorchScript exporter: "/model/layers.0/self_attn/q_proj/MatMul" -> "model.layers.0.self_attn.q_proj"
    parts = [p for p in node.name.split("/") if p]
    return ".".join(parts[:-1]) if node.name.startswith("/") and len(parts) > 1 else ""


class _Graph:
    """Lookups over one model: constants, producers; recursion into subgraphs."""

    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        self.model, self.name = model, name
        self.tensors: dict[str, Any] = {}  # constant name -> TensorProto, decoded on demand
        for g in _graphs(model.graph):
            self.tensors.update((init.name, init) for init in g.initializer)
            for node in g.node:
                if node.op_type == "Constant" and node.output:
                    for attr in node.attribute:
                        if attr.name == "value":
                            self.tensors[node.output[0]] = attr.t
        self.producer = {o: n for g in _graphs(model.graph) for n in g.node for o in n.output}
        self._values: dict[str, Any] = {}

    def value(self, name: str) -> Any | None:
        """The numpy value of a constant (None: computed, or weights in external data)."""
        from onnx import numpy_helper

        tensor = self.tensors.get(name)
        if tensor is None or _is_external(tensor):
            return None
        if name not in self._values:
            self._values[name] = numpy_helper.to_array(tensor)
        return self._values[name]

    def nodes(self) -> Iterator[onnx.NodeProto]:
        for g in _graphs(self.model.graph):
            yield from g.node

    def const(self, node: onnx.NodeProto, index: int) -> Any | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        return self.value(node.input[index])

    def finding(self, node: onnx.NodeProto | None, severity: str, message: str) -> TrtFinding:
        if node is None:
            return TrtFinding(self.name, "", "", severity, "", message)
        return TrtFinding(
            self.name, node.name, node.op_type, severity, source_module(node), message
        )


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g.node or attr.g.name:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _numel(dims: Iterable[int]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _light_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without large weight payloads: shape inference needs their dims only."""
    light = type(model)()
    light.CopyFrom(model)
    for init in light.graph.initializer:
        if _numel(init.dims) > SMALL_CONST:
            init.ClearField("raw_data")
            for name in ("float_data", "int32_data", "int64_data", "double_data"):
                init.ClearField(name)
    return light


def _is_external(tensor: Any) -> bool:
    return tensor.data_location == 1  # onnx.TensorProto.EXTERNAL


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


# --- per-node checks: each yields findings for one op type ------------------------------------


def _check_topk(g: _Graph, node: onnx.NodeProto) -> Iterator[TrtFinding]:
    k = g.const(node, 1)
    if k is None and len(node.input) < 2:
        k = _attr(node, "k")  # opset < 10: K is an attribute
    if k is None:
        yield g.finding(node, WARNING, "K is computed at run time; TensorRT needs a constant K")
    elif int(k.max() if hasattr(k, "max") else k) > TOPK_MAX_K:
        kk = int(k.max() if hasattr(k, "max") else k)
        yield g.finding(
            node,
            ERROR,
            f"TopK with K={kk} > {TOPK_MAX_K} (TensorRT's limit); take top-k over a smaller axis "
            "or sample on the host",
        )
    if _attr(node, "sorted", 1) != 1:
        yield g.finding(node, ERROR, "TopK with sorted=0; TensorRT requires sorted=1")


def _check_scatter(g: _Graph, node: onnx.NodeProto) -> Iterator[TrtFinding]:
    reduction = _attr(node, "reduction", "none")
    if reduction != "none":
        yield g.finding(
            node,
            ERROR,
            f"{node.op_type} with reduction={reduction!r}; TensorRT's scatter layer has no "
            "reduction (only 'none')",
        )


def _check_control_flow(g: _Graph, node: onnx.NodeProto) -> Iterator[TrtFinding]:
    yield g.finding(
        node,
        ERROR,
        f"{node.op_type} node: outputs depend on run-time data (branch or trip count); export "
        "separate prefill and decode graphs instead of a merged/looped one",
    )


def _check_qdq(g: _Graph, node: onnx.NodeProto) -> Iterator[TrtFinding]:
    zero = g.const(node, 2)
    if node.input[1] not in g.tensors:
        yield g.finding(node, ERROR, "quantization scale is not a constant; TensorRT needs one")
    if len(node.input) > 2 and node.input[2]:
        if zero is None:
            yield g.finding(node, ERROR, "zero point is not a constant; TensorRT needs 0")
        elif zero.any():
            yield g.finding(
                node,
                ERROR,
                f"zero point {zero.ravel()[:4].tolist()} is not 0; TensorRT supports symmetric "
                "quantization only (recalibrate with symmetric=True)",
            )


def _check_unsupported(g: _Graph, node: onnx.NodeProto) -> Iterator[TrtFinding]:
    yield g.finding(node, ERROR, f"{node.op_type} has no TensorRT ONNX importer")


def _check_nonzero(g: _Graph, node: onnx.NodeProto) -> Iterator[TrtFinding]:
    yield g.finding(
        node, WARNING, "NonZero has a data-dependent output shape; slow in TensorRT, avoid it"
    )


def _check_attention(g: _Graph, node: onnx.NodeProto) -> Iterator[TrtFinding]:
    past = [n for n in node.input[4:6] if n]
    present = [n for n in node.output[1:] if n]
    if past or present:
        yield g.finding(
            node,
            ERROR,
            "Attention with past_key/past_value inputs or present/qk outputs; TensorRT's importer "
            "supports Q, K, V, attn_mask only (concatenate the KV cache outside the op)",
        )


def _check_reduce(g: _Graph, node: onnx.NodeProto) -> Iterator[TrtFinding]:
    if len(node.input) > 1 and node.input[1] and g.const(node, 1) is None:
        yield g.finding(
            node, WARNING, f"{node.op_type} axes are computed; TensorRT needs constants"
        )


def _check_layernorm(g: _Graph, node: onnx.NodeProto) -> Iterator[TrtFinding]:
    if any(node.output[1:]):
        yield g.finding(node, ERROR, "LayerNormalization: TensorRT supports only the Y output")


NODE_CHECKS = {
    "TopK": _check_topk,
    "ScatterND": _check_scatter,
    "ScatterElements": _check_scatter,
    "If": _check_control_flow,
    "Loop": _check_control_flow,
    "QuantizeLinear": _check_qdq,
    "DequantizeLinear": _check_qdq,
    "NonZero": _check_nonzero,
    "Attention": _check_attention,
    "LayerNormalization": _check_layernorm,
    **{op: _check_reduce for op in REDUCE_OPS},
    **{op: _check_unsupported for op in UNSUPPORTED_OPS},
}


# --- graph-level checks -----------------------------------------------------------------------


def _check_nodes(g: _Graph) -> Iterator[TrtFinding]:
    for node in g.nodes():
        if node.domain not in ("", "ai.onnx"):
            yield g.finding(
                node,
                ERROR,
                f"custom op {node.domain}::{node.op_type} needs a TensorRT plugin; for "
                "TensorRT re-export with plain ONNX ops (`semedge export onnx --attention plain`)",
            )
        elif check := NODE_CHECKS.get(node.op_type):
            yield from check(g, node)


def _check_opset(g: _Graph) -> Iterator[TrtFinding]:
    opset = next((o.version for o in g.model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        return
    if not OPSET_MIN <= opset <= OPSET_MAX:
        yield g.finding(
            None, ERROR, f"opset {opset}; TensorRT 10 parses opset {OPSET_MIN}..{OPSET_MAX}"
        )
    elif opset > OPSET_WIDELY_PARSED:
        yield g.finding(
            None,
            WARNING,
            f"opset {opset}; TensorRT 10.0 documents opset <= {OPSET_WIDELY_PARSED} (older "
            f"TensorRT such as JetPack 6 may reject it; re-export with --opset {OPSET_WIDELY_PARSED})",
        )


def _typed_tensors(g: _Graph) -> Iterator[tuple[str, int, bool]]:
    """(name, elem_type, is_graph_io) of every typed tensor, inferring types where possible."""
    from onnx import shape_inference

    model = g.model
    try:
        model = shape_inference.infer_shapes(_light_copy(model), strict_mode=False)
    except Exception as err:  # an unknown op or a >2 GB model: check the declared types only
        log.debug("shape inference skipped for %s: %s", g.name, err)
    graph = model.graph
    for vi in list(graph.input) + list(graph.output):
        yield vi.name, vi.type.tensor_type.elem_type, True
    for vi in graph.value_info:
        yield vi.name, vi.type.tensor_type.elem_type, False
    for init in graph.initializer:
        yield init.name, init.data_type, False


def _check_dtypes(g: _Graph) -> Iterator[TrtFinding]:
    int64: list[str] = []
    for name, elem, is_io in _typed_tensors(g):
        node = g.producer.get(name)
        if elem in DTYPE_ERRORS:
            yield g.finding(
                node, ERROR, f"tensor {name!r} is {DTYPE_ERRORS[elem]}; TensorRT has no such type"
            )
        elif elem == DOUBLE:
            yield g.finding(
                node, WARNING, f"tensor {name!r} is double; TensorRT casts it to float32 (clamped)"
            )
        elif elem == UINT8 and not is_io:
            yield g.finding(
                node,
                WARNING,
                f"tensor {name!r} is uint8 inside the graph; TensorRT allows it only at I/O",
            )
        elif elem == INT64 and _fits_int32(g, name):
            int64.append(name)
    if int64:
        yield g.finding(
            g.producer.get(int64[0]),
            WARNING,
            f"{len(int64)} int64 tensors where int32 serves (e.g. {', '.join(int64[:3])}); "
            "TensorRT 10 runs them, int32 indices are cheaper",
        )  # fmt: skip


def _fits_int32(g: _Graph, name: str) -> bool:
    tensor = g.tensors.get(name)
    if tensor is None:  # computed: assume it holds indices or shapes
        return True
    if _numel(tensor.dims) > SMALL_CONST:  # large int64 weights are not index-like
        return False
    value = g.value(name)
    return value is None or value.size == 0 or (-(2**31) <= value.min() and value.max() < 2**31)


def _check_external_data(g: _Graph, path: Path) -> Iterator[TrtFinding]:
    files = sorted(
        {
            entry.value
            for init in g.model.graph.initializer
            if _is_external(init)
            for entry in init.external_data
            if entry.key == "location"
        }
    )
    for rel in files:
        try:
            where = confined(path.parent, rel, f"external data of {path.name}")
        except ArtifactError as err:
            yield g.finding(None, ERROR, str(err))
            continue
        if not where.is_file():
            yield g.finding(None, ERROR, f"external data file {rel} is missing next to {path.name}")
        else:
            yield g.finding(
                None,
                WARNING,
                f"weights live in external data file {rel}; TensorRT must parse {path.name} from "
                "its path (OnnxParser.parse_from_file / trtexec --onnx), never from bytes",
            )


def check_onnx_file(path: Path | str, graph_name: str | None = None) -> list[TrtFinding]:
    """Check one ONNX file against TensorRT's known limits.

    Args:
        path: the .onnx file (external data, if any, next to it).
        graph_name: the name findings carry; defaults to the file name.

    Returns:
        The findings, errors first.

    Raises:
        ArtifactError: the file is missing or not a valid ONNX model.
    """
    path = Path(path)
    model = load_onnx(path, load_external_data=False)
    g = _Graph(model, graph_name or path.name)
    findings = [
        *_check_opset(g),
        *_check_external_data(g, path),
        *_check_nodes(g),
        *_check_dtypes(g),
    ]
    return sorted(findings, key=lambda f: f.severity != ERROR)


def check_onnx_dir(onnx_dir: Path | str) -> TrtCheckReport:
    """Check every ONNX graph of a semedge export (or one .onnx file) for TensorRT.

    Args:
        onnx_dir: a `semedge export onnx` directory (its manifest lists the graphs), or a single
            .onnx file.

    Returns:
        A TrtCheckReport; `report.passed` is False when an error-level finding exists.

    Raises:
        ArtifactError: no manifest, a manifest of another format, or a corrupt ONNX file.
    """
    onnx_dir = Path(onnx_dir)
    if onnx_dir.is_file() and onnx_dir.suffix == ".onnx":
        paths = [onnx_dir]
    else:
        manifest = load_manifest(onnx_dir, expect_format=(FORMAT_EXPORT, FORMAT_ENGINE))
        paths = [onnx_dir / rel for rel in sorted(manifest.files) if rel.endswith(".onnx")]
        if not paths:
            raise ArtifactError(f"{onnx_dir} lists no .onnx graphs in its manifest; re-export")
    report = TrtCheckReport(graphs=[p.name for p in paths])
    for path in paths:
        report.findings.extend(check_onnx_file(path))
    return report
