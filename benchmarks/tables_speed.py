"""How long the analysis takes on a large sweep: all tables from N synthetic trials (target < 5 s for 10 000).

    python benchmarks/tables_speed.py                 # 10 000 trials
    python benchmarks/tables_speed.py --trials 300    # quick

The synthetic frame has the real schema (every TrainConfig column, metrics, statuses; half ablation methods x
seeds, half search trials). It is written through ``store.write_rows`` and read back with
``store.read_results``, so the timing covers what ``python analysis/tables.py RESULTS`` does, minus
interpreter start-up. "cold" is the first build in this process (it includes the lazy imports of scipy
and optuna); "warm" is a second build.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import store
from analysis.build import build_tables
from analysis.catalog.hyper import table_beta_grid, table_policy_level, table_tau
from analysis.catalog.paired import table_paired
from analysis.catalog.retrieval import table_quality, table_retrieval
from analysis.catalog.search_tables import table_param_importance, table_top_trials
from analysis.render import render
from analysis.synthetic import synthetic_trials

TARGET_S = 5.0


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    args = parser.parse_args()
    if args.trials < 20:
        parser.error(f"--trials={args.trials} is invalid: allowed an integer >= 20")
    trials = synthetic_trials(args.trials, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        _, write_s = _timed(store.write_rows, tmp, "trials", trials.to_dict("records"))
        (read, _), read_s = _timed(store.read_results, tmp)
    tables, cold_s = _timed(build_tables, read)
    _, warm_s = _timed(build_tables, read)
    _, render_s = _timed(lambda: [render(t, f) for t in tables for f in ("markdown", "latex", "csv")])
    per_table = []
    for fn in (
        table_retrieval,
        table_quality,
        table_beta_grid,
        table_tau,
        table_policy_level,
        table_param_importance,
        table_top_trials,
        table_paired,
    ):
        per_table.append((fn.__name__, _timed(fn, read)[1]))
    total = read_s + cold_s + render_s
    print(f"{args.trials} trials x {read.shape[1]} columns -> {len(tables)} tables")
    print(f"  write_rows (not in total) {write_s:7.3f} s")
    print(f"  read_results              {read_s:7.3f} s")
    print(f"  build tables, cold        {cold_s:7.3f} s")
    print(f"  build tables, warm        {warm_s:7.3f} s")
    print(f"  render md + tex + csv     {render_s:7.3f} s")
    for name, s in per_table:
        print(f"    {name:<24}{s:7.3f} s")
    print(
        f"total (read + cold build + render) {total:.3f} s vs target {TARGET_S:.1f} s: "
        f"{total / TARGET_S:.2f}x of the budget -> {'OK' if total < TARGET_S else 'TOO SLOW'}"
    )


if __name__ == "__main__":
    main()
