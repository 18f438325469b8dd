"""Runtime fixtures: a toy export that follows the export contract (built with onnx.helper)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runtime.toy_export import build_toy_export


@pytest.fixture(scope="session")
def toy_export(tiny_llama, tmp_path_factory) -> Path:
    return build_toy_export(
        tmp_path_factory.mktemp("toy") / "export", tiny_llama / "tokenizer.json"
    )
