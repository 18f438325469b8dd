"""Pick and build one backend per graph of an export for a provider name (torch-free)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semedge.artifacts import Manifest, listed_file
from semedge.constants import (
    DECODE_EXACT_ONNX,
    DECODE_ONNX,
    EMBED_ONNX,
    ENCODER_ONNX,
    PREFILL_ONNX,
)
from semedge.errors import ArtifactError

__all__ = ["backends_for", "openvino_backends", "GRAPHS"]

GRAPHS = {
    "embed": EMBED_ONNX,
    "encoder": ENCODER_ONNX,
    "prefill": PREFILL_ONNX,
    "decode": DECODE_ONNX,
    "decode_exact": DECODE_EXACT_ONNX,  # optional: a quantized decode's fp32 fallback
}
OPTIONAL = ("encoder", "decode_exact")


def backends_for(
    path: Path,
    manifest: Manifest,
    provider: str,
    providers: str | Sequence[str],
    threads: int | None = None,
    ort_profile: str | None = None,
) -> dict[str, Any]:
    """One unloaded backend per graph ("embed", "encoder", "prefill", "decode") on `provider`.

    Raises:
        InputError: unknown provider.
        BackendUnavailable: the provider is not installed.
        ArtifactError: a graph file is missing or not listed in the manifest (the encoder is
            optional: it must be listed when present).
    """
    if provider == "trt-engine":
        from semedge.runtime.backends.trt import engine_backends

        return engine_backends(path, manifest)
    if provider == "openvino":
        return openvino_backends(path, manifest, threads)
    from semedge.runtime.backends.ort import OrtBackend, ort_providers

    ort_names = ort_providers(provider) if isinstance(providers, str) or provider in (
        "cpu", "cuda", "tensorrt") else _check_ort_names(providers)  # fmt: skip
    out = {}
    for key, graph_path in _graph_files(path, manifest).items():
        fname = graph_path.name
        spec = _spec(manifest, key, fname)
        prof = f"{ort_profile}_{key}" if ort_profile and key in ("prefill", "decode") else None
        out[key] = OrtBackend(graph_path, ort_names, spec, threads, prof,
                              shrink_arena=key == "prefill", stop_spinning=key.startswith("decode"))  # fmt: skip
        out[key].provider_name = provider
    return out


def _graph_files(path: Path, manifest: Manifest) -> dict[str, Path]:
    """Each graph's path, listed in the manifest and confined to the directory (listed_file)."""
    out = {}
    for key, fname in GRAPHS.items():
        if key in OPTIONAL and fname not in manifest.files:
            continue  # without an encoder: uncompressed; without decode_exact: no fallback
        out[key] = listed_file(path, manifest, fname, f"the {key} graph")
    return out


def openvino_backends(path: Path, manifest: Manifest, threads: int | None = None) -> dict[str, Any]:
    """OpenVINO for the prefill in the export's precision (bf16 runs on the CPU's bf16 matrix
    engine), the encoder in bf16 where the export's span gate kept it (`config.encoder_precision`,
    calibration.encoder_bf16) and in fp32 otherwise, embed in fp32; decode on ONNX
    Runtime's CPU provider, which steps one token 2x faster at a 2,048-slot cache (OpenVINO
    re-plans its kernels for every new cache length; docs/export.md). Both read and write the
    same host KV buffers. An int8 encoder (`calibrate int8 --encoder int8`) and the decode
    graphs run on ONNX Runtime: their MatMulNBits is ONNX Runtime's own op.

    Raises:
        BackendUnavailable: openvino is not installed.
        ArtifactError: a graph is missing, or the export uses ORT-only fused attention.
    """
    from semedge.deps import require
    from semedge.runtime.backends.openvino import OpenVinoBackend

    require("openvino", "openvino")
    if manifest.extra.get("attention") == "fused":
        raise ArtifactError(
            f"{path} uses ONNX Runtime's fused GroupQueryAttention, which OpenVINO cannot run; "
            "re-export with `semedge export onnx --attention plain` for --provider openvino"
        )
    precision = str(manifest.config.get("precision") or "fp32")
    if precision not in ("fp32", "bf16", "fp16", "int8"):
        raise ArtifactError(f"{path}/manifest.json precision {precision!r} is unknown; re-export")
    from semedge.runtime.backends.ort import OrtBackend, ort_providers

    out: dict[str, Any] = {}
    for key, file in _graph_files(path, manifest).items():
        spec = _spec(manifest, key, file.name)
        int8_encoder = key == "encoder" and manifest.config.get("encoder_quantization")
        if key.startswith("decode") or int8_encoder:  # MatMulNBits: ONNX Runtime's own op
            out[key] = OrtBackend(file, ort_providers("cpu"), spec, threads)
            out[key].provider_name = "cpu"
            continue
        out[key] = OpenVinoBackend(file, spec, threads, _ov_precision(key, precision, manifest))
    return out


def _ov_precision(key: str, precision: str, manifest: Manifest) -> str:
    """The precision OpenVINO runs graph `key` in: the prefill in the export's; the encoder in
    bf16 where the export recorded a gated bf16 encoder (calibration.encoder_bf16), else fp32;
    embed in fp32 (a lookup).

    Raises:
        ArtifactError: a malformed `encoder_precision` record.
    """
    if key == "prefill":
        return precision
    rec = manifest.config.get("encoder_precision") if key == "encoder" else None
    if rec is None:
        return "fp32"
    if not isinstance(rec, dict) or rec.get("precision") not in ("bf16", "fp32"):
        raise ArtifactError(f"manifest.json encoder_precision {rec!r} is not a bf16/fp32 record; "
                            "re-export")  # fmt: skip
    return str(rec["precision"])


def _spec(manifest: Manifest, key: str, fname: str) -> Any:
    """A graph's I/O spec in the manifest (the fp32 fallback has the decode graph's)."""
    key = "decode" if key == "decode_exact" else key
    return manifest.graphs.get(key) or manifest.graphs.get(fname)


def _check_ort_names(providers: Sequence[str]) -> list[str]:
    from semedge.runtime.backends.ort import PROVIDERS, ort_providers

    by_first = {v[0]: k for k, v in PROVIDERS.items()}
    if providers[0] not in by_first:
        ort_providers(str(providers[0]))  # raises InputError naming the choices
    ort_providers(by_first[providers[0]])  # raises BackendUnavailable when not installed
    return list(providers)
