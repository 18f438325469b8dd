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
