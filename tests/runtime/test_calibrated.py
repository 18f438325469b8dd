"""Calibrated directories load, and their fitted SemToken threshold replaces the per-prompt search
at the ratio it was fitted for."""

from __future__ import annotations

import shutil

from semedge.artifacts import load_manifest, write_manifest
from semedge.constants import FORMAT_CALIBRATED
from semedge.runtime import Pipeline
from tests.runtime.toy_export import sample_text


def test_calibrated_threshold_is_used_at_its_ratio(toy_export, tmp_path):
    text = sample_text()[:700]
    searched = Pipeline.from_pretrained(toy_export).prepare(text, ratio=2.4)
    out = tmp_path / "calibrated"
    shutil.copytree(toy_export, out)
    manifest = load_manifest(out)
    tau = searched.threshold + 0.05  # a different tau than the search finds: visible in the spans
    manifest.format = FORMAT_CALIBRATED
    manifest.config["compression"] = {**manifest.config["compression"], "threshold": tau}
    write_manifest(out, manifest)
    pipe = Pipeline.from_pretrained(out)
    at_ratio = pipe.prepare(text, ratio=2.4)
    assert at_ratio.threshold == tau and len(at_ratio.positions) > len(searched.positions)
    other = pipe.prepare(text, ratio=2.0)  # another ratio: the threshold is searched again
    assert other.threshold != tau
