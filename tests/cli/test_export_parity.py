"""`semedge export parity`: the export gate re-run on a finished export, at chosen lengths."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from semedge import constants as C
from tests.conftest import assert_one_line_error


def test_parity_passes_on_the_export_and_reports_each_length(cli, tiny_export, tiny_llama):
    res = cli("export", "parity", tiny_export, "-m", tiny_llama, "--lengths", "7,40", "--json")
    data = json.loads(res.stdout)
    assert data["passed"] is True
    cases = data["parity"]["cases"]
    assert sorted(c["tokens"] for c in cases if c["case"] == "text") == [7, 40]
    assert {c["case"] for c in cases} >= {"embed", "encoder", "batch", "compressed"}
    assert all(c["max_abs"] < 1e-3 for c in cases if c["case"] == "text")
    chunked = cli("export", "parity", tiny_export, "-m", tiny_llama, "--lengths", "40",
                  "--prefill-chunk", "12", "--no-batch", "--json")  # fmt: skip
    assert json.loads(chunked.stdout)["passed"] is True


def test_a_changed_weight_fails_with_exit_1(cli, tiny_export, tiny_llama, tmp_path):
    """A prefill weight scaled after export, manifest refreshed so the files verify: the graphs
    no longer match the model, and the re-run gate must say so."""
    import onnx
    from onnx import numpy_helper

    from semedge.artifacts import load_manifest, write_manifest

    bad = tmp_path / "bad"
    shutil.copytree(tiny_export, bad)
    for graph in (C.PREFILL_ONNX, C.DECODE_ONNX):
        model = onnx.load(str(bad / graph))
        init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        arr = numpy_helper.to_array(init) * 1.5
        init.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), init.name))
        onnx.save(model, str(bad / graph))
    write_manifest(bad, load_manifest(bad))
    res = cli("export", "parity", bad, "-m", tiny_llama, "--lengths", "16", expect_rc=1)
    assert "parity failed" in res.stderr
    assert_one_line_error(res)


@pytest.mark.parametrize(
    "case, needle",
    [
        ("other_model", "was exported from"),
        ("too_long", "--lengths must be"),
        ("no_model", "pass -m"),
        ("tampered", ""),
        ("bad_lengths", "comma-separated"),
        ("bad_chunk", "prefill_chunk must be >= 1"),
    ],
)
def test_bad_input_is_one_line(cli, tiny_export, tiny_llama, tiny_gpt2, tmp_path, case, needle):
    export, args = tiny_export, ["-m", tiny_llama, "--lengths", "16"]
    if case == "other_model":
        args = ["-m", tiny_gpt2, "--lengths", "16"]
    elif case == "too_long":
        args = ["-m", tiny_llama, "--lengths", "100000"]
    elif case == "no_model":
        args = ["--lengths", "16"]
    elif case == "bad_lengths":
        args = ["-m", tiny_llama, "--lengths", "16,abc"]
    elif case == "bad_chunk":
        args = ["-m", tiny_llama, "--lengths", "16", "--prefill-chunk", "0"]
    elif case == "tampered":
        export = tmp_path / "t"
        shutil.copytree(tiny_export, export)
        with open(export / C.DECODE_ONNX, "ab") as f:
            f.write(b"\0")
    res = cli("export", "parity", export, *args, expect_rc=1)
    assert_one_line_error(res)
    assert needle in res.stderr
