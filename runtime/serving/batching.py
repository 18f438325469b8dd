"""Continuous batching: requests prefill on their own and decode together, each with its own
ratio, length and stops; rows join and leave between tokens.

Torch-free: shared by `semedge serve` (runtime/serving/engine.py) and the Triton Python backend
model (export/triton_python/model.py), so both servers generate exactly as `Pipeline.generate`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from semedge.runtime.generator import GenerationResult, Generator, cut_at_stop, regroup
from semedge.runtime.sampling import GenerationConfig
from semedge.runtime.serving import heap

if TYPE_CHECKING:
    from semedge.runtime.pipeline import Pipeline, PreparedPrompt

__all__ = ["DecodeBatch", "Job", "fail_job", "prepare_job", "run_batch", "sampling_key"]

MAX_PADDING = 1.25  # a batch's padded positions may exceed its real ones by 25 % at most


@dataclass
class Job:
    """One request inside a batch.

    Args:
        prompt: the text to complete.
        config: its generation settings (ratio, query, max_new_tokens, stop, sampling).
        on_text: called with each new piece of text as it becomes final (streaming), or None.
        on_done: called once `result` or `error` is set (from the generating thread).
        cancelled: set it to stop generating for this request (a client went away).
    """

    prompt: str
    config: GenerationConfig
    on_text: Callable[[str], None] | None = None
    on_done: Callable[[], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)  # result or error is set
    result: GenerationResult | None = None
    error: Exception | None = None
    prepared: PreparedPrompt | None = None
    _sent: int = 0  # characters of text already passed to on_text


def sampling_key(config: GenerationConfig) -> tuple:
    """Requests with equal keys can share one batch (one sampler for every row)."""
    if config.greedy:
        return ("greedy",)
    if config.seed is not None:  # a seeded request runs alone: its draws must not depend on others
        return ("seeded", object())
    return ("sample", config.temperature, config.top_k, config.top_p)


class DecodeBatch:
    """Rows that decode together; prepared jobs join between steps and finished rows leave.

    Iteration-level (continuous) batching: a request that arrives while others decode is
    prefilled on its own (prefill is compute-bound on a CPU: padding would cost in full) and then
    joins the running decode batch (memory-bound: rows share the weight reads), so nobody waits
    for a whole batch to finish. Joining copies the caches right-aligned into one
    (`generator.regroup`); a GPU cache cannot be copied that way, so there a batch takes new jobs
    only once it has drained.

    Args:
        pipe: the loaded Pipeline.
        max_rows: rows decoding at once at most.
        max_positions: rows x cache length at most (bounds the KV cache); a job that would pass
            it waits until rows leave (a job alone always runs).
    """

    def __init__(self, pipe: Pipeline, max_rows: int = 8, max_positions: int = 8192,
                 prefill_chunk: int | None = None) -> None:  # fmt: skip
        self.pipe, self.max_rows, self.max_positions = pipe, max_rows, max_positions
        self.prefill_chunk = prefill_chunk  # GenerationConfig.prefill_chunk of every prefill
        self.gen: Generator | None = None
        self.jobs: list[Job] = []  # one per row of self.gen
        self.key: tuple | None = None  # the running rows' sampling_key
        self._mergeable = pipe.decode.device == "cpu"

    @property
    def live(self) -> int:
        """Rows still generating."""
        return sum(1 for j in self.jobs if not j.done.is_set())

    def admit(self, jobs: Sequence[Job]) -> list[Job]:
        """The leading prepared `jobs` that may join now, in order (nobody overtakes): the same
        sampler as the running rows, free rows, and rows x longest length within max_positions
        (the first job into an empty batch always fits)."""
        if self.gen is not None and not self._mergeable:
            return []
        key = self.key if self.gen is not None else None
        rows = self.live
        longest = self.gen.cache.length + 1 if self.gen is not None else 0
        out: list[Job] = []
        for job in jobs:
            key = key or sampling_key(job.config)
            longest = max(longest, len(job.prepared.positions))
            if rows == 0:
                pass  # an empty batch takes its first job whatever its size
            elif sampling_key(job.config) != key or rows + 1 > self.max_rows:
                break
            elif (rows + 1) * longest > self.max_positions:
                break
            out.append(job)
            rows += 1
        return out

    def join(self, jobs: Sequence[Job]) -> None:
        """Prefill prepared `jobs` (what `admit` returned) in length groups, then merge them in
        (a GPU cache cannot be merged: there they prefill as one left-padded batch)."""
        jobs = sorted(jobs, key=lambda j: len(j.prepared.positions))
        groups: list[list[Job]] = []
        for job in jobs:
            n, last = len(job.prepared.positions), groups[-1] if groups else []
            if (
                last
                and self._mergeable
                and (len(last) + 1) * n
                > MAX_PADDING * (sum(len(j.prepared.positions) for j in last) + n)
            ):
                groups.append([job])
            elif last:
                last.append(job)
            else:
                groups.append([job])
        if self.key is None and jobs:
            self.key = sampling_key(jobs[0].config)
        fresh: list[tuple[Generator, list[Job]]] = []
        for group in groups:
            try:
                gen = Generator(self.pipe, self._config(group))
                gen.append_prompts([j.prepared for j in group])
            except Exception as err:
                for job in group:
                    fail_job(job, err)
                continue
            fresh.append((gen, group))
        if fresh:  # one merge: every row is copied once, not once per group that follows it
            self._merge(fresh)

    def step(self) -> None:
        """One token for every row; rows that finish get their result (and leave later)."""
        if self.gen is None:
            return
        live = self.live
        try:
            self.gen.generate_next_token()
            for b, job in enumerate(self.jobs):
                if not job.done.is_set():
                    _step_row(self.pipe, self.gen, b, job)
        except Exception as err:
            for job in self.jobs:
                fail_job(job, err)
        if self.live == 0:
            if self._mergeable:
                self.pipe.kv_pool.release(self.gen.cache)
            self.gen, self.jobs, self.key = None, [], None
        elif self._mergeable and 2 * self.live <= len(self.jobs):
            self._merge([])  # half the rows are done: stop decoding them
        if self.live < live:
            heap.trim()  # their buffers are free: hand the pages back (RSS stays flat)

    def _config(self, jobs: Sequence[Job]) -> GenerationConfig:
        """One sampler for the rows: the batch's longest max_new_tokens (rows stop on their own)."""
        first = jobs[0].config
        return GenerationConfig(
            max_new_tokens=max(j.config.max_new_tokens for j in jobs), temperature=first.temperature,
            top_k=first.top_k, top_p=first.top_p, seed=first.seed, prefill_chunk=self.prefill_chunk,
        )  # fmt: skip

    def _merge(self, fresh: list[tuple[Generator, list[Job]]]) -> None:
        """Keep the live rows and add every row of the `fresh` (generator, its jobs) pairs, in
        one copy (regroup); a lone fresh generator into an empty batch is taken as it is."""
        if self.gen is None and len(fresh) == 1:
            self.gen, self.jobs = fresh[0][0], list(fresh[0][1])
            return
        parts, jobs = [], []
        if self.gen is not None:
            keep = [b for b, j in enumerate(self.jobs) if not j.done.is_set()]
            parts.append((self.gen, keep))
            jobs += [self.jobs[b] for b in keep]
        for gen, group in fresh:
            parts.append((gen, list(range(len(group)))))
            jobs += list(group)
        try:
            merged = regroup(parts, self._config(jobs))
            for g, _ in parts:  # their rows are copied: the blocks serve the next cache
                self.pipe.kv_pool.release(g.cache)
            self.gen, self.jobs = merged, jobs
        except Exception as err:
            for job in jobs:
                fail_job(job, err)
            self.gen, self.jobs, self.key = None, [], None


def prepare_job(pipe: Pipeline, job: Job) -> bool:
    """Tokenize and compress `job`'s prompt; a bad one gets its error (False)."""
    c = job.config
    try:
        job.prepared = pipe.prepare(job.prompt, c.ratio, c.query, c.max_new_tokens)
        return True
    except Exception as err:  # InputError (too long, empty) or a backend failure
        fail_job(job, err)
        return False


def run_batch(pipe: Pipeline, jobs: Sequence[Job], max_positions: int = 8192) -> None:
    """Prepare every job (its own compression), then generate them all, continuously batched.

    Jobs are prefilled in length groups (at most MAX_PADDING x their real positions) and decode
    together within `max_positions` (rows x cache length); a job that does not fit joins when
    rows leave. A job with bad input gets `error`; the others get `result`. Each row stops on
    its own EOS, stop string or max_new_tokens, and its `done` event is set right then. All
    jobs must share a `sampling_key`.
    """
    waiting = [j for j in jobs if prepare_job(pipe, j)]
    waiting.sort(key=lambda j: len(j.prepared.positions))
    batch = DecodeBatch(pipe, max_rows=max(len(waiting), 1), max_positions=max_positions)
    while waiting or batch.gen is not None:
        if take := batch.admit(waiting):
            del waiting[: len(take)]
            batch.join(take)
        batch.step()


def fail_job(job: Job, err: Exception) -> None:
    """Give `job` an error and signal it done (once)."""
    if not job.done.is_set():
        job.error = err
        _finish(job)


def _finish(job: Job) -> None:
    job.done.set()
    if job.on_done is not None:
        job.on_done()


def _step_row(pipe: Pipeline, gen: Generator, b: int, job: Job) -> None:
    """Apply this row's own limits (the shared config holds the batch's longest) and stream."""
    tokens = gen.tokens[b]
    if gen.finish[b] is None:
        if job.cancelled.is_set():
            gen.finish[b] = "cancelled"
        elif job.config.stop and _hit_stop(pipe, tokens, job.config.stop):
            gen.finish[b] = "stop"
        elif len(tokens) >= job.config.max_new_tokens:
            gen.finish[b] = "length"
    text = cut_at_stop(pipe.decode_tokens(tokens), job.config.stop)
    if gen.finish[b] is None:
        _emit(job, text, final=False)
        return
    x = job.prepared
    job.result = GenerationResult(
        text, list(tokens), x.prompt_tokens, len(x.positions), gen.finish[b], x.spans
    )
    _emit(job, text, final=True)
    _finish(job)


def _hit_stop(pipe: Pipeline, tokens: list[int], stop: tuple[str, ...]) -> bool:
    tail = pipe.decode_tokens(tokens[-16:])
    return any(s in tail for s in stop)


def _emit(job: Job, text: str, final: bool) -> None:
    """Pass on the text that can no longer change: a stop string's prefix or a partial UTF-8
    character at the end is held back until the row finishes (as Pipeline.stream does)."""
    if job.on_text is None or job.cancelled.is_set():
        return
    end = len(text)
    if not final:
        end -= max((len(s) for s in job.config.stop), default=1) - 1
        if text.endswith("\ufffd"):
            end = min(end, len(text) - 1)
    if end > job._sent:
        job.on_text(text[job._sent : end])
        job._sent = end
