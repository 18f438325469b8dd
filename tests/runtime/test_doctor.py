"""Doctor: providers are proven by running a graph, silent CPU fallback is caught."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from semedge.runtime import doctor


def test_cpu_provider_runs_and_fallback_is_caught():
    assert doctor.provider_works("CPUExecutionProvider") == (True, "ran a test graph")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        ok, detail = doctor.provider_works("CUDAExecutionProvider")
        assert not ok and ("fell back" in detail or "failed" in detail)


def test_builtin_model_bytes_match_the_onnx_built_one():
    sess = ort.InferenceSession(doctor._ADD_MODEL, providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.array([1.5, -2.0], np.float32)})[0].tolist() == [3.0, -4.0]
    assert doctor._tiny_model() == doctor._ADD_MODEL


def test_report_lists_this_machine():
    rep = doctor.run_doctor()
    assert rep.passed and rep.packages["onnxruntime"] == ort.__version__
    assert rep.jetson["detected"] == doctor.TEGRA_RELEASE.is_file()


def test_doctor_reports_matrix_features_and_precisions(tmp_path):
    from semedge.runtime.cpu_features import cpu_features
    from semedge.runtime.doctor import cpu_report

    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu avx512f avx512_vnni amx_int8 sse2\n")
    assert cpu_features(info) == ["amx_int8", "avx512_vnni", "avx512f"]
    assert cpu_features(tmp_path / "missing") == []
    rep = cpu_report()
    assert rep["features"] == cpu_features()
    assert set(rep["precisions"]) == {"fp32", "int8", "bf16"}
    assert rep["precisions"]["fp32"]["ok"] is True
    has_bf16 = bool({"amx_bf16", "avx512_bf16"} & set(rep["features"]))
    assert rep["precisions"]["bf16"]["engine"] != "no bf16 engine" or not has_bf16
