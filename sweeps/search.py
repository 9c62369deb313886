"""Hyper-parameter search of the mixing losses: Ray Tune + Optuna TPE (define-by-run) + ASHA.

    python sweeps/search.py                          # sweeps/configs/search.yaml
    python sweeps/search.py --num-samples 64 --max-concurrent 4
    python sweeps/search.py --smoke-test             # a few short trials, for CI
    optuna-dashboard sqlite:///results/search/optuna.db

The space is conditional: a mix term's weight and λ policy (with that policy's parameters, e.g. its
Beta(α, β)) exist only when the term is on. ASHA stops weak trials after each epoch (``val_rsum``); Optuna
is told they were pruned. Re-running the same command resumes the search, Optuna study included.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import geomix

ROOT = geomix.checkout(__file__)
sys.path.insert(0, str(ROOT))  # `sweeps` is a folder beside `geomix`, not an installed package

from geomix import config as C  # noqa: E402
from geomix import logs  # noqa: E402
from geomix.results import read_results, save_resolved_config  # noqa: E402
from sweeps import _tune  # noqa: E402

log = logging.getLogger("sweeps.search")
DEFAULT_CONFIG = ROOT / "sweeps" / "configs" / "search.yaml"
TERMS = ("m2", "v", "l", "vl")
DEFAULTS: dict[str, Any] = {
    "num_samples": 16, "seed": 0, "trial_seed": 0, "grace_period": 1, "reduction_factor": 2,
    "terms": list(TERMS), "weight_range": [0.005, 0.5], "alpha_range": [0.1, 4.0], "tau_range": [0.01, 0.2],
    "policies": list(C.LAMBDA_POLICIES), "partners": list(C.PARTNER_POLICIES),
    "geometries": list(C.MIX_GEOMETRIES), "decays": list(C.WEIGHT_DECAYS),
}


def check_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults <- the YAML's ``search`` block, each value checked (a bad one is named)."""
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown search key(s) {', '.join(unknown)}: allowed are {', '.join(DEFAULTS)}")
    s = {**DEFAULTS, **settings}
    C.check_range("search.num_samples", s["num_samples"], 1, None)
    C.check_range("search.grace_period", s["grace_period"], 1, None)
    C.check_range("search.reduction_factor", s["reduction_factor"], 1, None, lo_open=True)
    for key, lo in (("weight_range", 0.0), ("alpha_range", 0.0), ("tau_range", 0.0)):
        r = s[key]
        if not isinstance(r, list) or len(r) != 2 or not all(isinstance(x, (int, float)) for x in r) or not (
            lo < r[0] <= r[1]
        ):
            C._fail(f"search.{key}", r, f"[lo, hi] with {lo:g} < lo <= hi")
    for key, allowed in (("terms", TERMS), ("policies", C.LAMBDA_POLICIES), ("partners", C.PARTNER_POLICIES),
                         ("geometries", C.MIX_GEOMETRIES), ("decays", C.WEIGHT_DECAYS)):
        if not isinstance(s[key], list) or not s[key]:
            C._fail(f"search.{key}", s[key], "a non-empty list")
        for i, v in enumerate(s[key]):
            C.check_choice(f"search.{key}[{i}]", v, allowed)
    return s


def make_space(s: Mapping[str, Any]) -> Callable[[Any], dict[str, Any]]:
    """The define-by-run space: ``space(optuna_trial) -> {"method", "seed", "overrides"}``.

    Parameters are named by what they set (``loss.w_m2``, ``mix.m2.alpha``) so Optuna's importance and
    the dashboard read naturally; switches are ``use.<term>`` and ``tau.learnable``.
    """
    terms, policies = tuple(s["terms"]), tuple(s["policies"])
    w_lo, w_hi = s["weight_range"]
    a_lo, a_hi = s["alpha_range"]
    t_lo, t_hi = s["tau_range"]

    def space(trial) -> dict[str, Any]:
        ov: dict[str, Any] = {"loss.kind": "contrastive"}
        learnable = trial.suggest_categorical("tau.learnable", [True, False])
        ov["loss.tau"] = None if learnable else trial.suggest_float("loss.tau", t_lo, t_hi, log=True)
        for term in TERMS:
            if term not in terms or not trial.suggest_categorical(f"use.{term}", [True, False]):
                ov[f"loss.w_{term}"] = 0.0  # ablated: no weight, no λ parameters in the space
                continue
            ov[f"loss.w_{term}"] = trial.suggest_float(f"loss.w_{term}", w_lo, w_hi, log=True)
            policy = trial.suggest_categorical(f"mix.{term}.policy", list(policies))
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
        if any(ov[f"loss.w_{t}"] > 0 for t in TERMS):  # shared mixing choices matter only with a term on
            ov["loss.decay"] = trial.suggest_categorical("loss.decay", list(s["decays"]))
            ov["mix.partner"] = trial.suggest_categorical("mix.partner", list(s["partners"]))
            ov["mix.geometry"] = trial.suggest_categorical("mix.geometry", list(s["geometries"]))
        return {"method": "search", "seed": int(s["trial_seed"]), "overrides": ov}

    return space


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="sweep YAML (name, base, search)")
    parser.add_argument("--num-samples", type=int, help="trials to run (default: the config's)")
    _tune.add_ray_arguments(parser)
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[_tune.SweepSpec, dict[str, Any], C.TrainConfig]:
    """Spec, checked search settings and the base TrainConfig, validated before Ray starts.

    Besides the base, the most demanding corners of the space (every term on, with each λ policy) are
    resolved, so a base that cannot take a sampled value fails now rather than in trial 7.
    """
    sweep = _tune.load_sweep(args.config, args.overrides, smoke_test=args.smoke_test)
    if sweep["methods"]:
        raise ValueError("methods in a search config are invalid: allowed keys are name, base, search")
    settings = dict(sweep["search"])
    if args.num_samples is not None:
        settings["num_samples"] = args.num_samples
    settings = check_settings(settings)
    spec = _tune.spec_from_args(args, sweep)
    corners = []
    for policy in settings["policies"]:
        ov = {f"loss.w_{t}": settings["weight_range"][1] for t in settings["terms"]}
        ov.update({f"mix.{t}.policy": policy for t in settings["terms"]})
        corners.append({"method": "search", "seed": settings["trial_seed"], "overrides": ov})
    cfgs = _tune.validate_trials(spec, [{"method": "search", "seed": settings["trial_seed"]}, *corners])
    return spec, settings, cfgs[0]


def main(argv: list[str] | None = None) -> int:
    logs.setup("%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    spec, s, base_cfg = build(args)  # every config error surfaces here, before Ray starts
    t0 = time.perf_counter()
    save_resolved_config(spec.results, {"name": spec.name, "base": dict(spec.base), "search": s})
    _tune.prepare_base_models([base_cfg])
    with _tune.ray_session(args.address):
        _tune.run_sweep(
            spec,
            search_alg=_tune.make_searcher(make_space(s), spec, seed=int(s["seed"])),
            scheduler=_tune.make_asha(base_cfg.optim.epochs, grace_period=int(s["grace_period"]),
                                      reduction_factor=float(s["reduction_factor"])),
            num_samples=int(s["num_samples"]),
            verbose=args.verbose,
        )
    trials, _ = read_results(spec.results)
    print(f"\nsearch {spec.name}: {len(trials)} trials in {time.perf_counter() - t0:.0f} s; "
          f"{trials['status'].value_counts().to_dict()}; Optuna study {_tune.optuna_db(spec)}\n")
    cols = [c for c in ("trial_id", "status", "val_rsum", "rsum", "epoch", "overrides") if c in trials]
    print(trials.sort_values("val_rsum", ascending=False)[cols].head(5).to_string(index=False))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:  # a bad config or argument: one clear line, before anything started
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
