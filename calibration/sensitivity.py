"""Per-group quantization sensitivity and the search for what to keep in high precision.

Torch-free and model-agnostic: the caller supplies `evaluate(excluded_nodes) -> loss` (perplexity
on held-out text for an export; any positive loss for a test graph). The loop:

    1. quantize everything; within budget -> done, nothing kept;
    2. quantize one group at a time (the rest fp32) and rank groups by their loss increase;
    3. keep the most sensitive groups in fp32, one more each round, until the budget holds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from semedge.errors import AccuracyError, InputError

__all__ = ["GroupScore", "SensitivityResult", "search_exclusions", "group_nodes"]

log = logging.getLogger(__name__)

GRANULARITIES = ("auto", "role", "layer", "node")
_LAYER = re.compile(r"(?:layers|h|blocks?)[./_](\d+)(?=[./_])")
_ROLE = re.compile(r"((?:self_attn|attn|attention|mlp)[./_][A-Za-z_]+?)(?=[./\s]|_\d|$)")


@dataclass(frozen=True)
class GroupScore:
    """The loss with only this group quantized (everything else fp32)."""

    group: str
    nodes: tuple[str, ...]
    loss: float
    increase_pct: float  # vs the fp32 loss


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

    @property
    def increase_pct(self) -> float:
        return 100.0 * (self.loss / self.baseline - 1.0)

    @property
    def passed(self) -> bool:
        return self.increase_pct <= self.budget_pct + 1e-9

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss_fp32": self.baseline,
            "loss": self.loss,
            "loss_all_quantized": self.full_loss,
            "increase_pct": self.increase_pct,
            "kept_groups": self.kept,
            "evaluations": self.evaluations,
            "groups": [
                {
                    "group": s.group,
                    "nodes": len(s.nodes),
                    "loss": s.loss,
                    "increase_pct": s.increase_pct,
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
        return None
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
    groups: dict[str, list[str]] = {}
    for n in names:
        g = (key(n, hints.get(n, "")) if key else None) or n
        groups.setdefault(g, []).append(n)
    return groups


def _pct(loss: float, base: float) -> float:
    return 100.0 * (loss / base - 1.0)


def search_exclusions(
    groups: dict[str, list[str]],
    evaluate: Callable[[list[str]], float],
    baseline: float,
    budget_pct: float,
) -> SensitivityResult:
    """Find the fewest groups to keep in fp32 so that the loss increase stays within budget.

    Args:
        groups: group -> node names that may be quantized.
        evaluate: excluded node names -> loss of the model quantized without them.
        baseline: the fp32 loss.
        budget_pct: the allowed increase of the loss, in percent (3.0 = +3 %).

    Returns:
        SensitivityResult with the kept groups and, per kept node, the reason.

    Raises:
        InputError: negative budget or no groups.
        AccuracyError: even quantizing the least sensitive single group breaks the budget.
    """
    if budget_pct < 0:
        raise InputError(f"--max-ppl-increase must be >= 0 percent, got {budget_pct:g}")
    if not groups:
        raise InputError("the graph has no quantizable MatMul/Gemm with constant weights")
    res = SensitivityResult(baseline=baseline, loss=baseline, budget_pct=budget_pct)
    res.full_loss = res.loss = evaluate([])
    res.evaluations = 1
    if res.passed:
        return res
    log.info("all-quantized loss +%.2f %% > %.2f %%: ranking groups", res.increase_pct, budget_pct)
    from tqdm.auto import tqdm

    everything = [n for nodes in groups.values() for n in nodes]
    # disable=None: tqdm draws only on a terminal (as the CLI's show_progress), so redirected
    # stderr keeps its one error line
    bar = tqdm(groups.items(), desc="int8 sensitivity", unit="group", total=len(groups),
               disable=None if log.isEnabledFor(logging.INFO) else True)  # fmt: skip
    for g, nodes in bar:  # quantize one group at a time
        loss = evaluate([n for n in everything if n not in set(nodes)])
        res.scores.append(GroupScore(g, tuple(nodes), loss, _pct(loss, baseline)))
        res.evaluations += 1
    res.scores.sort(key=lambda s: -s.loss)
    if res.scores[-1].increase_pct <= budget_pct + 1e-9:
        _keep_until_within(res, evaluate)
        if res.passed:
            return res
    least = res.scores[-1]
    raise AccuracyError(
        f"no quantization fits --max-ppl-increase {budget_pct:g} %: the least sensitive group "
        f"({least.group}) alone raises perplexity {least.increase_pct:+.2f} % and the best mix "
        f"{res.increase_pct:+.2f} %; allow a larger increase or use fp16",
        report=res,
    )


def _keep_until_within(res: SensitivityResult, evaluate: Callable[[list[str]], float]) -> None:
    """Keep the most sensitive groups fp32, one more per round, until the budget holds."""
    for score in res.scores[:-1]:  # keeping every group would quantize nothing
        res.kept.append(score.group)
        for n in score.nodes:
            res.kept_nodes[n] = f"sensitive: alone it raises the loss {score.increase_pct:+.2f} %"
        if len(res.kept) == len(res.scores) - 1:
            res.loss = res.scores[-1].loss  # only the least sensitive group left: already measured
        else:
            res.loss = evaluate(sorted(res.kept_nodes))
            res.evaluations += 1
        if res.passed:
            return
