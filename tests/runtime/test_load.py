"""A short run of benchmarks/load_test.py on the tiny export against both servers (slow).

Counts, not timings: every request must succeed with the output Pipeline.generate gives.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_test():
    spec = importlib.util.spec_from_file_location("load_test", ROOT / "benchmarks" / "load_test.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_test"] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("target", ["semedge", "triton"])
def test_short_load_run_has_no_errors_or_wrong_outputs(tiny_export, target, tmp_path):
    pytest.importorskip("openai")
    if target == "triton":
        from semedge.errors import BackendUnavailable
        from semedge.runtime.serving.triton_server import find_triton_home

        try:
            find_triton_home()
        except BackendUnavailable as err:
            pytest.skip(f"no tritonserver: {err}")
    args = ["--export", str(tiny_export), "--target", target, "--clients", "1,4",
            "--requests", "4", "--lengths", "24,300", "--ratios", "none,2", "--new-tokens", "4,12",
            "--pool", "6", "--compress-from", "200", "--max-seconds", "300", "--json", str(tmp_path / "load.json")]  # fmt: skip
    ref, warm, *runs = _load_test().main(args)
    # the warm-up: one client over the 6-request pool, then one request from each of 4 clients
    assert ref["ok"] == 6 and warm["ok"] == 6 + 4 and warm["errors"] == warm["wrong"] == 0, warm
    assert [r["clients"] for r in runs] == [1, 4]
    for r in runs:
        assert r["errors"] == 0 and r["wrong"] == 0, r
        assert r["ok"] == r["clients"] * 4, r
    assert (tmp_path / "load.json").is_file()
