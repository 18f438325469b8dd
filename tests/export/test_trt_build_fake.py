"""`build_engines` control flow against a small stand-in for the tensorrt module.

TensorRT cannot run on the CPU-only development machine, so this double implements just the
documented calls semedge makes (Builder, create_network, OnnxParser.parse_from_file, profiles,
memory pool, timing cache, build_serialized_network returning None) and enforces what TensorRT
enforces at those calls: every network input needs min <= opt <= max shapes matching its static
dims. It proves the plumbing (profiles, manifest, timing cache, error messages); it proves
nothing about real TensorRT, which is `test_trt_build.py::test_build_engines_on_the_gpu` (-m trt).
"""

from __future__ import annotations

import json
import sys
import types

import onnx
import pytest

from semedge.errors import ArtifactError, InputError
from semedge.export import trt_build
from semedge.export.trt_build import EngineBuildConfig, build_engines
from semedge.runtime.backends.trt_compat import GpuInfo, check_engine_compat
from tests.export.test_trt_graphs import make_export


class _Behaviour:
    oom = False
    parse_fail = False
    version = "10.3.0"


def _fake_trt(calls: list) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = _Behaviour.version

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self):
            pass

    class Err:
        def desc(self):
            return "Unsupported operator FancyOp"

        def node_name(self):
            return "/model/fancy/FancyOp"

        def node_operator(self):
            return "FancyOp"

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs = flags, []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return types.SimpleNamespace(name=self.inputs[i][0])

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path):
            if _Behaviour.parse_fail:
                self.num_errors = 1
                return False
            graph = onnx.load(path, load_external_data=False).graph
            dims = lambda vi: [d.dim_value or -1 for d in vi.type.tensor_type.shape.dim]  # noqa: E731
            self.network.inputs = [(vi.name, dims(vi)) for vi in graph.input]
            return True

        def get_error(self, i):
            return Err()

    class Profile(dict):
        def set_shape(self, name, mn, opt, mx):
            self[name] = (tuple(mn), tuple(opt), tuple(mx))

    class Cache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+"

    class Config:
        def __init__(self):
            self.profiles, self.flags, self.pool = [], set(), {}

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def set_memory_pool_limit(self, pool, size):
            self.pool[pool] = size

        def set_flag(self, flag):
            self.flags.add(flag)

        def create_timing_cache(self, data):
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            (profile,) = config.profiles
            for name, static in network.inputs:  # what TensorRT enforces for dynamic inputs
                mn, opt, mx = profile[name]
                assert all(a <= b <= c for a, b, c in zip(mn, opt, mx, strict=True)), name
                for k, d in enumerate(static):
                    assert d == -1 or mn[k] == opt[k] == mx[k] == d, (name, k)
            calls.append((network.flags, sorted(config.flags), dict(config.pool), profile))
            if _Behaviour.oom:
                self.logger.log(
                    ILogger.Severity.ERROR,
                    "Requested amount of GPU memory (9 GB) could not be allocated",
                )
                return None
            return b"PLAN" + json.dumps(sorted(profile)).encode()

    trt.ILogger, trt.Builder, trt.OnnxParser = ILogger, Builder, OnnxParser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.BuilderFlag = (
        types.SimpleNamespace(FP16="FP16") if _Behaviour.version < "11" else types.SimpleNamespace()
    )
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    return trt


@pytest.fixture
def fake(monkeypatch):
    calls: list = []
    for attr in ("oom", "parse_fail"):
        monkeypatch.setattr(_Behaviour, attr, False)
    monkeypatch.setattr(_Behaviour, "version", "10.3.0")

    def install():
        monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt(calls))

    install()
    monkeypatch.setattr(trt_build, "local_gpu", lambda: GpuInfo("NVIDIA H200", "9.0", 10_000))
    return types.SimpleNamespace(calls=calls, install=install)


@pytest.fixture
def export_dir(tmp_path):
    return make_export(tmp_path / "export")


def test_build_writes_plans_manifest_and_timing_cache(fake, export_dir, tmp_path):
    cache = tmp_path / "tc.bin"
    cache.write_bytes(b"old")
    out = build_engines(export_dir, tmp_path / "eng", EngineBuildConfig(context="2:16:64", workspace_mb=4096, timing_cache=cache))  # fmt: skip
    assert (out / "prefill.plan").read_bytes().startswith(b"PLAN")
    assert (out / "embed.onnx").is_file() and not (out / "prefill.onnx").exists()
    assert cache.read_bytes() == b"old+"  # loaded, shared by both builds, written back
    (flags, bflags, pool, profile), _ = fake.calls
    assert flags == 1 << 1 and bflags == [] and pool == {"WORKSPACE": 4096 * 2**20}
    assert profile["inputs_embeds"][2] == (1, 64, 8)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "semedge-engine" and manifest["files"]["decode.plan"]["bytes"] > 0
    assert manifest["tensorrt"]["precision"] == "fp32" and manifest["tensorrt"]["strongly_typed"]
    assert manifest["engines"]["decode"]["profiles"][0]["attention_mask"]["max"] == [1, 64]
    check_engine_compat(manifest, "10.3.0", "H200", "9.0")
    with pytest.raises(ArtifactError, match="TensorRT 10.3.0"):
        check_engine_compat(manifest, "10.4.0", "H200", "9.0")


def test_workspace_is_clamped_to_free_memory(fake, export_dir, tmp_path):
    build_engines(export_dir, tmp_path / "eng", EngineBuildConfig(workspace_mb=50_000))
    assert fake.calls[0][2] == {"WORKSPACE": 8000 * 2**20}  # 80 % of 10 000 MB free


def test_fp16_uses_the_builder_flag_on_trt10(fake, export_dir, tmp_path):
    build_engines(export_dir, tmp_path / "eng", EngineBuildConfig(fp16=True))
    assert fake.calls[0][:2] == (0, ["FP16"])


def test_fp16_kernels_are_refused_where_hidden_states_pass_fp16(fake, export_dir, tmp_path):
    """The export's manifest says its hidden states reach 1.04e5 (Gemma 3 270M's measured peak):
    --fp16 (any layer may run fp16) is refused before building; strongly typed still builds."""
    from semedge.artifacts import Manifest, load_manifest, write_manifest

    m = load_manifest(export_dir)
    write_manifest(export_dir, Manifest(format=m.format, graphs=m.graphs,
                                        config={**m.config, "hidden_peak": 103795.0}))  # fmt: skip
    with pytest.raises(InputError, match="hidden states reach 1.04e"):
        build_engines(export_dir, tmp_path / "eng16", EngineBuildConfig(fp16=True))
    assert not fake.calls and not (tmp_path / "eng16").exists()
    build_engines(export_dir, tmp_path / "eng", EngineBuildConfig())
    assert fake.calls


def test_fp16_is_refused_on_trt11(fake, export_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(_Behaviour, "version", "11.1.0")
    fake.install()
    with pytest.raises(InputError, match="--dtype fp16"):
        build_engines(export_dir, tmp_path / "eng", EngineBuildConfig(fp16=True))
    assert not list(tmp_path.glob("*eng*"))


def test_out_of_memory_is_one_clear_error_and_no_out_dir(fake, export_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(_Behaviour, "oom", True)
    with pytest.raises(InputError, match="ran out of device memory.*--workspace"):
        build_engines(export_dir, tmp_path / "eng")
    assert not list(tmp_path.glob("*eng*"))


def test_parse_failure_names_the_node(fake, export_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(_Behaviour, "parse_fail", True)
    with pytest.raises(ArtifactError, match="'/model/fancy/FancyOp' \\(FancyOp\\)"):
        build_engines(export_dir, tmp_path / "eng")


def test_calibrated_directory_builds_and_records_its_source_format(fake, export_dir, tmp_path):
    """`calibrate int8 --target tensorrt` output (format semedge-calibrated) is a build input."""
    from semedge.artifacts import load_manifest, write_manifest

    manifest = load_manifest(export_dir)
    manifest.format = "semedge-calibrated"
    write_manifest(export_dir, manifest)
    out = build_engines(export_dir, tmp_path / "eng", EngineBuildConfig(context="2:16:64"))
    built = json.loads((out / "manifest.json").read_text())
    assert built["format"] == "semedge-engine"
    assert built["source"]["format"] == "semedge-calibrated"


def test_unwritable_timing_cache_keeps_the_engines(fake, export_dir, tmp_path, caplog):
    cache = tmp_path / "cache-dir"
    cache.mkdir()  # a directory where the cache file should go: the write fails
    out = build_engines(export_dir, tmp_path / "eng", EngineBuildConfig(timing_cache=cache))
    assert (out / "prefill.plan").is_file() and (out / "decode.plan").is_file()
    assert "timing cache was not saved" in caplog.text and cache.is_dir()


def test_tampered_export_is_refused_before_building(fake, export_dir, tmp_path):
    data = json.loads((export_dir / "manifest.json").read_text())
    data["files"].pop("decode.onnx")
    (export_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="decode.onnx"):
        build_engines(export_dir, tmp_path / "eng")
    assert fake.calls == [] and not list(tmp_path.glob("*eng*"))
