"""Every table the data supports, in the paper's order, and writing them one file per table.

Adding a table: a new module in :mod:`analysis.catalog` with a function ``trials -> Table | None``
decorated ``@table(order=...)``, and its test; :func:`build_tables` finds it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis import catalog
from analysis.frame import prepare
from analysis.render import EXTENSIONS, Table, render
from store import METRIC_COLUMNS


def build_tables(
    trials: pd.DataFrame, *, metric: str = "rsum", top_k: int = 10, holm: bool = True
) -> list[Table]:
    """Every table the data supports, in the paper's order (tables without data are left out).

    Args:
        trials: a trials frame (``store.read_results``), prepared once here for all tables.
        metric: the objective of the hyper-parameter and search tables.
        top_k: rows of the best-trials table.
        holm: Holm-adjust the comparisons with FT (paired columns, claims); False = unadjusted.

    Raises:
        ValueError: ``metric`` is neither a metric column nor a column of ``trials``.
    """
    if metric not in METRIC_COLUMNS and metric not in trials.columns:
        raise ValueError(f"metric={metric!r} is invalid: allowed one of {', '.join(METRIC_COLUMNS)}")
    trials = prepare(trials)
    options = {"metric": metric, "k": top_k, "holm": holm}
    return [t for fn in catalog.builders() for t in catalog.call(fn, trials, **options)]


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
