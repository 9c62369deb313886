"""How a mix term picks its λ and its partners each step (``docs/losses.md``, *λ policies*, *Partners*).

λ policies (built from a :class:`~geomix.config.LambdaConfig` by :func:`build_lambda_policy`):

- ``beta``: ``λ ~ Beta(α, β)`` (``β = None`` means ``Beta(α, α)``).
- ``fixed``: ``λ = value``.
- ``progressive``: P-Mixup (eqs. 7-9). ``λ_0 = 0``; at step ``n`` of ``N``,
  ``q = exp(-d_a / ((d_a + d_b + ε)·T))``, ``λ_n = n(1-q)/N + q·λ_{n-1}``, used value
  ``clamp(U(λ_n - σ, λ_n + σ), 0, 1)``. ``d_a``/``d_b`` are 2-Wasserstein distances from the previous
  step's detached mixed embeddings to its ``a``-side and ``b``-side embeddings (:meth:`observe`), estimated
  by sliced Wasserstein with fixed random projections, or exactly with POT.
- ``history``: a temporal ensemble of Beta draws, ``λ_t = m·λ_{t-1} + (1-m)·u_t``, ``u_t ~ Beta(α, β)``,
  ``λ_0 = E[u] = α/(α+β)``, ``m = momentum``. This is the "historical λ" of the mixing design space
  (P-Mixup, RecursiveMix): each step's λ remembers the previous ones, so λ drifts smoothly around the Beta
  mean instead of jumping every step (its variance is ``(1-m)/(1+m)`` of the Beta's). The *partner* side of
  RecursiveMix ("mix with the previous batch") is the ``history`` partner policy.

Partner policies (:func:`build_partner_policy`): ``reverse`` (``i ↦ n-1-i``), ``random`` (a uniformly random
derangement, no fixed points), ``history`` (partners are the previous step's detached embeddings, held in
:class:`HistoryPartner`). They live in :mod:`geomix.partners` and are re-exported here, so that one import
gives a loss everything it draws per step.

All randomness comes from a ``torch.Generator`` the caller passes in (or, for the fixed projections of the
sliced estimator, one seeded from the policy's ``seed``), so the same seed gives the same λ and partners,
bit for bit. Every policy has ``state_dict`` / ``load_state_dict`` for exact resume.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import numpy as np
import torch

from geomix import partners as _partners
from geomix.checks import check_choice, check_range, fail
from geomix.config import WASSERSTEIN_ESTIMATORS, LambdaConfig
from geomix.partners import (  # noqa: F401 - re-exported, listed in __all__ through _partners.__all__
    HistoryPartner,
    PartnerPolicy,
    RandomPartner,
    ReversePartner,
    build_partner_policy,
    random_derangement,
)

__all__ = [
    "LambdaPolicy",
    "BetaLambda",
    "FixedLambda",
    "ProgressiveLambda",
    "HistoryLambda",
    "build_lambda_policy",
    "sliced_wasserstein",
    "exact_wasserstein",
    "sample_beta",
    *_partners.__all__,  # re-exported: a loss imports everything it draws per step from here
]

_DIST_EPS = 1e-8


def sample_beta(
    generator: torch.Generator, alpha: float, beta: float, size: int | None = None
) -> float | np.ndarray:
    """Draws from ``Beta(alpha, beta)`` driven only by ``generator``: one float, or ``size`` of them.

    ``torch.distributions.Beta`` takes no generator, so numpy draws from a seed that ``generator`` supplies
    (one ``randint`` from the generator per call, whatever ``size``). The one Beta sampler of geomix: λ
    policies and the input-level baselines both call it.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    return float(rng.beta(alpha, beta)) if size is None else rng.beta(alpha, beta, size=size)


# ----------------------------------------------------------------------------------------------------------
# Wasserstein estimators


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, projections: torch.Tensor) -> float:
    """Sliced 2-Wasserstein distance between two equal-size point clouds (uniform weights).

    ``SW_2 = sqrt(mean_k W_2²(x·θ_k, y·θ_k))``; in 1-D the optimal coupling matches sorted values.

    Args:
        x, y: ``[n, d]`` point sets (any device; computed in float32).
        projections: ``[d, k]`` unit directions ``θ_k``.

    Returns:
        The distance as a Python float.
    """
    if x.ndim != 2 or x.shape != y.shape:
        fail("y.shape", tuple(y.shape), f"the shape of x, {tuple(x.shape)}")
    p = projections.to(device=x.device, dtype=torch.float32)
    xs = (x.detach().float() @ p).sort(dim=0).values
    ys = (y.detach().float() @ p).sort(dim=0).values
    return float((xs - ys).pow(2).mean().sqrt())


def _require_pot() -> Any:
    try:
        import ot  # noqa: PLC0415 - optional dependency, imported only when the exact estimator is chosen
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "estimator='exact' needs the POT package (optimal transport): `pip install pot` "
            "(or `pip install geomix[ot]`), or use estimator='sliced'"
        ) from e
    return ot


def exact_wasserstein(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact 2-Wasserstein distance between two point clouds with uniform weights (POT's ``emd2``).

    Raises:
        ImportError: POT is not installed (the message says ``pip install pot``).
    """
    ot = _require_pot()
    xn = x.detach().double().cpu().numpy()
    yn = y.detach().double().cpu().numpy()
    cost = ot.dist(xn, yn)  # squared Euclidean
    wa = np.full(len(xn), 1.0 / len(xn))
    wb = np.full(len(yn), 1.0 / len(yn))
    return float(math.sqrt(max(float(ot.emd2(wa, wb, cost)), 0.0)))


# ----------------------------------------------------------------------------------------------------------
# λ policies


class LambdaPolicy(abc.ABC):
    """One term's λ schedule. Subclasses implement :meth:`sample`; the rest has sensible no-op defaults."""

    name = "base"
    _last: float = float("nan")  # the last value returned by sample()

    @abc.abstractmethod
    def sample(self, generator: torch.Generator, *, step: int, total_steps: int) -> float:
        """The λ to use at ``step`` (0-based) of ``total_steps``, in ``[0, 1]``."""

    def observe(self, mixed: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:  # noqa: B027 (no-op hook)
        """See this step's detached mixed embeddings and their ``a``/``b`` sides (used by ``progressive``)."""

    @property
    def needs_observation(self) -> bool:
        return False

    def stats(self) -> dict[str, float]:
        """What to log about the last draw (always has ``lam``)."""
        return {"lam": self._last}

    def state_dict(self) -> dict[str, Any]:
        return {"last": self._last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last = float(state["last"])


class BetaLambda(LambdaPolicy):
    """``λ ~ Beta(alpha, beta)``."""

    name = "beta"

    def __init__(self, alpha: float, beta: float | None = None) -> None:
        check_range("alpha", alpha, 0.0, None, lo_open=True)
        if beta is not None:
            check_range("beta", beta, 0.0, None, lo_open=True)
        self.alpha = float(alpha)
        self.beta = float(alpha if beta is None else beta)

    def sample(self, generator: torch.Generator, *, step: int, total_steps: int) -> float:
        self._last = sample_beta(generator, self.alpha, self.beta)
        return self._last


class FixedLambda(LambdaPolicy):
    """``λ = value`` every step (draws nothing from the generator)."""

    name = "fixed"

    def __init__(self, value: float) -> None:
        check_range("value", value, 0.0, 1.0)
        self.value = float(value)

    def sample(self, generator: torch.Generator, *, step: int, total_steps: int) -> float:
        self._last = self.value
        return self.value


class HistoryLambda(LambdaPolicy):
    """Temporal ensemble of Beta draws: ``λ_t = m·λ_{t-1} + (1-m)·u_t``, ``λ_0 = α/(α+β)`` (module doc)."""

    name = "history"

    def __init__(self, alpha: float, beta: float | None = None, momentum: float = 0.9) -> None:
        self._draw = BetaLambda(alpha, beta)
        check_range("momentum", momentum, 0.0, 1.0, hi_open=True)
        self.momentum = float(momentum)
        self._ema = self._draw.alpha / (self._draw.alpha + self._draw.beta)
        self._u = float("nan")

    def sample(self, generator: torch.Generator, *, step: int, total_steps: int) -> float:
        self._u = self._draw.sample(generator, step=step, total_steps=total_steps)
        self._ema = self.momentum * self._ema + (1.0 - self.momentum) * self._u
        self._last = min(max(self._ema, 0.0), 1.0)
        return self._last

    def stats(self) -> dict[str, float]:
        return {"lam": self._last, "lam_draw": self._u}

    def state_dict(self) -> dict[str, Any]:
        return {"last": self._last, "ema": self._ema, "u": self._u}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last, self._ema, self._u = float(state["last"]), float(state["ema"]), float(state["u"])


class ProgressiveLambda(LambdaPolicy):
    """P-Mixup's progressive λ (module doc). Call :meth:`observe` after each step's mix.

    Args:
        temperature: ``T > 0``.
        sigma: the perturbation half-width ``σ`` in ``[0, 1]``.
        estimator: ``'sliced'`` or ``'exact'`` (POT; checked at construction).
        n_projections: directions of the sliced estimator, drawn once from ``seed``.
        seed: seeds the projections only (λ's perturbation comes from the generator passed to ``sample``).
    """

    name = "progressive"

    def __init__(
        self,
        temperature: float = 0.05,
        sigma: float = 0.2,
        estimator: str = "sliced",
        n_projections: int = 64,
        seed: int = 0,
    ) -> None:
        check_range("temperature", temperature, 0.0, None, lo_open=True)
        check_range("sigma", sigma, 0.0, 1.0)
        check_choice("estimator", estimator, WASSERSTEIN_ESTIMATORS)
        check_range("n_projections", n_projections, 1, None)
        if estimator == "exact":
            _require_pot()
        self.temperature = float(temperature)
        self.sigma = float(sigma)
        self.estimator = estimator
        self.n_projections = int(n_projections)
        self.seed = int(seed)
        self._proj: torch.Tensor | None = None
        self._lam_prev = 0.0  # λ_0 = 0
        self._d_a: float | None = None
        self._d_b: float | None = None
        self._stats: dict[str, float] = {}

    @property
    def needs_observation(self) -> bool:
        return True

    def projections(self, d: int) -> torch.Tensor:
        """The fixed ``[d, n_projections]`` unit directions (a function of ``seed`` and ``d`` only)."""
        if self._proj is None or self._proj.shape[0] != d:
            g = torch.Generator().manual_seed(self.seed)
            p = torch.randn(d, self.n_projections, generator=g)
            self._proj = p / p.norm(dim=0, keepdim=True)
        return self._proj

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> float:
        if self.estimator == "exact":
            return exact_wasserstein(x, y)
        return sliced_wasserstein(x, y, self.projections(x.shape[1]))

    def observe(self, mixed: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:  # noqa: B027 (no-op hook)
        self.observe_distances(self.distance(mixed, a), self.distance(mixed, b))

    def observe_distances(self, d_a: float, d_b: float) -> None:
        """Set the distances the next :meth:`sample` uses (what :meth:`observe` computes)."""
        check_range("d_a", d_a, 0.0, None)
        check_range("d_b", d_b, 0.0, None)
        self._d_a, self._d_b = float(d_a), float(d_b)

    def sample(self, generator: torch.Generator, *, step: int, total_steps: int) -> float:
        check_range("total_steps", total_steps, 1, None)
        check_range("step", step, 0, None)
        n = min(step + 1, total_steps)
        # Before the first observation nothing says which side the mix is closer to: treat them as equal.
        d_a = 1.0 if self._d_a is None else self._d_a
        d_b = 1.0 if self._d_b is None else self._d_b
        q = math.exp(-d_a / ((d_a + d_b + _DIST_EPS) * self.temperature))
        lam = n * (1.0 - q) / total_steps + q * self._lam_prev
        # Always consume one uniform so the generator's stream does not depend on σ.
        u = float(torch.rand((), generator=generator))
        used = min(max(lam - self.sigma + 2.0 * self.sigma * u, 0.0), 1.0)
        self._lam_prev = lam
        self._last = used
        self._stats = {"lam": used, "lam_base": lam, "q": q, "d_a": d_a, "d_b": d_b}
        return used

    def stats(self) -> dict[str, float]:
        return dict(self._stats) if self._stats else {"lam": self._last}

    def state_dict(self) -> dict[str, Any]:
        return {
            "last": self._last,
            "lam_prev": self._lam_prev,
            "d_a": self._d_a,
            "d_b": self._d_b,
            "stats": dict(self._stats),
            "seed": self.seed,  # the projections are a function of it
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last = float(state["last"])
        self._lam_prev = float(state["lam_prev"])
        self._d_a = None if state["d_a"] is None else float(state["d_a"])
        self._d_b = None if state["d_b"] is None else float(state["d_b"])
        self._stats = dict(state["stats"])
        if int(state.get("seed", self.seed)) != self.seed:
            self.seed, self._proj = int(state["seed"]), None


def build_lambda_policy(cfg: LambdaConfig, *, seed: int = 0) -> LambdaPolicy:
    """The policy ``cfg.policy`` names (``cfg`` was validated when it was built).

    Args:
        cfg: the term's :class:`~geomix.config.LambdaConfig`.
        seed: seeds what is fixed once (the sliced estimator's projections).
    """
    if cfg.policy == "beta":
        return BetaLambda(cfg.alpha, cfg.beta)
    if cfg.policy == "fixed":
        return FixedLambda(cfg.value)
    if cfg.policy == "progressive":
        return ProgressiveLambda(cfg.temperature, cfg.sigma, cfg.estimator, cfg.n_projections, seed)
    return HistoryLambda(cfg.alpha, cfg.beta, cfg.momentum)
