"""Module boundaries: the torch-free core and the runtime import without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
    probe = (
        f"import sys, {module}; heavy = {{'torch', 'transformers', 'onnx', 'semedge.export',"
        " 'semedge.calibration'}; sys.exit(sorted(heavy & set(sys.modules)) or 0)"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_runtime_imports_with_torch_blocked():
    probe = "import sys; sys.modules['torch'] = None; import semedge.runtime; print('ok')"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
