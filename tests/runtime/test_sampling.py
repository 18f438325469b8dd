"""Sampling draws from the distribution it claims: temperature reshapes it, top-k and top-p cut it
(chi-square goodness of fit on fixed logits, fixed seeds: deterministic, not flaky)."""

from __future__ import annotations

import numpy as np
import pytest

from semedge.errors import InputError
from semedge.runtime.sampling import GenerationConfig, select_next

LOGITS = np.array([2.0, 1.5, 0.5, 0.0, -0.5, -1.0])  # V = 6
N = 20_000
CHI2_P001 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}  # critical values at p = 0.001


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _draw(config: GenerationConfig, logits=LOGITS, seed=0) -> np.ndarray:
    rows = np.tile(logits, (N, 1))  # (N, V): one draw per row
    return select_next(rows, config, np.random.default_rng(seed))


def _chi2(draws: np.ndarray, probs: np.ndarray) -> float:
    """Pearson's statistic over the categories `probs` gives mass to."""
    counts = np.bincount(draws, minlength=len(probs))
    assert counts[probs == 0].sum() == 0, f"drew tokens outside the support: {counts}"
    keep = probs > 0
    expected = N * probs[keep]
    return float((((counts[keep] - expected) ** 2) / expected).sum())


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_draws_softmax_of_logits_over_t(temperature):
    draws = _draw(GenerationConfig(temperature=temperature))
    assert _chi2(draws, _softmax(LOGITS / temperature)) < CHI2_P001[5]
    for other in {0.5, 1.0, 2.0} - {temperature}:  # a temperature ignored would pass one of these
        assert _chi2(draws, _softmax(LOGITS / other)) > 10 * CHI2_P001[5]


def test_higher_temperature_spreads_the_draws():
    entropy = []
    for t in (0.25, 1.0, 4.0):
        p = np.bincount(_draw(GenerationConfig(temperature=t)), minlength=6) / N
        entropy.append(-(p[p > 0] * np.log(p[p > 0])).sum())
    assert entropy[0] < entropy[1] < entropy[2]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_keeps_exactly_the_k_most_likely(k):
    probs = _softmax(LOGITS)
    probs[k:] = 0
    draws = _draw(GenerationConfig(temperature=1.0, top_k=k))
    if k == 1:
        assert set(draws.tolist()) == {0}
    else:
        assert _chi2(draws, probs / probs.sum()) < CHI2_P001[k - 1]


@pytest.mark.parametrize("top_p, kept", [(0.3, 1), (0.7, 2), (0.8, 3), (0.99, 5)])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    probs = np.array([0.5, 0.25, 0.15, 0.06, 0.04])
    draws = _draw(GenerationConfig(temperature=1.0, top_p=top_p), logits=np.log(probs))
    want = probs.copy()
    want[kept:] = 0
    if kept == 1:
        assert set(draws.tolist()) == {0}
    else:
        assert _chi2(draws, want / want.sum()) < CHI2_P001[kept - 1]


def test_top_k_and_temperature_combine():
    probs = _softmax(LOGITS / 0.5)
    probs[3:] = 0
    draws = _draw(GenerationConfig(temperature=0.5, top_k=3))
    assert _chi2(draws, probs / probs.sum()) < CHI2_P001[2]


def test_seeds_reproduce_and_differ_greedy_ignores_them():
    cfg = GenerationConfig(temperature=1.0)
    assert (_draw(cfg, seed=1) == _draw(cfg, seed=1)).all()
    assert (_draw(cfg, seed=1) != _draw(cfg, seed=2)).any()
    assert set(_draw(GenerationConfig(seed=5)).tolist()) == {0}


def test_tiny_temperature_is_argmax_not_nan():
    draws = _draw(GenerationConfig(temperature=1e-300), logits=LOGITS * 1e10)
    assert set(draws.tolist()) == {0}


@pytest.mark.parametrize(
    "field, value",
    [("temperature", float("nan")), ("temperature", float("inf")), ("temperature", -0.1),
     ("top_p", float("nan")), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -1), ("top_k", 2.5),
     ("max_new_tokens", 0), ("max_new_tokens", float("nan")), ("ratio", float("nan")),
     ("ratio", float("inf")), ("ratio", 0.5), ("seed", -1), ("stop", ("",)), ("query", "  ")],
)  # fmt: skip
def test_generation_config_rejects_bad_values(field, value):
    with pytest.raises(InputError, match=field.replace("stop", "stop strings")):
        GenerationConfig(**{field: value})
