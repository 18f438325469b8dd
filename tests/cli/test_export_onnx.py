"""`semedge export onnx` from the command line: a passing export, a failing gate, bad input."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from semedge import constants as C
from tests.conftest import assert_one_line_error

FAST = ["--parity-lengths", "7,32"]


def _no_leftovers(out) -> None:
    assert not out.exists(), f"{out} was left behind"
    assert not list(out.parent.glob(f".{out.name}.tmp-*")), "a staging directory was left behind"


def test_export_json_is_one_object(cli, tiny_gpt2, tmp_path):
    res = cli("export", "onnx", "-m", tiny_gpt2, tmp_path / "g", *FAST, "--json", "--dtype", "fp32")
    data = json.loads(res.stdout)
    assert (tmp_path / "g" / C.MANIFEST).is_file() and (tmp_path / "g" / C.DECODE_ONNX).is_file()
    assert data["passed"] is True and data["config"]["model_type"] == "gpt2"
    assert {c["case"] for c in data["parity"]["cases"]} >= {"text", "batch", "compressed"}


def test_perturbed_weight_fails_the_gate_and_leaves_nothing(tiny_llama, tmp_path):
    """A weight changed after tracing (as a broken exporter would) must exit 1, no OUT_DIR."""
    import subprocess

    out = tmp_path / "broken"
    script = textwrap.dedent(f"""
        import sys
        import numpy as np, onnx
        from onnx import numpy_helper
        from semedge.export import onnx_export

        def perturb(tmp):
            path = str(tmp / "prefill.onnx")
            model = onnx.load(path)
            init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
            arr = numpy_helper.to_array(init).copy()
            arr.flat[0] += 0.5
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
            onnx.save(model, path)

        onnx_export._POST_WRITE_HOOKS.append(perturb)
        from semedge.cli import main
        sys.argv = ["semedge", "export", "onnx", "-m", {str(tiny_llama)!r}, {str(out)!r},
                    "--parity-lengths", "7,32"]
        main()
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 1, res.stderr
    assert "parity gate failed" in res.stderr and "atol 0.001" in res.stderr
    assert "max|dlogits|" in res.stdout and "FAIL" in res.stdout  # the table that failed
    assert_one_line_error(res_like(res))
    _no_leftovers(out)


def res_like(proc):
    from tests.conftest import CliResult

    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-m", "no-such-model"], "unknown model"),
        (["--opset", "7"], "opset 7 cannot be produced"),
        (["--dtype", "fp32", "--max-context", "999999"], "exceeds the model"),
        (["--parity-lengths", "7,x"], "--parity-lengths"),
        (["--adapter", "/nonexistent/adapter"], "adapter"),
    ],
)
def test_bad_input_is_one_line(cli, tiny_llama, tmp_path, args, needle):
    out = tmp_path / "o"
    full = ["export", "onnx", "-m", tiny_llama, out, *args] if args[0] != "-m" else [
        "export", "onnx", *args, out]  # fmt: skip
    res = cli(*full, expect_rc=1)
    assert_one_line_error(res)
    assert needle in res.stderr
    _no_leftovers(out)


def test_unwritable_out_dir(cli, tiny_llama, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    res = cli("export", "onnx", "-m", tiny_llama, blocker / "out", expect_rc=1)
    assert_one_line_error(res)
    assert "cannot write" in res.stderr


def test_existing_out_dir_needs_overwrite(cli, tiny_llama, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    res = cli("export", "onnx", "-m", tiny_llama, out, expect_rc=1)
    assert_one_line_error(res)
    assert "--overwrite" in res.stderr and (out / "keep.txt").read_text() == "user data"
