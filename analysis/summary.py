"""The end-of-sweep summary: the one function the sweeps call (``analysis.summary``)."""

from __future__ import annotations

import os

from analysis.catalog.claims import table_claims
from analysis.catalog.evals import table_robustness
from analysis.catalog.retrieval import table_retrieval
from analysis.frame import prepare
from analysis.render import render
from store import read_results

_FALLBACK_METRICS = ("rsum", "r1_i2t", "r1_t2i")


def summary(results: str | os.PathLike[str], *, holm: bool = True) -> str:
    """The Markdown Table-1 analog of a results folder (what a sweep prints at its end), followed by the
    robustness table(s) when the trials have extra evaluation sets and the paper-claims section when they
    have both m³-Mix and FT.

    Args:
        results: a results folder or URI (``store.read_results``).
        holm: Holm-adjust the comparisons with FT (``docs/statistics.md``).

    Returns:
        The tables rendered as Markdown, one blank line apart; when no trial has a retrieval metric, a plain
        mean / std / count of rsum and R@1 per method and status (the metrics it has), or the trial counts.

    Raises:
        ValueError: the folder cannot be read (``store.read_results``).
    """
    trials, _ = read_results(results)
    prepared = prepare(trials)
    table = table_retrieval(prepared)
    if table is not None:
        extra = [*table_robustness(prepared, metrics=("rsum",), holm=holm), table_claims(prepared, holm=holm)]
        return "\n".join(render(t, "markdown") for t in [table, *extra] if t is not None)
    cols = [c for c in _FALLBACK_METRICS if c in trials.columns]
    groups = trials.groupby(["method", "status"])
    if not cols:
        return groups.size().rename("trials").to_string()
    return groups[cols].agg(["mean", "std", "count"]).round(2).to_string()
