"""The OpenVINO provider on the tiny Llama's `--attention plain` export (skips without openvino)."""

from __future__ import annotations

import numpy as np
import pytest

from semedge.errors import ArtifactError, InputError
from semedge.runtime import Pipeline
from semedge.runtime.backends.openvino import openvino_available

pytestmark = pytest.mark.skipif(not openvino_available(), reason="openvino is not installed")


@pytest.fixture(scope="module")
def plain_export(tiny_export_plain):
    return tiny_export_plain


def test_openvino_matches_onnx_runtime_through_prefill_and_decode(plain_export, wikitext_valid):
    from semedge.calibration.quality_gate import score_pipeline

    text = wikitext_valid.read_text(encoding="utf-8")[:4000]
    with Pipeline.from_pretrained(plain_export, providers="cpu") as ref:
        ids = np.asarray(ref.tokenizer.encode(text).ids[:48], np.int64)
        nll_ref, _ = score_pipeline(ref, [ids], 32)
        want = ref.generate(text[:600], max_new_tokens=6, ratio=2.0)
    with Pipeline.from_pretrained(plain_export, providers="openvino", threads=1) as ov:
        assert ov.provider == "openvino" and ov.prefill.precision == "fp32"
        assert ov.backends["encoder"].provider_name == "openvino"
        assert ov.decode.provider_name == "cpu"  # one token at a time: ONNX Runtime is faster
        nll, _ = score_pipeline(ov, [ids], 32)  # 1 prefill + 15 decode steps on the KV cache
        got = ov.generate(text[:600], max_new_tokens=6, ratio=2.0)
    np.testing.assert_allclose(nll, nll_ref, atol=1e-3)
    assert got.compressed_tokens == want.compressed_tokens  # the encoder's spans did not move
    np.testing.assert_array_equal(got.spans, want.spans)


def test_openvino_refuses_fused_exports_and_unknown_precision(tiny_export, tmp_path):
    with pytest.raises(ArtifactError, match="--attention plain"):
        Pipeline.from_pretrained(tiny_export, providers="openvino")
    from semedge.runtime.backends.openvino import OpenVinoBackend

    with pytest.raises(InputError, match="precision must be one of"):
        OpenVinoBackend(tmp_path / "x.onnx", precision="int4")
