"""Calibration fixtures: a WikiText slice, planted-outlier copies of the tiny export."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.calibration.planted import plant_outliers

# small enough for seconds on 2 cores, large enough to hold calibration + held-out windows
INT8_FAST = dict(samples=4, seq_len=64, eval_windows=2, eval_context=32, eval_tokens=16, speed_tokens=64, speed_repeats=1)  # fmt: skip
INT8_FAST_ARGS = [
    "--samples", "4", "--seq-len", "64", "--eval-windows", "2", "--eval-context", "32",
    "--eval-tokens", "16", "--speed-tokens", "64",
]  # fmt: skip


@pytest.fixture(scope="session")
def cal_text(wikitext_valid, tmp_path_factory) -> Path:
    """The first 150 kB of WikiText-2 valid (~40k tiny-tokenizer tokens)."""
    path = tmp_path_factory.mktemp("cal-data") / "valid-150k.txt"
    path.write_bytes(wikitext_valid.read_bytes()[:150_000])
    return path


@pytest.fixture(scope="session")
def planted_down_export(tiny_export, tmp_path_factory) -> Path:
    """The tiny export with an int8-hostile outlier before every mlp.down_proj MatMul."""
    return plant_outliers(tiny_export, tmp_path_factory.mktemp("planted") / "down", "down_proj")


@pytest.fixture(scope="session")
def planted_all_export(tiny_export, tmp_path_factory) -> Path:
    """The tiny export with the outlier before every weight MatMul: nothing quantizes for free."""
    return plant_outliers(tiny_export, tmp_path_factory.mktemp("planted") / "all", "")
