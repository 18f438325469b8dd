"""Stage timing and Chrome-trace export (torch-free).

`StageTimer.span("prefill")` records wall-clock spans; `chrome_trace()` turns them into the Trace
Event Format (`{"traceEvents": [{"ph": "X", ...}]}`) that Perfetto and chrome://tracing open,
optionally with ONNX Runtime's own profile merged in on a second track.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from semedge.artifacts import atomic_write_text
from semedge.errors import ArtifactError

__all__ = ["StageTimer", "NULL_TIMER", "chrome_trace", "write_trace", "load_ort_profile"]

_PID = 1  # semedge stage spans
_ORT_PID = 2  # ONNX Runtime's own events


class StageTimer:
    """Collects named spans (name, start, duration) in microseconds since its creation.

    Thread safety: spans from several threads are recorded (each under its thread id).
    """

    def __init__(self) -> None:
        self.origin = time.perf_counter()
        self.origin_epoch_us = time.time() * 1e6  # to align ONNX Runtime's wall-clock profile
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    @contextmanager
    def span(self, name: str, **args: Any) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            t1 = time.perf_counter()
            event = {
                "name": name,
                "ts": (t0 - self.origin) * 1e6,
                "dur": (t1 - t0) * 1e6,
                "tid": threading.get_ident() % 100000,
                "args": args,
            }
            with self._lock:
                self.events.append(event)

    def durations_ms(self, name: str) -> list[float]:
        """Every recorded duration of stage `name`, in milliseconds."""
        return [e["dur"] / 1e3 for e in self.events if e["name"] == name]

    def clear(self) -> None:
        with self._lock:
            self.events.clear()


class _NullTimer:
    """A timer that records nothing (the default outside profiling)."""

    def span(self, name: str, **args: Any) -> nullcontext:
        return nullcontext()


NULL_TIMER = _NullTimer()


def chrome_trace(
    timer: StageTimer, ort_events: list[dict[str, Any]] | None = None, **metadata: Any
) -> dict[str, Any]:
    """Trace Event Format dict: one complete ("X") event per span, plus process names."""
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": _PID, "tid": 0, "args": {"name": "semedge"}},
    ]
    for e in timer.events:
        events.append(
            {
                "name": e["name"],
                "cat": "stage",
                "ph": "X",
                "ts": round(e["ts"], 3),
                "dur": round(e["dur"], 3),
                "pid": _PID,
                "tid": e["tid"],
                "args": {k: _jsonable(v) for k, v in e["args"].items()},
            }
        )
    if ort_events:
        events.append(
            {"name": "process_name", "ph": "M", "pid": _ORT_PID, "tid": 0,
             "args": {"name": "onnxruntime"}}
        )  # fmt: skip
        for e in ort_events:
            if e.get("ph") != "X":
                continue
            events.append({**e, "pid": _ORT_PID, "tid": e.get("tid", 0)})
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": metadata}


def load_ort_profile(path: Path | str, offset_us: float = 0.0) -> list[dict[str, Any]]:
    """Events of an ONNX Runtime profile JSON, shifted by `offset_us` onto the timer's clock."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ArtifactError(f"cannot read ONNX Runtime profile {path}: {err}") from err
    events = data if isinstance(data, list) else data.get("traceEvents", [])
    return [{**e, "ts": float(e.get("ts", 0)) + offset_us} for e in events]


def write_trace(path: Path | str, trace: dict[str, Any]) -> Path:
    """Write a Chrome trace atomically."""
    return atomic_write_text(path, json.dumps(trace) + "\n")


def _jsonable(v: Any) -> Any:
    return v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
