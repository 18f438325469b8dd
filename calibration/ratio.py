"""Ratio calibration: fit SemToken's threshold on a corpus so prompts land at a ratio unsearched.

Per prompt the compressor normally bisects tau_base until T / n hits the asked ratio. With a
threshold calibrated on text of the same kind (CompressionConfig.threshold), it skips the search:

    fit   : prompts from the head of --data -> encoder states + protection (once)
            tau* = argmin_tau | sum T / sum n(tau) - R |          (n(tau) grows with tau)
    check : prompts from the held-out tail, fixed tau*: pooled ratio within +-tolerance of R

Features come from the export's own encoder.onnx through the runtime (--export-dir), or from the
PyTorch LM encoder (--model), exactly as each compresses at run time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semedge import constants as C
from semedge.artifacts import (
    atomic_write_text,
    copy_verified,
    load_manifest,
    staged_dir,
    verify_manifest,
    write_manifest,
)
from semedge.calibration.report import RatioReport
from semedge.compressor import spans as S
from semedge.config import CompressionConfig
from semedge.errors import InputError
from semedge.logs import log_timed
from semedge.textio import read_text_file

__all__ = ["RatioConfig", "calibrate_ratio", "fit_threshold", "Prompt"]

log = logging.getLogger(__name__)

_LO, _HI, _STEPS = -3.0, 3.0, 48  # tau_base bisection interval and steps (as spans.find_spans)


@dataclass(frozen=True)
class RatioConfig:
    """Ratio calibration settings."""

    ratio: float = 2.4  # the ratio to hold
    chunk_tokens: int = 512  # prompt length the threshold is fitted for
    prompts: int = 64  # fit prompts (from the head of the data)
    test_prompts: int = 32  # held-out prompts (from the tail)
    held_out: float = 0.25  # fraction of the text kept for the held-out check

    def __post_init__(self) -> None:
        if not (self.ratio > 1.0 and math.isfinite(self.ratio)):  # before any model loads
            raise InputError(f"--ratio must be > 1 (2.4 = 2.4x fewer positions), got {self.ratio}")
        if self.chunk_tokens < 32:
            raise InputError(f"--chunk-tokens must be >= 32, got {self.chunk_tokens}")
        if self.prompts < 1 or self.test_prompts < 1:
            raise InputError("--prompts and test prompts must be >= 1")
        if not 0.0 < self.held_out < 1.0:
            raise InputError(f"--held-out must be in (0, 1), got {self.held_out}")


class Prompt:
    """One prompt's encoder states and protection, with what find_spans derives from them
    precomputed (unit features, density tau offsets) so a threshold costs one greedy walk."""

    def __init__(self, hidden: np.ndarray, protected: np.ndarray, cfg: CompressionConfig) -> None:
        self.hidden = hidden  # (T, E)
        self.protected = np.asarray(protected, dtype=bool)  # (T,)
        self.tokens = hidden.shape[0]
        self._x = S.normalize_features(hidden)  # (T, E) unit rows, median-centred
        density = S.semantic_density(self._x, cfg.window)
        self._offsets = S.threshold_offsets(density, cfg.density_alpha)  # (T,)
        self._max_span = cfg.max_span

    def positions(self, tau: float) -> int:
        """Span count at tau_base = `tau` (what find_spans returns with config.threshold)."""
        return len(S.greedy_spans(self._x, tau + self._offsets, self._max_span, self.protected))


def _pooled(prompts: list[Prompt], tau: float) -> float:
    return sum(p.tokens for p in prompts) / sum(p.positions(tau) for p in prompts)


def fit_threshold(prompts: list[Prompt], cfg: CompressionConfig) -> tuple[float, float]:
    """The tau_base whose pooled ratio (tokens / positions) over `prompts` is nearest cfg.ratio.

    Returns:
        (tau, achieved pooled ratio).

    Raises:
        InputError: the ratio is out of reach even at the most merging threshold.
    """
    want = float(cfg.ratio)
    best = _pooled(prompts, _LO)
    if best < want * (1 - cfg.tolerance):
        raise InputError(
            f"ratio {want:g} is out of reach on this text: at most {best:.2f} with max_span "
            f"{cfg.max_span}, recency_window {cfg.recency_window} and the protected tokens; "
            "ask a lower --ratio or use longer --chunk-tokens"
        )
    lo, hi = _LO, _HI  # pooled ratio falls as tau rises
    tau, got = lo, best
    for _ in range(_STEPS):
        mid = 0.5 * (lo + hi)
        r = _pooled(prompts, mid)
        if abs(r - want) < abs(got - want):
            tau, got = mid, r
        lo, hi = (mid, hi) if r > want else (lo, mid)
    return tau, got


def _chunks(text: str, tokenize: Callable, n_tokens: int) -> list[str]:
    """Consecutive prompts of `n_tokens` tokens each, as text (cut at token offsets)."""
    offsets = tokenize(text)
    out = []
    for start in range(0, len(offsets) - n_tokens + 1, n_tokens):
        a, b = offsets[start][0], offsets[start + n_tokens - 1][1]
        out.append(text[a:b])
    return out


def _export_source(export_dir: Path):
    """(offsets_fn, features_fn, base config) from an export through the torch-free runtime."""
    from semedge.runtime import Pipeline

    pipe = Pipeline.from_pretrained(export_dir)

    def offsets(text: str) -> list[tuple[int, int]]:
        return list(pipe.tokenize(text).offsets)

    def features(text: str, cfg: CompressionConfig) -> Prompt:
        return Prompt(*pipe.span_features(text, cfg), cfg)  # what Pipeline.prepare reads

    return offsets, features, pipe.compression


def _model_source(model_spec: str):
    """(offsets_fn, features_fn, base config) from the PyTorch model (LM encoder, as compress)."""
    from semedge.compressor.encoders import LMEncoder, encode_lm_windows
    from semedge.models import load_model

    model, tok = load_model(model_spec)
    encoders: dict[int, LMEncoder] = {}

    def offsets(text: str) -> list[tuple[int, int]]:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [tuple(o) for o in enc["offset_mapping"]]

    def features(text: str, cfg: CompressionConfig) -> Prompt:
        if cfg.encoder != "lm":
            raise InputError("ratio calibration with --model supports the lm encoder only")
        enc = tok(text, add_special_tokens=True, return_offsets_mapping=True, verbose=False)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        offs = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        special = np.isin(ids, np.asarray(tok.all_special_ids, dtype=np.int64))
        prot = S.protected_mask([text[a:b] for a, b in offs], special, cfg, text, offs)
        k = cfg.encoder_layers
        encoders.setdefault(k, LMEncoder(model, k))
        return Prompt(encode_lm_windows(encoders[k], ids, cfg.encoder_window), prot, cfg)

    return offsets, features, CompressionConfig()


def _evenly(items: list, n: int) -> list:
    if len(items) <= n:
        return items
    idx = np.linspace(0, len(items) - 1, num=n).round().astype(int)
    return [items[i] for i in idx]


def calibrate_ratio(
    data: Path | str,
    config: RatioConfig,
    out: Path | str,
    model: str | None = None,
    export_dir: Path | str | None = None,
    out_dir: Path | str | None = None,
    overwrite: bool = False,
) -> RatioReport:
    """Fit the threshold for `config.ratio` on `data`, check it on held-out text, write it.

    Args:
        data: UTF-8 text of the corpus.
        config: ratio, prompt length and counts.
        out: the CompressionConfig JSON to write (threshold set).
        model: "smollm2" or a model dir (PyTorch encoder); ignored when export_dir is given.
        export_dir: fit with the export's encoder (never modified).
        out_dir: with export_dir: write a NEW directory, a verified copy of the export whose
            manifest carries the calibrated config.
        overwrite: replace an existing out_dir.

    Raises:
        InputError: too little text, bad settings, or an unreachable ratio.
        ArtifactError: export_dir is not a semedge export.
    """
    text = read_text_file(data)
    if out_dir is not None and export_dir is None:
        raise InputError("--out-dir writes a calibrated copy of --export-dir; pass --export-dir")
    if out_dir is not None and Path(out_dir).exists() and not overwrite:
        raise InputError(f"{out_dir} already exists; choose another --out-dir or pass --overwrite")
    if export_dir is not None:
        manifest = load_manifest(export_dir, expect_format=(C.FORMAT_EXPORT, C.FORMAT_CALIBRATED))
        offsets, features, base = _export_source(Path(export_dir))
    else:
        offsets, features, base = _model_source(model or C.DEFAULT_MODEL)
    # a calibrated tau replaces the per-prompt search, which ranking sentences by the prompt's
    # last paragraph needs: the calibrated config compresses without the implicit query
    cfg = dataclasses.replace(base, ratio=config.ratio, target_tokens=None, threshold=None,
                              implicit_query=False)  # fmt: skip
    cut = int(len(text) * (1 - config.held_out))
    fit_texts = _chunks(text[:cut], offsets, config.chunk_tokens)
    test_texts = _chunks(text[cut:], offsets, config.chunk_tokens)
    if len(fit_texts) < config.prompts or len(test_texts) < config.test_prompts:
        raise InputError(
            f"--data gives {len(fit_texts)} fit and {len(test_texts)} held-out prompts of "
            f"{config.chunk_tokens} tokens, need {config.prompts} and {config.test_prompts}; "
            "give a longer file, fewer --prompts or a smaller --chunk-tokens"
        )
    with log_timed(log, f"encoding {config.prompts} + {config.test_prompts} prompts"):
        fit = [features(t, cfg) for t in _evenly(fit_texts, config.prompts)]
        test = [features(t, cfg) for t in _evenly(test_texts, config.test_prompts)]
    tau, fit_ratio = fit_threshold(fit, cfg)
    final = dataclasses.replace(cfg, threshold=float(tau))
    # held-out check through find_spans itself, as the runtime compresses with the threshold
    n_test = [len(S.find_spans(p.hidden, p.protected, final)[0]) for p in test]
    per = [p.tokens / n for p, n in zip(test, n_test, strict=True)]
    report = RatioReport(
        ratio=config.ratio, threshold=float(tau), chunk_tokens=config.chunk_tokens,
        fit_prompts=len(fit), test_prompts=len(test), fit_ratio=fit_ratio,
        test_ratio=sum(p.tokens for p in test) / sum(n_test),
        test_ratio_min=min(per), test_ratio_max=max(per),
        tolerance=cfg.tolerance, out=str(out), config=final.to_dict(),
        export_dir=str(export_dir) if export_dir is not None else None,
        out_dir=str(out_dir) if out_dir is not None else None,
    )  # fmt: skip
    if not report.passed:
        log.warning("held-out ratio %.3f misses %.3g by %+.2f %%", report.test_ratio,
                    config.ratio, 100 * report.test_error)  # fmt: skip
    if out_dir is not None:
        _write_calibrated_copy(Path(export_dir), manifest, final, Path(out_dir), overwrite)
    atomic_write_text(out, json.dumps(final.to_dict(), indent=2) + "\n")
    return report


def _write_calibrated_copy(src, manifest, final: CompressionConfig, out_dir: Path, overwrite):
    """A new directory: the export's verified files plus a manifest with the fitted config (the
    source export is left as it was: nothing stray in it gets blessed by a re-hash)."""
    verify_manifest(src, manifest)
    with staged_dir(out_dir, overwrite=overwrite) as tmp:
        copy_verified(src, manifest, tmp)
        manifest = dataclasses.replace(
            manifest, config={**manifest.config, "compression": final.to_dict()}
        )
        write_manifest(tmp, manifest)
