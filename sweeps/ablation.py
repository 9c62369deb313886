"""The paper's ablation: every method row x seeds, one Ray Tune trial each, results as Parquet.

    python sweeps/ablation.py                                 # 12 methods x 3 seeds on the embedded data
    python sweeps/ablation.py --smoke-test                    # 2-3 minutes, for CI
    python sweeps/ablation.py optim.epochs=5 --methods ft,m3_mix --seeds 0,1
    python sweeps/ablation.py --address auto --num-workers 2 --gpus-per-worker 1 --storage s3://bucket/geomix

Re-running the same command resumes an interrupted sweep (finished trials are not rerun). Results land in
``--results`` (default ``results/<name>/``): ``trials.parquet``, ``history.parquet``, ``config.yaml``.
The grid is Tune's own grid search (methods x seeds); the hyper-parameter search is ``search.py``. Method
rows are open: any id the sweep YAML defines is a method (``sweeps/configs/ablation.yaml``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from geomix import logs
from geomix.config import TrainConfig
from sweeps import cli as common
from sweeps.schema import load_sweep
from sweeps.spec import SweepSpec, resolve_trial, trial_config

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
    return parser.parse_args(argv)


def select_methods(rows: Mapping[str, Any], wanted: str | None) -> dict[str, Any]:
    """The method rows ``--methods`` names (in its order), or all of them."""
    methods = dict(rows)
    if wanted:
        names = [m.strip() for m in wanted.split(",") if m.strip()]
        missing = [m for m in names if m not in methods]
        if missing:
            raise ValueError(f"--methods {','.join(missing)} is invalid: allowed {', '.join(methods)}")
        methods = {m: methods[m] for m in names}
    if not methods:
        raise ValueError("methods={} is invalid: allowed is at least one method row")
    return methods


def parse_seeds(text: str | None, default: tuple[int, ...]) -> list[int]:
    try:
        return [int(s) for s in text.split(",")] if text else list(default)
    except ValueError:
        raise ValueError(f"--seeds {text!r} is invalid: allowed comma-separated integers") from None


def build(args: argparse.Namespace) -> tuple[SweepSpec, list[int], list[TrainConfig], list[dict[str, Any]]]:
    """The spec, the seeds, and every trial's TrainConfig and trial config, resolved (so validated) here,
    before Ray starts; seed by seed, methods within a seed (the order of the trial ids)."""
    sweep = load_sweep(args.config, args.overrides, smoke_test=args.smoke_test)
    spec = common.spec_from_args(args, sweep, methods=select_methods(sweep.methods, args.methods))
    seeds = parse_seeds(args.seeds, sweep.seeds)
    rank = {m: i for i, m in enumerate(sweep.methods)}  # the analysis orders rows as the YAML does
    cfgs = [resolve_trial(spec, m, s) for s in seeds for m in spec.methods]
    return spec, seeds, cfgs, [trial_config(c, method_rank=rank[c.method]) for c in cfgs]


def main(argv: list[str] | None = None) -> int:
    logs.setup("%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    spec, seeds, cfgs, trials = build(args)  # every config error surfaces here, before Ray starts
    # Imported only now: Ray takes seconds to import, and a bad argument must fail at once.
    import store
    from sweeps.runner import run_sweep
    from sweeps.session import ray_session

    t0 = time.perf_counter()
    store.save_resolved_config(spec.results, {"name": spec.name, "seeds": seeds, "base": dict(spec.base),
                                              "methods": {k: dict(v) for k, v in spec.methods.items()}})
    common.prepare_base_models(cfgs)
    with ray_session(args.address):
        run_sweep(spec, trials=trials, verbose=args.verbose)
    common.print_summary(spec, len(trials), time.perf_counter() - t0)
    return 0


def cli() -> NoReturn:
    """The ``geomix-ablation`` console script."""
    common.cli(main)


if __name__ == "__main__":
    cli()
