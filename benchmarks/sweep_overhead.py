"""Sweep overhead: the same N short trials through the Ray Tune sweep vs a plain Python loop over
``geomix.train.run``, in one run; prints the wall-time ratio (target <= 1.25) and the fixed cost per trial.

    python benchmarks/sweep_overhead.py                        # N=4 trials of ~20 s, both sweep paths
    python benchmarks/sweep_overhead.py --trials 6 --modes loop,inproc data.train_size=4096

Modes: ``loop`` (plain Python), ``inproc`` (sweep, trial runs ``geomix.train.run`` in the Tune trial
actor: the laptop default, ``--num-workers 0``), ``train`` (sweep, each trial a Ray Train TorchTrainer
with one worker: the cluster path, ``--num-workers 1``). The sweeps run one trial at a time, like the loop,
so the difference is overhead, not parallelism; every trial does the same work (same config, same
``run.threads``: a 1-CPU Ray actor runs torch with one thread, so the loop does too). Ray start-up is
timed separately and reported on its own line; the ratio includes it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import store
from geomix import config as C
from sweeps import cli, runner, session
from sweeps.spec import SweepSpec, resolve_trial, trial_config

# ~20 s per trial on one core of the 2-core dev machine; a small base model: its quality is not measured.
BASE = {
    "data": {"train_size": 2048, "val_size": 128, "test_size": 128},
    "model": {"base_epochs": 2, "base_train_size": 512},
    "optim": {"epochs": 2, "batch_size": 64},
    "run": {"eval_every": 1, "checkpoint_every": 1, "progress": False},
}


def _spec(base: dict, tmp: Path, mode: str) -> SweepSpec:
    return SweepSpec(name=f"overhead-{mode}", base=base, results=str(tmp / mode / "results"),
                     storage=str(tmp / mode / "ray"), methods={"ft": {}}, max_concurrent=1,
                     num_workers=1 if mode == "train" else 0, max_failures=0)


def run_loop(base: dict, seeds: list[int], tmp: Path) -> float:
    from geomix import train

    spec = _spec(base, tmp, "loop")
    t0 = time.perf_counter()
    for seed in seeds:
        cfg = resolve_trial(spec, "ft", seed)
        out = tmp / "loop" / f"trial{seed}"  # checkpoints written like the sweep's
        cfg = C.build_config(C.merge(C.to_dict(cfg), {"run": {"out_dir": str(out)}}))
        result = train.run(cfg)
        assert result["status"] == "completed", result
    return time.perf_counter() - t0


def run_sweep(base: dict, seeds: list[int], tmp: Path, mode: str) -> tuple[float, list[float]]:
    """Wall time of the sweep, and each trial's own wall time (``trial_wall_s``, in trial order)."""
    spec = _spec(base, tmp, mode)
    trials = [trial_config(resolve_trial(spec, "ft", seed)) for seed in seeds]  # resolved before timing
    t0 = time.perf_counter()
    runner.run_sweep(spec, trials=trials, verbose=0)
    wall = time.perf_counter() - t0
    trials, _ = store.read_results(spec.results)
    assert len(trials) == len(seeds) and (trials.status == "completed").all(), trials[["status", "error"]]
    return wall, trials.sort_values("started_at")["trial_wall_s"].astype(float).tolist()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the trial config")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--modes", default="loop,inproc,train")
    parser.add_argument("--threads", type=int, default=1, help="run.threads of every trial (see above)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("loop", "inproc", "train")]
    if bad or "loop" not in modes or len(modes) < 2:
        raise ValueError(f"--modes {args.modes!r} is invalid: allowed loop plus one or both of inproc, train")
    base = C.merge(BASE, C.parse_overrides(args.overrides))
    base = C.merge(base, {"run": {"threads": args.threads},
                          "model": {"cache_dir": str(Path(C.ModelConfig().cache_dir).resolve())}})
    seeds = list(range(args.trials))
    with tempfile.TemporaryDirectory(prefix="geomix-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        cfg = resolve_trial(_spec(base, tmp, "loop"), "ft", 0)
        cli.prepare_base_models([cfg])  # built once, outside every timing
        loops = [run_loop(base, seeds, tmp / "before")]
        t0 = time.perf_counter()
        session.start_ray("local")
        ray_start = time.perf_counter() - t0
        walls, inside = {}, {}
        for mode in modes:
            if mode != "loop":
                wall, inside[mode] = run_sweep(base, seeds, tmp, mode)
                walls[mode] = wall + ray_start
        import ray

        ray.shutdown()
        # the loop again after the sweeps: the machine's load drifts, and the first run pays warm-up
        loops.append(run_loop(base, seeds, tmp / "after"))
    walls = {"loop": sum(loops) / len(loops), **walls}
    n, loop = len(seeds), walls["loop"]
    print(f"\n{n} trials of {cfg.data.train_size} samples x {cfg.optim.epochs} epochs, run.threads="
          f"{args.threads}; Ray start-up {ray_start:.1f} s (included below); loop before / after the "
          f"sweeps {loops[0]:.1f} / {loops[1]:.1f} s (mean below)")
    print(f"{'mode':<28}{'wall s':>9}{'per trial s':>13}{'ratio':>8}{'fixed cost/trial s':>20}")
    names = {"loop": "plain loop (train.run)", "inproc": "sweep, in-process trials",
             "train": "sweep, Ray Train 1 worker"}
    for mode, wall in walls.items():
        ratio = wall / loop
        fixed = (wall - loop) / n
        print(f"{names[mode]:<28}{wall:>9.1f}{wall / n:>13.1f}{ratio:>8.2f}{fixed:>20.1f}")
    # where the fixed cost goes: once per sweep (Ray start, Tune set-up and teardown, the first trial's
    # actor start) or again for every trial (what a trial spends beyond the loop's train.run)
    print(f"\nwhere it goes (plain loop: {loop / n:.1f} s per trial)")
    print(f"{'mode':<28}{'1st trial s':>12}{'later trials s':>16}", end="")
    print(f"{'per trial extra s':>19}{'per sweep s':>13}")
    for mode, tw in inside.items():
        later = sum(tw[1:]) / max(len(tw) - 1, 1)
        per_trial = later - loop / n
        per_sweep = walls[mode] - loop - n * per_trial
        print(f"{names[mode]:<28}{tw[0]:>12.1f}{later:>16.1f}{per_trial:>19.1f}{per_sweep:>13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
