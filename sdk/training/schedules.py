"""MT2ST auxiliary-loss weight schedules: callables `schedule(step) -> float` (torch-free).

Diminish and Switch are the MT2ST strategies (Liu & Yu, 2025); Constant (plain multi-task) and
Off (single-task) are the baselines they are compared against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from semedge.errors import InputError

__all__ = ["Schedule", "Diminish", "Switch", "Constant", "Off", "schedule_from_name", "EPS"]

EPS = 1e-8  # a weight at or below this is "numerically zero": the task is not computed


def _check_gamma0(gamma0: float) -> None:
    if not (isinstance(gamma0, int | float) and math.isfinite(gamma0) and gamma0 >= 0):
        raise InputError(f"gamma0 must be a finite number >= 0 (e.g. 1.0), got {gamma0!r}")


def _check_step(step: int) -> None:
    if step < 0:
        raise InputError(f"step must be >= 0, got {step}")


class Schedule:
    """Base class: the weight of one auxiliary task at a training step."""

    name = "schedule"

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def active(self, step: int, eps: float = EPS) -> bool:
        """True while the weight is above `eps`, i.e. the task must still be computed."""
        return self(step) > eps

    def to_dict(self) -> dict:
        """JSON-ready description (what checkpoints and adapter.json record)."""
        return {"name": self.name, **self.__dict__}


@dataclass(frozen=True)
class Diminish(Schedule):
    """γ(t) = γ0 · exp(−η · t^ν): the auxiliary weight fades out smoothly (MT2ST "diminish").

    Args:
        gamma0: the weight at step 0 (>= 0).
        eta: decay rate η (> 0).
        nu: decay exponent ν (>= 1); larger ν keeps the weight high longer, then drops faster.

    Raises:
        InputError: eta <= 0, nu < 1 or gamma0 < 0.
    """

    gamma0: float = 1.0
    eta: float = 0.01
    nu: float = 1.0
    name = "diminish"

    def __post_init__(self) -> None:
        _check_gamma0(self.gamma0)
        if not (math.isfinite(self.eta) and self.eta > 0):
            raise InputError(f"Diminish eta must be > 0 (e.g. 0.01), got {self.eta!r}")
        if not (math.isfinite(self.nu) and self.nu >= 1):
            raise InputError(f"Diminish nu must be >= 1 (e.g. 1.0 or 2.0), got {self.nu!r}")

    def __call__(self, step: int) -> float:
        _check_step(step)
        return self.gamma0 * math.exp(-self.eta * float(step) ** self.nu)

    def zero_step(self, eps: float = EPS) -> int:
        """The first step whose weight is <= eps (from then on the task is skipped)."""
        if self.gamma0 <= eps:
            return 0
        # γ0·exp(−η t^ν) <= eps  <=>  t >= (ln(γ0/eps)/η)^(1/ν)
        t = math.ceil((math.log(self.gamma0 / eps) / self.eta) ** (1.0 / self.nu))
        while t > 0 and self(t - 1) <= eps:  # guard float rounding at the boundary
            t -= 1
        while self(t) > eps:
            t += 1
        return t


@dataclass(frozen=True)
class Switch(Schedule):
    """γ(t) = γ0 before `at_step`, 0 from `at_step` on (MT2ST "switch" to single-task).

    Raises:
        InputError: at_step < 0 or gamma0 < 0.
    """

    gamma0: float = 1.0
    at_step: int = 100
    name = "switch"

    def __post_init__(self) -> None:
        _check_gamma0(self.gamma0)
        if isinstance(self.at_step, bool) or not isinstance(self.at_step, int) or self.at_step < 0:
            raise InputError(f"Switch at_step must be an integer >= 0, got {self.at_step!r}")

    def __call__(self, step: int) -> float:
        _check_step(step)
        return float(self.gamma0) if step < self.at_step else 0.0


@dataclass(frozen=True)
class Constant(Schedule):
    """γ(t) = γ0 at every step: plain multi-task training (the "mtl" baseline)."""

    gamma0: float = 1.0
    name = "constant"

    def __post_init__(self) -> None:
        _check_gamma0(self.gamma0)

    def __call__(self, step: int) -> float:
        _check_step(step)
        return float(self.gamma0)


@dataclass(frozen=True)
class Off(Schedule):
    """γ(t) = 0: the task is never computed (the single-task "stl" baseline)."""

    name = "off"

    def __call__(self, step: int) -> float:
        _check_step(step)
        return 0.0


STRATEGIES = ("diminish", "switch", "mtl", "stl")


def schedule_from_name(strategy: str, steps: int, gamma0: float = 1.0) -> Schedule:
    """The schedule a named strategy uses over a budget of `steps` (what the CLI's --strategy picks).

    diminish: Diminish with ν=2 and η set so the weight reaches ~0 (1e-8) at 60 % of the budget;
    switch: Switch at 40 % of the budget; mtl: Constant; stl: Off.

    Raises:
        InputError: unknown strategy or steps <= 0.
    """
    if steps <= 0:
        raise InputError(f"steps must be > 0, got {steps}")
    if strategy == "diminish":
        t_zero = max(1.0, 0.6 * steps)
        nu = 2.0
        eta = math.log(max(gamma0, 2 * EPS) / EPS) / t_zero**nu
        return Diminish(gamma0=gamma0, eta=eta, nu=nu)
    if strategy == "switch":
        return Switch(gamma0=gamma0, at_step=max(1, int(0.4 * steps)))
    if strategy == "mtl":
        return Constant(gamma0)
    if strategy == "stl":
        return Off()
    raise InputError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
