"""Python-backend Triton repositories: configs parse with Triton's ModelConfig; the export travels."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from semedge.artifacts import load_manifest, verify_manifest
from semedge.errors import ArtifactError, InputError
from semedge.export.triton_python import PythonRepoConfig, write_python_repo
from tests.conftest import assert_one_line_error


def _parse(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_python_repo_parses_and_carries_a_verified_export(tiny_export, tmp_path):
    repo = tmp_path / "repo"
    config = PythonRepoConfig(max_batch=4, instances=2, queue_delay_us=500, threads=1)
    assert write_python_repo(tiny_export, repo, config) == ["semedge", "semedge_stream"]
    plain, stream = (
        _parse(repo / "semedge" / "config.pbtxt"),
        _parse(repo / "semedge_stream" / "config.pbtxt"),
    )
    assert plain.backend == "python" and plain.max_batch_size == 4
    assert (
        not plain.model_transaction_policy.decoupled and stream.model_transaction_policy.decoupled
    )
    assert (
        plain.instance_group[0].count == 2
        and plain.dynamic_batching.max_queue_delay_microseconds == 500
    )
    inputs = {i.name: i for i in plain.input}
    assert not inputs["prompt"].optional and inputs["ratio"].optional and inputs["stop"].optional
    assert {o.name for o in stream.output} == {
        "text",
        "finish_reason",
        "prompt_tokens",
        "compressed_tokens",
    }
    assert stream.parameters["export_dir"].string_value == "../semedge/1/export"
    export = repo / "semedge" / "1" / "export"
    verify_manifest(export, load_manifest(export))  # every file there, hashes intact
    assert "TritonModel" in (repo / "semedge_stream" / "1" / "model.py").read_text()


def test_python_repo_refuses_tampered_exports_and_bad_options(tiny_export, tmp_path):
    with pytest.raises(InputError, match="max-batch"):
        PythonRepoConfig(max_batch=0)
    with pytest.raises(ArtifactError):
        write_python_repo(tmp_path / "missing", tmp_path / "repo")
    write_python_repo(tiny_export, tmp_path / "repo")
    with pytest.raises(ArtifactError, match="overwrite"):
        write_python_repo(tiny_export, tmp_path / "repo")


def test_export_triton_python_cli(cli, tiny_export, tmp_path):
    res = cli("export", "triton", tiny_export, tmp_path / "repo", "--backend", "python")
    assert "semedge, semedge_stream (python, max_batch_size 8)" in res.stdout
    assert_one_line_error(cli("export", "triton", tiny_export, tmp_path / "r2", "--backend",
                              "python", "--max-batch", "0", expect_rc=1))  # fmt: skip
    assert not (tmp_path / "r2").exists()
