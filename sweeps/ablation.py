"""The paper's ablation: every method row x seeds, one Ray Tune trial each, results as Parquet.

    python sweeps/ablation.py                                 # 12 methods x 3 seeds on the embedded data
    python sweeps/ablation.py --smoke-test                    # 2-3 minutes, for CI
    python sweeps/ablation.py optim.epochs=5 --methods ft,m3_mix --seeds 0,1
    python sweeps/ablation.py --address auto --num-workers 2 --gpus-per-worker 1 --storage s3://bucket/geomix

Re-running the same command resumes an interrupted sweep (finished trials are not rerun). Results land in
``--results`` (default ``results/<name>/``): the ``trials/`` and ``history/`` datasets, ``config.yaml``.
The grid is Tune's own grid search (methods x seeds); the hyper-parameter search is ``search.py``. Method
rows are open: any id the sweep YAML defines is a method (``sweeps/configs/ablation.yaml``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import store
from geomix import logs
from geomix.checks import MAX_SEED
from geomix.config import TrainConfig
from sweeps import cli as common
from sweeps.folder import check_private, existing_rows, hold, union_config
from sweeps.identity import Plan, SweepChanged, move_aside, plan
from sweeps.schema import load_sweep
from sweeps.spec import SweepSpec, check_before_ray, check_flags, resolve_base, resolve_trial, trial_config

log = logging.getLogger("sweeps.ablation")

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "ablation.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="sweep YAML (name, seeds, base, methods)")
    parser.add_argument("--methods", help="comma-separated subset of the config's method rows")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the config's)")
    common.add_ray_arguments(parser)
    return common.parse(parser, argv)


def select_methods(rows: Mapping[str, Any], wanted: str | None) -> dict[str, Any]:
    """The method rows ``--methods`` names (in its order), or all of them when it is not given.

    Raises:
        ValueError: an empty ``--methods``, a name that is not a row, or a name given twice.
    """
    methods = dict(rows)
    if wanted is not None:
        names = [m.strip() for m in wanted.split(",")]
        if not any(names):
            raise ValueError(f"--methods={wanted!r} is invalid: allowed a comma-separated subset of "
                             f"{', '.join(methods) or '(no rows)'}")
        names = [m for m in names if m]
        missing = [m for m in names if m not in methods]
        if missing:
            raise ValueError(f"--methods {','.join(missing)} is invalid: allowed {', '.join(methods)}")
        twice = sorted({m for m in names if names.count(m) > 1})
        if twice:
            raise ValueError(f"--methods={wanted!r} is invalid: allowed each method once ({', '.join(twice)} "
                             "given twice)")
        methods = {m: methods[m] for m in names}
    if not methods:
        raise ValueError("methods={} is invalid: allowed is at least one method row")
    return methods


def parse_seeds(text: str | None, default: tuple[int, ...]) -> list[int]:
    """``--seeds 0,1,2`` (default: the sweep YAML's seeds).

    Raises:
        ValueError: an empty list, a seed that is not an integer in ``[0, 2**63 - 1]``, or one given twice.
    """
    if text is None:
        return list(default)
    allowed = "comma-separated distinct integers in [0, 2**63 - 1]"
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {text!r} is invalid: allowed {allowed}") from None
    if not all(0 <= s <= MAX_SEED for s in seeds) or len(set(seeds)) < len(seeds):
        raise ValueError(f"--seeds {text!r} is invalid: allowed {allowed}")
    return seeds


def build(
    args: argparse.Namespace,
) -> tuple[SweepSpec, list[int], list[TrainConfig], list[dict[str, Any]], dict[str, Any]]:
    """The spec, the seeds, every trial's TrainConfig and trial config, resolved (so validated) here, before
    Ray starts (seed by seed, methods within a seed: the order of the trial ids), and all of the YAML's
    method rows (``--methods`` may select fewer; the results folder is checked against all of them)."""
    check_flags(args)
    sweep = load_sweep(args.config, args.overrides, smoke_test=args.smoke_test)
    spec = common.spec_from_args(args, sweep, methods=select_methods(sweep.methods, args.methods))
    seeds = parse_seeds(args.seeds, sweep.seeds)
    resolve_base(spec)  # a bad base override is named as the base's, not as the first method's
    rank = {m: i for i, m in enumerate(sweep.methods)}  # the analysis orders rows as the YAML does
    cfgs = [resolve_trial(spec, m, s) for s in seeds for m in spec.methods]
    check_before_ray(spec, cfgs)  # data files, batch size vs training set, model, writable folders
    trials = [trial_config(c, method_rank=rank[c.method]) for c in cfgs]
    return spec, seeds, cfgs, trials, dict(sweep.methods)


def check_folder(
    args: argparse.Namespace, spec: SweepSpec, trials: list[dict[str, Any]], all_methods: dict[str, Any]
) -> Plan:
    """Compare the wanted trials with the rows already in ``--results`` (before Ray starts): the plan of what
    runs now, or, with ``--overwrite``, the old folder moved aside first.

    Raises:
        SweepChanged: the folder holds another sweep's trials (the message names the keys that differ).
    """
    everything = dataclasses.replace(spec, methods=all_methods)

    def resolve(method: str, seed: int) -> TrainConfig | None:
        return resolve_trial(everything, method, seed) if method in everything.methods else None

    try:
        return plan(trials, existing_rows(spec.results), resolve, spec.results)
    except SweepChanged:
        if not args.overwrite:
            raise
    moved = move_aside(spec.results)
    log.warning("--overwrite: moved the old results folder to %s", moved)
    return plan(trials, [], resolve, spec.results)


def main(argv: list[str] | None = None) -> int:
    logs.setup("%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    spec, seeds, cfgs, trials, all_methods = build(args)  # every config error surfaces here, before Ray
    with hold(spec.results):
        todo = check_folder(args, spec, trials, all_methods)  # another sweep's folder: refused, before Ray
        check_private(spec.storage)  # Ray unpickles its state on resume: refused if others can write it
        # Imported only now: Ray takes seconds to import, and a bad argument must fail at once.
        from sweeps.runner import experiment_for, resume_unfinished, run_sweep
        from sweeps.session import ray_session

        t0 = time.perf_counter()
        config = {"name": spec.name, "seeds": seeds, "base": dict(spec.base),
                  "methods": {k: dict(v) for k, v in spec.methods.items()}}
        saved = store.load_resolved_config(spec.results)
        store.save_resolved_config(spec.results, union_config(saved, config))
        log.info("sweep %s: %d trials, %d already in %s, %d to run", spec.name, len(trials), todo.reused,
                 spec.results, len(todo.todo))
        if todo.todo:
            common.prepare_base_models(cfgs)
            with ray_session(args.address):
                # a driver killed mid-sweep: its experiment resumes its running trials from their checkpoints
                resume_unfinished(spec, {t["key"] for t in trials}, verbose=args.verbose)
                rest = plan(trials, existing_rows(spec.results), None, spec.results).todo
                if rest:
                    run_sweep(spec, trials=rest, verbose=args.verbose,
                              experiment=experiment_for(spec, rest, fresh=todo.existing == 0))
        common.print_summary(spec, len(trials), time.perf_counter() - t0, reused=todo.reused)
    return 0


def cli() -> NoReturn:
    """The ``geomix-ablation`` console script."""
    common.cli(main)


if __name__ == "__main__":
    cli()
