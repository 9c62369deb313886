"""The search space of ``sweeps/search.py``: define-by-run (Optuna), conditional, resolved on the driver.

Per registered mix term (``geomix.registry.TERMS``) an on/off switch (off = weight 0); when on, its weight
(log-uniform in ``weight_range``) and its λ policy with that policy's own parameters. Shared: τ learnable or
fixed, and, only with a term on, the weight decay schedule, the partner policy and the geometry.
Parameters are named by what they set (``loss.w_m2``, ``mix.m2.alpha``) so Optuna's importance and the
dashboard read naturally; switches are ``use.<term>`` and ``tau.learnable``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from geomix import registry
from sweeps.schema import SearchSettings
from sweeps.spec import TRIAL_KEY, SweepSpec, resolve_trial, trial_config


def sample_overrides(trial: Any, s: SearchSettings) -> dict[str, Any]:
    """Dotted TrainConfig overrides drawn through ``trial.suggest_*`` (an Optuna trial or Tune's captor)."""
    w_lo, w_hi = s.weight_range
    a_lo, a_hi = s.alpha_range
    t_lo, t_hi = s.tau_range
    ov: dict[str, Any] = {"loss.kind": "contrastive"}
    learnable = trial.suggest_categorical("tau.learnable", [True, False])
    ov["loss.tau"] = None if learnable else trial.suggest_float("loss.tau", t_lo, t_hi, log=True)
    for term in registry.TERMS:
        if term not in s.terms or not trial.suggest_categorical(f"use.{term}", [True, False]):
            ov[f"loss.w_{term}"] = 0.0  # ablated: no weight, no λ parameters in the space
            continue
        ov[f"loss.w_{term}"] = trial.suggest_float(f"loss.w_{term}", w_lo, w_hi, log=True)
        policy = trial.suggest_categorical(f"mix.{term}.policy", list(s.policies))
        ov[f"mix.{term}.policy"] = policy
        if policy == "beta":
            ov[f"mix.{term}.alpha"] = trial.suggest_float(f"mix.{term}.alpha", a_lo, a_hi, log=True)
            ov[f"mix.{term}.beta"] = trial.suggest_float(f"mix.{term}.beta", a_lo, a_hi, log=True)
        elif policy == "fixed":
            ov[f"mix.{term}.value"] = trial.suggest_float(f"mix.{term}.value", 0.05, 0.95)
        elif policy == "progressive":
            ov[f"mix.{term}.temperature"] = trial.suggest_float(f"mix.{term}.temperature", 0.01, 1.0,
                                                                 log=True)
            ov[f"mix.{term}.sigma"] = trial.suggest_float(f"mix.{term}.sigma", 0.05, 0.5)
        elif policy == "history":
            ov[f"mix.{term}.momentum"] = trial.suggest_float(f"mix.{term}.momentum", 0.5, 0.99)
    if any(ov[f"loss.w_{t}"] > 0 for t in registry.TERMS):  # shared mixing choices matter only with a term on
        ov["loss.decay"] = trial.suggest_categorical("loss.decay", list(s.decays))
        ov["mix.partner"] = trial.suggest_categorical("mix.partner", list(s.partners))
        ov["mix.geometry"] = trial.suggest_categorical("mix.geometry", list(s.geometries))
    return ov


def make_space(s: SearchSettings, spec: SweepSpec) -> Callable[[Any], dict[str, Any]]:
    """The define-by-run space: ``space(trial) -> {"trial": trial config}`` (``sweeps.spec.trial_config``):
    the sampled overrides and the TrainConfig they resolve to (on the driver, where the searcher runs).
    OptunaSearch puts the sampled parameters beside it."""

    def space(trial: Any) -> dict[str, Any]:
        overrides = sample_overrides(trial, s)
        cfg = resolve_trial(spec, "search", s.trial_seed, overrides)
        return {TRIAL_KEY: trial_config(cfg, overrides=overrides)}

    return space


def corners(s: SearchSettings) -> list[dict[str, Any]]:
    """The most demanding corners of the space (every allowed term on at the top weight, with each λ
    policy): resolving them before Ray starts shows a base that cannot take a sampled value now rather
    than in trial 7."""
    out = []
    for policy in s.policies:
        ov: dict[str, Any] = {f"loss.w_{t}": s.weight_range[1] for t in s.terms}
        ov.update({f"mix.{t}.policy": policy for t in s.terms})
        out.append(ov)
    return out
