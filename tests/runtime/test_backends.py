"""OrtBackend (runner-style checks), the ping-pong KV cache and sampling, on toy graphs."""

from __future__ import annotations

import numpy as np
import pytest

from semedge.errors import ArtifactError, InputError
from semedge.runtime.backends.ort import OrtBackend
from semedge.runtime.kv_cache import KVCache
from semedge.runtime.sampling import GenerationConfig, select_next


def test_backend_checks_names_and_dtypes(toy_export):
    with OrtBackend(toy_export / "embed.onnx") as b:
        out = b.run({"input_ids": np.array([[1, 2, 3]], np.int64)})
        assert out["inputs_embeds"].shape == (1, 3, 8)
        with pytest.raises(InputError, match="must be int64, got int32"):
            b.run({"input_ids": np.array([[1]], np.int32)})
        with pytest.raises(InputError, match="expects inputs"):
            b.run({"ids": np.array([[1]], np.int64)})
    assert b.session is None


def test_backend_rejects_manifest_mismatch_and_corrupt_file(toy_export, tmp_path):
    spec = {"inputs": {"input_ids": {}, "attention_mask": {}}, "outputs": ["inputs_embeds"]}
    with pytest.raises(ArtifactError, match="do not match the manifest"):
        OrtBackend(toy_export / "embed.onnx", spec=spec).load()
    spec = {"inputs": {"input_ids": {"dtype": "int32"}}}
    with pytest.raises(ArtifactError, match="'input_ids' is int64 but the manifest says int32"):
        OrtBackend(toy_export / "embed.onnx", spec=spec).load()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ArtifactError, match="cannot load"):
        OrtBackend(bad).load()


def test_kv_cache_ping_pong_views():
    alloc = lambda n, dt: (lambda a: (a.ctypes.data, a, a))(np.zeros(n, dt))  # noqa: E731
    cache = KVCache(alloc, num_layers=1, batch=1, n_kv_heads=1, head_dim=2, max_len=4)
    first = cache.present(2)["present.0.key"]
    first.host[...] = [[[[1, 1], [2, 2]]]]
    cache.advance(2)
    past, nxt = cache.past()["past_key_values.0.key"], cache.present(1)["present.0.key"]
    assert past.host.tolist() == [[[[1, 1], [2, 2]]]] and nxt.shape == (1, 1, 3, 2)
    assert past.ptr != nxt.ptr  # decode writes the other buffer
    cache.advance(1)
    assert cache.length == 3 and cache.nbytes == 2 * 2 * 1 * 4 * 2 * 4
    with pytest.raises(InputError, match="KV cache holds 4 positions"):
        cache.present(2)


def test_top_p_and_top_k_restrict_the_support():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    rng = np.random.default_rng(0)
    cfg = GenerationConfig(temperature=1.0, top_p=0.6)
    assert {int(select_next(logits, cfg, rng)[0]) for _ in range(200)} == {0, 1}
    cfg = GenerationConfig(temperature=1.0, top_k=3)
    assert {int(select_next(logits, cfg, rng)[0]) for _ in range(400)} == {0, 1, 2}
    with pytest.raises(InputError, match="top_p"):
        GenerationConfig(top_p=0.0)
