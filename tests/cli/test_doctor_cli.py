"""`semedge doctor` runs here and prints one JSON object with --json."""

from __future__ import annotations

import json


def test_doctor_table(cli):
    res = cli("doctor")
    assert "CPUExecutionProvider" in res.stdout and "yes" in res.stdout


def test_doctor_json(cli):
    data = json.loads(cli("doctor", "--json").stdout)
    assert data["passed"] is True
    assert data["providers"]["CPUExecutionProvider"]["ok"] is True
    assert {"python", "packages", "gpu", "jetson", "hints"} <= set(data)


def test_doctor_without_a_working_onnxruntime_is_one_error_line():
    from tests.conftest import run_python

    proc = run_python(
        "sys.argv = ['semedge', 'doctor']\nfrom semedge.cli import main\nmain()",
        block=("onnxruntime",),
    )
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("[")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert lines == ["Error: onnxruntime's CPU provider does not run; reinstall onnxruntime "
                     "(pip install onnxruntime)"]  # fmt: skip
