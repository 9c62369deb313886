"""The paper's ablation: every method row x seeds, one Ray Tune trial each, results as Parquet.

    python sweeps/ablation.py                                 # 12 methods x 3 seeds on the embedded data
    python sweeps/ablation.py --smoke-test                    # 2-3 minutes, for CI
    python sweeps/ablation.py optim.epochs=5 --methods ft,m3_mix --seeds 0,1
    python sweeps/ablation.py --address auto --num-workers 2 --gpus-per-worker 1 --storage s3://bucket/geomix

Re-running the same command resumes an interrupted sweep (finished trials are not rerun). Results land in
``--results`` (default ``results/<name>/``): ``trials.parquet``, ``history.parquet``, ``config.yaml``.
The grid is Tune's own grid search (methods x seeds); the hyper-parameter search is ``search.py``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import geomix

ROOT = geomix.checkout(__file__)
sys.path.insert(0, str(ROOT))  # `sweeps` is a folder beside `geomix`, not an installed package

from geomix import logs  # noqa: E402
from geomix.results import METHOD_IDS, save_resolved_config  # noqa: E402
from sweeps import _tune  # noqa: E402

log = logging.getLogger("sweeps.ablation")
DEFAULT_CONFIG = ROOT / "sweeps" / "configs" / "ablation.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="sweep YAML (name, seeds, base, methods)")
    parser.add_argument("--methods", help="comma-separated subset of the config's method rows")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the config's)")
    _tune.add_ray_arguments(parser)
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[_tune.SweepSpec, list[int], list]:
    """The sweep spec and seeds from the YAML and the command line, every trial validated (no Ray yet)."""
    sweep = _tune.load_sweep(args.config, args.overrides, smoke_test=args.smoke_test)
    methods = sweep["methods"]
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        missing = [m for m in wanted if m not in methods]
        if missing:
            raise ValueError(f"--methods {','.join(missing)} is invalid: allowed {', '.join(methods)}")
        methods = {m: methods[m] for m in wanted}
    if not methods:
        raise ValueError("methods={} is invalid: allowed is at least one method row")
    unknown = [m for m in methods if m not in METHOD_IDS]
    if unknown:
        raise ValueError(f"method ids {unknown} are invalid: allowed {', '.join(METHOD_IDS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else sweep["seeds"]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r} is invalid: allowed comma-separated integers") from None
    spec = _tune.spec_from_args(args, sweep, methods=methods)
    cfgs = _tune.validate_trials(spec, [{"method": m, "seed": s} for m in methods for s in seeds])
    return spec, seeds, cfgs


def main(argv: list[str] | None = None) -> int:
    logs.setup("%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    spec, seeds, cfgs = build(args)  # every config error surfaces here, before Ray starts
    t0 = time.perf_counter()
    save_resolved_config(spec.results, {"name": spec.name, "seeds": seeds, "base": dict(spec.base),
                                        "methods": {k: dict(v) for k, v in spec.methods.items()}})
    _tune.prepare_base_models(cfgs)
    with _tune.ray_session(args.address):
        from ray import tune

        _tune.run_sweep(spec, param_space={"method": tune.grid_search(list(spec.methods)),
                                           "seed": tune.grid_search(seeds)}, verbose=args.verbose)
    wall = time.perf_counter() - t0
    n = len(spec.methods) * len(seeds)
    print(f"\nsweep {spec.name}: {n} trials in {wall:.0f} s; results in {spec.results}\n")
    _tune.print_summary(spec.results)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:  # a bad config or argument: one clear line, before anything started
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
