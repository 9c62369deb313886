"""Sweep overhead: the same N short trials through the Ray Tune sweep vs a plain Python loop over
``geomix.train.run``, in one run; prints the wall-time ratio (target <= 1.25) and the fixed cost per trial.

    python benchmarks/sweep_overhead.py                        # N=4 trials of ~20 s, every sweep path
    python benchmarks/sweep_overhead.py --trials 6 --modes loop,inproc data.train_size=4096
    python benchmarks/sweep_overhead.py --modes loop,train-group,train --repeats 2

Modes: ``loop`` (plain Python), ``inproc`` (sweep, trial runs ``geomix.train.run`` in the Tune trial
actor: the laptop default, ``--num-workers 0``), and two ways of running ``--num-workers 1`` (one Ray
Train worker per trial): ``train-group`` (each trial a Ray Train TorchTrainer with a 1-worker worker
group, as every 1-worker trial ran before; now only with ``GEOMIX_ONE_WORKER_GROUP=1``) and ``train``
(the default now: the trial actor holds the worker's CPU and runs the worker itself, ray-notes 19). The
two are the before / after of that change, run side by side and compared on the last lines.

The sweeps run one trial at a time, like the loop, so the difference is overhead, not parallelism; every
trial does the same work (same config, same ``run.threads``: a 1-CPU Ray actor runs torch with one
thread, so the loop does too). Ray start-up is timed separately and reported on its own line; the ratio
includes it. With ``--repeats R`` there are R rounds of (Ray start, every sweep mode, Ray down, the plain
loop): each round is compared with the loops just before and after it (the machine's load drifts), and
the medians over the rounds are shown.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
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


MODES = ("loop", "inproc", "train-group", "train")
NAMES = {"loop": "plain loop (train.run)", "inproc": "sweep, in-process trials",
         "train-group": "sweep, 1 worker, group", "train": "sweep, 1 worker, in actor"}


def _spec(base: dict, tmp: Path, mode: str) -> SweepSpec:
    return SweepSpec(name=f"overhead-{mode}", base=base, results=str(tmp / mode / "results"),
                     storage=str(tmp / mode / "ray"), methods={"ft": {}}, max_concurrent=1,
                     num_workers=0 if mode in ("loop", "inproc") else 1, max_failures=0)


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
    # read on the driver when the sweep starts: what a 1-worker trial holds, and so where its worker runs
    if mode == "train-group":
        os.environ[session.ONE_WORKER_GROUP_ENV] = "1"
    t0 = time.perf_counter()
    try:
        runner.run_sweep(spec, trials=trials, verbose=0)
    finally:
        os.environ.pop(session.ONE_WORKER_GROUP_ENV, None)
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
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every mode, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="run.threads of every trial (see above)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or "loop" not in modes or len(modes) < 2:
        raise ValueError(f"--modes {args.modes!r} is invalid: allowed loop plus one or more of "
                         + ", ".join(MODES[1:]))
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats} is invalid: allowed an integer >= 1")
    os.environ.pop(session.ONE_WORKER_GROUP_ENV, None)  # each mode says where its worker runs
    base = C.merge(BASE, C.parse_overrides(args.overrides))
    base = C.merge(base, {"run": {"threads": args.threads},
                          "model": {"cache_dir": str(Path(C.ModelConfig().cache_dir).resolve())}})
    seeds = list(range(args.trials))
    sweeps = [m for m in modes if m != "loop"]
    # per round: Ray's start-up, and per mode (sweep wall incl. that start-up, each trial's wall)
    starts: list[float] = []
    runs: dict[str, list[tuple[float, list[float]]]] = {m: [] for m in sweeps}
    with tempfile.TemporaryDirectory(prefix="geomix-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        cfg = resolve_trial(_spec(base, tmp, "loop"), "ft", 0)
        cli.prepare_base_models([cfg])  # built once, outside every timing
        loops = [run_loop(base, seeds, tmp / "loop0")]
        import ray

        # rounds of: Ray start, every sweep mode, Ray down, the loop again. Each round's sweeps are compared
        # with the loops just before and after them: the machine's load drifts.
        for rnd in range(args.repeats):
            t0 = time.perf_counter()
            session.start_ray("local")
            starts.append(time.perf_counter() - t0)
            for mode in sweeps:
                wall, tw = run_sweep(base, seeds, tmp / f"round{rnd}", mode)
                runs[mode].append((wall + starts[-1], tw))
            ray.shutdown()
            loops.append(run_loop(base, seeds, tmp / f"loop{rnd + 1}"))
    n = len(seeds)
    loop_of = [(loops[r] + loops[r + 1]) / 2 for r in range(args.repeats)]  # each round's own plain loop
    med = statistics.median

    def per_round(fn) -> dict[str, float]:
        return {m: med(fn(m, r) for r in range(args.repeats)) for m in sweeps}

    wall = per_round(lambda m, r: runs[m][r][0])
    ratio = per_round(lambda m, r: runs[m][r][0] / loop_of[r])
    fixed = per_round(lambda m, r: (runs[m][r][0] - loop_of[r]) / n)
    loop = med(loop_of)
    print(f"\n{n} trials of {cfg.data.train_size} samples x {cfg.optim.epochs} epochs, run.threads="
          f"{args.threads}; {args.repeats} round(s), medians; Ray start-up "
          + ", ".join(f"{t:.1f}" for t in starts) + " s (once per round, included in each sweep below); "
          "plain loops " + ", ".join(f"{t:.1f}" for t in loops) + " s (before, between and after the rounds; "
          "each round is compared with the mean of the loops around it)")
    print(f"{'mode':<28}{'wall s':>9}{'per trial s':>13}{'ratio':>8}{'fixed cost/trial s':>20}")
    print(f"{NAMES['loop']:<28}{loop:>9.1f}{loop / n:>13.1f}{1.0:>8.2f}{0.0:>20.1f}")
    for mode in sweeps:
        print(f"{NAMES[mode]:<28}{wall[mode]:>9.1f}{wall[mode] / n:>13.1f}{ratio[mode]:>8.2f}"
              f"{fixed[mode]:>20.1f}")
    if args.repeats > 1:
        print("every round (sweep wall s / fixed cost per trial s): " + "; ".join(
            f"{m} " + ", ".join(f"{w:.1f}/{(w - loop_of[r]) / n:.1f}" for r, (w, _) in enumerate(runs[m]))
            for m in sweeps))
    # where the fixed cost goes: once per sweep (Ray start, Tune set-up and teardown, the first trial's
    # actor start) or again for every trial (what a trial spends beyond the loop's train.run)
    print(f"\nwhere it goes (plain loop: {loop / n:.1f} s per trial)")
    print(f"{'mode':<28}{'1st trial s':>12}{'later trials s':>16}", end="")
    print(f"{'per trial extra s':>19}{'per sweep s':>13}")

    def later(m: str, r: int) -> float:
        tw = runs[m][r][1]
        return sum(tw[1:]) / max(len(tw) - 1, 1)

    first = per_round(lambda m, r: runs[m][r][1][0])
    lat = per_round(later)
    extra = per_round(lambda m, r: later(m, r) - loop_of[r] / n)
    sweep = per_round(lambda m, r: runs[m][r][0] - loop_of[r] - n * (later(m, r) - loop_of[r] / n))
    for mode in sweeps:
        print(f"{NAMES[mode]:<28}{first[mode]:>12.1f}{lat[mode]:>16.1f}{extra[mode]:>19.1f}{sweep[mode]:>13.1f}")
    if "train-group" in runs and "train" in runs:  # the before / after of ray-notes 19
        wb, wa, fb, fa = wall["train-group"], wall["train"], fixed["train-group"], fixed["train"]
        eb, ea = extra["train-group"], extra["train"]
        print(f"\n1 worker per trial, in its actor (after) vs a 1-worker Train worker group (before): "
              f"wall {wa:.1f} / {wb:.1f} s = {wa / wb:.2f}x; fixed cost per trial {fa:.1f} / {fb:.1f} s"
              + (f" = {fa / fb:.2f}x" if fb > 0 else "")
              + f"; per trial extra {ea:.1f} / {eb:.1f} s" + (f" = {ea / eb:.2f}x" if eb > 0 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
