"""Module boundaries: the torch-free core and the runtime import without torch, and every
folder imports only what docs/architecture.md allows (checked by scanning the source)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import run_python

TORCH_FREE = [
    "semedge",
    "semedge.errors",
    "semedge.artifacts",
    "semedge.staging",
    "semedge.checks",
    "semedge.onnx_refs",
    "semedge.config",
    "semedge.constants",
    "semedge.textio",
    "semedge.cli",
    "semedge.runtime",
    "semedge.runtime.serving.app",
    "semedge.runtime.serving.triton_model",
    "semedge.runtime.serving.triton_server",
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


# ---------------------------------------------------------------- import rules (docs/architecture.md)
ROOT = Path(__file__).resolve().parents[1]
BASE = ("semedge._lazy", "semedge.errors", "semedge.deps", "semedge.artifacts", "semedge.config",
        "semedge.constants", "semedge.logs", "semedge.textio", "semedge.adapter_math",
        "semedge.staging", "semedge.checks", "semedge.onnx_refs")  # fmt: skip
HEAVY = ("torch", "transformers", "onnx", "onnxruntime", "tensorrt", "matplotlib")
# folder (or file) -> semedge modules and third-party packages its code may never import, even
# lazily inside a function
NEVER = {
    "runtime": ("torch", "transformers", "semedge.export", "semedge.calibration", "semedge.cli",
                "semedge.models", "semedge.training", "semedge.eval", "semedge.mt2st"),
    "export": ("semedge.calibration", "semedge.cli"),
    "calibration": ("semedge.cli",),
    **{f"sdk/{d}": ("semedge.export", "semedge.calibration", "semedge.runtime", "semedge.cli")
       for d in ("models", "compressor", "training", "eval")},
    **{f"sdk/{m.split('.')[1]}.py": (*HEAVY, "semedge.export", "semedge.calibration",
                                     "semedge.runtime", "semedge.cli", "semedge.models",
                                     "semedge.compressor", "semedge.training", "semedge.eval")
       for m in BASE},
}  # fmt: skip
# the only parts of the PyTorch SDK the runtime may import: its torch-free helpers
RUNTIME_SDK = (
    *BASE,
    "semedge.compressor.spans",
    "semedge.compressor.budget",
    "semedge.compressor.relevance",
    "semedge.compressor.merging",
    "semedge.compressor.windows",
)


def _imports(path: Path, top_level: bool = False) -> list[tuple[str, int]]:
    """Every absolute import in `path` as dotted names (`from a import b` gives a.b), with lines."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level else ast.walk(tree)
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return out


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _files(rule: str) -> list[Path]:
    target = ROOT / rule
    return [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))


@pytest.mark.parametrize("rule", list(NEVER))
def test_import_rules(rule):
    bad = [
        f"{f.relative_to(ROOT)}:{line} imports {name}"
        for f in _files(rule)
        for name, line in _imports(f)
        if _under(name, NEVER[rule])
    ]
    assert not bad, "\n".join(bad)


def test_runtime_uses_only_the_torch_free_sdk():
    bad = [
        f"{f.relative_to(ROOT)}:{line} imports {name}"
        for f in _files("runtime")
        for name, line in _imports(f)
        if name.startswith("semedge.")
        and not _under(name, (*RUNTIME_SDK, "semedge.runtime", "semedge.__version__"))
    ]
    assert not bad, "\n".join(bad)


def test_cli_modules_import_nothing_heavy_at_the_top():
    stages = ("semedge.export", "semedge.calibration", "semedge.runtime", "semedge.models",
              "semedge.compressor", "semedge.training", "semedge.eval")  # fmt: skip
    bad = [
        f"{f.relative_to(ROOT)}:{line} imports {name} at module level"
        for f in _files("sdk/cli")
        for name, line in _imports(f, top_level=True)
        if _under(name, (*HEAVY, *stages))
    ]
    assert not bad, "\n".join(bad)


def test_the_rules_catch_a_violation(tmp_path):
    """The scanner sees lazy imports inside functions and `from x import y` forms."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from semedge.cli.common import echo_json\n    import torch\n")
    names = [n for n, _ in _imports(probe)]
    assert _under(names[0], NEVER["calibration"]) and _under(names[1], NEVER["runtime"])
    assert _imports(probe, top_level=True) == []
