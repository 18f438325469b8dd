"""The Triton Python-backend model: semedge's whole pipeline (SemToken + prefill + decode).

Torch-free. A repository's `model.py` (written by `semedge export triton --backend python`) only
puts the launcher's site directories on sys.path and subclasses `TritonModel`. Each instance
runs `semedge serve`'s engine (runtime/serving/engine.py): requests are continuously batched
across `execute` calls (a decoupled model's `execute` hands its requests over and returns; the
engine's worker streams each request's text as it is generated and sends the final response),
and an idle instance gives its KV blocks and free heap pages back. A non-decoupled model's
`execute` waits for its requests' results.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from semedge.errors import InputError
from semedge.runtime.sampling import GenerationConfig
from semedge.runtime.serving.batching import Job, fail_job
from semedge.runtime.serving.engine import Engine, EngineConfig

__all__ = ["TritonModel", "INPUTS", "OUTPUTS", "config_from_inputs"]

log = logging.getLogger(__name__)

# name -> (Triton type, dims, optional); one row per request (the batch dim is Triton's)
INPUTS = {
    "prompt": ("TYPE_STRING", [1], False),
    "max_new_tokens": ("TYPE_INT32", [1], True),
    "ratio": ("TYPE_FP32", [1], True),
    "query": ("TYPE_STRING", [1], True),
    "stop": ("TYPE_STRING", [-1], True),
    "temperature": ("TYPE_FP32", [1], True),
    "top_k": ("TYPE_INT32", [1], True),
    "top_p": ("TYPE_FP32", [1], True),
    "seed": ("TYPE_INT64", [1], True),
}
OUTPUTS = {
    "text": ("TYPE_STRING", [1]),
    "finish_reason": ("TYPE_STRING", [1]),
    "prompt_tokens": ("TYPE_INT32", [1]),
    "compressed_tokens": ("TYPE_INT32", [1]),
}


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def config_from_inputs(values: dict[str, np.ndarray]) -> tuple[str, GenerationConfig]:
    """(prompt, GenerationConfig) from one request's input arrays (absent optional inputs: None).

    Raises:
        InputError: a missing prompt or a bad value (the request gets this message).
    """
    if values.get("prompt") is None or values["prompt"].size != 1:
        raise InputError("input 'prompt' is required: one UTF-8 string")
    one = {k: v.reshape(-1)[0] for k, v in values.items() if v is not None and v.size}
    for key in ("ratio", "temperature", "top_p"):
        if key in one and not np.isfinite(one[key]):
            raise InputError(f"{key} must be a finite number, got {one[key]}")
    stop = (
        tuple(_text(s) for s in values["stop"].reshape(-1))
        if values.get("stop") is not None
        else ()
    )
    ratio = float(one["ratio"]) if "ratio" in one else None
    config = GenerationConfig(
        max_new_tokens=int(one.get("max_new_tokens", 64)),
        temperature=float(one.get("temperature", 0.0)), top_k=int(one.get("top_k", 0)),
        top_p=float(one.get("top_p", 1.0)), seed=int(one["seed"]) if "seed" in one else None,
        stop=tuple(s for s in stop if s), ratio=None if ratio == 1.0 else ratio,
        query=_text(one["query"]) if "query" in one and _text(one["query"]).strip() else None,
    )  # fmt: skip
    return _text(one["prompt"]), config


class TritonModel:
    """`TritonPythonModel` base: initialize() loads the export, execute() generates."""

    def initialize(self, args: dict[str, Any]) -> None:
        from semedge.runtime.pipeline import Pipeline

        self.pb = importlib.import_module("triton_python_backend_utils")
        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        model_dir = Path(args["model_repository"])
        export = (model_dir / params.get("export_dir", "1/export")).resolve()
        if model_dir.resolve().parent not in export.parents:  # stay inside the repository
            raise InputError(f"export_dir {params.get('export_dir')!r} leaves the repository")
        self.decoupled = self.pb.using_decoupled_model_transaction_policy(cfg)
        threads = int(params.get("threads") or 0) or None
        self.pipe = Pipeline.from_pretrained(export, threads=threads)
        # Triton's max_batch_size 0 means "no batching": one row at a time
        self.engine = Engine(self.pipe, EngineConfig(max_batch=int(cfg.get("max_batch_size") or 1)))

    def _inputs(self, request: Any) -> dict[str, np.ndarray | None]:
        out = {}
        for name in INPUTS:
            t = self.pb.get_input_tensor_by_name(request, name)
            out[name] = None if t is None else t.as_numpy()
        return out

    def _response(self, job: Job) -> Any:
        """The whole result (or the error) of a non-decoupled request."""
        pb = self.pb
        if job.error is not None:
            return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(job.error)))
        r = job.result
        arrays = {
            "text": np.array([[r.text.encode("utf-8")]], dtype=object),
            "finish_reason": np.array([[r.finish_reason.encode()]], dtype=object),
            "prompt_tokens": np.array([[r.prompt_tokens]], dtype=np.int32),
            "compressed_tokens": np.array([[r.compressed_tokens]], dtype=np.int32),
        }
        return pb.InferenceResponse([pb.Tensor(k, v) for k, v in arrays.items()])

    def _job(self, request: Any) -> Job:
        try:
            prompt, config = config_from_inputs(self._inputs(request))
            job = Job(prompt, config)
        except Exception as err:
            job = Job("", GenerationConfig())
            job.error = err
            job.done.set()
        if self.decoupled:
            sender = request.get_response_sender()
            final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
            job.on_text = lambda piece: sender.send(self._piece(piece))
            job.on_done = lambda: sender.send(self._final(job), flags=final)
        return job

    def _piece(self, text: str) -> Any:
        arrays = {"text": np.array([[text.encode("utf-8")]], dtype=object)}
        return self.pb.InferenceResponse([self.pb.Tensor(k, v) for k, v in arrays.items()])

    def _final(self, job: Job) -> Any:
        """The last response of a stream: no more text, the finish reason and counts."""
        if job.error is not None:
            return self._response(job)
        r = job.result
        arrays = {
            "finish_reason": np.array([[r.finish_reason.encode()]], dtype=object),
            "prompt_tokens": np.array([[r.prompt_tokens]], dtype=np.int32),
            "compressed_tokens": np.array([[r.compressed_tokens]], dtype=np.int32),
        }
        return self.pb.InferenceResponse([self.pb.Tensor(k, v) for k, v in arrays.items()])

    def execute(self, requests: list[Any]) -> list[Any] | None:
        jobs = [self._job(r) for r in requests]
        for job in jobs:
            if job.error is not None and job.on_done is not None:
                job.on_done()
            elif job.error is None:
                try:
                    self.engine.submit(job)
                except InputError as err:  # the queue is full, or the model is unloading
                    fail_job(job, err)
        if self.decoupled:
            return None  # the engine's worker sends every response
        for job in jobs:
            job.done.wait()
        return [self._response(j) for j in jobs]

    def finalize(self) -> None:
        self.engine.close()
        self.pipe.close()
