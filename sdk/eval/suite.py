"""`semedge eval suite`: long-context task accuracy per method, context and ratio.

Two runners with one interface: `TorchRunner` (a PyTorch LM and the SemToken compressor) and
`semedge.calibration.suite_runtime.RuntimeRunner` (a deployed export through `semedge.runtime`,
what users ship; it lives with the other checks of exports, as sdk/eval never imports the runtime). Each sample is
built once per context; `full` runs once per sample and is reported at every ratio (with that
ratio's far subset); every other method runs at each ratio with the same budget round(T / ratio).
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semedge.compressor.relevance import sentence_units
from semedge.compressor.spans import protected_mask
from semedge.config import CompressionConfig
from semedge.errors import InputError
from semedge.eval import methods as M
from semedge.eval.tasks import FillerText, TaskSample, make_sample, parse_tasks, score_answer

__all__ = ["SuiteReport", "run_suite", "suite_sample", "TorchRunner", "DEPTH_BINS"]

DEPTH_BINS = 5  # needle depth strata in the heatmap


@dataclass
class Tokenized:
    ids: np.ndarray  # (T,)
    offsets: np.ndarray  # (T, 2)
    special: np.ndarray  # (T,) bool
    text: str


class Runner:
    """What both runners share: budgets, masks and the baselines' plans."""

    config: CompressionConfig
    max_positions: int | None = None
    fit: int | None = None  # compressed positions compacted below this (PyTorch path)

    def _cfg(self, ratio: float, query: str | None = None) -> CompressionConfig:
        return dataclasses.replace(self.config, ratio=float(ratio), target_tokens=None, query=query)

    def must_keep(self, tok: Tokenized, ratio: float, query: str | None = None) -> np.ndarray:
        """Sinks + the recent window SemToken keeps at this ratio, with or without a query (the
        dropping baselines keep them too)."""
        cfg, T = self._cfg(ratio, query), len(tok.ids)
        must = np.zeros(T, dtype=bool)
        must[: cfg.sink_tokens] = True
        recent = cfg.recency_tokens(T)
        if recent:
            must[T - recent :] = True
        return must

    def protected(self, tok: Tokenized, ratio: float) -> np.ndarray:
        texts = [tok.text[a:b] for a, b in tok.offsets.tolist()]
        return protected_mask(texts, tok.special, self._cfg(ratio), tok.text, tok.offsets)

    def plan(self, method: str, tok: Tokenized, ratio: float, query: str, seed: int):
        T = len(tok.ids)
        if method == "full":
            return M.plan_full(T)
        if method == "truncate":
            return M.plan_truncate(T, ratio, M.leading_specials(tok.special))
        if method == "head_tail":
            return M.plan_head_tail(T, ratio)
        if method in ("random", "uniform"):
            spans = M.spans_for(method, T, ratio, self.protected(tok, ratio), seed)
            return M.plan_spans(spans, T)
        if method == "selective":
            return M.plan_selective(
                self.self_information(tok.ids), self.must_keep(tok, ratio), ratio
            )
        if method == "retrieve":
            units = sentence_units(tok.text, tok.offsets)
            must = self.must_keep(tok, ratio, query)
            return M.plan_retrieve(tok.ids, units, self.query_ids(query), must, ratio)
        raise InputError(f"unknown method {method!r}")


class TorchRunner(Runner):
    """A PyTorch causal LM: semtoken through `SemTokenCompressor`, greedy decoding."""

    def __init__(self, model, tokenizer, config: CompressionConfig,
                 fit_positions: int | None = None) -> None:  # fmt: skip
        from semedge.compressor import SemTokenCompressor
        from semedge.eval.perplexity import _max_positions

        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.fit = fit_positions  # compact compressed positions below this, as a small export
        self.compressor = SemTokenCompressor(model, tokenizer, config)
        self.max_positions = _max_positions(model)
        self._info: tuple[int, np.ndarray] | None = None

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def tokenize(self, text: str) -> Tokenized:
        enc = self.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        special = np.isin(ids, np.asarray(self.tokenizer.all_special_ids, dtype=np.int64))
        return Tokenized(
            ids, np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2), special, text
        )

    def query_ids(self, query: str) -> np.ndarray:
        return np.asarray(self.tokenizer(query, add_special_tokens=False)["input_ids"], np.int64)

    def self_information(self, ids: np.ndarray) -> np.ndarray:
        """(T,) -log p(t_i | t_<i) under the LM (the first token: +inf), cached per prompt."""
        import torch

        key = hash(ids.tobytes())
        if self._info is None or self._info[0] != key:
            with torch.inference_mode():
                logits = self.model(torch.as_tensor(ids)[None]).logits[0].float()
            lp = torch.log_softmax(logits[:-1], dim=-1)
            nll = -lp.gather(1, torch.as_tensor(ids[1:])[:, None])[:, 0].numpy()
            self._info = (key, np.concatenate([[np.inf], nll]))
        return self._info[1]

    def semtoken(self, tok: Tokenized, ratio: float, query: str | None):
        prompt = self.compressor.compress(tok.text, ratio=ratio, query=query)
        return prompt.fit_positions(self.fit - 64) if self.fit else prompt

    def inputs(self, tok: Tokenized, plan: M.ContextPlan):
        from semedge.compressor.inference import plain_prompt

        if plan.spans is None:  # kept tokens read as a shorter text
            return plain_prompt(self.model, tok.ids[plan.source])
        prompt = self.compressor.prompt(tok.ids, plan.spans, self.config)
        return prompt.fit_positions(self.fit - 64) if self.fit else prompt

    def generate(self, prompt, max_new_tokens: int) -> tuple[str, int]:
        from semedge.compressor.inference import generate_compressed

        out = generate_compressed(self.model, self.tokenizer, prompt, max_new_tokens)
        return self.tokenizer.decode(out, skip_special_tokens=True), prompt.compressed_tokens


@dataclass
class SuiteReport:
    """Per-sample rows and their aggregation; `to_dict()` is what --json prints."""

    model: str
    rows: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)

    def results(self) -> list[dict[str, Any]]:
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for r in self.rows:
            groups[(r["task"], r["context"], r["ratio"], r["method"])].append(r)
        out = []
        for (task, context, ratio, method), rs in groups.items():
            far = [r["score"] for r in rs if r["far"]]
            out.append({
                "task": task, "context": context, "ratio": ratio, "method": method,
                "accuracy": float(np.mean([r["score"] for r in rs])),
                "accuracy_far": float(np.mean(far)) if far else None,
                "positions": float(np.mean([r["positions"] for r in rs])),
                "samples": len(rs),
                "seconds": float(np.mean([r["seconds"] for r in rs])),
            })  # fmt: skip
        return out

    def summary(self) -> list[dict[str, Any]]:
        """Accuracy averaged over tasks, per context, ratio and method (full: at every ratio)."""
        res = self.results()
        table: dict[tuple, list] = defaultdict(list)
        for r in res:
            table[(r["context"], r["ratio"], r["method"])].append(r)
        return [
            {"context": c, "ratio": q, "method": m,
             "accuracy": float(np.mean([x["accuracy"] for x in rs])),
             "accuracy_far": _mean([x["accuracy_far"] for x in rs]),
             "positions": float(np.mean([x["positions"] for x in rs])), "tasks": len(rs)}
            for (c, q, m), rs in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1]))
        ]  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "results": self.results(), "summary": self.summary(),
                "config": self.config, "samples": self.rows}  # fmt: skip


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _needle_tokens(sample: TaskSample, tok: Tokenized) -> int | None:
    """Index of the first token of the (first) needle, None for needle-free tasks."""
    if not sample.needles:
        return None
    start = sample.needles[0][0]
    return int(np.searchsorted(tok.offsets[:, 1], start, side="right"))


def suite_sample(task: str, task_index: int, context: int, i: int, samples: int, seed: int,
                 text: FillerText, count_tokens) -> TaskSample:  # fmt: skip
    """Sample i of `samples` of a task: seeded by (seed, i, context, task_index), its needle
    depth drawn in the i-th of `samples` equal depth bins (depth-stratified)."""
    rng = np.random.default_rng([seed, i, context, task_index])
    depth = float((i + rng.random()) / samples)
    return make_sample(task, context, text, depth, int(rng.integers(2**31)), count_tokens)


def run_suite(
    runner: Runner,
    tasks: tuple[str, ...] | str,
    contexts: list[int],
    ratios: list[float],
    methods: tuple[str, ...] | str,
    samples: int,
    filler: str,
    model_name: str = "model",
    seed: int = 0,
    progress: bool = False,
) -> SuiteReport:
    """Run every task x context x sample, and every method at every ratio on each sample.

    Raises:
        InputError: unknown task/method, a ratio < 1 or not finite, a context beyond the model,
            samples < 1, too little filler.
    """
    from tqdm.auto import tqdm

    tasks, methods = parse_tasks(tasks), M.parse_suite_methods(methods)
    for r in ratios:
        if not (np.isfinite(r) and r >= 1.0):
            raise InputError(f"ratio must be a number >= 1, got {r}")
    if samples < 1:
        raise InputError(f"samples must be >= 1, got {samples}")
    fits = runner.fit is not None and "full" not in methods  # compacted below fit
    for c in contexts:
        if runner.max_positions is not None and c + 64 > runner.max_positions and not fits:
            raise InputError(
                f"context {c} + 64 new tokens exceeds the model's {runner.max_positions} "
                "positions; pass a smaller --context (or, without the full method, "
                "--fit-positions N to compact every compressed prompt below N)"
            )
    text = FillerText(filler, runner.count_tokens)
    rows: list[dict[str, Any]] = []
    jobs = [(t, c, i) for t in tasks for c in contexts for i in range(samples)]
    for task, context, i in tqdm(jobs, desc="eval suite", unit="sample", disable=not progress):
        sample = suite_sample(task, tasks.index(task), context, i, samples, seed, text,
                              runner.count_tokens)  # fmt: skip
        tok = runner.tokenize(sample.prompt)
        needle = _needle_tokens(sample, tok)
        for method in methods:
            done = None  # full: generated once, reported at every ratio (its far subset differs)
            for ratio in ratios:
                t0 = time.perf_counter()
                if done is not None:
                    answer, used, seconds = done
                elif method in ("semtoken", "semtoken_query"):
                    query = sample.question if method == "semtoken_query" else None
                    prompt = runner.semtoken(tok, ratio, query)
                else:
                    plan = runner.plan(method, tok, ratio, sample.question, seed + i)
                    prompt = runner.inputs(tok, plan)
                if done is None:
                    answer, used = runner.generate(prompt, sample.max_new_tokens)
                    seconds = time.perf_counter() - t0
                    done = (answer, used, seconds) if method == "full" else None
                cut = len(tok.ids) - M.budget_for(len(tok.ids), ratio)
                rows.append({
                    "task": task, "context": context, "ratio": float(ratio), "method": method,
                    "sample": i, "seed": seed, "depth": round(sample.depth, 4),
                    "far": bool(needle is not None and needle < cut),
                    "has_needle": needle is not None,
                    "score": score_answer(answer, sample.answers), "positions": int(used),
                    "tokens": int(len(tok.ids)), "answer": answer.strip()[:200],
                    "references": list(sample.answers),
                    "seconds": seconds,
                })  # fmt: skip
    return SuiteReport(model_name, rows, runner.config.to_dict())
