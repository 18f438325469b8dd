"""Per-group quantization sensitivity and the search for what to keep in high precision.

Torch-free and model-agnostic: the caller supplies `evaluate(excluded_nodes) -> loss` (perplexity
on held-out text for an export; any positive loss for a test graph), or a `Trial` that adds the
top-1 agreement with fp32 and the divergence from fp32's next-token distribution. The loop:

    1. quantize everything; within budget -> done, nothing kept;
    2. quantize one group at a time (the rest fp32) and rank groups by their loss increase (by
       their divergence when a top-1 floor is asked: what flips a top-1 token is how far the
       distribution moves, and perplexity can even fall while it does);
    3. keep the most sensitive groups in fp32, one more each round, until the budget holds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from semedge.errors import AccuracyError, InputError

__all__ = ["GroupScore", "SensitivityResult", "Trial", "search_exclusions", "group_nodes"]

log = logging.getLogger(__name__)

GRANULARITIES = ("auto", "role", "layer", "node")
_LAYER = re.compile(r"(?:layers|h|blocks?)[./_](\d+)(?=[./_])")
_ROLE = re.compile(r"((?:self_attn|attn|attention|mlp)[./_][A-Za-z_]+?)(?=[./\s]|_\d|$)")


@dataclass(frozen=True)
class Trial:
    """What one evaluation measured: the loss, and (when the caller scores them) the top-1
    agreement with fp32 and the mean divergence from fp32's distribution (e.g. KL, nats)."""

    loss: float
    top1: float = 1.0
    divergence: float = 0.0


@dataclass(frozen=True)
class GroupScore:
    """The loss with only this group quantized (everything else fp32)."""

    group: str
    nodes: tuple[str, ...]
    loss: float
    increase_pct: float  # vs the fp32 loss
    top1: float = 1.0
    divergence: float = 0.0


@dataclass
class SensitivityResult:
    """What the search found: the groups kept fp32, why, and the final loss."""

    baseline: float  # fp32 loss
    loss: float  # loss of the chosen mixed-precision model
    budget_pct: float
    kept: list[str] = field(default_factory=list)  # groups kept in fp32, most sensitive first
    kept_nodes: dict[str, str] = field(default_factory=dict)  # node name -> reason
    scores: list[GroupScore] = field(default_factory=list)  # one-group-at-a-time results
    evaluations: int = 0
    full_loss: float | None = None  # loss with every group quantized
    min_top1: float = 0.0  # the top-1 agreement floor (0: none)
    top1: float = 1.0  # top-1 agreement of the chosen model

    @property
    def increase_pct(self) -> float:
        return 100.0 * (self.loss / self.baseline - 1.0)

    @property
    def passed(self) -> bool:
        return self.increase_pct <= self.budget_pct + 1e-9 and self.top1 >= self.min_top1 - 1e-12

    def take(self, trial: Trial) -> None:
        self.loss, self.top1 = trial.loss, trial.top1

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss_fp32": self.baseline,
            "loss": self.loss,
            "loss_all_quantized": self.full_loss,
            "increase_pct": self.increase_pct,
            "top1": self.top1,
            "min_top1": self.min_top1,
            "kept_groups": self.kept,
            "evaluations": self.evaluations,
            "groups": [
                {
                    "group": s.group,
                    "nodes": len(s.nodes),
                    "loss": s.loss,
                    "increase_pct": s.increase_pct,
                    "top1": s.top1,
                    "divergence": s.divergence,
                }
                for s in self.scores
            ],
        }


def _role(name: str, hint: str) -> str | None:
    """`mlp.down_proj` from `/mlp_3/down_proj/MatMul` or `model.layers.3.mlp.down_proj.weight`."""
    text = f"{name} {hint}"
    if "lm_head" in text:
        return "lm_head"
    m = _ROLE.search(text)
    if m:
        return re.sub(r"_\d+(?=[./]|$)", "", m.group(1).replace("/", "."))
    parts = [p for p in name.split("/") if p]
    if len(parts) >= 2:  # TorchScript scope path: module names, "_N" = the N-th repeat
        return ".".join(re.sub(r"_\d+$", "", p) for p in parts[:-1])
    if "embed_tokens" in hint:  # a tied LM head reads the embedding table
        return "lm_head"
    shape = re.search(r"\[(\d+x\d+)\]", hint)  # unscoped (e.g. packed qkv / gate_up) GEMMs:
    if shape:  # one group per weight shape, which repeats once per layer
        op = re.sub(r"_\d+$", "", parts[-1] if parts else name)
        return f"{op}[{shape.group(1)}]"
    return None


def _layer(name: str, hint: str) -> str | None:
    text = f"{name} {hint}"
    if "lm_head" in text:
        return "lm_head"
    m = _LAYER.search(text)
    if m:
        return f"layer.{m.group(1)}"
    parts = [p for p in name.split("/") if p][:-1]
    if not parts:
        return "lm_head" if "embed_tokens" in hint else None  # a tied head reads the embeddings
    nums = [int(m.group(1)) for p in parts if (m := re.search(r"_(\d+)$", p))]
    return f"layer.{max(nums) if nums else 0}"


def group_nodes(
    names: Iterable[str], granularity: str = "auto", hints: dict[str, str] | None = None
) -> dict[str, list[str]]:
    """Group quantizable node names: by role (`mlp.down_proj` over all layers), layer, or node.

    `hints` maps node name -> its weight initializer's name (telling in some exporters).
    "auto" picks "role" when names carry module paths that give a few shared roles, else "node".

    Returns:
        dict group -> list of node names, in first-seen order.
    """
    if granularity not in GRANULARITIES:
        raise InputError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    names, hints = list(names), hints or {}
    if granularity == "auto":
        roles = [_role(n, hints.get(n, "")) for n in names]
        ok = all(roles) and 1 < len(set(roles)) < len(names)
        granularity = "role" if ok else "node"
    key = {"role": _role, "layer": _layer}.get(granularity)
    found = [key(n, hints.get(n, "")) if key else None for n in names]
    if granularity == "layer":
        found = _fill_layers(found)
    groups: dict[str, list[str]] = {}
    for n, g in zip(names, found, strict=True):
        groups.setdefault(g or n, []).append(n)
    return groups


def _fill_layers(found: list[str | None]) -> list[str | None]:
    """Unscoped GEMMs (packed q/k/v, gate/up: no module path) join the layer of the next
    node that names one: in graph order a layer's packed q/k/v comes before its o_proj and
    its gate/up before its down_proj. Those after the last named layer keep their own group."""
    out, after = list(found), None
    for i in range(len(out) - 1, -1, -1):
        if out[i] is None:
            out[i] = after
        elif out[i].startswith("layer."):
            after = out[i]
    return out


def _pct(loss: float, base: float) -> float:
    return 100.0 * (loss / base - 1.0)


def _trial(value: Trial | float) -> Trial:
    return value if isinstance(value, Trial) else Trial(float(value))


def search_exclusions(
    groups: dict[str, list[str]],
    evaluate: Callable[[list[str]], Trial | float],
    baseline: float,
    budget_pct: float,
    min_top1: float = 0.0,
) -> SensitivityResult:
    """Find the fewest groups to keep in fp32 so that the loss increase stays within budget
    (and the top-1 agreement at or above `min_top1`).

    Args:
        groups: group -> node names that may be quantized.
        evaluate: excluded node names -> the loss (a float) or a Trial of the model quantized
            without them.
        baseline: the fp32 loss.
        budget_pct: the allowed increase of the loss, in percent (3.0 = +3 %).
        min_top1: the lowest top-1 agreement with fp32 allowed (0 = no floor); with a floor,
            groups are ranked by the divergence their Trial reports.

    Returns:
        SensitivityResult with the kept groups and, per kept node, the reason.

    Raises:
        InputError: negative budget, a floor outside [0, 1], or no groups.
        AccuracyError: even quantizing the least sensitive single group breaks the budget.
    """
    if budget_pct < 0:
        raise InputError(f"--max-ppl-increase must be >= 0 percent, got {budget_pct:g}")
    if not 0.0 <= min_top1 <= 1.0:
        raise InputError(f"--min-top1 must be in [0, 1], got {min_top1:g}")
    if not groups:
        raise InputError("the graph has no quantizable MatMul/Gemm with constant weights")
    res = SensitivityResult(baseline=baseline, loss=baseline, budget_pct=budget_pct,
                            min_top1=min_top1)  # fmt: skip
    res.take(_trial(evaluate([])))
    res.full_loss = res.loss
    res.evaluations = 1
    if res.passed:
        return res
    log.info("all quantized: loss %+.2f %% (budget %.2f %%), top-1 %.3f (floor %.3f): ranking "
             "groups", res.increase_pct, budget_pct, res.top1, min_top1)  # fmt: skip
    from tqdm.auto import tqdm

    everything = [n for nodes in groups.values() for n in nodes]
    # disable=None: tqdm draws only on a terminal (as the CLI's show_progress), so redirected
    # stderr keeps its one error line
    bar = tqdm(groups.items(), desc="int8 sensitivity", unit="group", total=len(groups),
               disable=None if log.isEnabledFor(logging.INFO) else True)  # fmt: skip
    for g, nodes in bar:  # quantize one group at a time
        t = _trial(evaluate([n for n in everything if n not in set(nodes)]))
        res.scores.append(GroupScore(g, tuple(nodes), t.loss, _pct(t.loss, baseline), t.top1,
                                     t.divergence))  # fmt: skip
        res.evaluations += 1
    if min_top1 > 0:  # what flips top-1 tokens: how far the distribution moves
        res.scores.sort(key=lambda s: (-s.divergence, s.top1, -s.loss))
    else:
        res.scores.sort(key=lambda s: -s.loss)
    least = res.scores[-1]
    if least.increase_pct <= budget_pct + 1e-9 and least.top1 >= min_top1 - 1e-12:
        _keep_until_within(res, evaluate)
        if res.passed:
            return res
    floor = f" and top-1 >= {min_top1:g}" if min_top1 > 0 else ""
    raise AccuracyError(
        f"no quantization fits --max-ppl-increase {budget_pct:g} %{floor}: the least sensitive "
        f"group ({least.group}) alone gives perplexity {least.increase_pct:+.2f} %, top-1 "
        f"{least.top1:.3f}, and the best mix {res.increase_pct:+.2f} %, top-1 {res.top1:.3f}; "
        "allow a larger increase or use fp16",
        report=res,
    )


def _keep_until_within(
    res: SensitivityResult, evaluate: Callable[[list[str]], Trial | float]
) -> None:
    """Keep the most sensitive groups fp32, one more per round, until the budget holds."""
    for score in res.scores[:-1]:  # keeping every group would quantize nothing
        res.kept.append(score.group)
        why = f"sensitive: alone it raises the loss {score.increase_pct:+.2f} %"
        if res.min_top1 > 0:
            why += f", top-1 {score.top1:.3f}, divergence {score.divergence:.2g}"
        for n in score.nodes:
            res.kept_nodes[n] = why
        if len(res.kept) == len(res.scores) - 1:  # only the least sensitive group left
            last = res.scores[-1]
            res.take(Trial(last.loss, last.top1, last.divergence))  # already measured
        else:
            res.take(_trial(evaluate(sorted(res.kept_nodes))))
            res.evaluations += 1
        if res.passed:
            return
