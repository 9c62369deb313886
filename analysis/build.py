"""Every table the data supports, in the paper's order, and writing them one file per table.

Adding a table: write ``table_<name>(trials, ...) -> Table | None`` in a module of its own (or beside its
kin), give it a test on a fixture, and list it in :func:`build_tables`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.frame import prepare
from analysis.hyper import table_beta_grid, table_policy_level, table_tau
from analysis.paired import table_paired
from analysis.render import EXTENSIONS, Table, render
from analysis.retrieval import table_quality, table_retrieval
from analysis.search_tables import table_param_importance, table_top_trials
from store import METRIC_COLUMNS


def build_tables(trials: pd.DataFrame, *, metric: str = "rsum", top_k: int = 10) -> list[Table]:
    """Every table the data supports, in the paper's order (tables without data are left out).

    Args:
        trials: a trials frame (``store.read_results``), prepared once here for all tables.
        metric: the objective of the hyper-parameter and search tables.
        top_k: rows of the best-trials table.

    Raises:
        ValueError: ``metric`` is neither a metric column nor a column of ``trials``.
    """
    if metric not in METRIC_COLUMNS and metric not in trials.columns:
        raise ValueError(f"metric={metric!r} is invalid: allowed one of {', '.join(METRIC_COLUMNS)}")
    trials = prepare(trials)
    tables: list[Table | None] = [table_retrieval(trials), table_quality(trials)]
    tables += table_beta_grid(trials, metric)
    tables += [table_tau(trials, metric), table_policy_level(trials, metric)]
    tables += [table_param_importance(trials, metric), table_top_trials(trials, metric, top_k)]
    tables.append(table_paired(trials))
    return [t for t in tables if t is not None]


def write_tables(tables: Sequence[Table], out_dir: str | os.PathLike[str], fmt: str) -> list[Path]:
    """Write each table as ``<out_dir>/<name>.<md|tex|csv>``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in tables:
        path = out / f"{t.name}.{EXTENSIONS[fmt]}"
        path.write_text(render(t, fmt), encoding="utf-8")
        paths.append(path)
    return paths
