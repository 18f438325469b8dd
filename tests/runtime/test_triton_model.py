"""TritonModel in-process on the tiny export, with a stand-in for Triton's
`triton_python_backend_utils` (the real server runs in tests/runtime/test_triton_serve.py).

What only this can check: a decoupled execute() hands its requests to the engine and returns
before they are generated, so requests of later execute() calls join the running decode batch,
and an idle instance gives its KV blocks back.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import types

import numpy as np
import pytest

from semedge.runtime import Pipeline


class _Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class _Response:
    def __init__(self, output_tensors, error=None):
        self.tensors = {t.name: t.array for t in output_tensors}
        self.error = error


class _Sender:
    def __init__(self, log):
        self.log, self.final = log, threading.Event()

    def send(self, response, flags=0):
        self.log.append(response)
        if flags:
            self.final.set()


class _Request:
    def __init__(self, inputs, log):
        self.inputs, self.sender = inputs, _Sender(log)

    def get_response_sender(self):
        return self.sender


def _fake_pb(decoupled: bool) -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor, pb.InferenceResponse = _Tensor, _Response
    pb.TritonError = lambda msg: msg
    pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
    pb.get_input_tensor_by_name = lambda req, name: (
        _Tensor(name, req.inputs[name]) if name in req.inputs else None
    )
    pb.using_decoupled_model_transaction_policy = lambda cfg: decoupled
    return pb


@pytest.fixture(scope="module")
def repo(tiny_export, tmp_path_factory):
    from semedge.export.triton_python import write_python_repo

    out = tmp_path_factory.mktemp("triton-model") / "repo"
    write_python_repo(tiny_export, out)  # the real writer: the models share one export copy
    return out


def _model(monkeypatch, repo, decoupled: bool, max_batch: int = 4):
    from semedge.runtime.serving.triton_model import TritonModel

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb(decoupled))
    name = "semedge_stream" if decoupled else "semedge"
    text = (repo / name / "config.pbtxt").read_text()  # the export_dir the writer chose
    where = json.loads(re.search(r'"export_dir" value: \{ string_value: ("[^"]*")', text)[1])
    cfg = {"max_batch_size": max_batch, "parameters": {"export_dir": {"string_value": where}}}
    model = TritonModel()
    model.initialize({"model_config": json.dumps(cfg), "model_repository": str(repo / name)})
    return model


def _request(prompt: str, new: int, log: list) -> _Request:
    return _Request({"prompt": np.array([[prompt.encode()]], dtype=object),
                     "max_new_tokens": np.array([[new]], dtype=np.int32)}, log)  # fmt: skip


def _text(log: list) -> str:
    return "".join(r.tensors["text"][0, 0].decode() for r in log if "text" in r.tensors)


@pytest.fixture(scope="module")
def pipe(tiny_export):
    with Pipeline.from_pretrained(tiny_export) as p:
        yield p


def test_decoupled_execute_returns_at_once_and_later_requests_join(monkeypatch, repo, pipe):
    model = _model(monkeypatch, repo, decoupled=True)
    sizes = []
    model.engine.on_batch = sizes.append
    try:
        prompts = ["The quick brown fox jumps over the lazy dog and", "A B C D E F G H " * 6]
        logs = [[], []]
        first = _request(prompts[0], 120, logs[0])
        t0 = time.perf_counter()
        assert model.execute([first]) is None
        took = time.perf_counter() - t0
        assert not first.sender.final.is_set(), f"execute blocked {took:.2f} s until done"
        second = _request(prompts[1], 8, logs[1])
        assert model.execute([second]) is None  # a later execute: joins the running batch
        for req in (first, second):
            assert req.sender.final.wait(120)
        for prompt, log, new in zip(prompts, logs, (120, 8), strict=True):
            assert _text(log) == pipe.generate(prompt, max_new_tokens=new).text
            assert log[-1].tensors["finish_reason"][0, 0].decode()
        assert max(sizes) == 2, sizes  # both requests decoded in one batch
        deadline = time.monotonic() + 10
        while model.engine.rests == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert model.engine.rests >= 1  # idle: the pool was released
        assert not model.pipe.kv_pool._free
    finally:
        model.finalize()


def test_plain_execute_waits_and_reports_errors_per_request(monkeypatch, repo, pipe):
    model = _model(monkeypatch, repo, decoupled=False)
    try:
        log: list = []
        good, bad = _request("Once upon a time", 5, log), _request("hi", 0, log)
        out = model.execute([good, bad])
        assert len(out) == 2
        assert out[0].error is None
        assert (
            out[0].tensors["text"][0, 0].decode()
            == pipe.generate("Once upon a time", max_new_tokens=5).text
        )
        assert "max_new_tokens" in out[1].error
    finally:
        model.finalize()
