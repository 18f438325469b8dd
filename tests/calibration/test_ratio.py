"""Ratio calibration: a threshold fitted on WikiText valid holds the ratio on a held-out slice."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from semedge.artifacts import load_manifest, verify_manifest
from semedge.calibration.ratio import Prompt, RatioConfig, calibrate_ratio, fit_threshold
from semedge.compressor import spans as S
from semedge.config import CompressionConfig
from semedge.errors import ArtifactError, InputError


def _held_out_text(path, fraction=0.25, chars=1500):
    text = path.read_text(encoding="utf-8")
    tail = text[int(len(text) * (1 - fraction)) :]
    return tail[len(tail) // 2 : len(tail) // 2 + chars]


def test_ratio_holds_on_held_out_slice_and_runtime_uses_it(tiny_export, wikitext_valid, tmp_path):
    from semedge.runtime import Pipeline

    source = tmp_path / "source"
    shutil.copytree(tiny_export, source)
    (source / "stray.onnx.data").write_bytes(b"x")  # unlisted: the source is refused, not blessed
    out, export = tmp_path / "compression.json", tmp_path / "export"
    with pytest.raises(ArtifactError, match="stray.onnx.data is not listed"):
        calibrate_ratio(wikitext_valid, RatioConfig(ratio=2.4, chunk_tokens=256), out,
                        export_dir=source, out_dir=export)  # fmt: skip
    (source / "stray.onnx.data").unlink()
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    report = calibrate_ratio(wikitext_valid, RatioConfig(ratio=2.4, chunk_tokens=256), out,
                             export_dir=source, out_dir=export)  # fmt: skip
    assert report.passed, report.to_dict()
    assert abs(report.test_ratio / 2.4 - 1) <= 0.02
    assert report.fit_prompts == 64 and report.test_prompts == 32
    saved = CompressionConfig.from_dict(json.loads(out.read_text()))
    assert saved.threshold == report.threshold and saved.ratio == 2.4
    manifest = verify_manifest(export, load_manifest(export))
    assert manifest.config["compression"]["threshold"] == report.threshold
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before  # source untouched
    with Pipeline.from_pretrained(export) as pipe:  # the runtime compresses with the stored tau
        prepared = pipe.prepare(_held_out_text(wikitext_valid), ratio=2.4)
    assert prepared.threshold == report.threshold


def test_ratio_from_torch_model(tiny_llama, wikitext_valid, tmp_path):
    data = tmp_path / "valid-400k.txt"  # a shorter slice: the HF tokenizer is the slow part
    data.write_bytes(wikitext_valid.read_bytes()[:400_000])
    cfg = RatioConfig(ratio=2.0, chunk_tokens=256, prompts=32, test_prompts=32)
    report = calibrate_ratio(data, cfg, tmp_path / "c.json", model=str(tiny_llama))
    assert report.passed, report.to_dict()
    assert report.export_dir is None and (tmp_path / "c.json").is_file()


def test_prompt_positions_match_find_spans():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(200, 16)).cumsum(axis=0)  # smooth: neighbours similar
    protected = np.zeros(200, bool)
    protected[-20:] = True
    cfg = CompressionConfig(ratio=2.0)
    prompt = Prompt(hidden, protected, cfg)
    for tau in (-0.5, 0.0, 0.3, 0.9):
        spans, _ = S.find_spans(hidden, protected, dataclasses.replace(cfg, threshold=tau))
        assert prompt.positions(tau) == len(spans)


def test_unreachable_ratio_is_an_input_error():
    hidden = np.random.default_rng(1).normal(size=(100, 8))
    cfg = CompressionConfig(ratio=50.0, max_span=8)
    with pytest.raises(InputError, match="out of reach"):
        fit_threshold([Prompt(hidden, np.zeros(100, bool), cfg)], cfg)


@pytest.mark.slow
def test_ratio_holds_for_smollm2(wikitext_valid, tmp_path):
    report = calibrate_ratio(wikitext_valid, RatioConfig(ratio=2.4), tmp_path / "c.json")
    assert report.passed, report.to_dict()
