"""TensorRT engines without tensorrt: profiles, trtexec lines, engine-manifest checks.

The real build runs only under `-m trt` (tensorrt and a CUDA GPU); it never ran on the CPU-only
development machine.
"""

from __future__ import annotations

import json
import shlex

import pytest

from semedge.artifacts import load_manifest, write_manifest
from semedge.errors import ArtifactError, InputError
from semedge.export.profiles import (
    DimRange,
    engine_profiles,
    parse_range,
    shape_string,
    trtexec_command,
)
from semedge.export.trt_build import EngineBuildConfig, plan_trtexec_commands
from semedge.runtime.backends.trt_compat import check_engine_compat, normalize_gpu_name
from tests.export.test_trt_graphs import HD, LAYERS, MAX_CONTEXT, N_KV, D, make_export


@pytest.fixture
def export_dir(tmp_path):
    return make_export(tmp_path / "export")


@pytest.fixture
def manifest(export_dir):
    return json.loads((export_dir / "manifest.json").read_text())


def test_prefill_profile_spans_the_context_range(manifest):
    prof = engine_profiles(manifest, DimRange(1, 16, 64), DimRange(1, 2, 4))["prefill"]
    assert prof["inputs_embeds"] == ((1, 1, D), (2, 16, D), (4, 64, D))
    assert prof["position_ids"] == ((1, 1), (2, 16), (4, 64))
    assert prof["attention_mask"] == ((1, 1), (2, 16), (4, 64))


def test_decode_profile_has_one_new_token_over_past_positions(manifest):
    prof = engine_profiles(manifest, DimRange(4, 32, 64))["decode"]
    assert prof["input_ids"] == ((1, 1), (1, 1), (1, 1))
    assert prof["attention_mask"] == ((1, 5), (1, 33), (1, 64))  # P + 1, P <= max - 1
    key = prof[f"past_key_values.{LAYERS - 1}.value"]
    assert key == ((1, N_KV, 4, HD), (1, N_KV, 32, HD), (1, N_KV, 63, HD))
    assert len(prof) == 3 + 2 * LAYERS


def test_default_context_comes_from_max_context(manifest):
    prof = engine_profiles(manifest)["prefill"]["inputs_embeds"]
    assert prof == ((1, 1, D), (1, MAX_CONTEXT, D), (1, MAX_CONTEXT, D))  # opt = min(512, max)


def test_context_beyond_max_context_is_refused(manifest):
    with pytest.raises(InputError, match="max-context 128"):
        engine_profiles(manifest, DimRange(1, 64, 128))


@pytest.mark.parametrize("text", ["1:2", "a:b:c", "8:4:16", "0:1:2", ""])
def test_bad_ranges_are_input_errors(text):
    with pytest.raises(InputError, match="--context"):
        parse_range(text, "context")


def test_range_parsing():
    assert parse_range("1:512:2048", "context") == DimRange(1, 512, 2048)
    assert parse_range("4", "batch") == DimRange(4, 4, 4)


def test_shape_string_is_trtexec_spelling():
    assert shape_string("inputs_embeds", (1, 1, 576)) == "inputs_embeds:1x1x576"


def test_trtexec_lines_cover_prefill_and_decode(export_dir, tmp_path):
    cfg = EngineBuildConfig(context="1:16:64", workspace_mb=2048, timing_cache=tmp_path / "tc")
    prefill, decode = plan_trtexec_commands(export_dir, tmp_path / "engines", cfg)
    args = shlex.split(prefill)
    assert args[0] == "trtexec" and f"--onnx={export_dir / 'prefill.onnx'}" in args
    assert f"--minShapes=inputs_embeds:1x1x{D},position_ids:1x1,attention_mask:1x1" in args
    assert f"--maxShapes=inputs_embeds:1x64x{D},position_ids:1x64,attention_mask:1x64" in args
    assert f"--saveEngine={tmp_path / 'engines' / 'prefill.plan'}" in args
    assert (
        f"--timingCacheFile={tmp_path / 'tc'}" in args and "--memPoolSize=workspace:2048M" in args
    )
    assert "--stronglyTyped" in args and "--fp16" not in args
    assert f"past_key_values.0.key:1x{N_KV}x63x{HD}" in decode and "attention_mask:1x64" in decode


def test_fp16_flag_replaces_strong_typing():
    cmd = trtexec_command("p.onnx", "p.plan", {"x": ((1,), (2,), (3,))}, fp16=True)
    assert cmd.endswith("--fp16") and "--stronglyTyped" not in cmd


def test_bad_workspace_is_an_input_error():
    with pytest.raises(InputError, match="--workspace"):
        EngineBuildConfig(workspace_mb=0)


ENGINE = {
    "format": "semedge-engine",
    "tensorrt": {"version": "10.3.0", "gpu_name": "Orin (nvgpu)", "compute_capability": "8.7"},
}


def test_engine_compat_accepts_the_same_machine():
    check_engine_compat(ENGINE, "10.3.0.30", "Orin (nvgpu)", (8, 7))


@pytest.mark.parametrize(
    ("trt", "gpu", "cc", "match"),
    [
        ("10.7.0", "Orin (nvgpu)", "8.7", "built with TensorRT 10.3.0 but this machine has"),
        ("10.3.0", "NVIDIA H200", "9.0", "compute capability 8.7"),
        ("10.3.0", "Jetson AGX Thor", "8.7", "tuned for Orin"),
    ],
)
def test_engine_for_another_trt_or_gpu_is_refused(trt, gpu, cc, match):
    with pytest.raises(ArtifactError, match=match):
        check_engine_compat(ENGINE, trt, gpu, cc)


def test_engine_compat_needs_the_engine_format_and_fields():
    with pytest.raises(ArtifactError, match="semedge-engine"):
        check_engine_compat({**ENGINE, "format": "semedge-export"}, "10.3.0", "x", "8.7")
    with pytest.raises(ArtifactError, match="tensorrt.gpu_name"):
        check_engine_compat({"format": "semedge-engine", "tensorrt": {"version": "10.3"}}, "10.3", "x", "8.7")  # fmt: skip


def test_gpu_names_compare_across_tools():
    assert normalize_gpu_name("NVIDIA H200") == normalize_gpu_name("h200")
    assert normalize_gpu_name("NVIDIA H200") != normalize_gpu_name("NVIDIA H100")


@pytest.mark.trt
def test_build_engines_on_the_gpu(export_dir, tmp_path):
    """Real TensorRT build of the export-shaped graphs; its manifest passes the runtime check."""
    import tensorrt as trt

    from semedge.export.trt_build import build_engines
    from semedge.runtime.backends.trt_compat import local_gpu

    out = build_engines(
        export_dir,
        tmp_path / "engines",
        EngineBuildConfig(context="1:16:64", timing_cache=tmp_path / "tc"),
    )
    manifest = load_manifest(out, expect_format="semedge-engine")
    assert (out / "prefill.plan").stat().st_size > 0 and (out / "tc").exists() is False
    assert (tmp_path / "tc").stat().st_size > 0
    gpu = local_gpu()
    check_engine_compat(manifest.to_dict(), trt.__version__, gpu.name, gpu.compute_capability)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    assert runtime.deserialize_cuda_engine((out / "decode.plan").read_bytes()) is not None


def test_fused_attention_export_is_refused_with_the_fix(export_dir, tmp_path):
    manifest = load_manifest(export_dir)
    manifest.extra["attention"] = "fused"
    write_manifest(export_dir, manifest)
    with pytest.raises(ArtifactError, match="--attention plain"):
        plan_trtexec_commands(export_dir, tmp_path / "engines")


def test_profiles_match_a_real_semedge_export(tiny_export):
    """Profile names and static dims agree with the graphs `semedge export onnx` wrote."""
    import onnx

    manifest = json.loads((tiny_export / "manifest.json").read_text())
    profiles = engine_profiles(manifest, DimRange(1, 8, 32))
    for graph, prof in profiles.items():
        model = onnx.load(str(tiny_export / f"{graph}.onnx"), load_external_data=False)
        inputs = {i.name: i.type.tensor_type.shape.dim for i in model.graph.input}
        assert set(prof) == set(inputs), graph
        for name, shapes in prof.items():
            for k, d in enumerate(inputs[name]):
                if d.dim_value:  # a static dim: every profile shape must use it
                    assert {s[k] for s in shapes} == {d.dim_value}, (graph, name, k)
    assert profiles["decode"]["attention_mask"][2][1] == 32


@pytest.mark.parametrize(
    "module",
    ["semedge.runtime.backends.trt_compat", "semedge.export.profiles", "semedge.cli.export_trt"],
)
def test_light_modules_import_without_heavy_deps(module):
    """The runtime's engine check and the profile math load with torch/onnx/tensorrt blocked."""
    from tests.conftest import run_python

    proc = run_python(f"import {module}; print('ok')", block=("torch", "onnx", "tensorrt"))
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
