"""`semedge serve EXPORT`: load the Pipeline, bind a loopback socket, run uvicorn (torch-free)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import socket
from pathlib import Path
from typing import Any

from semedge.deps import require
from semedge.errors import InputError

__all__ = ["serve_export", "bind_socket"]

log = logging.getLogger(__name__)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one, read it from getsockname()).

    Raises:
        InputError: the address cannot be bound (in use, bad host).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise InputError(
            f"cannot listen on {host}:{port}: {err.strerror}; pick another --port"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _quiet_exit_server(uvicorn: Any) -> type:
    """uvicorn.Server that shuts down on SIGINT/SIGTERM and returns (uvicorn re-raises the
    signal afterwards, which would skip closing the engine and exit by the signal)."""

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            sigs = (signal.SIGINT, signal.SIGTERM)
            old = {s: signal.signal(s, self.handle_exit) for s in sigs}
            try:
                yield
            finally:
                for s, handler in old.items():
                    signal.signal(s, handler)

    return Server


def _run(uvicorn: Any, app: Any, sock: socket.socket) -> None:
    config = uvicorn.Config(app, log_level="warning", limit_concurrency=1024,
                            timeout_graceful_shutdown=5, lifespan="off")  # fmt: skip
    _quiet_exit_server(uvicorn)(config).run(sockets=[sock])


def serve_export(export_dir: Path | str, host: str = "127.0.0.1", port: int = 8000,
                 config: Any = None, provider: str = "cpu", adapter: str | None = None,
                 threads: int | None = None, on_listen: Any = None) -> None:  # fmt: skip
    """Serve an export over HTTP until SIGINT/SIGTERM (OpenAI-compatible routes).

    Args:
        export_dir: a `semedge export onnx` (or calibrated / engine) directory.
        host, port: where to listen (loopback by default; port 0 picks a free port).
        config: a `ServeConfig` (model name, request limits, batching).
        provider: the Pipeline's provider ("cpu", "cuda", ...).
        adapter: an MT2ST span adapter (DEFAULT or a directory), as `semedge run --adapter`.
        threads: ONNX Runtime intra-op threads per session.
        on_listen: called with (host, port) once the socket is bound.

    Raises:
        ArtifactError, InputError, BackendUnavailable: as Pipeline.from_pretrained; a port in use.
    """
    from semedge.runtime.pipeline import Pipeline
    from semedge.runtime.serving.app import ServeConfig, create_app
    from semedge.runtime.serving.chat import ChatTemplate
    from semedge.runtime.serving.engine import Engine
    from semedge.runtime.serving.metrics import ServerMetrics

    uvicorn = require("uvicorn", "serve")
    config = config or ServeConfig()
    metrics = ServerMetrics()
    pipe = Pipeline.from_pretrained(export_dir, providers=provider, threads=threads)
    try:
        served = pipe.with_adapter(adapter) if adapter else pipe
        template = ChatTemplate.from_export(pipe.path, pipe.manifest.files)
        sock = bind_socket(host, port)
        engine = Engine(served, config.engine, on_batch=metrics.batch_size.observe)
        try:
            app = create_app(engine, template, config, metrics)
            bound = sock.getsockname()[1]
            if not is_loopback(host):
                log.warning("listening on %s: reachable from other machines, no authentication",
                            host)  # fmt: skip
            log.info("serving %r (chat template: %s) on http://%s:%d/v1",
                     config.model_id, template.origin, host, bound)  # fmt: skip
            if on_listen is not None:
                on_listen(host, bound)
            _run(uvicorn, app, sock)
            log.info("stopped")
        finally:
            engine.close()
            sock.close()
    finally:
        pipe.close()
