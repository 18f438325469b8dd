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
