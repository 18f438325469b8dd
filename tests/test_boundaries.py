"""Module boundaries: the torch-free core and the runtime import without torch."""

from __future__ import annotations

import pytest

from tests.conftest import run_python

TORCH_FREE = [
    "semedge",
    "semedge.errors",
    "semedge.artifacts",
    "semedge.config",
    "semedge.constants",
    "semedge.textio",
    "semedge.cli",
    "semedge.runtime",
]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_imports_without_heavy_deps(module):
    proc = run_python(
        f"import {module}; heavy = {{'torch', 'transformers', 'onnx', 'semedge.export',"
        " 'semedge.calibration'}; sys.exit(sorted(heavy & set(sys.modules)) or 0)"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_runtime_imports_with_torch_blocked():
    proc = run_python("import semedge.runtime; print('ok')", block=("torch",))
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
