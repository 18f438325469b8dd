"""Writing a calibrated export (calibration.int8): the source export's verified files, the
quantized graphs and their manifest, staged and renamed into place."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from semedge import constants as C
from semedge.artifacts import (
    Manifest,
    confined,
    copy_verified,
    onnx_external_locations,
    sha256_file,
    staged_dir,
    write_manifest,
)
from semedge.calibration.report import Int8Report
from semedge.deps import require
from semedge.errors import ArtifactError

__all__ = ["graph_files", "write_calibrated"]


def graph_files(src: Path, graph: str) -> set[str]:
    """A graph file and its external-data companions (confined to `src`)."""
    names = {graph}
    for loc in onnx_external_locations(src / graph):
        names.add(confined(src, loc, f"external data of {graph}").relative_to(src).as_posix())
    return names


def _check_copy(src: Path, manifest: Manifest, rel: str, target: Path) -> None:
    """`target`, copied from `src/rel`, matches the SHA-256 `manifest` lists for `rel`.

    Raises:
        ArtifactError: it does not (tampered or changed while copying).
    """
    meta = manifest.files.get(rel) or {}
    if sha256_file(target) != meta.get("sha256"):
        raise ArtifactError(f"{src / rel} does not match its SHA-256 in the manifest; re-export")


def write_calibrated(
    run: Any, manifest: Manifest, best: dict, report: Int8Report, out: Path, overwrite: bool,
    encoder: Path | None = None,
) -> None:  # fmt: skip
    """Stage `out`: the export's files, the quantized graphs from best["folder"], the int8
    encoder (`encoder`), the fp32 decode fallback graph where the report has one, and a
    manifest recording what was done (calibration.int8's _Run: `run`)."""
    ort = require("onnxruntime")
    graphs = run.config.graphs
    skip = set().union(*(graph_files(run.src, g) for g in graphs)) | {C.MANIFEST}
    if encoder is not None:
        skip |= graph_files(run.src, C.ENCODER_ONNX)
    with staged_dir(out, overwrite=overwrite) as tmp:
        copy_verified(run.src, manifest, tmp, skip)
        for g in graphs:
            shutil.copy2(best["folder"] / g, tmp / g)
        if encoder is not None:
            shutil.copy2(encoder, tmp / C.ENCODER_ONNX)
        if report.fallback:  # the export's own fp32 decode graph, verified by copy_verified's twin
            shutil.copy2(run.src / C.DECODE_ONNX, tmp / C.DECODE_EXACT_ONNX)
            _check_copy(run.src, manifest, C.DECODE_ONNX, tmp / C.DECODE_EXACT_ONNX)
        config = dict(manifest.config)
        config["quantization"] = {
            "dtype": "int8", "target": report.target, "scheme": report.scheme,
            "method": report.method, "kept_high_precision": report.kept_high_precision,
            "ppl_fp32": report.ppl_fp32, "ppl_int8": report.ppl_int8,
            "top1_agreement": report.top1_agreement, "budget_pct": report.budget_pct,
            "min_top1": report.min_top1,
        }  # fmt: skip
        if report.block_size:
            config["quantization"]["block_size"] = report.block_size
        if report.fallback:
            config["decode_fallback"] = dict(report.fallback)
        if report.encoder:
            config["encoder_quantization"] = dict(report.encoder)
        created = {**manifest.created_by, "onnxruntime_quantization": ort.__version__}
        extra = {**manifest.extra, "source": {"format": manifest.format, "path": str(run.src)}}
        write_manifest(
            tmp,
            Manifest(format=C.FORMAT_CALIBRATED, graphs=manifest.graphs, config=config,
                     created_by=created, extra=extra),
        )  # fmt: skip
