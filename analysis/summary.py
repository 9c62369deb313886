"""The end-of-sweep summary: the one function the sweeps call (``analysis.summary``)."""

from __future__ import annotations

import os

from analysis.catalog.retrieval import table_retrieval
from analysis.render import render
from store import read_results

_FALLBACK_METRICS = ("rsum", "r1_i2t", "r1_t2i")


def summary(results: str | os.PathLike[str]) -> str:
    """The Markdown Table-1 analog of a results folder (what a sweep prints at its end).

    Args:
        results: a results folder or URI (``store.read_results``).

    Returns:
        Table 1 rendered as Markdown; when no trial has a retrieval metric, a plain mean / std / count of
        rsum and R@1 per method and status (the metrics it has), or the trial counts.

    Raises:
        ValueError: the folder cannot be read (``store.read_results``).
    """
    trials, _ = read_results(results)
    table = table_retrieval(trials)
    if table is not None:
        return render(table, "markdown")
    cols = [c for c in _FALLBACK_METRICS if c in trials.columns]
    groups = trials.groupby(["method", "status"])
    if not cols:
        return groups.size().rename("trials").to_string()
    return groups[cols].agg(["mean", "std", "count"]).round(2).to_string()
