"""The real tritonserver (nvidia-pytriton's, unpacked by `make triton`) on a Python-backend
repository of the tiny export, started by `semedge serve --triton` and queried with tritonclient.

Skips with the reason where the wheel is not installed (only manylinux_2_35 x86-64 exists).
"""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from semedge.runtime import Pipeline
from tests.conftest import assert_one_line_error
from tests.runtime.server_process import ServerProcess

http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")

PROMPTS = ["The quick brown fox jumps over the lazy dog and", "A B C D E F G H " * 6]
LONG = "alpha beta gamma delta epsilon zeta eta theta iota kappa " * 30


def _home():
    from semedge.errors import BackendUnavailable
    from semedge.runtime.serving.triton_server import find_triton_home

    try:
        return find_triton_home()
    except BackendUnavailable as err:
        pytest.skip(f"no tritonserver: {err}")


@pytest.fixture(scope="module")
def repo(tiny_export, tmp_path_factory):
    from semedge.export.triton_python import PythonRepoConfig, write_python_repo

    _home()
    out = tmp_path_factory.mktemp("triton") / "repo"
    write_python_repo(tiny_export, out, PythonRepoConfig(max_batch=4, queue_delay_us=20_000))
    return out


@pytest.fixture(scope="module")
def triton(repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("triton-log") / "serve.log"
    proc = ServerProcess(["serve", "--triton", repo, "--port", "0"], log,
                         r"ready: HTTP http://127\.0\.0\.1:(\d+)", timeout_s=300).start()  # fmt: skip
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def pipe(tiny_export):
    with Pipeline.from_pretrained(tiny_export) as p:
        yield p


def _inputs(prompt: str, new: int, **opts) -> list:
    arrays = {"prompt": np.array([[prompt.encode()]], dtype=object),
              "max_new_tokens": np.array([[new]], dtype=np.int32)}  # fmt: skip
    if "ratio" in opts:
        arrays["ratio"] = np.array([[opts["ratio"]]], dtype=np.float32)
    if "query" in opts:
        arrays["query"] = np.array([[opts["query"].encode()]], dtype=object)
    if "stop" in opts:
        arrays["stop"] = np.array([[s.encode() for s in opts["stop"]]], dtype=object)
    if "temperature" in opts:
        arrays["temperature"] = np.array([[opts["temperature"]]], dtype=np.float32)
    out = []
    for name, arr in arrays.items():
        t = http.InferInput(name, list(arr.shape), "BYTES" if arr.dtype == object else
                            {np.int32: "INT32", np.float32: "FP32"}[arr.dtype.type])  # fmt: skip
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def test_triton_python_backend_equals_pipeline(triton, pipe):
    client = http.InferenceServerClient(f"127.0.0.1:{triton.port}", network_timeout=120)
    assert client.is_model_ready("semedge") and client.is_model_ready("semedge_stream")
    cases = [
        (PROMPTS[0], {}),
        (LONG, {"ratio": 2.0, "query": "kappa"}),
        (PROMPTS[1], {"stop": ["G"]}),
    ]
    for prompt, opts in cases:
        r = client.infer("semedge", _inputs(prompt, 10, **opts))
        want = pipe.generate(prompt, max_new_tokens=10, **opts)
        assert r.as_numpy("text")[0, 0].decode() == want.text
        assert int(r.as_numpy("compressed_tokens")[0, 0]) == want.compressed_tokens
        assert r.as_numpy("finish_reason")[0, 0].decode() == want.finish_reason


def test_triton_dynamic_batching_keeps_outputs(triton, pipe):
    client = http.InferenceServerClient(f"127.0.0.1:{triton.port}", concurrency=8,
                                        network_timeout=120)  # fmt: skip
    prompts = [f"{p} {i}" for i in range(4) for p in PROMPTS]
    pending = [client.async_infer("semedge", _inputs(p, 6)) for p in prompts]  # gevent: 1 thread
    outs = [req.get_result() for req in pending]
    for r, p in zip(outs, prompts, strict=True):
        assert r.as_numpy("text")[0, 0].decode() == pipe.generate(p, max_new_tokens=6).text
    stats = client.get_inference_statistics("semedge")["model_stats"][0]
    assert stats["execution_count"] < stats["inference_count"]  # some execute() had > 1 request


def test_triton_decoupled_stream_joins_to_generate(triton, pipe):
    body = json.dumps({"prompt": PROMPTS[0], "max_new_tokens": 12}).encode()
    url = f"{triton.url}/v2/models/semedge_stream/generate_stream"
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=120) as r:
        events = [
            json.loads(ln[5:]) for ln in r.read().decode().splitlines() if ln.startswith("data:")
        ]
    want = pipe.generate(PROMPTS[0], max_new_tokens=12)
    assert "".join(e.get("text", "") for e in events) == want.text
    assert len(events) > 2 and events[-1]["finish_reason"] == want.finish_reason


def test_triton_bad_requests_fail_and_server_stays_up(triton):
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(f"127.0.0.1:{triton.port}", network_timeout=120)
    for inputs, needle in [(_inputs(LONG * 20, 4), "max_context"),
                           (_inputs("hi", 4, temperature=float("nan")), "finite"),
                           (_inputs("hi", 0), "max_new_tokens")]:  # fmt: skip
        with pytest.raises(InferenceServerException, match=needle):
            client.infer("semedge", inputs)
    with pytest.raises(InferenceServerException):
        client.infer("semedge", _inputs("hi", 4)[1:])  # no prompt
    assert client.is_server_live() and client.infer("semedge", _inputs("ok", 2)).as_numpy("text")


def test_serve_triton_errors_are_one_line(cli, tmp_path):
    assert_one_line_error(cli("serve", "--triton", tmp_path / "missing", expect_rc=1))
    env = {"SEMEDGE_TRITON_HOME": str(tmp_path)}  # a home without the server, and no fallback
    res = cli("serve", "--triton", tmp_path, "--triton-home", tmp_path, expect_rc=1, env=env)
    assert_one_line_error(res)
    assert "make triton" in res.stderr
