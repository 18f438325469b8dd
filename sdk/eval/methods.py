"""Context methods at one position budget, for the long-context suite (torch-free).

A method turns a tokenized prompt into a `ContextPlan`: which token's embedding sits at each of
the n = round(T / ratio) positions the LM reads, and at which position id. SemToken itself
(`semtoken`, `semtoken_query`) runs through the product compressor / runtime; this module holds
the baselines, each kept to exactly the same budget:

- `full`: every token.  `truncate`: the last n tokens (after the prompt's leading special
  tokens, BOS: a model trained with BOS at position 0 reads it whatever the method).
- `head_tail`: the first tokens (instruction, attention sinks) + the most recent (StreamingLLM).
- `random` / `uniform`: SemToken's protected tokens, random / evenly spaced span boundaries, spans
  represented like SemToken's (first token, original positions): only the boundaries differ.
- `selective`: drop the tokens of lowest self-information -log p(t_i | t_<i) under the same LM
  (Selective Context / LLMLingua), keeping the sinks and the recent window SemToken keeps.
- `retrieve`: the sentences most similar to the query (BM25 over token ids) kept verbatim in
  their original order, plus the sinks and the recent window.
Methods that drop tokens give the kept ones consecutive positions (as a shorter text would have).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semedge.compressor.relevance import bm25_scores
from semedge.errors import InputError
from semedge.eval.baselines import random_spans, truncate_keep, uniform_spans
from semedge.textio import parse_names

__all__ = [
    "SUITE_METHODS",
    "QUERY_METHODS",
    "ContextPlan",
    "parse_suite_methods",
    "budget_for",
    "plan_full",
    "leading_specials",
    "plan_truncate",
    "plan_head_tail",
    "plan_spans",
    "plan_selective",
    "plan_retrieve",
    "bm25_scores",
]

SUITE_METHODS = (
    "full", "truncate", "head_tail", "random", "uniform", "selective", "retrieve",
    "semtoken", "semtoken_query",
)  # fmt: skip
QUERY_METHODS = ("retrieve", "semtoken_query")  # methods that read the task's question


def parse_suite_methods(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'full,semtoken_query' -> ('full', 'semtoken_query'); 'all' -> every method.

    Raises:
        InputError: an unknown or missing method name.
    """
    return parse_names(spec, SUITE_METHODS, "method", allow_all=True)


@dataclass(frozen=True)
class ContextPlan:
    """What the LM reads: `source[k]`'s embedding at position `positions[k]`, k < n."""

    source: np.ndarray  # (n,) int64 token index whose embedding fills position k
    positions: np.ndarray  # (n,) int64 position ids, strictly increasing
    next_position: int  # position id of the first generated token
    spans: np.ndarray | None = None  # (n, 2) spans tiling 0..T when merged (span baselines)

    @property
    def tokens(self) -> int:
        return int(len(self.source))


def budget_for(n_tokens: int, ratio: float) -> int:
    """Positions every method may use: round(T / ratio), at least 1 (truncation's rule)."""
    return truncate_keep(n_tokens, ratio)


def _compact(keep: np.ndarray) -> ContextPlan:
    keep = np.asarray(keep, dtype=np.int64)
    return ContextPlan(keep, np.arange(len(keep), dtype=np.int64), len(keep))


def plan_full(n_tokens: int) -> ContextPlan:
    return _compact(np.arange(n_tokens))


def leading_specials(special: np.ndarray, limit: int = 4) -> int:
    """How many special tokens open the prompt (BOS and the like), at most `limit`: what
    truncation keeps in front of the recent tokens."""
    special = np.asarray(special, dtype=bool)[:limit]
    return int(np.argmin(special)) if not special.all() else len(special)


def plan_truncate(n_tokens: int, ratio: float, lead: int = 0) -> ContextPlan:
    """The first `lead` tokens (leading_specials: BOS) and the last n - lead, n in all."""
    n = budget_for(n_tokens, ratio)
    lead = min(lead, n - 1)
    return _compact(np.concatenate([np.arange(lead), np.arange(n_tokens - (n - lead), n_tokens)]))


def plan_head_tail(n_tokens: int, ratio: float) -> ContextPlan:
    """The first min(64, n/8) tokens (at least 4 sinks) and the last ones, n in all."""
    n = budget_for(n_tokens, ratio)
    head = min(n, max(4, min(64, n // 8)))
    return _compact(np.concatenate([np.arange(head), np.arange(n_tokens - (n - head), n_tokens)]))


def plan_spans(spans: np.ndarray, n_tokens: int) -> ContextPlan:
    """Merged spans represented by their first token at its original position (SemToken's
    default rule), generation continuing at T."""
    spans = np.asarray(spans, dtype=np.int64)
    return ContextPlan(spans[:, 0].copy(), spans[:, 0].copy(), n_tokens, spans)


def spans_for(kind: str, n_tokens: int, ratio: float, protected: np.ndarray, seed: int = 0):
    """`random` or `uniform` span boundaries around SemToken's protected tokens."""
    if kind == "uniform":
        return uniform_spans(n_tokens, ratio, protected)
    if kind == "random":
        return random_spans(n_tokens, ratio, protected, seed=seed)
    raise InputError(f"no span baseline named {kind!r}")


def _keep_with(must: np.ndarray, ranked: np.ndarray, n: int) -> np.ndarray:
    """`must` (bool mask) plus the first of `ranked` (token indices) up to n tokens, sorted."""
    keep = np.asarray(must, dtype=bool).copy()
    if keep.sum() > n:  # the recent window alone is over budget: keep its last n tokens
        idx = np.flatnonzero(keep)[-n:]
        keep[:] = False
        keep[idx] = True
        return np.flatnonzero(keep)
    room = n - int(keep.sum())
    extra = [i for i in ranked.tolist() if not keep[i]][:room]
    keep[extra] = True
    return np.flatnonzero(keep)


def plan_selective(self_info: np.ndarray, must: np.ndarray, ratio: float) -> ContextPlan:
    """Keep `must` (sinks + recent window) and the highest self-information tokens, n in all.

    Args:
        self_info: (T,) -log p(t_i | t_<i) (the first token: +inf, always kept).
        must: (T,) bool tokens always kept.
    """
    info = np.asarray(self_info, dtype=np.float64)
    n = budget_for(len(info), ratio)
    ranked = np.argsort(-np.nan_to_num(info, nan=-np.inf, posinf=1e9), kind="stable")
    return _compact(_keep_with(must, ranked, n))


def plan_retrieve(ids: np.ndarray, units: np.ndarray, query_ids: np.ndarray,
                  must: np.ndarray, ratio: float) -> ContextPlan:  # fmt: skip
    """Keep `must` and whole sentences by BM25 rank (a last one cut to fit), n in all."""
    units = np.asarray(units, np.int64)
    n = budget_for(len(units), ratio)
    scores = bm25_scores(ids, units, query_ids)
    order = np.argsort(-scores, kind="stable")
    ranked = np.concatenate([np.flatnonzero(units == u) for u in order if np.isfinite(scores[u])])
    return _compact(_keep_with(must, ranked.astype(np.int64), n))
