"""semedge.runtime.serving: `semedge serve`'s OpenAI-compatible server and Triton launcher.

Torch-free. Needs the `serve` extra (starlette, uvicorn, prometheus_client, jinja2), imported
only when a server is built, so `import semedge.runtime.serving` stays cheap.
"""

from __future__ import annotations

from semedge._lazy import lazy_exports

_LAZY = {
    "serve_export": "semedge.runtime.serving.server",
    "ServeConfig": "semedge.runtime.serving.app",
    "create_app": "semedge.runtime.serving.app",
    "Engine": "semedge.runtime.serving.engine",
    "EngineConfig": "semedge.runtime.serving.engine",
    "ChatTemplate": "semedge.runtime.serving.chat",
}

__all__ = list(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
