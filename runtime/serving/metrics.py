"""Prometheus metrics of `semedge serve` (prometheus_client, one registry per server)."""

from __future__ import annotations

from typing import Any

from semedge.deps import require

__all__ = ["ServerMetrics"]

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServerMetrics:
    """Counters and histograms of one server; `render()` is the /metrics body."""

    def __init__(self) -> None:
        prom = require("prometheus_client", "serve")
        self._prom = prom
        self.registry = reg = prom.CollectorRegistry()
        self.requests = prom.Counter(
            "semedge_requests", "HTTP requests by endpoint and status code",
            ["endpoint", "status"], registry=reg,
        )  # fmt: skip
        self.latency = prom.Histogram(
            "semedge_request_seconds", "Request latency (to the last byte) by endpoint",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.ttft = prom.Histogram(
            "semedge_time_to_first_token_seconds", "Time to the first streamed text piece",
            buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.prompt_tokens = prom.Counter(
            "semedge_prompt_tokens", "Prompt tokens before compression", registry=reg
        )
        self.compressed_tokens = prom.Counter(
            "semedge_compressed_tokens", "Prompt positions the model saw (after SemToken)",
            registry=reg,
        )  # fmt: skip
        self.generated_tokens = prom.Counter(
            "semedge_generated_tokens", "Tokens generated", registry=reg
        )
        self.batch_size = prom.Histogram(
            "semedge_batch_size", "Requests per batch", buckets=(1, 2, 4, 8, 16, 32),
            registry=reg,
        )  # fmt: skip
        self.in_flight = prom.Gauge("semedge_requests_in_flight", "Requests running", registry=reg)

    def observe_result(self, result: Any) -> None:
        self.prompt_tokens.inc(result.prompt_tokens)
        self.compressed_tokens.inc(result.compressed_tokens)
        self.generated_tokens.inc(len(result.tokens))

    def render(self) -> tuple[bytes, str]:
        """(body, content type) in the Prometheus text exposition format."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
