"""The λ policy of one mix term: :class:`LambdaConfig` (``mix.<term>.*``; ``docs/losses.md``, λ policies)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from geomix.checks import check_range
from geomix.config.sections import Estimator, LambdaPolicyName, _Section


@dataclass(frozen=True)
class LambdaConfig(_Section):
    """How one mix term draws its λ each step (``docs/losses.md``, *λ policies*).

    ``beta``: λ ~ Beta(alpha, beta) with ``beta=None`` meaning symmetric Beta(alpha, alpha).
    ``fixed``: λ = value. ``progressive``: P-Mixup's rule with ``temperature`` (T) and ``sigma``, distances
    estimated by ``estimator`` ('sliced' with ``n_projections`` fixed random directions, or 'exact' OT,
    which needs POT). ``history``: an EMA of Beta draws with ``momentum`` (see ``geomix.mixing``).
    """

    section: ClassVar[str] = "lambda"
    policy: LambdaPolicyName = "beta"
    alpha: float = 0.5
    beta: float | None = None
    value: float = 0.5
    temperature: float = 0.05
    sigma: float = 0.2
    estimator: Estimator = "sliced"
    n_projections: int = 64
    momentum: float = 0.9

    def _check(self, p: str) -> None:
        check_range(f"{p}.alpha", self.alpha, 0.0, None, lo_open=True)
        if self.beta is not None:
            check_range(f"{p}.beta", self.beta, 0.0, None, lo_open=True)
        check_range(f"{p}.value", self.value, 0.0, 1.0)
        check_range(f"{p}.temperature", self.temperature, 0.0, None, lo_open=True)
        check_range(f"{p}.sigma", self.sigma, 0.0, 1.0)
        check_range(f"{p}.n_projections", self.n_projections, 1, None)
        check_range(f"{p}.momentum", self.momentum, 0.0, 1.0, hi_open=True)
