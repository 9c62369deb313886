"""Table 4: each method minus a baseline (FT), paired by seed, with a Student-t interval."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

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
from analysis.stats import fmt_paired, paired_t_interval


@table(80)
def table_paired(
    trials: pd.DataFrame,
    metrics: Sequence[str] = ("rsum", "r1_i2t", "r1_t2i"),
    baseline: str = "ft",
    confidence: float = 0.95,
) -> Table | None:
    """Each method minus ``baseline``, paired by seed, mean difference with a t interval.

    Pairs are seeds where both have a completed trial (trials of one seed averaged first). ``†`` marks an
    interval that excludes 0; with fewer than 2 pairs no interval exists and the cell says so.
    """
    found = method_rows(trials, metrics)
    if found is None or baseline not in set(found[0]["method"]):
        return None
    df, present = found
    df = numeric(df, present)
    ok = df[df["status"] == OK]
    per_seed = ok.groupby(["dataset", "method", "seed"])[present].mean()
    groups = per_seed.index.droplevel("seed")
    datasets = sorted(df["dataset"].unique())
    multi = len(datasets) > 1
    header = {m: f"Δ {m} [{confidence:.0%} CI]" for m in present}
    frame: dict[str, list[str]] = {"data": [], "method": [], "pairs": [], **{h: [] for h in header.values()}}
    notes = []
    for ds in datasets:
        if (ds, baseline) not in groups:
            notes.append(f"{ds}: no completed {display_name(baseline)} trial, no comparison.")
            continue
        base = per_seed.loc[(ds, baseline)]
        for method in method_order(df[df["dataset"] == ds]):
            if method == baseline:
                continue
            other = per_seed.loc[(ds, method)] if (ds, method) in groups else base[:0]
            seeds = base.index.intersection(other.index)
            frame["data"].append(ds)
            frame["method"].append(display_name(method))
            frame["pairs"].append(str(len(seeds)))
            for m in present:
                d = paired_t_interval(
                    base.loc[seeds, m].to_numpy(), other.loc[seeds, m].to_numpy(), confidence
                )
                frame[header[m]].append(fmt_paired(d, decimals(m)) + (" †" if d.excludes_zero else ""))
    if not frame["method"]:
        return None
    if not multi:
        del frame["data"]
    notes = [
        f"Difference method − {display_name(baseline)} over seeds both completed (paired by seed), mean and "
        f"{confidence:.0%} Student-t interval; † = the interval excludes 0; "
        "(n<2, no CI) = fewer than 2 pairs.",
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
