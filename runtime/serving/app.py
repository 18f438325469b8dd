"""The OpenAI-compatible HTTP app of `semedge serve` (Starlette; torch-free).

Routes: POST /v1/completions, POST /v1/chat/completions (JSON or server-sent events with
"stream": true), GET /v1/models, GET /health, GET /metrics. Generation runs on the Engine's
worker threads; the event loop only parses, queues and streams.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from semedge.deps import require
from semedge.errors import InputError, SemedgeError
from semedge.runtime.serving.batching import Job
from semedge.runtime.serving.engine import EngineConfig, QueueFull
from semedge.runtime.serving.protocol import (
    ParsedRequest,
    RequestError,
    chunk_body,
    completion_body,
    new_id,
    parse_request,
)

__all__ = ["ServeConfig", "create_app"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """Server options.

    Args:
        model_id: the name clients pass as `model` (GET /v1/models lists it).
        max_request_bytes: larger request bodies get 413.
        default_max_tokens: max_tokens when a request gives none.
        max_tokens: the most max_tokens a request may ask (None: the export's max_context).
        engine: batching and queue limits.
    """

    model_id: str = "semedge"
    max_request_bytes: int = 1 << 20
    default_max_tokens: int = 64
    max_tokens: int | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if self.max_request_bytes < 1024:
            raise InputError(f"--max-request-bytes must be >= 1024, got {self.max_request_bytes}")
        if self.default_max_tokens < 1:
            raise InputError(f"default max_tokens must be >= 1, got {self.default_max_tokens}")


def _nan(_: str) -> float:
    return float("nan")  # NaN/Infinity literals parse, then fail the finite-number checks


async def _read_json(request: Any, limit: int) -> Any:
    """The body as JSON, read at most `limit` bytes (413 past it)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise RequestError(f"the request body is over {limit} bytes", status=413)
    data, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the request body is over {limit} bytes", status=413)
        data.append(chunk)
    try:
        return json.loads(b"".join(data), parse_constant=_nan)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(f"the request body is not JSON: {err}") from None


def _error_of(err: BaseException) -> RequestError:
    """Any failure as the RequestError the client sees (4xx for its mistakes, 5xx for ours)."""
    if isinstance(err, RequestError):
        return err
    if isinstance(err, QueueFull):
        return RequestError(str(err), status=503, code="overloaded")
    if isinstance(err, InputError):
        return RequestError(str(err))
    if isinstance(err, SemedgeError):
        return RequestError(str(err), status=500)
    log.error("request failed: %s: %s", type(err).__name__, err)
    return RequestError(f"internal error: {type(err).__name__}: {err}", status=500)


class _Server:
    """Route handlers over one Engine (the Pipeline's request queue)."""

    def __init__(self, engine: Any, template: Any, config: ServeConfig, metrics: Any) -> None:
        self.engine, self.template, self.config, self.metrics = engine, template, config, metrics
        pipe = engine.pipe
        self.limits = {"default_max_tokens": config.default_max_tokens,
                       "max_tokens": config.max_tokens or pipe.max_context}  # fmt: skip
        self.responses = require("starlette.responses", "serve")

    def _json(self, endpoint: str, body: dict, status: int = 200, t0: float | None = None):
        self.metrics.requests.labels(endpoint, str(status)).inc()
        if t0 is not None:
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return self.responses.JSONResponse(body, status_code=status)

    def _error(self, endpoint: str, err: BaseException, t0: float):
        e = _error_of(err)
        return self._json(endpoint, e.to_dict(), e.status, t0)

    async def health(self, request):
        return self._json("health", {"status": "ok", "queued": self.engine.queued})

    async def models(self, request):
        card = {"id": self.config.model_id, "object": "model", "created": 0,
                "owned_by": "semedge", "max_context": self.engine.pipe.max_context,
                "chat_template": self.template.origin}  # fmt: skip
        return self._json("models", {"object": "list", "data": [card]})

    async def metrics_page(self, request):
        body, ctype = self.metrics.render()
        return self.responses.Response(body, media_type=ctype)

    async def completions(self, request):
        return await self._generate(request, "completion")

    async def chat(self, request):
        return await self._generate(request, "chat")

    async def _generate(self, request, kind: str):
        endpoint, t0 = kind, time.perf_counter()
        try:
            body = await _read_json(request, self.config.max_request_bytes)
            req = parse_request(body, kind, self.config.model_id, self.template.render,
                                self.limits)  # fmt: skip
        except RequestError as err:
            return self._error(endpoint, err, t0)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def push(kind_: str, value: str | None = None) -> None:  # from a worker thread
            loop.call_soon_threadsafe(events.put_nowait, (kind_, value))

        job = Job(req.prompt, req.config, on_done=lambda: push("done"))
        if req.stream:
            job.on_text = lambda text: push("text", text)
        self.metrics.in_flight.inc()
        try:
            self.engine.submit(job)
            first = await events.get()  # the first piece, or the end (with an error or not)
        except (asyncio.CancelledError, Exception) as err:
            job.cancelled.set()
            self.metrics.in_flight.dec()
            if isinstance(err, asyncio.CancelledError):
                raise
            return self._error(endpoint, err, t0)
        if job.error is not None and first[0] == "done":
            self.metrics.in_flight.dec()
            return self._error(endpoint, job.error, t0)
        rid = new_id(kind)
        if not req.stream:
            self.metrics.in_flight.dec()
            self.metrics.observe_result(job.result)
            return self._json(endpoint, completion_body(req, job.result, self.config.model_id, rid),
                              t0=t0)  # fmt: skip
        self.metrics.ttft.observe(time.perf_counter() - t0)
        stream = self._events(req, job, first, events, rid, t0)
        return self.responses.StreamingResponse(stream, media_type="text/event-stream")

    async def _events(self, req: ParsedRequest, job: Job, first, events, rid: str, t0: float):
        """Server-sent events: text pieces, the finish reason, usage (if asked), [DONE]."""
        model, status = self.config.model_id, "200"
        sse = lambda obj: f"data: {json.dumps(obj)}\n\n"  # noqa: E731
        try:
            event, is_first = first, True
            while event[0] == "text":
                yield sse(chunk_body(req, model, rid, text=event[1], first=is_first))
                is_first, event = False, await events.get()
            if job.error is not None:
                status = str(_error_of(job.error).status)
                yield sse(_error_of(job.error).to_dict())
            else:
                finish = {"eos": "stop", "length": "length"}.get(job.result.finish_reason, "stop")
                yield sse(chunk_body(req, model, rid, finish=finish, first=is_first))
                if req.include_usage:
                    yield sse(chunk_body(req, model, rid, result=job.result))
                self.metrics.observe_result(job.result)
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:
            status = "499"  # the client went away mid-stream
            raise
        finally:
            job.cancelled.set()  # a no-op once done; stops the row if the client left
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(req.kind, status).inc()
            self.metrics.latency.labels(req.kind).observe(time.perf_counter() - t0)


def create_app(engine: Any, template: Any, config: ServeConfig | None = None,
               metrics: Any = None) -> Any:  # fmt: skip
    """The Starlette application serving `engine`'s Pipeline.

    Args:
        engine: a running `Engine` (runtime/serving/engine.py).
        template: a `ChatTemplate` for /v1/chat/completions.
        config: server options.
        metrics: a `ServerMetrics` (a new one when None).

    Returns:
        An ASGI app (run it with uvicorn).

    Raises:
        BackendUnavailable: starlette or prometheus_client is not installed.
    """
    from semedge.runtime.serving.metrics import ServerMetrics

    applications = require("starlette.applications", "serve")
    routing = require("starlette.routing", "serve")
    s = _Server(engine, template, config or ServeConfig(), metrics or ServerMetrics())
    routes = [
        routing.Route("/v1/completions", s.completions, methods=["POST"]),
        routing.Route("/v1/chat/completions", s.chat, methods=["POST"]),
        routing.Route("/v1/models", s.models, methods=["GET"]),
        routing.Route("/health", s.health, methods=["GET"]),
        routing.Route("/metrics", s.metrics_page, methods=["GET"]),
    ]
    exceptions = require("starlette.exceptions", "serve")

    async def http_error(request, exc):  # 404 unknown route, 405 wrong method: JSON like the rest
        err = RequestError(f"{request.method} {request.url.path}: {exc.detail}", exc.status_code)
        return s.responses.JSONResponse(err.to_dict(), status_code=exc.status_code)

    handlers = {exceptions.HTTPException: http_error}
    app = applications.Starlette(routes=routes, exception_handlers=handlers)
    app.state.server = s
    return app
