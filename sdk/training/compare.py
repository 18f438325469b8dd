"""Compare MT2ST strategies on one budget of steps: held-out ppl, training FLOPs and wall time.

What `semedge train compare` runs; docs/mt2st.md's strategy table comes from it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semedge.eval.windows import window_starts
from semedge.training.adapter_train import (
    AdapterTrainConfig,
    evaluate_examples,
    prepare_examples,
    train_adapter,
)
from semedge.training.flops import cost_savings
from semedge.training.schedules import STRATEGIES

log = logging.getLogger(__name__)

__all__ = ["StrategyComparison", "compare_strategies", "truncation_ppl"]


@dataclass
class StrategyComparison:
    """Per strategy: held-out continuation ppl with the adapter, FLOPs, wall time, savings."""

    config: dict[str, Any]
    frozen_ppl: float  # compressed, no adapter
    full_ppl: float  # uncompressed context
    truncate_ppl: float  # the last T/R tokens only
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """(headers, rows) for echo_table."""
        head = ["strategy", "test_ppl", "train_GFLOP", "wall_s", "flops_saved_vs_mtl",
                "aux_calls"]  # fmt: skip
        rows = [
            [k, r["test_ppl"], r["flops"] / 1e9, r["wall_s"], r["flops_saved_vs_mtl"],
             ",".join(f"{n}={c}" for n, c in r["aux_calls"].items())]
            for k, r in self.rows.items()
        ]  # fmt: skip
        rows += [[name, ppl, "", "", "", ""] for name, ppl in
                 (("frozen", self.frozen_ppl), ("truncate", self.truncate_ppl),
                  ("full", self.full_ppl))]  # fmt: skip
        return head, rows


def truncation_ppl(model, tokenizer, token_ids: np.ndarray, config: AdapterTrainConfig,
                   count: int) -> float:  # fmt: skip
    """Continuation ppl keeping only the last round(T/R) context tokens (same windows)."""
    from semedge.compressor.inference import plain_prompt, score_continuation

    T, S = config.context, config.target
    keep = max(1, round(T / config.ratio))
    nll = 0.0
    starts = window_starts(len(token_ids), T + S, count)
    for s in starts:
        prompt = plain_prompt(model, token_ids[s + T - keep : s + T])
        nll += score_continuation(model, prompt, token_ids[s + T : s + T + S])[0]
    return math.exp(nll / (S * len(starts)))


def compare_strategies(
    model,
    tokenizer,
    train_ids: np.ndarray,
    test_ids: np.ndarray,
    config: AdapterTrainConfig,
    strategies: tuple[str, ...] = STRATEGIES,
    test_windows: int = 8,
    progress: bool = False,
) -> StrategyComparison:
    """Train one adapter per strategy on the same windows and steps; score each on test windows.

    Returns:
        StrategyComparison (frozen / truncation / full baselines on the same test windows).
    """
    train = prepare_examples(model, tokenizer, train_ids, config, progress=progress)
    test = prepare_examples(model, tokenizer, test_ids, config, count=test_windows)
    base = evaluate_examples(model, test, None)
    out = StrategyComparison(
        config=dataclasses.asdict(config), frozen_ppl=base["ppl"], full_ppl=base["full_ppl"],
        truncate_ppl=truncation_ppl(model, tokenizer, test_ids, config, test_windows),
    )  # fmt: skip
    costs = {}
    for name in strategies:
        adapter, res = train_adapter(model, train, dataclasses.replace(config, strategy=name),
                                     progress=progress)  # fmt: skip
        costs[name] = res.cost
        out.rows[name] = {
            "test_ppl": evaluate_examples(model, test, adapter)["ppl"],
            "flops": res.cost.flops, "wall_s": res.cost.wall_s, "aux_calls": res.aux_calls,
            "final_train_loss": res.final_primary,
        }  # fmt: skip
    for name, saved in cost_savings(costs).items():
        out.rows[name].update(saved)
    return out
