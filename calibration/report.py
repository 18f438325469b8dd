"""Calibration results: what `--json` prints and the table rows the CLI renders (torch-free)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Int8Report", "Fp16Report", "RatioReport"]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


@dataclass
class Int8Report:
    """INT8 calibration: quality and speed of the chosen scheme vs fp32, measured side by side."""

    out_dir: str
    target: str
    scheme: str  # static | static-sym | dynamic | weight-only
    method: str  # activation range method (static schemes)
    budget_pct: float  # --max-ppl-increase
    ppl_fp32: float
    ppl_int8: float
    top1_agreement: float  # fraction of held-out tokens with the same argmax as fp32
    min_top1: float = 0.0  # --min-top1 (0: no floor)
    block_size: int | None = None  # MatMulNBits block length (weight-only schemes)
    prefill_ms_fp32: float | None = None
    prefill_ms_int8: float | None = None
    decode_ms_fp32: float | None = None
    decode_ms_int8: float | None = None
    speed_tokens: int = 512  # prefill length of the speed measurement (and decode past length)
    size_mb: float = 0.0  # prefill + decode graphs, quantized
    size_mb_fp32: float = 0.0
    quantized_nodes: int = 0
    kept_high_precision: list[str] = field(default_factory=list)  # node names
    kept_reasons: dict[str, str] = field(default_factory=dict)  # node name -> why
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every scheme measured
    sensitivity: dict[str, Any] | None = None
    cache_hit: bool = False  # ranges came from the calibration cache
    calibration_batches: int = 0  # calibration feeds run in this call (0 on a cache hit)
    scored_tokens: int = 0
    fallback: dict[str, Any] | None = None  # the fp32 decode fallback (calibration.fallback)
    encoder: dict[str, Any] | None = None  # the int8 SemToken encoder (calibration.encoder_int8)

    @property
    def ppl_increase_pct(self) -> float:
        return 100.0 * (self.ppl_int8 / self.ppl_fp32 - 1.0)

    @property
    def top1_deployed(self) -> float:
        """Top-1 agreement of what the runtime runs: with the fp32 fallback where there is one."""
        return self.fallback["top1"] if self.fallback else self.top1_agreement

    @property
    def prefill_speedup(self) -> float | None:
        return _ratio(self.prefill_ms_fp32, self.prefill_ms_int8)

    @property
    def decode_speedup(self) -> float | None:
        return _ratio(self.decode_ms_fp32, self.decode_ms_int8)

    @property
    def passed(self) -> bool:
        return (self.ppl_increase_pct <= self.budget_pct + 1e-9
                and self.top1_deployed >= self.min_top1 - 1e-12)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            ppl_increase_pct=self.ppl_increase_pct,
            prefill_speedup=self.prefill_speedup,
            decode_speedup=self.decode_speedup,
            passed=self.passed,
        )
        return d

    def rows(self) -> list[list[Any]]:
        """(metric, fp32, int8, ratio) rows for a table (a graph not timed has no row)."""
        rows = [
            ["perplexity", self.ppl_fp32, self.ppl_int8, f"{self.ppl_increase_pct:+.2f} %"],
            [
                "top-1 agreement",
                1.0,
                self.top1_agreement,
                f">= {self.min_top1:g}" if self.min_top1 > 0 else "",
            ],
            [
                f"prefill ms @{self.speed_tokens}",
                self.prefill_ms_fp32,
                self.prefill_ms_int8,
                _x(self.prefill_speedup),
            ],
            [
                f"decode ms/token @{self.speed_tokens}",
                self.decode_ms_fp32,
                self.decode_ms_int8,
                _x(self.decode_speedup),
            ],
            [
                "size MB",
                self.size_mb_fp32,
                self.size_mb,
                _x(_ratio(self.size_mb_fp32, self.size_mb)),
            ],
        ]
        fb = self.fallback
        if fb:
            est = fb["decode_ms_estimate"]
            rows[2:2] = [[
                f"top-1 with fp32 fallback (margin {fb['margin']:g}, "
                f"{100 * fb['exact_share']:.1f} % of steps)", 1.0, fb["top1"],
                f">= {fb['target_top1']:g}",
            ]]  # fmt: skip
            rows.insert(-1, [f"decode ms/token @{self.speed_tokens} with fallback (est.)",
                             self.decode_ms_fp32, est, _x(_ratio(self.decode_ms_fp32, est))])  # fmt: skip
        enc = self.encoder
        if enc:
            rows.append([f"encoder ms / window of {enc['window_tokens']}",
                         enc["encoder_ms_fp32"], enc["encoder_ms_int8"],
                         _x(_ratio(enc["encoder_ms_fp32"], enc["encoder_ms_int8"]))])  # fmt: skip
            rows.append(["encoder span sets identical", "",
                         f"{enc['identical']}/{enc['cases']}",
                         f"mean Jaccard {enc['mean_jaccard']:.4f} >= {enc['min_agreement']:g}"])  # fmt: skip
        return [r for r in rows if r[1] is not None or r[2] is not None]


def _x(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}x"


@dataclass
class Fp16Report:
    """FP16 parity against fp32 on held-out text."""

    out_dir: str | None
    max_abs_logits_diff: float
    mean_abs_logits_diff: float
    top1_agreement: float
    ppl_fp32: float
    ppl_fp16: float
    kept_fp32_ops: list[str] = field(default_factory=list)  # op types kept fp32
    kept_fp32_nodes: int = 0
    kept_fp32_range_nodes: int = 0  # nodes kept fp32 because their measured range is too wide
    size_mb: float = 0.0
    size_mb_fp32: float = 0.0
    min_agreement: float = 0.99  # the gate
    scored_tokens: int = 0

    @property
    def ppl_increase_pct(self) -> float:
        return 100.0 * (self.ppl_fp16 / self.ppl_fp32 - 1.0)

    @property
    def passed(self) -> bool:
        finite = bool(self.max_abs_logits_diff == self.max_abs_logits_diff)  # not NaN
        return finite and self.top1_agreement >= self.min_agreement

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ppl_increase_pct=self.ppl_increase_pct, passed=self.passed)
        return d

    def rows(self) -> list[list[Any]]:
        return [
            ["max |delta logits|", self.max_abs_logits_diff],
            ["mean |delta logits|", self.mean_abs_logits_diff],
            ["top-1 agreement", self.top1_agreement],
            ["perplexity fp32", self.ppl_fp32],
            ["perplexity fp16", self.ppl_fp16],
            ["size MB fp32 -> fp16", f"{self.size_mb_fp32:.1f} -> {self.size_mb:.1f}"],
            ["kept fp32", ", ".join(self.kept_fp32_ops) or "-"],
            ["kept fp32 (range past fp16)", f"{self.kept_fp32_range_nodes} nodes"],
        ]


@dataclass
class RatioReport:
    """Ratio calibration: the fitted threshold and the ratio it reaches on fit and held-out text."""

    ratio: float  # asked
    threshold: float  # fitted tau_base
    chunk_tokens: int  # prompt length the fit assumes
    fit_prompts: int
    test_prompts: int
    fit_ratio: float  # achieved on the fit text (pooled: tokens / positions)
    test_ratio: float  # achieved on held-out text with the fixed threshold (pooled)
    test_ratio_min: float  # per-prompt spread on held-out text
    test_ratio_max: float
    tolerance: float = 0.02
    out: str | None = None
    export_dir: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    out_dir: str | None = None  # the calibrated copy of export_dir, when one was written

    @property
    def test_error(self) -> float:
        """Relative error of the held-out ratio vs the asked one."""
        return self.test_ratio / self.ratio - 1.0

    @property
    def passed(self) -> bool:
        return abs(self.test_error) <= self.tolerance + 1e-12

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(test_error=self.test_error, passed=self.passed)
        return d

    def rows(self) -> list[list[Any]]:
        return [
            ["asked ratio", self.ratio],
            ["fitted threshold", self.threshold],
            [f"fit ratio ({self.fit_prompts} prompts)", self.fit_ratio],
            [f"held-out ratio ({self.test_prompts} prompts)", self.test_ratio],
            [
                "held-out error",
                f"{100 * self.test_error:+.2f} % (tolerance {100 * self.tolerance:g} %)",
            ],
            [
                "held-out per-prompt range",
                f"{self.test_ratio_min:.3f} .. {self.test_ratio_max:.3f}",
            ],
        ]
