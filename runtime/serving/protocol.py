"""OpenAI request bodies -> semedge generation settings, and semedge results -> OpenAI responses.

Torch-free. Every check raises `RequestError` (an InputError with an HTTP status and the field
at fault), so a bad request is one clear 4xx JSON error and never reaches the model.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from semedge.errors import InputError
from semedge.runtime.generator import GenerationResult
from semedge.runtime.sampling import GenerationConfig

__all__ = ["RequestError", "ParsedRequest", "parse_request", "completion_body", "chunk_body"]

UNSUPPORTED = {"logprobs": (None, False, 0), "echo": (None, False), "best_of": (None, 1),
               "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
               "logit_bias": (None, {}), "tools": (None, []), "suffix": (None, "")}  # fmt: skip
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "stop"}


class RequestError(InputError):
    """A bad request: `status` is the HTTP code, `param` the offending field (or None)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def to_dict(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param,
                          "code": self.code}}  # fmt: skip


@dataclass(frozen=True)
class ParsedRequest:
    """A checked request: the prompt text (chat already rendered) and how to generate."""

    kind: str  # "completion" | "chat"
    prompt: str
    config: GenerationConfig
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with token counts


def _number(body: dict, key: str, default: float | None, lo: float, hi: float) -> float | None:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise RequestError(f"{key} must be a finite number, got {v!r}", param=key)
    if not lo <= v <= hi:
        raise RequestError(f"{key} must be in [{lo:g}, {hi:g}], got {v!r}", param=key)
    return float(v)


def _integer(body: dict, key: str, default: int | None, lo: int, hi: int) -> int | None:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise RequestError(f"{key} must be an integer, got {v!r}", param=key)
    if not lo <= v <= hi:
        raise RequestError(f"{key} must be in [{lo}, {hi}], got {v}", param=key)
    return v


def _stop(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    stops = [] if v is None else [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or len(stops) > 4:
        raise RequestError("stop must be a string or a list of at most 4 strings", param="stop")
    if not all(isinstance(s, str) and s for s in stops):
        raise RequestError("stop strings must be non-empty strings", param="stop")
    return tuple(stops)


def _flags(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError(f"stream must be true or false, got {stream!r}", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise RequestError("stream_options must be {include_usage: bool}", param="stream_options")
    return stream, bool(options.get("include_usage", False))


def _check_supported(body: dict) -> None:
    n = body.get("n", 1)
    if n not in (None, 1) or isinstance(n, bool):
        raise RequestError(f"n must be 1 (one choice per request), got {n!r}", param="n")
    for key, defaults in UNSUPPORTED.items():
        if key in body and body[key] not in defaults:
            raise RequestError(f"{key} is not supported by semedge serve", param=key)


def _prompt(body: dict) -> str:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if p is None:
        raise RequestError("prompt is required", param="prompt")
    if not isinstance(p, str):
        raise RequestError("prompt must be a string (one prompt per request)", param="prompt")
    if not p.strip():
        raise RequestError("prompt is empty; give some text", param="prompt")
    return p


def parse_request(body: Any, kind: str, model_id: str, render_chat, limits: dict) -> ParsedRequest:
    """Check an OpenAI completions/chat body and build the generation settings.

    Args:
        body: the decoded JSON body.
        kind: "completion" or "chat".
        model_id: the model this server serves (any other is a 404).
        render_chat: messages -> prompt text (the export's chat template).
        limits: {"max_tokens": the most a request may ask, "default_max_tokens": ...}.

    Raises:
        RequestError: a missing or bad field (400), or an unknown model (404).
    """
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model is required (GET /v1/models lists it)", param="model")
    if model != model_id:
        raise RequestError(f"model {model!r} does not exist; this server serves {model_id!r}",
                           status=404, param="model", code="model_not_found")  # fmt: skip
    _check_supported(body)
    stream, include_usage = _flags(body)
    if kind == "chat":
        if "messages" not in body:
            raise RequestError("messages is required", param="messages")
        try:
            prompt = render_chat(body["messages"])
        except InputError as err:
            raise RequestError(str(err), param="messages") from None
    else:
        prompt = _prompt(body)
    config = _generation_config(body, limits)
    return ParsedRequest(kind, prompt, config, stream, include_usage)


def _generation_config(body: dict, limits: dict) -> GenerationConfig:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    new = _integer(body, key, limits["default_max_tokens"], 1, limits["max_tokens"])
    try:
        return GenerationConfig(
            max_new_tokens=new, temperature=_number(body, "temperature", 0.0, 0.0, 2.0),
            top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
            top_k=_integer(body, "top_k", 0, 0, 1 << 20), seed=_integer(body, "seed", None, 0, 2**63 - 1),
            stop=_stop(body), ratio=_ratio(body), query=_query(body),
        )  # fmt: skip
    except RequestError:
        raise
    except InputError as err:  # GenerationConfig's own checks (top_p = 0, ...)
        raise RequestError(str(err)) from None


def _ratio(body: dict) -> float | None:
    r = _number(body, "ratio", None, 1.0, 64.0)
    return None if r is None or r == 1.0 else r


def _query(body: dict) -> str | None:
    q = body.get("query")
    if q is None:
        return None
    if not isinstance(q, str) or not q.strip():
        raise RequestError("query must be a non-empty string", param="query")
    return q


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(r: GenerationResult) -> dict[str, Any]:
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": len(r.tokens),
            "total_tokens": r.prompt_tokens + len(r.tokens),
            "semedge": {"compressed_tokens": r.compressed_tokens,
                        "token_reduction": round(r.token_reduction, 4)}}  # fmt: skip


def completion_body(req: ParsedRequest, r: GenerationResult, model: str, rid: str) -> dict:
    """The non-streaming response (text_completion or chat.completion)."""
    finish = FINISH.get(r.finish_reason, "stop")
    if req.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": r.text},
                  "finish_reason": finish, "logprobs": None}  # fmt: skip
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": r.text, "finish_reason": finish, "logprobs": None}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage(r)}  # fmt: skip


def chunk_body(req: ParsedRequest, model: str, rid: str, text: str | None = None,
               finish: str | None = None, first: bool = False,
               result: GenerationResult | None = None) -> dict:  # fmt: skip
    """One server-sent event's JSON: a text piece, the finish reason, or (result) the usage."""
    if req.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        choices = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        obj = "chat.completion.chunk"
    else:
        choices = [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}]
        obj = "text_completion"
    body = {"id": rid, "object": obj, "created": int(time.time()), "model": model}
    body["choices"] = [] if result is not None else choices
    if result is not None:
        body["usage"] = usage(result)
    return body
