"""Run several requests as one left-padded batch, each with its own ratio, length and stops.

Torch-free: shared by `semedge serve` (runtime/serving/engine.py) and the Triton Python backend
model (export/triton_python/model.py), so both servers generate exactly as `Pipeline.generate`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from semedge.runtime.generator import GenerationResult, Generator, cut_at_stop
from semedge.runtime.sampling import GenerationConfig

if TYPE_CHECKING:
    from semedge.runtime.pipeline import Pipeline, PreparedPrompt

__all__ = ["Job", "fail_job", "run_batch", "sampling_key"]

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


def run_batch(pipe: Pipeline, jobs: Sequence[Job], max_positions: int = 8192) -> None:
    """Prepare every job (its own compression), then prefill and decode them in batches.

    Prepared prompts are sorted by length and cut into batches whose padded size (rows x longest
    prompt) stays within `max_positions` and within MAX_PADDING x their real positions: prefill
    is compute-bound on a CPU, so padding costs in full while batching pays in decode. A job with bad input gets `error`; the others get `result`. Each row
    stops on its own EOS, stop string or max_new_tokens, and its `done` event is set right then
    (a short request need not wait for the batch's longest). All jobs must share a `sampling_key`.
    """
    live = []
    for job in jobs:
        c = job.config
        try:
            job.prepared = pipe.prepare(job.prompt, c.ratio, c.query, c.max_new_tokens)
            live.append(job)
        except Exception as err:  # InputError (too long, empty) or a backend failure
            fail_job(job, err)
    live.sort(key=lambda j: len(j.prepared.positions))
    batch: list[Job] = []
    for job in live:
        n = len(job.prepared.positions)
        padded, real = (len(batch) + 1) * n, sum(len(j.prepared.positions) for j in batch) + n
        if batch and (padded > max_positions or padded > MAX_PADDING * real):
            _generate(pipe, batch)
            batch = []
        batch.append(job)
    if batch:
        _generate(pipe, batch)


def _generate(pipe: Pipeline, live: list[Job]) -> None:
    """One left-padded batch: prefill, then decode until every row has stopped."""
    first = live[0].config
    shared = GenerationConfig(
        max_new_tokens=max(j.config.max_new_tokens for j in live), temperature=first.temperature,
        top_k=first.top_k, top_p=first.top_p, seed=first.seed,
    )  # fmt: skip
    try:
        gen = Generator(pipe, shared)
        gen.append_prompts([j.prepared for j in live])
        while not gen.is_done():
            gen.generate_next_token()
            for b, job in enumerate(live):
                if not job.done.is_set():
                    _step_row(pipe, gen, b, job)
    except Exception as err:
        for job in live:
            fail_job(job, err)


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
