"""A request queue in front of one Pipeline: worker threads decode the requests continuously batched.

Torch-free. A worker decodes its running rows one token at a time; between tokens, queued
requests that share the rows' sampler are prefilled and join (runtime/serving/batching.py), and
finished rows leave, so a request never waits for a whole batch. `max_batch=1` runs each request
on its own.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from semedge.errors import InputError
from semedge.runtime.serving import heap
from semedge.runtime.serving.batching import DecodeBatch, Job, fail_job, prepare_job, sampling_key

if TYPE_CHECKING:
    from semedge.runtime.pipeline import Pipeline

__all__ = ["Engine", "EngineConfig"]

log = logging.getLogger(__name__)

REST_AFTER_S = 1.0  # an idle worker gives memory back after this long without a request


@dataclass(frozen=True)
class EngineConfig:
    """How requests share the CPU.

    Args:
        max_batch: requests decoding together at most (1: no batching).
        batch_wait_ms: how long an idle worker waits for more requests before it starts.
        workers: batches that run at once (each on its own thread; ORT sessions are shared).
        max_queue: requests waiting at most; more are refused (HTTP 503) instead of queuing.
        max_batch_positions: rows x cache length (after compression) per batch at most; a
            request past it waits until rows leave (bounds the KV cache; one request alone
            always runs).
        prefill_chunk: read each prompt this many positions at a time (GenerationConfig
            .prefill_chunk: bounds attention memory on long prompts); 0: whole prompts; None:
            the runtime's measured default.
    """

    max_batch: int = 8
    batch_wait_ms: float = 10.0
    workers: int = 1
    max_queue: int = 256
    max_batch_positions: int = 8192
    prefill_chunk: int | None = None

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
        if self.prefill_chunk is not None and not self.prefill_chunk >= 0:
            raise InputError(
                f"--prefill-chunk must be >= 0 (0: whole prompts), got {self.prefill_chunk}"
            )


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
        self.rests = 0  # times a worker found nothing to do and gave memory back
        # while busy, keep what a worker's batches map (a merged cache, its groups' caches and
        # their prefill scratch: 3 x max_batch_positions each) for the next joins to reuse
        per_worker = 3 * self.config.max_batch_positions * pipe.kv_position_bytes
        pipe.kv_pool.reserve(
            keep=8 * self.config.workers, keep_bytes=self.config.workers * per_worker
        )
        self._idle = 0  # workers waiting for jobs with nothing to run (they take new jobs first)
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

    def _take(self, key: tuple | None, room: int, idle: bool) -> list[Job] | None:
        """Up to `room` queued jobs that share sampler `key` (None: the first queued job's).

        An idle worker (no rows, nothing prepared) blocks for the first job, then waits up to
        batch_wait_ms for more; a busy one takes what is queued without waiting, unless another
        worker is idle: that one starts it at once, on its own thread, instead of this batch
        prefilling it between two of its tokens. None: the engine is closing and this worker
        has nothing left to run.
        """
        with self._cv:
            if idle:
                if not self._wait_for_jobs(room):
                    return None
            elif self._idle:
                return []
            if not self._queue or room <= 0:
                return []
            key = key or sampling_key(self._queue[0].config)
            take = [j for j in self._queue if sampling_key(j.config) == key][:room]
            for j in take:
                self._queue.remove(j)
            if self._queue:
                self._cv.notify()  # another worker can take the rest
            return take

    def _wait_for_jobs(self, room: int) -> bool:
        """(Under the lock, idle worker) block for the first queued job, then up to
        batch_wait_ms for `room` of them; False when the engine closes first."""
        while not self._queue and not self._closed:
            self._cv.wait()
        if self._closed:
            return False
        deadline = time.monotonic() + self.config.batch_wait_ms / 1000
        while len(self._queue) < room:
            left = deadline - time.monotonic()
            if left <= 0 or not self._cv.wait(timeout=left):
                break
        return True

    def _settle(self) -> bool:
        """(Idle worker) wait up to REST_AFTER_S for a request; True when none came: the server
        is at rest. Clients under load send their next request a few ms after an answer; a
        worker that rested at once would drop the pooled blocks that request's join reuses."""
        with self._cv:
            self._cv.wait_for(lambda: self._queue or self._closed, timeout=REST_AFTER_S)
            return not self._queue and not self._closed

    def _rest(self) -> None:
        """Nothing to run: give the pooled cache blocks and free heap pages back, so an idle
        server's RSS falls to what the model needs (the next join maps its cache anew)."""
        self.pipe.kv_pool.clear()
        heap.malloc_trim()
        self.rests += 1

    def _work(self) -> None:
        """Decode the running rows one token at a time; between tokens, prepare queued jobs and
        let them join (runtime/serving/batching.DecodeBatch)."""
        c = self.config
        batch = DecodeBatch(self.pipe, c.max_batch, c.max_batch_positions, c.prefill_chunk)
        ready: list[Job] = []  # prepared, waiting for room in the batch
        while True:
            # prepared jobs go first; a worker holding some is busy even once its rows are done
            room = 0 if ready else self.config.max_batch - batch.live
            idle = batch.gen is None and not ready
            if idle:  # counted idle from now, so busy workers leave new requests to this one
                with self._cv:
                    self._idle += 1
                try:
                    if self._settle():
                        self._rest()
                    new = self._take(batch.key, room, idle=True)
                finally:
                    with self._cv:
                        self._idle -= 1
            else:
                new = self._take(batch.key, room, idle=False)
            if new is None:
                for j in ready:
                    fail_job(j, InputError("the server is shutting down"))
                return
            try:
                for j in new:
                    if j.cancelled.is_set():
                        fail_job(j, InputError("the client cancelled the request"))
                    elif prepare_job(self.pipe, j):
                        ready.append(j)
                ready = [j for j in ready if not j.done.is_set()]
                if take := batch.admit(ready):
                    del ready[: len(take)]
                    batch.join(take)
                    if self.on_batch is not None:
                        self.on_batch(len(batch.jobs))
                batch.step()
            except Exception:  # DecodeBatch reports errors per job; this is a bug
                log.exception("batch failed")
