"""`export_onnx`: trace the embed/encoder/prefill/decode graphs, write OUT_DIR atomically, gate it.

Every file is written into a temp sibling of OUT_DIR; the parity gate runs there; only a passing
(or --no-validate) export is renamed into place. Torch and onnx are imported inside functions.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semedge import constants as C
from semedge.artifacts import Manifest, atomic_write_text, staged_dir, write_manifest
from semedge.checks import check_number
from semedge.config import CompressionConfig, effective_compression
from semedge.deps import require
from semedge.errors import AccuracyError, ArtifactError, InputError
from semedge.export.graphs import GraphSpec, graph_specs
from semedge.export.parity import ParityConfig, ParityReport, default_atol
from semedge.logs import log_timed

log = logging.getLogger(__name__)

__all__ = ["ExportConfig", "ExportReport", "export_onnx", "MIN_OPSET", "MAX_OPSET"]

MIN_OPSET, MAX_OPSET = 14, 20  # what the TorchScript exporter can produce for these graphs
DTYPES = {"fp32": "float32", "fp16": "float16"}

# Test hooks: called with the staged directory after the graphs are written, before the gate.
_POST_WRITE_HOOKS: list[Callable[[Path], None]] = []


@dataclass(frozen=True)
class ExportConfig:
    """How to export; None fields take defaults from the model (max_context) or dtype (atol)."""

    dtype: str = "fp32"  # "fp32" | "fp16": weights, activations, KV cache
    opset: int = 17  # ONNX default-domain opset (14..20)
    max_context: int | None = None  # KV slots the export is declared for; None -> the model's
    atol: float | None = None  # parity budget on logits and KV; None -> per-dtype default
    full_logits: bool = False  # prefill returns (B, T, V) logits instead of the last position
    validate: bool = True  # run the parity gate before OUT_DIR appears
    overwrite: bool = False  # replace an existing OUT_DIR (only once the new one is whole)
    attention: str = "fused"  # "fused" (ORT GroupQueryAttention) | "plain" (standard ONNX ops)
    adapter: str | None = None  # directory of an MT2ST span adapter (semedge train)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    parity: ParityConfig = field(default_factory=ParityConfig)

    def __post_init__(self) -> None:
        from semedge.export.attention import ATTENTION_KINDS

        if self.dtype not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise InputError(
                f"opset {self.opset} cannot be produced for these graphs; "
                f"choose --opset between {MIN_OPSET} and {MAX_OPSET} (default 17)"
            )
        if self.max_context is not None and self.max_context < 16:
            raise InputError(f"max_context must be >= 16 tokens, got {self.max_context}")
        if self.atol is not None:
            check_number(self.atol, "atol", 0.0, lo_open=True, hint=" (e.g. 1e-3)")
        if self.attention not in ATTENTION_KINDS:
            raise InputError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.compression.encoder != "lm":
            raise InputError("only the 'lm' SemToken encoder is exported; set encoder='lm'")


@dataclass
class ExportReport:
    """What an export wrote and how the gate went; `passed` is False only if the gate failed."""

    out_dir: str
    model: str
    config: dict[str, Any]
    files: dict[str, int]  # relative path -> bytes
    parity: ParityReport | None
    seconds: float

    @property
    def passed(self) -> bool:
        return self.parity is None or self.parity.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "model": self.model,
            "passed": self.passed,
            "config": self.config,
            "files": self.files,
            "parity": self.parity.to_dict() if self.parity else None,
            "seconds": round(self.seconds, 2),
        }


def _trace(module, args: tuple, spec: GraphSpec, path: Path, opset: int) -> None:
    """Trace `module` with the TorchScript exporter, then stamp I/O and write `path`."""
    torch, onnx = require("torch"), require("onnx")
    from semedge.export.optimize import save_graph, stamp_io

    scratch = path.parent / f".trace-{path.stem}"
    scratch.mkdir()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer notes
        try:
            torch.onnx.export(
                module, args, str(scratch / path.name), dynamo=False, opset_version=opset,
                input_names=spec.input_names, output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(), do_constant_folding=True,
            )  # fmt: skip
        except torch.onnx.errors.OnnxExporterError as err:  # an op this opset cannot express
            msg = str(err).splitlines()[0]
            raise InputError(f"cannot export {path.name} at opset {opset}: {msg}; "
                             "try the default --opset 17") from err  # fmt: skip
    model = onnx.load(str(scratch / path.name))  # loads external data if torch wrote any
    save_graph(stamp_io(model, spec), path)
    for p in sorted(scratch.iterdir()):
        p.unlink()
    scratch.rmdir()


def _example_inputs(core, dtype) -> dict[str, tuple]:
    """Trace inputs with B=2, T=5, P=4 (decode: T=2 over P=4): no dim equals 1, so nothing is
    specialised; decode takes any number of new tokens (chunked prefill)."""
    torch = require("torch")
    d = core.dims
    ids = torch.arange(10, dtype=torch.long).reshape(2, 5) % d.vocab_size
    mask = torch.ones(2, 5, dtype=torch.long)
    pos = torch.arange(5).repeat(2, 1)
    embeds = core.embed(ids).to(dtype)
    past = [torch.zeros(2, d.num_kv_heads, 4, d.head_dim, dtype=dtype)] * (2 * d.num_layers)
    return {
        "embed": (ids,),
        "encoder": (ids, mask, torch.tensor([1], dtype=torch.long)),
        "prefill": (embeds, pos, mask),
        "decode": (ids[:, :2], pos[:, 3:] + 1, torch.ones(2, 6, dtype=torch.long), *past),
    }


def _special_id(model, tokenizer, name: str):
    value = getattr(getattr(model, "generation_config", None), name, None)
    value = value if value is not None else getattr(model.config, name, None)
    return value if value is not None else getattr(tokenizer, name, None)


def _manifest_config(spec: str, model, tokenizer, dims, cfg: ExportConfig, max_ctx: int, k: int):
    from semedge.models import model_id

    return {
        "model": model_id(spec), "model_type": dims.model_type, "max_context": max_ctx,
        "dtype": cfg.dtype, "num_layers": dims.num_layers, "num_kv_heads": dims.num_kv_heads,
        "head_dim": dims.head_dim, "hidden_size": dims.hidden_size,
        "vocab_size": dims.vocab_size,
        "eos_token_id": _special_id(model, tokenizer, "eos_token_id"),
        "bos_token_id": _special_id(model, tokenizer, "bos_token_id"),
        "logits": "all" if cfg.full_logits else "last",
        "compression": cfg.compression.to_dict(),
        "encoder": {"kind": "lm", "layers": k},
        "adapter": C.ADAPTER_WEIGHTS if cfg.adapter else None,
        # sliding-window layers' graphs take and return their window's last slots only
        **({"local_layers": list(dims.local_layers), "local_kv_slots": dims.local_kv_slots}
           if dims.local_kv_slots else {}),
    }  # fmt: skip


def _created_by() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("semedge", "torch", "transformers", "onnx", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _range_probe(model, tok, max_ctx: int):
    """The gate's first tokens as a prompt is read, and the fp32 model's hidden-state peak on them."""
    from semedge.export.fp16_fit import PROBE_TOKENS, hidden_peak
    from semedge.export.parity import gate_text_ids

    ids = gate_text_ids(tok, min(PROBE_TOKENS, max_ctx))
    return ids, hidden_peak(model, ids)


def _traced_model(model, cfg: ExportConfig, probe, peak: float, name: str):
    """The model to trace: itself, or for fp16 an fp16 copy checked to hold its activations."""
    if cfg.dtype != "fp16":
        return model
    from semedge.export.fp16_fit import check_fits_fp16

    model16 = copy.deepcopy(model).half()
    check_fits_fp16(model16, probe, peak, name)
    return model16


def _write_graphs(
    tmp: Path, model, traced, cfg: ExportConfig, k: int, max_ctx: int
) -> dict[str, GraphSpec]:
    torch = require("torch")
    from semedge.export import wrappers as W

    dtype = torch.float16 if cfg.dtype == "fp16" else torch.float32
    core = W.DecoderCore(traced, cfg.attention, max_ctx)
    d = core.dims
    specs = graph_specs(
        d.num_layers, d.num_kv_heads, d.head_dim, d.hidden_size, d.vocab_size,
        DTYPES[cfg.dtype], cfg.full_logits, frozenset(d.local_layers),
    )  # fmt: skip
    modules = {
        "embed": W.EmbedGraph(core),
        "encoder": W.EncoderGraph(core, k),
        "prefill": W.PrefillGraph(core, last_only=not cfg.full_logits),
        "decode": W.DecodeGraph(core),
    }
    inputs = _example_inputs(core, dtype)
    for name, module in modules.items():
        with log_timed(log, f"tracing {specs[name].file}"):
            _trace(module, inputs[name], specs[name], tmp / specs[name].file, cfg.opset)
    model.eval()
    return specs


def _write_side_files(tmp: Path, tokenizer, cfg: ExportConfig) -> dict[str, Any] | None:
    """Tokenizer files, the adapter (primary path only) and semedge_config.json."""
    import shutil

    tokenizer.save_pretrained(str(tmp), legacy_format=False)
    adapter_meta = None
    if cfg.adapter:
        from semedge.adapter_math import ADAPTER_JSON, read_adapter_dir

        _, adapter_meta = read_adapter_dir(cfg.adapter)  # ArtifactError if unreadable
        shutil.copyfile(Path(cfg.adapter) / C.ADAPTER_WEIGHTS, tmp / C.ADAPTER_WEIGHTS)
        shutil.copyfile(Path(cfg.adapter) / ADAPTER_JSON, tmp / ADAPTER_JSON)
    semedge_config = {
        "compression": cfg.compression.to_dict(),
        "adapter": {"file": C.ADAPTER_WEIGHTS, **adapter_meta} if adapter_meta else None,
    }
    atomic_write_text(tmp / C.SEMEDGE_CONFIG, json.dumps(semedge_config, indent=2) + "\n")
    return adapter_meta


def _with_adapter_settings(cfg: ExportConfig) -> ExportConfig:
    """Resolve --adapter DEFAULT to its directory; an export left at the default compression
    settings takes the ones the adapter was trained with (recorded in its adapter.json)."""
    if not cfg.adapter:
        return cfg
    import dataclasses

    from semedge.adapter_math import adapter_compression, read_adapter_dir, resolve_adapter_dir

    directory = resolve_adapter_dir(cfg.adapter)
    _, meta = read_adapter_dir(directory)  # ArtifactError if it is not an adapter
    explicit = cfg.compression if cfg.compression != CompressionConfig() else None
    trained = None if explicit else adapter_compression(meta)  # an explicit config wins
    compression = effective_compression(explicit, trained, adapter=True)
    return dataclasses.replace(cfg, adapter=str(directory), compression=compression)


def _check_model(model, cfg: ExportConfig) -> tuple[Any, int, int]:
    from semedge.export.wrappers import model_dims

    dims = model_dims(model)
    max_ctx = cfg.max_context or dims.max_positions
    if max_ctx > dims.max_positions:
        raise InputError(
            f"--max-context {max_ctx} exceeds the model's {dims.max_positions} positions; "
            f"pass --max-context {dims.max_positions} or less"
        )
    k = cfg.compression.encoder_layers
    if not 0 <= k < dims.num_layers:
        raise InputError(f"encoder_layers {k} must be below the model's {dims.num_layers} layers")
    return dims, max_ctx, k


def _gate(model, tok, tmp: Path, cfg: ExportConfig, max_ctx: int, out_dir: Path, adapter):
    from semedge.export.parity import check_parity

    atol = cfg.atol or default_atol(cfg.dtype)
    with log_timed(log, "parity gate (PyTorch vs ONNX Runtime CPU)"):
        report = check_parity(model, tok, tmp, max_ctx, atol, cfg.parity, cfg.compression, adapter)
    if not report.passed:
        w = report.worst()
        raise AccuracyError(
            f"parity gate failed: {w.case} at {w.tokens} tokens has max |dlogits| "
            f"{w.max_abs:.3g}, max |dKV| {w.kv_max_abs:.3g} > atol {atol:g} (top-1 {w.top1:.3f}); "
            f"{out_dir} not written; raise --atol or pass --no-validate to keep it anyway",
            report,
        )
    return report


def export_onnx(
    model_spec: str | Path,
    out_dir: str | Path,
    config: ExportConfig | None = None,
    progress: bool = False,
) -> ExportReport:
    """Export a causal LM to embed/encoder/prefill/decode ONNX graphs, gated by parity.

    Args:
        model_spec: "smollm2", "gemma3-270m" or a local Hugging Face causal-LM directory (Llama,
            Qwen2, Gemma 3, GPT-2).
        out_dir: the export directory to create (written atomically).
        config: export options; None -> ExportConfig().
        progress: accepted for a uniform library signature; export steps are logged instead
            (no loop here is long enough for a bar).

    Returns:
        An ExportReport (files, manifest config, parity report or None).

    Raises:
        InputError: unknown model, unsupported architecture, bad option.
        ArtifactError: OUT_DIR exists (without overwrite) or cannot be written.
        AccuracyError: the parity gate missed atol; nothing is left on disk.
        BackendUnavailable: torch, transformers, onnx or onnxruntime is missing.
    """
    from semedge.models import load_model

    cfg = _with_adapter_settings(config or ExportConfig())
    out_dir = Path(out_dir)
    for mod in ("torch", "transformers", "onnx", "onnxruntime"):
        require(mod)
    if out_dir.exists() and not cfg.overwrite:
        raise ArtifactError(f"{out_dir} already exists; choose another path or pass --overwrite")
    t0 = time.perf_counter()
    with staged_dir(out_dir, overwrite=cfg.overwrite) as tmp:  # fails fast if not writable
        model, tok = load_model(model_spec)
        dims, max_ctx, k = _check_model(model, cfg)
        adapter = None
        if cfg.adapter:
            from semedge.training.adapter import load_adapter

            adapter = load_adapter(cfg.adapter, model)  # InputError if trained for another model
        probe, peak = _range_probe(model, tok, max_ctx)
        traced = _traced_model(model, cfg, probe, peak, str(model_spec))
        specs = _write_graphs(tmp, model, traced, cfg, k, max_ctx)
        del traced
        _write_side_files(tmp, tok, cfg)
        mcfg = {**_manifest_config(str(model_spec), model, tok, dims, cfg, max_ctx, k),
                **({"hidden_peak": peak} if math.isfinite(peak) else {})}  # fmt: skip
        manifest = Manifest(
            format=C.FORMAT_EXPORT, graphs={n: s.to_dict() for n, s in specs.items()},
            config=mcfg, created_by=_created_by(),
            extra={"opset": cfg.opset, "attention": cfg.attention},
        )  # fmt: skip
        write_manifest(tmp, manifest)
        for hook in _POST_WRITE_HOOKS:
            hook(tmp)
        report = _gate(model, tok, tmp, cfg, max_ctx, out_dir, adapter) if cfg.validate else None
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    return ExportReport(str(out_dir), mcfg["model"], mcfg, files, report, time.perf_counter() - t0)
