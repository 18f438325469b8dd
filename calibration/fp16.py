"""FP16 conversion of an fp32 export with overflow-prone ops kept fp32, plus its parity report.

Norms square their input (x**2 overflows fp16 past |x| = 256, and SmolLM2's residual stream has
outliers in the hundreds), softmax exponentiates, and the reductions around them accumulate: those
stay fp32 (onnxconverter-common style, via onnxruntime.transformers.float16). Graph inputs and
outputs keep their fp32 types (keep_io_types), so the runtime's feeds and KV cache are unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semedge import constants as C
from semedge.artifacts import Manifest, copy_verified, staged_dir, write_manifest
from semedge.calibration import scoring
from semedge.calibration.data import (
    decode_feeds,
    prefill_feeds,
    prepare_windows,
    tokenize_stream,
    with_graphs,
)
from semedge.calibration.int8 import open_export
from semedge.calibration.ranges import node_ranges, too_wide_for_fp16
from semedge.calibration.report import Fp16Report
from semedge.deps import require
from semedge.errors import AccuracyError, ArtifactError, InputError
from semedge.logs import log_timed
from semedge.textio import read_text_file

__all__ = ["Fp16Config", "KEEP_FP32_OPS", "convert_fp16", "fp16_from_fp32"]

log = logging.getLogger(__name__)

# op types computed in fp32 inside the fp16 graph (Cast nodes are inserted around them)
KEEP_FP32_OPS = (
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "RMSNormalization",
    "Softmax",
    "Pow",
    "ReduceMean",
    "ReduceSum",
    "Sqrt",
    "Reciprocal",
    "Exp",
    "Range",
    "CumSum",
    "TopK",
)
# decode.onnx sees one token per call: more calls per window, or its ranges come from a handful
# of tokens where prefill's come from every token of the windows
_RANGE_DECODE_STEPS = 16
CONVERTED = (C.EMBED_ONNX, C.ENCODER_ONNX, C.PREFILL_ONNX, C.DECODE_ONNX)


@dataclass(frozen=True)
class Fp16Config:
    """FP16 conversion and parity settings."""

    eval_windows: int = 4
    eval_context: int = 128
    eval_tokens: int = 32
    min_agreement: float = 0.99  # top-1 agreement with fp32 below this fails the gate
    range_windows: int = 2  # calibration windows whose node ranges pick the nodes kept fp32
    headroom: float = 4.0  # a node within FP16_MAX / headroom of overflow stays fp32

    def __post_init__(self) -> None:
        if not self.headroom >= 1.0:
            raise InputError(f"headroom must be >= 1, got {self.headroom}")
        for name in ("eval_windows", "eval_context", "eval_tokens", "range_windows"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise InputError(f"--min-agreement must be in [0, 1], got {self.min_agreement}")


def _norm_nodes(model) -> list[str]:
    """Every node of an unfused norm: its scope says "norm", or it adds eps to a mean square.

    Blocking only Pow/ReduceMean/Sqrt is not enough: SmolLM2's residual stream reaches ~2.4e4
    (fp16 holds it), so mean(x**2) ~ 1e6, and the `+ eps` Add after it would run in fp16 and
    overflow to inf, zeroing the normalised hidden state from layer 3 on.
    """
    means = {o for n in model.graph.node if n.op_type == "ReduceMean" for o in n.output}
    return [
        n.name
        for n in model.graph.node
        if n.name and ("norm" in n.name.lower() or (n.op_type == "Add" and means & set(n.input)))
    ]


def _angle_nodes(model) -> list[str]:
    """Every node computing a rotary angle: Cos/Sin and everything upstream of them.

    position x inv_freq in fp16 has an ulp of 0.25 rad at position 512 and 32 rad at 32K, so
    RoPE in fp16 rotates queries and keys by the wrong angles (on Gemma 3 270M at 512 tokens:
    top-1 agreement 0.984, max |d logits| 9.6, against 1.0 / 0.4 with the angles fp32). The
    angles depend only on position ids, so this costs nothing of the fp16 speed."""
    producer = {o: n for n in model.graph.node for o in n.output}
    todo = [n for n in model.graph.node if n.op_type in ("Cos", "Sin")]
    seen: dict[str, object] = {}
    while todo:
        node = todo.pop()
        if node.name in seen:
            continue
        seen[node.name] = node
        todo.extend(producer[i] for i in node.input if i in producer)
    return [name for name in seen if name]


def _drop_round_trips(model) -> int:
    """Remove fp32 -> fp16 -> fp32 Cast pairs the converter puts between two fp32-kept nodes.

    convert_float_to_float16 casts every kept node's output to fp16 and back to fp32 for the next
    kept node, so mean(x**2) ~ 6.6e5 (SmolLM2 layer 3) still overflows to inf between Pow and
    ReduceMean. Consumers of such a pair read the fp32 value directly instead.
    """
    to16 = {
        n.output[0]: n.input[0]
        for n in model.graph.node
        if n.op_type == "Cast" and n.attribute[0].i == 10 and n.name.endswith("_cast_to_fp16_node")
    }
    alias, dead = {}, set()
    for n in model.graph.node:
        if n.op_type == "Cast" and n.attribute[0].i == 1 and n.input[0] in to16:
            alias[n.output[0]] = to16[n.input[0]]
            dead.add(n.name)
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = alias[name]
    keep = [n for n in model.graph.node if n.name not in dead]
    used = {i for n in keep for i in n.input} | {o.name for o in model.graph.output}
    keep = [
        n
        for n in keep
        if not (n.op_type == "Cast" and n.output[0] in to16 and n.output[0] not in used)
    ]
    removed = len(model.graph.node) - len(keep)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return removed


def fp16_from_fp32(
    src: Path,
    dst: Path,
    keep_ops: tuple[str, ...] = KEEP_FP32_OPS,
    keep_nodes: tuple[str, ...] = (),
) -> dict[str, int]:
    """Write an fp16 copy of one ONNX graph; returns op type -> nodes kept fp32 by op type.

    `keep_nodes`: node names kept fp32 as well (those whose measured range fp16 cannot hold)."""
    onnx = require("onnx")
    f16 = require("onnxruntime.transformers.float16")
    try:
        model = onnx.load(str(src))
    except Exception as err:
        raise ArtifactError(f"{src} is not a readable ONNX model ({err}); re-export") from err
    block = sorted(set(f16.DEFAULT_OP_BLOCK_LIST) | set(keep_ops))
    nodes = sorted({*_norm_nodes(model), *_angle_nodes(model), *keep_nodes})
    out = f16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=block, node_block_list=nodes,
        disable_shape_infer=False,
    )  # fmt: skip
    _drop_round_trips(out)
    onnx.save(out, str(dst))
    kept: dict[str, int] = {}
    for n in out.graph.node:
        if n.op_type in keep_ops:
            kept[n.op_type] = kept.get(n.op_type, 0) + 1
    return kept


def _default_data() -> Path:
    asset = Path(__file__).resolve().parents[1] / "sdk" / "assets" / "wikitext2_excerpt.txt"
    if not asset.is_file():
        raise InputError("pass --data FILE (held-out text for the parity check)")
    return asset


def convert_fp16(
    export_dir: Path | str,
    out_dir: Path | str,
    data: Path | str | None = None,
    config: Fp16Config | None = None,
    overwrite: bool = False,
) -> Fp16Report:
    """Convert an fp32 export to fp16, check parity on held-out text, write `out_dir`.

    Raises:
        InputError: bad settings or too little text.
        ArtifactError: not a usable fp32 export, or `out_dir` exists.
        AccuracyError: top-1 agreement below config.min_agreement or non-finite logits
            (nothing is written); `.report` holds the measurements.
    """
    config = config or Fp16Config()
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out} already exists; choose another path or pass --overwrite")
    manifest, pipe = open_export(export_dir)
    with pipe:
        return _convert(pipe, manifest, Path(export_dir), out, data, config, overwrite)


def _convert(pipe, manifest: Manifest, src: Path, out: Path, data, config: Fp16Config,
             overwrite: bool) -> Fp16Report:  # fmt: skip
    text = read_text_file(data if data is not None else _default_data())
    ids = tokenize_stream(pipe, text).ids
    n = config.eval_context + config.eval_tokens
    if ids.size < config.eval_windows * n:
        raise InputError(
            f"parity data has {ids.size} tokens, {config.eval_windows} windows of {n} need "
            f"{config.eval_windows * n}; give a longer --data file or fewer --eval-windows"
        )
    if ids.size < (config.eval_windows + config.range_windows) * n:
        raise InputError(
            f"parity data has {ids.size} tokens; {config.range_windows} range windows and "
            f"{config.eval_windows} held-out windows of {n} need "
            f"{(config.eval_windows + config.range_windows) * n}: give a longer --data file"
        )
    held = [ids[i * n : (i + 1) * n] for i in range(config.eval_windows)]
    wide = _wide_nodes(pipe, src, ids[config.eval_windows * n :], n, config)
    with staged_dir(out, overwrite=overwrite) as tmp:
        copy_verified(src, manifest, tmp, skip=CONVERTED)
        kept: dict[str, int] = {}
        with log_timed(log, "converting graphs to fp16"):
            for g in CONVERTED:
                if (src / g).is_file():
                    for op, k in fp16_from_fp32(src / g, tmp / g, keep_nodes=wide[g]).items():
                        kept[op] = kept.get(op, 0) + k
        report = _parity(pipe, src, tmp, held, config, kept, out)
        report.kept_fp32_range_nodes = sum(len(v) for v in wide.values())
        if not report.passed:
            raise AccuracyError(
                f"fp16 parity failed: top-1 agreement {report.top1_agreement:.3f} < "
                f"{config.min_agreement} (max |delta logits| {report.max_abs_logits_diff:.3g}); "
                "keep fp32 or pass a lower --min-agreement",
                report=report,
            )
        cfg = {**manifest.config, "dtype": "fp16", "fp16": report.to_dict()}
        write_manifest(tmp, Manifest(format=C.FORMAT_CALIBRATED, graphs=manifest.graphs,
                                     config=cfg, created_by=manifest.created_by,
                                     extra={**manifest.extra, "source": {"path": str(src)}}))  # fmt: skip
    return report


def _wide_nodes(pipe, src: Path, ids: np.ndarray, n: int, config: Fp16Config) -> dict:
    """Graph file -> names of the nodes whose fp32 range on calibration windows (text the parity
    check never scores) fp16 cannot hold, measured on the feeds the runtime gives each graph."""
    wins = [ids[i * n : (i + 1) * n] for i in range(config.range_windows)]
    texts = [pipe.tokenizer.decode(w.tolist()) for w in wins]
    prompts = prepare_windows(pipe, texts, compress=False)
    from semedge.runtime.pipeline import encoder_feeds

    feeds = {
        C.EMBED_ONNX: [{C.INPUT_IDS: p.ids[None].astype(np.int64)} for p in prompts],
        C.ENCODER_ONNX: [encoder_feeds(pipe.backends["encoder"], p.ids) for p in prompts]
        if "encoder" in pipe.backends else [],
        C.PREFILL_ONNX: prefill_feeds(pipe, prompts),
        C.DECODE_ONNX: decode_feeds(pipe, prompts, steps=_RANGE_DECODE_STEPS),
    }  # fmt: skip
    wide: dict[str, tuple[str, ...]] = {}
    with log_timed(log, "measuring node ranges for fp16"):
        for g, f in feeds.items():
            ok = (src / g).is_file()
            wide[g] = (
                tuple(too_wide_for_fp16(node_ranges(src / g, f), config.headroom)) if ok else ()
            )
            if wide[g]:
                log.info(
                    "%s: %d nodes past fp16 range / %g stay fp32", g, len(wide[g]), config.headroom
                )
    return wide


def _parity(pipe, src: Path, fp16_dir: Path, held, config: Fp16Config, kept: dict, out: Path):
    ctx = config.eval_context
    with log_timed(log, "fp16 parity on held-out text"):
        a = scoring.score_graphs(pipe, held, ctx)
        with with_graphs(pipe, fp16_dir) as fp16:
            b = scoring.score_graphs(fp16, held, ctx)
    diff = np.concatenate([np.abs(x - y).ravel() for x, y in zip(a.logits, b.logits, strict=True)])
    size = sum((fp16_dir / g).stat().st_size for g in CONVERTED if (fp16_dir / g).is_file())
    size32 = sum((src / g).stat().st_size for g in CONVERTED if (src / g).is_file())
    return Fp16Report(
        out_dir=str(out), max_abs_logits_diff=float(diff.max()),
        mean_abs_logits_diff=float(diff.mean()), top1_agreement=scoring.agreement(a, b),
        ppl_fp32=a.ppl, ppl_fp16=b.ppl, kept_fp32_ops=sorted(kept), kept_fp32_nodes=sum(kept.values()),
        size_mb=size / 1e6, size_mb_fp32=size32 / 1e6, min_agreement=config.min_agreement,
        scored_tokens=int(a.nll.size),
    )  # fmt: skip
