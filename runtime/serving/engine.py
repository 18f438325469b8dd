"""A request queue in front of one Pipeline: worker threads batch the requests waiting together.

Torch-free. Requests that arrive within `batch_wait_ms` of each other and share a sampler run as
one left-padded batch (runtime/serving/batching.py); `max_batch=1` runs each request on its own.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from semedge.errors import InputError
from semedge.runtime.serving.batching import Job, fail_job, run_batch, sampling_key

if TYPE_CHECKING:
    from semedge.runtime.pipeline import Pipeline

__all__ = ["Engine", "EngineConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """How requests share the CPU.

    Args:
        max_batch: requests run together in one batch at most (1: no batching).
        batch_wait_ms: how long a worker waits for more requests before it starts a batch.
        workers: batches that run at once (each on its own thread; ORT sessions are shared).
        max_queue: requests waiting at most; more are refused (HTTP 503) instead of queuing.
        max_batch_positions: rows x longest prompt (after compression) per batch at most; a
            taken batch past it runs as several, shortest prompts first (bounds the KV cache).
    """

    max_batch: int = 8
    batch_wait_ms: float = 10.0
    workers: int = 1
    max_queue: int = 256
    max_batch_positions: int = 8192

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise InputError(f"--max-batch must be >= 1, got {self.max_batch}")
        if not self.batch_wait_ms >= 0:
            raise InputError(f"--batch-wait-ms must be >= 0, got {self.batch_wait_ms}")
        if self.workers < 1:
            raise InputError(f"--workers must be >= 1, got {self.workers}")
        if self.max_batch_positions < 1:
            raise InputError(f"--max-batch-positions must be >= 1, got {self.max_batch_positions}")
        if self.max_queue < 1:
            raise InputError(f"max_queue must be >= 1, got {self.max_queue}")


class QueueFull(InputError):
    """The server holds `max_queue` requests already (answered with 503)."""


class Engine:
    """Runs Jobs on a shared Pipeline from `workers` threads. Thread-safe: `submit` from anywhere.

    Args:
        pipe: the loaded Pipeline (shared, read-only).
        config: batching and queue limits.
        on_batch: called with each batch's size (metrics), or None.
    """

    def __init__(self, pipe: Pipeline, config: EngineConfig | None = None, on_batch=None) -> None:
        self.pipe, self.config, self.on_batch = pipe, config or EngineConfig(), on_batch
        self._queue: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"semedge-worker-{i}", daemon=True)
            for i in range(self.config.workers)
        ]
        for t in self._threads:
            t.start()

    def submit(self, job: Job) -> Job:
        """Queue `job`; its `done` event (and `on_done`) fire when it has a result or error.

        Raises:
            QueueFull: `max_queue` requests are waiting already.
        """
        with self._cv:
            if self._closed:
                raise InputError("the server is shutting down")
            if len(self._queue) >= self.config.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are queued already; retry later")
            self._queue.append(job)
            self._cv.notify()
        return job

    @property
    def queued(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        """Stop the workers after the batches they are running."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=30)

    def _take_batch(self) -> list[Job] | None:
        """Wait for a job, then up to batch_wait_ms for more that share its sampler."""
        with self._cv:
            while not self._queue and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            deadline = time.monotonic() + self.config.batch_wait_ms / 1000
            while len(self._queue) < self.config.max_batch:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cv.wait(timeout=left):
                    break
            key = sampling_key(self._queue[0].config)
            batch = [j for j in self._queue if sampling_key(j.config) == key]
            batch = batch[: self.config.max_batch]
            for j in batch:
                self._queue.remove(j)
            if self._queue:
                self._cv.notify()  # another worker can take the rest
            return batch

    def _work(self) -> None:
        while (batch := self._take_batch()) is not None:
            for j in [j for j in batch if j.cancelled.is_set()]:
                fail_job(j, InputError("the client cancelled the request"))
            batch = [j for j in batch if not j.cancelled.is_set()]
            if not batch:
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                run_batch(self.pipe, batch, self.config.max_batch_positions)
            except Exception:  # run_batch reports errors per job; this is a bug
                log.exception("batch failed")
