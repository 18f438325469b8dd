"""Pick and build one backend per graph of an export for a provider name (torch-free)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semedge.artifacts import Manifest, listed_file
from semedge.constants import DECODE_ONNX, EMBED_ONNX, ENCODER_ONNX, PREFILL_ONNX

__all__ = ["backends_for", "GRAPHS"]

GRAPHS = {
    "embed": EMBED_ONNX,
    "encoder": ENCODER_ONNX,
    "prefill": PREFILL_ONNX,
    "decode": DECODE_ONNX,
}


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
    from semedge.runtime.backends.ort import OrtBackend, ort_providers

    ort_names = ort_providers(provider) if isinstance(providers, str) or provider in (
        "cpu", "cuda", "tensorrt") else _check_ort_names(providers)  # fmt: skip
    out = {}
    for key, fname in GRAPHS.items():
        if key == "encoder" and fname not in manifest.files:
            continue  # an export without an encoder still runs uncompressed
        graph_path = listed_file(path, manifest, fname, f"the {key} graph")
        spec = manifest.graphs.get(key) or manifest.graphs.get(fname)
        prof = f"{ort_profile}_{key}" if ort_profile and key in ("prefill", "decode") else None
        out[key] = OrtBackend(graph_path, ort_names, spec, threads, prof)
        out[key].provider_name = provider
    return out


def _check_ort_names(providers: Sequence[str]) -> list[str]:
    from semedge.runtime.backends.ort import PROVIDERS, ort_providers

    by_first = {v[0]: k for k, v in PROVIDERS.items()}
    if providers[0] not in by_first:
        ort_providers(str(providers[0]))  # raises InputError naming the choices
    ort_providers(by_first[providers[0]])  # raises BackendUnavailable when not installed
    return list(providers)
