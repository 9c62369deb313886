"""What the results store costs a large sweep: N trials x 10 reports, written as a sweep writes them.

Each trial reports 10 times (9 validation points, then the final report with its validation and test
metrics: 11 history rows) and then gets its trials row; every report and every finished trial is one
``store.write_rows`` call, as ``sweeps.records.ResultsCallback`` makes them. The rows are built by
``store.history_rows`` / ``store.trial_row`` from a default ``TrainConfig``, so they have the real columns.
Three writers, in the same run:

- **store, batched**: ``write_rows`` inside ``with store.batched():`` (one part per 10 000 rows or 2 s);
- **store, part per call**: plain ``write_rows``, one Parquet part per call;
- **old writer**: the schema-1 writer this store replaces (read the table's one file, concat, drop
  duplicates by key, rewrite it atomically), re-implemented compactly here.

The last two are slow, so they run on the first ``--sample`` trials and are extrapolated to N, labelled
"est.": the part-per-call writer linearly (every call costs the same); the old writer's bytes by ``a*n +
b*n^2`` fitted to its runs on ``sample / 2`` and ``sample`` trials (each of its writes rewrites everything
before it, so its bytes grow with the square of the reports), its time by ``c0 + c1 * bytes`` per call,
fitted over its calls on ``sample`` trials. "data" is the final rows (one per
key) as one zstd Parquet file per table; "x data" is bytes written / data. Targets: the store's bytes
linear in the reports and within 2x of the data, its whole write under 60 s.

    python benchmarks/results_store.py                 # 10 000 trials
    python benchmarks/results_store.py --trials 500    # quick
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import store
from geomix import atomic
from geomix.config import TrainConfig, to_dict
from geomix.registry import METRIC_KEYS

REPORTS = 10
TARGET_S, TARGET_X = 60.0, 2.0
_ENV = {"version.geomix": "0.1.0", "version.torch": "2.6.0", "version.open_clip": "3.1.0",
        "version.ray": "2.50.0", "git_commit": "0" * 40}


def _metrics(prefix: str, rng: random.Random) -> dict[str, float]:
    return {f"{prefix}{k}": rng.uniform(0, 100) for k in METRIC_KEYS}


def calls(n_trials: int) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """``(table, rows)`` of every write_rows call of a sweep of ``n_trials``, in the order it makes them."""
    config = {**to_dict(TrainConfig()), "method": "m3_mix"}
    rng = random.Random(0)  # metric values as random as real ones, so that compression is not flattered
    for t in range(n_trials):
        tid = f"a1b2c_{t:05d}"
        for s in range(1, REPORTS + 1):
            report = {"epoch": s, "step": 40 * s, "samples_seen": 2560 * s, "train_loss": 2.0 / s,
                      "loss_clip": rng.random(), "loss_m2": rng.random(), "lam_m2": rng.random(),
                      "loss_vl": rng.random(), "lam_vl": rng.random(), **_metrics("val_", rng)}
            if s == REPORTS:
                report.update(_metrics("test_", rng))
            rows = store.history_rows(tid, report)
            for row in rows:
                row["reported_at"] = 1.7e9 + 30 * t + 3 * s + rng.random()
            yield "history", rows
        result = {**_metrics("test_", rng), **_metrics("val_", rng), "epoch": REPORTS,
                  "steps": 40 * REPORTS, "samples_seen": 2560 * REPORTS, "wall_s": rng.uniform(20, 40),
                  "samples_per_s": rng.uniform(800, 1000), "num_workers": 0, "device": "cpu",
                  "node_ids": "f" * 56, "embeddings_path": None, "started_at": 1.7e9 + 30 * t,
                  "finished_at": 1.7e9 + 30 * t + 30, "trial_wall_s": 30.0, "overrides": "{}",
                  "method_rank": t % 12}
        yield "trials", [store.trial_row(sweep="bench", trial_id=tid, config=config, result=result, env=_ENV)]


def old_write_rows(folder: str, table: str, rows: list[dict[str, Any]]) -> None:
    """The schema-1 writer: merge ``rows`` into ``<folder>/<table>.parquet`` by key, rewriting the file."""
    path = os.path.join(folder, f"{table}.parquet")
    new = pd.DataFrame(rows)
    if os.path.exists(path):
        new = pd.concat([pq.read_table(path).to_pandas(), new], ignore_index=True, sort=False)
    merged = new.drop_duplicates(subset=list(store.TABLES[table]), keep="last")
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(merged, preserve_index=False), sink)
    atomic.write_bytes(path, sink.getvalue().to_pybytes())


def _tree_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def _run(write: Callable[[str, str, list[dict[str, Any]]], None], n_trials: int, folder: str,
         batched: bool = False) -> tuple[float, int, int, list[tuple[int, float]]]:
    """Wall seconds (the last part written included), bytes written and number of calls of a sweep of
    ``n_trials`` through ``write``; for the old writer also (bytes, seconds) of each call."""
    old = write is old_write_rows
    written = n = 0
    each: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    with store.batched() if batched else contextlib.nullcontext():
        for table, rows in calls(n_trials):
            t_call = time.perf_counter()
            write(folder, table, rows)
            n += 1
            if old:  # the whole file is written again by every call
                size = os.path.getsize(os.path.join(folder, f"{table}.parquet"))
                each.append((size, time.perf_counter() - t_call))
                written += size
    wall = time.perf_counter() - t0
    return wall, (written if old else _tree_bytes(folder)), n, each


def _data_bytes(folder: str) -> int:
    """The final rows, one per key, as one zstd Parquet file per table."""
    trials, history = store.read_results(folder)
    total = 0
    for frame in (trials, history):
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(frame.drop(columns="results_dir"), preserve_index=False), sink,
                       compression="zstd")
        total += sink.getvalue().size
    return total


def _fit(k: int, at_half: float, at_k: float, n: int) -> float:
    """``a*n + b*n^2`` through the measurements at ``k // 2`` and ``k`` trials (b >= 0: at least linear)."""
    h = k // 2
    b = max((at_k / k - at_half / h) / (k - h), 0.0)
    a = at_k / k - b * k
    return a * n + b * n * n


def _seconds_per_byte(each: list[tuple[int, float]]) -> tuple[float, float]:
    """``(c0, c1)`` of the least-squares line ``seconds = c0 + c1 * bytes`` over the old writer's calls."""
    m = len(each)
    mean_b = sum(b for b, _ in each) / m
    mean_s = sum(s for _, s in each) / m
    var = sum((b - mean_b) ** 2 for b, _ in each)
    c1 = max(sum((b - mean_b) * (s - mean_s) for b, s in each) / var, 0.0) if var else 0.0
    return mean_s - c1 * mean_b, c1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=200,
                        help="trials the two slow writers run on before extrapolating (default 200)")
    args = parser.parse_args()
    if args.trials < 10 or not 4 <= args.sample <= args.trials:
        parser.error(f"--trials={args.trials} --sample={args.sample} is invalid: allowed trials >= 10 "
                     "and 4 <= sample <= trials")
    n, k = args.trials, args.sample
    tmp = tempfile.mkdtemp(prefix="results_store-")
    try:
        names = ("batched", "half", "per_call", "old", "old_half")
        folders = {name: os.path.join(tmp, name) for name in names}
        wall_b, bytes_b, calls_b, _ = _run(store.write_rows, n, folders["batched"], batched=True)
        t0 = time.perf_counter()
        trials, history = store.read_results(folders["batched"])
        read_b = time.perf_counter() - t0
        assert len(trials) == n and len(history) == n * (REPORTS + 1), (len(trials), len(history))
        data = _data_bytes(folders["batched"])
        _, bytes_half, calls_half, _ = _run(store.write_rows, n // 2, folders["half"], batched=True)
        wall_p, bytes_p, calls_p, _ = _run(store.write_rows, k, folders["per_call"])
        t0 = time.perf_counter()
        store.read_results(folders["per_call"])
        read_p = time.perf_counter() - t0
        wall_o, bytes_o, calls_o, each_o = _run(old_write_rows, k, folders["old"])
        _, bytes_o1, _, _ = _run(old_write_rows, k // 2, folders["old_half"])
        files = {name: sum(len(f) for _, _, f in os.walk(path)) for name, path in folders.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lin = n / k
    bytes_o_n = _fit(k, bytes_o1, bytes_o, n)
    c0, c1 = _seconds_per_byte(each_o)
    nan = float("nan")
    table = [  # writer, trials, calls, files, bytes, write seconds, read seconds
        ("store, batched", n, calls_b, files["batched"], bytes_b, wall_b, read_b),
        ("store, part per call", k, calls_p, files["per_call"], bytes_p, wall_p, read_p),
        (f"  at {n} (est. x{lin:g})", n, calls_p * lin, files["per_call"] * lin, bytes_p * lin, wall_p * lin,
         read_p * lin),
        ("old rewrite-the-file", k, calls_o, files["old"], bytes_o, wall_o, nan),
        (f"  at {n} (est.)", n, calls_o * lin, files["old"], bytes_o_n, c0 * calls_o * lin + c1 * bytes_o_n,
         nan),
    ]
    print(f"{n} trials x {REPORTS} reports: {n * (REPORTS + 1)} history rows, {n} trials rows, {calls_b} "
          f"write_rows calls; data (final rows, zstd, one file per table) {data / 1e6:.1f} MB")
    print(f"{'writer':<26}{'trials':>7}{'calls':>8}{'files':>8}{'MB written':>13}{'x data':>9}"
          f"{'write s':>10}{'read s':>8}")
    for name, trials_run, c, f, b, w, r in table:
        x = b / (data * trials_run / n)
        print(f"{name:<26}{trials_run:>7}{c:>8.0f}{f:>8.0f}{b / 1e6:>13.1f}{x:>9.2f}{w:>10.1f}{r:>8.1f}")
    per_call, old = table[2], table[4]
    print(f"ratios at {n} trials (est. from {k}): old / batched {old[4] / bytes_b:.0f}x the bytes, "
          f"{old[5] / wall_b:.0f}x the time; part per call / batched {per_call[4] / bytes_b:.1f}x the "
          f"bytes, {per_call[5] / wall_b:.1f}x the time")
    print(f"linear: batched bytes per call {bytes_half / calls_half:.0f} at {n // 2} trials, "
          f"{bytes_b / calls_b:.0f} at {n}")
    verdict = {True: "OK", False: "MISSED"}
    print(f"targets (store, batched): bytes {bytes_b / data:.2f}x data (<= {TARGET_X:g}x: "
          f"{verdict[bytes_b / data <= TARGET_X]}), write {wall_b:.1f} s (< {TARGET_S:g} s: "
          f"{verdict[wall_b < TARGET_S]})")


if __name__ == "__main__":
    main()
