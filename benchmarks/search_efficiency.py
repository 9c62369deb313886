"""Search efficiency: does Optuna TPE + ASHA find the grid's best configuration with less compute?

    python benchmarks/search_efficiency.py                          # 16-point grid (~10-15 min here), replays
    python benchmarks/search_efficiency.py --grid-out grid.json     # ... and keep the grid's curves
    python benchmarks/search_efficiency.py --curves grid.json --startup-trials 4   # replays only
    python benchmarks/search_efficiency.py --smoke-test             # 2 x 2 tiny grid, one short search
    python benchmarks/search_efficiency.py optim.schedule=constant  # the trials at a constant lr (below)

The space is the m²-Mix row of ``sweeps/configs/ablation.yaml`` with two knobs: its weight ``loss.w_m2`` ×
the α of its symmetric Beta(α, α) λ policy ``mix.m2.alpha`` (4 × 4 points, log-spaced over the search's
``weight_range`` / ``alpha_range``), every trial at one fixed ``run.seed``. Two parts:

1. **The grid, for real.** Every point trains in this process through ``geomix.train.run`` for the full
   epochs; the hooks record every report (``val_rsum`` after each epoch, the final test metrics). One point is
   then trained a second time and its reports compared exactly: on the CPU, at a fixed seed and thread count,
   a config's training is deterministic (checked on the 2-core dev machine at 1 thread: bit-identical
   per-epoch ``val_rsum``; the printed ``determinism`` line says whether it held in this run), so a config
   has one score and one learning curve, and replaying it is what training it again would report.
2. **The searches, replayed.** TPE + ASHA, TPE alone and random + ASHA, each for several searcher seeds, run
   through the project's own search machinery (``sweeps.runner.run_sweep`` with
   ``sweeps.searchers.make_searcher`` / ``make_asha``, the results store, Optuna told of pruned trials),
   over the same 16 points as categorical choices, with a trial function (``SweepSpec.run_fn``) that
   replays the recorded reports of the config it is given instead of training it again. One trial at a
   time (``max_concurrent_trials=1``), so ASHA's decisions, and with them the whole search, are
   reproducible per searcher seed. As in a real search, a point suggested twice is run (and counted)
   twice, and TPE's first ``n_startup_trials`` suggestions are random (Optuna's default: 10).

The schedule matters to ASHA, which stops trials on their early epochs' ``val_rsum``: under the default
warm-up + cosine (``optim.schedule=cosine``) the lr is still high at the early rungs and the configs'
order there need not be their final one; ``optim.schedule=constant`` (an override like any other) keeps
the lr flat after the warm-up, the setting in which early epochs are meant to rank configs. The table's
header measures that premise on the grid itself: per epoch, the Spearman correlation of the points'
``val_rsum`` with their final one, and where the final best point ranks then (scipy, from the
``analysis`` extra that the README's install includes).

Compute is counted in trial-epochs: the epochs each trial reported before it finished or ASHA stopped it
(the grid: points × epochs). A search has *found* the grid's best once a trial trained for the full epochs
with a final ``val_rsum`` (the metric the searches maximise) within ``--tolerance`` (1 rsum point) of the
grid's best; the table prints the compute spent until then as a fraction of the grid's compute (median,
min, max over searcher seeds; a seed that never finds it within its ``--budget`` trials counts as not
found), and the test rsum of the trial each search would pick (its best final ``val_rsum``). The grid's row
is 1.0 by construction: only the whole grid tells which point is best. ASHA (``make_asha``: ``max_t`` one
past the last epoch) has rungs at epochs ``grace · rf^k``; the last epoch's evaluation arrives in the final
report, so a trial cut at a rung on the last epoch has finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from geomix import config as C

# sweeps/configs/ablation.yaml's m2_mix row on a small slice of the embedded data: ~35 s a trial on one
# (shared) core of the 2-core dev machine, so the 16-point grid fits in ~10-15 minutes.
BASE = {
    "data": {"train_size": 512, "val_size": 128, "test_size": 128},
    "optim": {"epochs": 4, "batch_size": 64},
    "loss": {"m2_tau": 0.07, "decay": "inverse_epoch"},
    "run": {"eval_every": 1, "checkpoint_every": 0, "progress": False},
}
WEIGHTS = (0.005, 0.02, 0.1, 0.5)  # log-spaced over search.yaml's weight_range [0.005, 0.5]
ALPHAS = (0.1, 0.3, 1.0, 4.0)  # log-spaced over its alpha_range [0.1, 4.0]
W_KEY, ALPHA_KEY = "loss.w_m2", "mix.m2.alpha"
SEARCHES = {  # name -> (Optuna sampler, ASHA on)
    "tpe+asha": ("tpe", True),
    "tpe": ("tpe", False),
    "random+asha": ("random", True),
}
LABELS = {"grid": "grid (ground truth)", "tpe+asha": "TPE + ASHA", "tpe": "TPE alone",
          "random+asha": "random + ASHA"}
SMOKE = {
    "data": {"train_size": 64, "val_size": 32, "test_size": 32},
    "optim": {"epochs": 2, "batch_size": 32},
    "model": {"name": "geomix-micro", "base_epochs": 2, "base_train_size": 256, "base_batch_size": 64},
}

log = logging.getLogger("search_efficiency")


# ---- the grid, trained ----------------------------------------------------------------------------------

class _Recorder:
    """``geomix.train.run`` hooks that keep every report's scalars."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    def report(self, metrics: Mapping[str, Any], checkpoint_dir: str | None) -> None:
        self.reports.append({k: v for k, v in metrics.items()
                             if isinstance(v, (bool, int, float, str)) or v is None})

    def initial_checkpoint(self) -> str | None:
        return None


def _spec(base: Mapping[str, Any], name: str = "search-efficiency", root: Path | None = None, **kw: Any):
    from sweeps.spec import SweepSpec

    root = root or Path("unused")
    return SweepSpec(name=name, base=base, results=str(root / name / "results"),
                     storage=str(root / name / "ray"), **kw)


def _train_point(base: Mapping[str, Any], w: float, alpha: float) -> dict[str, Any]:
    from geomix import train
    from sweeps.spec import resolve_trial

    cfg = resolve_trial(_spec(base), "search", 0, {W_KEY: w, ALPHA_KEY: alpha})
    hooks = _Recorder()
    t0 = time.perf_counter()
    result = train.run(cfg, hooks=hooks)
    if result["status"] != "completed":
        raise RuntimeError(f"grid point {W_KEY}={w}, {ALPHA_KEY}={alpha}: {result['status']} "
                           f"({result.get('error')})")
    scalars = {k: v for k, v in result.items() if isinstance(v, (bool, int, float, str)) or v is None}
    return {"w": w, "alpha": alpha, "reports": hooks.reports, "result": scalars,
            "wall_s": time.perf_counter() - t0}


def run_grid(base: Mapping[str, Any], weights: Sequence[float], alphas: Sequence[float]) -> dict[str, Any]:
    """Train every point for the full epochs, then the last point again (determinism); the curve table."""
    from sweeps import cli
    from sweeps.spec import resolve_trial

    cli.prepare_base_models([resolve_trial(_spec(base), "search", 0)])  # built once, outside the timing
    t0 = time.perf_counter()
    points = []
    for w in weights:
        for alpha in alphas:
            points.append(_train_point(base, w, alpha))
            log.warning("grid %d/%d: %s=%g %s=%g final val_rsum %.2f (%.0f s)", len(points),
                        len(weights) * len(alphas), W_KEY, w, ALPHA_KEY, alpha,
                        final_val(points[-1]), points[-1]["wall_s"])
    wall = time.perf_counter() - t0
    again = _train_point(base, points[-1]["w"], points[-1]["alpha"])
    curve = [r.get("val_rsum") for r in points[-1]["reports"]]
    same = curve == [r.get("val_rsum") for r in again["reports"]] and (
        points[-1]["result"].get("test_rsum") == again["result"].get("test_rsum"))
    return {"epochs": C.from_dict(C.TrainConfig, dict(base)).optim.epochs, "weights": list(weights),
            "alphas": list(alphas), "base": dict(base), "points": points, "grid_wall_s": wall,
            "determinism": {"w": points[-1]["w"], "alpha": points[-1]["alpha"], "identical": same,
                            "first": curve, "second": [r.get("val_rsum") for r in again["reports"]]}}


def final_val(point: Mapping[str, Any]) -> float:
    """A point's final ``val_rsum``: that of its last report (the final one, after the last epoch)."""
    return float(point["reports"][-1]["val_rsum"])


def rank_agreement(points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """ASHA's premise, measured on the grid: per epoch before the last, the Spearman correlation of the
    points' ``val_rsum`` with their final one, and the final best point's rank then (1 = first). The
    starting model's report (epoch 0, the same for every point) is left out."""
    from scipy import stats

    epochs = sorted({int(r["epoch"]) for p in points for r in p["reports"][:-1] if int(r["epoch"]) > 0})
    final = [final_val(p) for p in points]
    best = max(range(len(points)), key=final.__getitem__)
    out = []
    for e in epochs:
        at = [next(float(r["val_rsum"]) for r in p["reports"][:-1] if int(r["epoch"]) == e) for p in points]
        rank = 1 + sum(v > at[best] for v in at)
        # undefined (None) where every point scores the same, at that epoch or at the end
        rho = None if len(set(at)) < 2 or len(set(final)) < 2 else float(stats.spearmanr(at, final).statistic)
        out.append({"epoch": e, "spearman": rho, "best_rank": rank})
    return out


def synthetic_table(finals: Mapping[tuple[float, float], float], epochs: int) -> dict[str, Any]:
    """A curve table with known answers (tests): each point's ``val_rsum`` rises linearly from 0 to its
    final value, so the ranking is the same at every epoch; test rsum = final val_rsum."""
    points = []
    for (w, alpha), final in finals.items():
        reports: list[dict[str, Any]] = [{"epoch": e, "step": 8 * e, "val_rsum": final * e / epochs}
                                         for e in range(epochs)]
        result = {"status": "completed", "error": None, "test_rsum": final, "steps": 8 * epochs}
        reports.append({"epoch": epochs, "step": 8 * epochs, "val_rsum": final, "done": True, **result})
        points.append({"w": w, "alpha": alpha, "reports": reports, "result": result})
    return {"epochs": epochs, "weights": sorted({w for w, _ in finals}),
            "alphas": sorted({a for _, a in finals}), "base": {"optim": {"epochs": epochs}}, "points": points}


# ---- the searches, replayed -----------------------------------------------------------------------------

class Replay:
    """``SweepSpec.run_fn``: replays the recorded reports of the grid point a trial's config names."""

    def __init__(self, table: Mapping[str, Any]) -> None:
        self.points = {(float(p["w"]), float(p["alpha"])): p for p in table["points"]}

    def __call__(self, cfg: Any, *, hooks: Any = None) -> dict[str, Any]:
        key = (float(cfg.loss.w_m2), float(cfg.mix.m2.alpha))
        if key not in self.points:
            raise KeyError(f"{W_KEY}={key[0]}, {ALPHA_KEY}={key[1]} is not a grid point")
        point = self.points[key]
        for report in point["reports"]:
            if hooks is not None:
                hooks.report(dict(report), None)
        return dict(point["result"])


def grid_space(spec: Any, weights: Sequence[float], alphas: Sequence[float]):
    """The define-by-run space of the replays: the grid's points as two categorical choices."""
    from sweeps.spec import TRIAL_KEY, resolve_trial, trial_config

    def space(trial: Any) -> dict[str, Any]:
        ov = {W_KEY: trial.suggest_categorical(W_KEY, list(weights)),
              ALPHA_KEY: trial.suggest_categorical(ALPHA_KEY, list(alphas))}
        return {TRIAL_KEY: trial_config(resolve_trial(spec, "search", 0, ov), overrides=ov)}

    return space


def run_search(table: Mapping[str, Any], name: str, seed: int, args: argparse.Namespace,
               root: Path) -> list[dict[str, Any]]:
    """One replayed search; its trials in the order they ran: point, epochs trained, final val/test rsum."""
    import store
    from sweeps import runner, searchers

    sampler, asha = SEARCHES[name]
    spec = _spec(table["base"], f"{name.replace('+', '-')}-seed{seed}", root, max_concurrent=1,
                 max_failures=0, run_fn=Replay(table))
    epochs = int(table["epochs"])
    scheduler = searchers.make_asha(epochs, grace_period=args.grace, reduction_factor=args.reduction_factor)
    runner.run_sweep(spec, num_samples=args.budget, verbose=0,
                     search_alg=searchers.make_searcher(grid_space(spec, table["weights"], table["alphas"]),
                                                        spec, seed=seed, sampler=sampler,
                                                        startup_trials=args.startup_trials),
                     scheduler=scheduler if asha else None)
    trials, history = store.read_results(spec.results)
    failed = trials[trials["status"] == "failed"]
    if len(failed):  # a broken replay must not pass for a search that found nothing
        raise RuntimeError(f"{name} seed {seed}: {len(failed)} trial(s) failed: {failed['error'].iloc[0]}")
    val = history[(history["split"] == "val") & (history["epoch"] > 0)]
    out = []
    for row in trials.sort_values("started_at").itertuples():
        ov = json.loads(row.overrides)
        mine = val[val["trial_id"] == row.trial_id]
        last = mine[mine["epoch"] == epochs]
        out.append({"w": ov[W_KEY], "alpha": ov[ALPHA_KEY], "status": row.status,
                    "epochs": int(mine["epoch"].max()) if len(mine) else 0,
                    "final_val": float(last["rsum"].iloc[-1]) if len(last) else None,
                    "test_rsum": float(row.rsum) if row.status == "completed" else None})
    return out


def efficiency(trials: Sequence[Mapping[str, Any]], target: float, grid_compute: int) -> dict[str, Any]:
    """Compute until the first full-length trial with final val_rsum >= ``target``, as a fraction of the
    grid's (inf when none), the whole search's compute, and the pick (best final val_rsum)'s test rsum."""
    spent, found_at = 0, math.inf
    for t in trials:
        spent += t["epochs"]
        if found_at == math.inf and t["final_val"] is not None and t["final_val"] >= target:
            found_at = spent
    full = [t for t in trials if t["final_val"] is not None]
    pick = max(full, key=lambda t: t["final_val"]) if full else None
    return {"fraction": found_at / grid_compute, "total": spent / grid_compute,
            "distinct": len({(t["w"], t["alpha"]) for t in trials}),
            "pick_test_rsum": pick["test_rsum"] if pick else None}


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


def _spread(values: Sequence[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def report(table: Mapping[str, Any], runs: Mapping[str, Mapping[int, list[dict[str, Any]]]],
           args: argparse.Namespace) -> dict[str, Any]:
    """Print the table; returns its numbers (``--json``)."""
    points, epochs = table["points"], int(table["epochs"])
    grid_compute = len(points) * epochs
    best = max(points, key=final_val)
    target = final_val(best) - args.tolerance
    near = [p for p in points if final_val(p) >= target]
    best_test = max(points, key=lambda p: p["result"]["test_rsum"])
    rungs = [args.grace * int(args.reduction_factor) ** k for k in range(8)
             if args.grace * args.reduction_factor ** k < epochs + 1]
    print(f"\ngrid: {len(points)} points ({W_KEY} in {table['weights']} x {ALPHA_KEY} in {table['alphas']}), "
          f"{epochs} epochs each = {grid_compute} trial-epochs")
    schedule = table["base"].get("optim", {}).get("schedule", C.OptimConfig().schedule)
    print(f"every trial: optim.schedule={schedule} (after a warm-up of optim.warmup_frac of its steps)")
    if "grid_wall_s" in table:
        print(f"grid trained in {table['grid_wall_s']:.0f} s")
    print(f"grid's best final val_rsum {final_val(best):.2f} at {W_KEY}={best['w']}, "
          f"{ALPHA_KEY}={best['alpha']} (test rsum {best['result']['test_rsum']:.2f}); {len(near)} of "
          f"{len(points)} points within {args.tolerance:g} of it; final val_rsum range "
          f"{min(map(final_val, points)):.2f}..{final_val(best):.2f}; best test rsum "
          f"{best_test['result']['test_rsum']:.2f}")
    agreement = rank_agreement(points)
    print("early epochs vs the final val_rsum over the grid (what ASHA's rungs go by): " + "; ".join(
        f"epoch {a['epoch']}: Spearman {_fmt(a['spearman'], '+.2f')}, the best point "
        f"{a['best_rank']}/{len(points)}"
        for a in agreement))
    det = table.get("determinism")
    if det:
        same = "bit-identical" if det["identical"] else f"DIFFERENT ({det['first']} vs {det['second']})"
        print(f"determinism: {W_KEY}={det['w']}, {ALPHA_KEY}={det['alpha']} trained twice: per-epoch "
              f"val_rsum {same}")
    startup = "Optuna's default 10" if args.startup_trials is None else args.startup_trials
    print(f"searches: {args.budget} trials each, max_concurrent_trials=1, TPE n_startup_trials={startup}; "
          f"ASHA grace {args.grace}, reduction factor {args.reduction_factor:g}, max_t {epochs + 1} "
          f"(rungs at epochs {', '.join(map(str, rungs))})\n")
    head = (f"{'search':<20}{'seeds':>6}{'found':>7}{'median':>8}{'min':>7}{'max':>7}{'whole search':>14}"
            f"{'distinct pts':>14}{'test rsum pick':>16}  per seed")
    print("compute until a trial within "
          f"{args.tolerance:g} val_rsum of the grid's best, / grid compute\n{head}")
    print(f"{LABELS['grid']:<20}{'-':>6}{'-':>7}{1.0:>8.2f}{1.0:>7.2f}{1.0:>7.2f}{1.0:>14.2f}{len(points):>14}"
          f"{_fmt(best['result']['test_rsum']):>16}")
    out: dict[str, Any] = {"grid": {"best_val": final_val(best), "target": target, "near": len(near),
                                    "compute": grid_compute, "rank_agreement": agreement}, "searches": {}}
    for name, per_seed in runs.items():
        effs = [efficiency(trials, target, grid_compute) for trials in per_seed.values()]
        fr = [e["fraction"] for e in effs]
        med, lo, hi = _spread(fr)
        tests = [e["pick_test_rsum"] for e in effs if e["pick_test_rsum"] is not None]
        found = sum(math.isfinite(f) for f in fr)
        print(f"{LABELS[name]:<20}{len(fr):>6}{f'{found}/{len(fr)}':>7}{_fmt(med):>8}{_fmt(lo):>7}"
              f"{_fmt(hi):>7}{_fmt(statistics.median(e['total'] for e in effs)):>14}"
              f"{statistics.median(e['distinct'] for e in effs):>14g}"
              f"{_fmt(statistics.median(tests) if tests else None):>16}  {' '.join(_fmt(f) for f in fr)}")
        out["searches"][name] = {"fractions": fr, "median": med, "min": lo, "max": hi, "efficiency": effs,
                                 "trials": per_seed}
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the trials' base")
    parser.add_argument("--curves", help="a saved curve table (--grid-out): skip the grid, replay only")
    parser.add_argument("--grid-out", help="write the grid's curve table (JSON) here")
    parser.add_argument("--json", help="write the table's numbers (JSON) here")
    parser.add_argument("--searches", help=f"of {', '.join(SEARCHES)} (default all; smoke test: the first)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="searcher seeds (at least 3 for a spread)")
    parser.add_argument("--budget", type=int, default=16, help="trials per search")
    parser.add_argument("--grace", type=int, default=1, help="ASHA grace period (epochs)")
    parser.add_argument("--reduction-factor", type=float, default=2)
    parser.add_argument("--startup-trials", type=int, help="TPE's random start (default: Optuna's, 10)")
    parser.add_argument("--tolerance", type=float, default=1.0, help="rsum points from the grid's best")
    parser.add_argument("--threads", type=int, default=1, help="run.threads of the grid's trials")
    parser.add_argument("--smoke-test", action="store_true", help="2 x 2 tiny grid, 1 seed, 2 trials")
    args = parser.parse_args(argv)
    searches = args.searches or ",".join(list(SEARCHES)[:1] if args.smoke_test else SEARCHES)
    names = [n.strip() for n in searches.split(",") if n.strip()]
    bad = [n for n in names if n not in SEARCHES]
    if bad or not names:
        raise ValueError(f"--searches {searches!r} is invalid: allowed are {', '.join(SEARCHES)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    weights, alphas = WEIGHTS, ALPHAS
    base = C.merge(BASE, {"run": {"threads": args.threads},
                          "model": {"cache_dir": str(Path(C.ModelConfig().cache_dir).resolve())}})
    if args.smoke_test:
        base, weights, alphas, seeds, args.budget = C.merge(base, SMOKE), WEIGHTS[::3], ALPHAS[::3], [0], 2
    base = C.merge(base, C.parse_overrides(args.overrides))
    # Tune's own JSON/CSV loggers per trial: not read here (the results store is), and they cost time
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # ... so the post-fit reconcile's ExperimentAnalysis finds none and warns once per search
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    if args.curves:
        table = json.loads(Path(args.curves).read_text())
    else:
        table = run_grid(base, weights, alphas)
        if args.grid_out:
            Path(args.grid_out).write_text(json.dumps(table, indent=1))
    t1 = time.perf_counter()
    runs = replay(table, names, seeds, args)
    numbers = report(table, runs, args)
    numbers["wall_s"], numbers["replay_wall_s"] = time.perf_counter() - t0, time.perf_counter() - t1
    print(f"\nwall {numbers['wall_s']:.0f} s, of which the replays {numbers['replay_wall_s']:.0f} s "
          f"({len(names)} searches x {len(seeds)} seeds x {args.budget} trials)")
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=1, default=str))
    return 0


def replay(table: Mapping[str, Any], names: Sequence[str], seeds: Sequence[int],
           args: argparse.Namespace) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """Every search for every seed, on one small local Ray (1 CPU: one trial at a time)."""
    from sweeps import session

    runs: dict[str, dict[int, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="geomix-search-eff-") as tmp, session.ray_session("local",
                                                                                              num_cpus=1):
        for name in names:
            for seed in seeds:
                t0 = time.perf_counter()
                runs.setdefault(name, {})[seed] = run_search(table, name, seed, args, Path(tmp))
                log.warning("%s seed %d replayed in %.0f s", name, seed, time.perf_counter() - t0)
    return runs


if __name__ == "__main__":
    sys.exit(main())
