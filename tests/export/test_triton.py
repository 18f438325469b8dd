"""Triton repositories: every config.pbtxt parses with Triton's own ModelConfig protobuf."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import helper, numpy_helper
from tritonclient.grpc import model_config_pb2

from semedge.artifacts import Manifest, load_manifest, write_manifest
from semedge.constants import FORMAT_ENGINE
from semedge.errors import ArtifactError, InputError
from semedge.export.triton import TritonConfig, model_config_text, write_triton_repo
from tests.export.test_trt_graphs import HD, LAYERS, N_KV, D, F, _vi, make_export, make_model


def _parse(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture
def export_dir(tmp_path):
    return make_export(tmp_path / "export")


def test_onnxruntime_repo_parses_with_dynamic_dims(export_dir, tmp_path):
    repo = tmp_path / "repo"
    models = write_triton_repo(export_dir, repo, TritonConfig(max_batch=4, instances=2))
    assert models == ["embed", "encoder", "prefill", "decode"]
    cfg = {m: _parse(repo / m / "config.pbtxt") for m in models}
    pre = cfg["prefill"]
    assert pre.name == "prefill" and pre.platform == "onnxruntime_onnx" and pre.max_batch_size == 4
    inputs = {t.name: t for t in pre.input}
    assert list(inputs["inputs_embeds"].dims) == [-1, D]  # batch dim left to Triton
    assert inputs["position_ids"].data_type == model_config_pb2.TYPE_INT64
    assert pre.instance_group[0].count == 2
    assert pre.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    dec = cfg["decode"]
    assert {t.name for t in dec.input} >= {f"past_key_values.{LAYERS - 1}.value", "input_ids"}
    past = next(t for t in dec.input if t.name == "past_key_values.0.key")
    assert list(past.dims) == [N_KV, -1, HD]
    assert cfg["encoder"].HasField("dynamic_batching") and not dec.HasField("dynamic_batching")
    original = (export_dir / "decode.onnx").read_bytes()
    assert (repo / "decode" / "1" / "model.onnx").read_bytes() == original


def test_max_batch_zero_keeps_the_batch_dim(export_dir, tmp_path):
    write_triton_repo(export_dir, tmp_path / "repo", TritonConfig(max_batch=0))
    pre = _parse(tmp_path / "repo" / "prefill" / "config.pbtxt")
    assert pre.max_batch_size == 0
    assert list(next(t for t in pre.input if t.name == "inputs_embeds").dims) == [-1, -1, D]


def test_a_typo_in_a_config_cannot_parse(export_dir):
    manifest = json.loads((export_dir / "manifest.json").read_text())
    text = model_config_text("prefill", manifest["graphs"]["prefill"], TritonConfig())
    text_format.Parse(text, model_config_pb2.ModelConfig())
    with pytest.raises(text_format.ParseError):
        text_format.Parse(text.replace("data_type", "datatype"), model_config_pb2.ModelConfig())


def _engine_dir(export_dir, tmp_path):
    """An engine-shaped directory (plans are placeholder bytes: Triton is not run here)."""
    out = tmp_path / "engines"
    out.mkdir()
    for g in ("prefill", "decode"):
        (out / f"{g}.plan").write_bytes(b"plan")
    for g in ("embed", "encoder"):  # engine dirs keep these as ONNX for onnxruntime
        shutil.copy(export_dir / f"{g}.onnx", out / f"{g}.onnx")
    graphs = json.loads((export_dir / "manifest.json").read_text())["graphs"]
    engines = {g: {"file": f"{g}.plan"} for g in ("prefill", "decode")}
    write_manifest(out, Manifest(format=FORMAT_ENGINE, graphs=graphs, extra={"engines": engines}))
    return out


def test_tensorrt_repo_uses_plans_on_gpu(export_dir, tmp_path):
    repo = tmp_path / "repo"
    models = write_triton_repo(_engine_dir(export_dir, tmp_path), repo, TritonConfig("tensorrt"))
    assert models == ["embed", "encoder", "prefill", "decode"]
    cfg = _parse(repo / "decode" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan"
    assert _parse(repo / "embed" / "config.pbtxt").platform == "onnxruntime_onnx"
    assert (repo / "embed" / "1" / "model.onnx").is_file()
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (repo / "decode" / "1" / "model.plan").read_bytes() == b"plan"


def test_tensorrt_backend_needs_an_engine_dir(export_dir, tmp_path):
    with pytest.raises(ArtifactError, match="semedge export trt"):
        write_triton_repo(export_dir, tmp_path / "repo", TritonConfig("tensorrt"))
    assert not list(tmp_path.glob("*repo*"))


def test_external_data_travels_with_the_model(tmp_path):
    export_dir = tmp_path / "export"
    w = numpy_helper.from_array(np.ones((D, D), np.float32), "w")
    node = helper.make_node("MatMul", ["inputs_embeds", "w"], ["encoder_hidden"])
    enc = make_model([node], [_vi("inputs_embeds", F, ["batch", "sequence", D])],
                     [_vi("encoder_hidden", F, ["batch", "sequence", D])], [w])  # fmt: skip
    make_export(export_dir)
    onnx.save(enc, str(export_dir / "encoder.onnx"), save_as_external_data=True,
              location="encoder.onnx.data", size_threshold=0)  # fmt: skip
    write_manifest(export_dir, load_manifest(export_dir))  # re-hash the re-saved encoder
    write_triton_repo(export_dir, tmp_path / "repo")
    assert (tmp_path / "repo" / "encoder" / "1" / "encoder.onnx.data").is_file()


def test_tampered_graph_is_refused(export_dir, tmp_path):
    with open(export_dir / "prefill.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="prefill.onnx does not match its SHA-256"):
        write_triton_repo(export_dir, tmp_path / "repo")


def test_existing_repo_and_bad_options(export_dir, tmp_path):
    (tmp_path / "repo").mkdir()
    with pytest.raises(ArtifactError, match="already exists"):
        write_triton_repo(export_dir, tmp_path / "repo")
    with pytest.raises(InputError, match="--instances"):
        TritonConfig(instances=0)


def test_unwritable_repo_dir_leaves_nothing(export_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ArtifactError, match="cannot write"):
        write_triton_repo(export_dir, blocker / "repo")


def test_repo_from_a_real_semedge_export(tiny_export, tmp_path):
    models = write_triton_repo(tiny_export, tmp_path / "repo", TritonConfig(max_batch=2))
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    for m in models:
        cfg = _parse(tmp_path / "repo" / m / "config.pbtxt")
        assert [t.name for t in cfg.input] == list(manifest["graphs"][m]["inputs"])
        assert [t.name for t in cfg.output] == list(manifest["graphs"][m]["outputs"])
