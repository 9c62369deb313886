"""Hyper-parameter search of the mixing losses: Ray Tune + Optuna TPE (define-by-run) + ASHA.

    python sweeps/search.py                          # sweeps/configs/search.yaml
    python sweeps/search.py --num-samples 64 --max-concurrent 4
    python sweeps/search.py --smoke-test             # a few short trials, for CI
    optuna-dashboard sqlite:///results/search/optuna.db

The space is conditional (``sweeps/space.py``): a mix term's weight and λ policy (with that policy's
parameters, e.g. its Beta(α, β)) exist only when the term is on. ASHA stops weak trials after each epoch
(``val_rsum``); Optuna is told they were pruned. Re-running the same command resumes the search, Optuna
study included.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import NoReturn

import store
from geomix import logs
from geomix.config import TrainConfig
from sweeps import cli as common
from sweeps import space
from sweeps.folder import check_private, hold
from sweeps.identity import SweepChanged, check_saved, move_aside
from sweeps.schema import SearchSettings, load_sweep
from sweeps.spec import SweepSpec, check_before_ray, check_flags, resolve_base, resolve_trial

log = logging.getLogger("sweeps.search")
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "search.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="sweep YAML (name, base, search)")
    parser.add_argument("--num-samples", type=int, help="trials to run (default: the config's)")
    common.add_ray_arguments(parser)
    return common.parse(parser, argv)


def build(args: argparse.Namespace) -> tuple[SweepSpec, SearchSettings, TrainConfig]:
    """Spec, search settings and the base TrainConfig, validated before Ray starts (the space's most
    demanding corners too: ``sweeps.space.corners``)."""
    check_flags(args)
    sweep = load_sweep(args.config, args.overrides, smoke_test=args.smoke_test)
    if sweep.methods:
        raise ValueError("methods in a search config are invalid: allowed keys are name, base, search")
    settings = sweep.search or SearchSettings()
    if args.num_samples is not None:
        settings = dataclasses.replace(settings, num_samples=args.num_samples)
    spec = common.spec_from_args(args, sweep)
    resolve_base(spec)  # a bad base override is named as the base's
    base_cfg = resolve_trial(spec, "search", settings.trial_seed)
    for overrides in space.corners(settings):
        resolve_trial(spec, "search", settings.trial_seed, overrides)
    check_before_ray(spec, [base_cfg])  # data files, batch size vs training set, model, writable folders
    return spec, settings, base_cfg


def main(argv: list[str] | None = None) -> int:
    logs.setup("%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    spec, s, base_cfg = build(args)  # every config error surfaces here, before Ray starts
    config = {"name": spec.name, "base": dict(spec.base), "search": s.to_dict()}
    with hold(spec.results):
        check_private(spec.storage)  # Ray unpickles its state on resume: refused if others can write it
        try:  # re-running the same search resumes it; another search is refused before Ray starts
            check_saved(store.load_resolved_config(spec.results), config, spec.results)
        except SweepChanged:
            if not args.overwrite:
                raise
            log.warning("--overwrite: moved the old results folder to %s", move_aside(spec.results))
        # Imported only now: Ray and Optuna take seconds to import, and a bad argument must fail at once.
        from sweeps.runner import run_sweep
        from sweeps.searchers import make_asha, make_searcher
        from sweeps.session import ray_session

        t0 = time.perf_counter()
        store.save_resolved_config(spec.results, config)
        common.prepare_base_models([base_cfg])
        with ray_session(args.address):
            run_sweep(
                spec,
                search_alg=make_searcher(space.make_space(s, spec), spec, seed=s.seed),
                scheduler=make_asha(base_cfg.optim.epochs, grace_period=s.grace_period,
                                    reduction_factor=float(s.reduction_factor)),
                num_samples=s.num_samples,
                verbose=args.verbose,
            )
        common.print_search_summary(spec, time.perf_counter() - t0)
    return 0


def cli() -> NoReturn:
    """The ``geomix-search`` console script."""
    common.cli(main)


if __name__ == "__main__":
    cli()
