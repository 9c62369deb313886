"""Table 4: each method minus a baseline (FT), paired by seed, with a Student-t interval, Holm's adjustment
across the methods (on by default) and the minimum detectable effect (MDE) of each comparison."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from analysis import compare
from analysis.catalog import table
from analysis.frame import (
    OK,
    decimals,
    display_name,
    excluded_note,
    method_order,
    method_rows,
    numeric,
)
from analysis.render import Table


@table(80)
def table_paired(
    trials: pd.DataFrame,
    metrics: Sequence[str] = ("rsum", "r1_i2t", "r1_t2i"),
    baseline: str = "ft",
    confidence: float = 0.95,
    holm: bool = True,
) -> Table | None:
    """Each method minus ``baseline``, paired by seed: mean difference with a t interval, the p-value and
    the MDE at 80 % power, per metric.

    Pairs are seeds where both have a completed trial (trials of one seed averaged first). With ``holm``
    (the default) the comparisons of one metric within one data set are Holm-adjusted: the p-value is the
    adjusted one, ``†`` marks adjusted p < 1 - confidence, and the interval is the one that excludes 0
    exactly then (:func:`analysis.stats.holm_adjust`). Without, ``†`` marks an unadjusted interval that
    excludes 0. With fewer than 2 pairs no interval, p-value or MDE exists and the cell says so.
    """
    found = method_rows(trials, metrics)
    if found is None or baseline not in set(found[0]["method"]):
        return None
    df, present = found
    df = numeric(df, present)
    ok = df[df["status"] == OK]
    seeds = compare.per_seed(ok, present)
    datasets = sorted(df["dataset"].unique())
    multi = len(datasets) > 1
    header = {m: f"Δ {m} [{confidence:.0%} CI]" for m in present}
    p_head = {m: f"p (Holm) {m}" if holm else f"p {m}" for m in present}
    mde_head = {m: f"{compare.MDE_HEADER} {m}" for m in present}
    cols = [c for m in present for c in (header[m], p_head[m], mde_head[m])]
    frame: dict[str, list[str]] = {"data": [], "method": [], "pairs": [], **{c: [] for c in cols}}
    families: dict[str, int] = {}
    notes = []
    for ds in datasets:
        methods = [m for m in method_order(df[df["dataset"] == ds]) if m != baseline]
        per_metric = {
            m: compare.versus(seeds, ds, baseline, methods, m, confidence=confidence, holm=holm)
            for m in present
        }
        if per_metric[present[0]] is None:
            notes.append(f"{ds}: no completed {display_name(baseline)} trial, no comparison.")
            continue
        for m in present:
            label = f"{ds} {m}" if multi else m
            families[label] = compare.tested(per_metric[m].values())
        for method in methods:
            frame["data"].append(ds)
            frame["method"].append(display_name(method))
            frame["pairs"].append(str(compare.n_pairs(seeds, ds, baseline, method)))
            for m in present:
                d = per_metric[m][method]
                frame[header[m]].append(compare.diff_text(d, decimals(m)))
                frame[p_head[m]].append(compare.p_text(d))
                frame[mde_head[m]].append(compare.mde_text(d, decimals(m)))
    if not frame["method"]:
        return None
    if not multi:
        del frame["data"]
    notes = [
        f"Difference method − {display_name(baseline)} over seeds both completed (paired by seed), mean and "
        f"{confidence:.0%} Student-t interval; † = significant; (n<2, no CI) = fewer than 2 pairs.",
        compare.family_note(display_name(baseline), families, holm=holm, confidence=confidence),
        compare.mde_note(confidence, holm=holm),
        *notes,
        *excluded_note(df),
    ]
    return Table(
        "table4_paired_vs_ft",
        f"Paired differences against {display_name(baseline)}",
        pd.DataFrame(frame),
        None,
        notes,
        label_cols=2 if multi else 1,
    )
