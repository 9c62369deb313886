"""Table 1 (retrieval per method and data set) and Table 2 (embedding quality with the components on/off).

Rows are methods in :func:`analysis.frame.method_order`; cells are mean ± sample std over seeds of the
completed trials, with seed counts, a ``runs`` column counting every status, and the best cell per column
marked. ``search`` trials are left out (they are not a method of the paper).
"""

from __future__ import annotations

import pandas as pd

from analysis.catalog import table
from analysis.frame import (
    INPUT_MIXES,
    OK,
    cells,
    direction_note,
    display_name,
    excluded_note,
    method_order,
    method_rows,
    numeric,
    runs_column,
    seed_stats,
    term_symbols,
)
from analysis.render import Table
from analysis.stats import DASH

RETRIEVAL = {
    "r1_i2t": "i→t R@1",
    "r5_i2t": "i→t R@5",
    "r10_i2t": "i→t R@10",
    "r1_t2i": "t→i R@1",
    "r5_t2i": "t→i R@5",
    "r10_t2i": "t→i R@10",
}
QUALITY = {"rsum": "rsum", "align": "align", "unif": "unif", "gap": "gap", "ece": "ECE", "zs_acc": "ZS acc"}


@table(10)
def table_retrieval(trials: pd.DataFrame, metrics: dict[str, str] | None = None) -> Table | None:
    """The Table-1 analog: rows = methods in table order, columns = recall per data set.

    Args:
        trials: a trials frame (``store.read_results``); ``search`` trials are left out.
        metrics: metric column -> header; default R@1/5/10 image->text and text->image.

    Returns:
        A :class:`Table` (``values``: the means), or None when no trial has a retrieval metric.
    """
    metrics = metrics or RETRIEVAL
    found = method_rows(trials, metrics)
    if found is None:
        return None
    df, present = found
    df = numeric(df, present)
    ok = df[df["status"] == OK]
    datasets = sorted(df["dataset"].unique())
    methods = method_order(df)
    stats, seeds = seed_stats(ok, ["dataset", "method"], present)
    runs = runs_column(df, ["method"])
    frame = {"method": [display_name(m) for m in methods]}
    best: dict[str, list[bool]] = {"method": [False] * len(methods)}
    values: dict[str, list[float]] = {}
    multi = len(datasets) > 1
    for ds in datasets:
        prefix = f"{ds} " if multi else ""
        index = [(ds, m) for m in methods]
        for m in present:
            col = prefix + metrics[m]
            frame[col], best[col], values[col] = cells(stats, seeds, index, m, None)
        ncol = prefix + "n"
        frame[ncol] = [str(int(seeds.get((ds, m), 0))) for m in methods]
        best[ncol] = [False] * len(methods)
    frame["runs"] = [runs.get((m,), "0 ok") for m in methods]
    best["runs"] = [False] * len(methods)
    title = "Retrieval (%) on " + ", ".join(datasets) + ": mean ± std over seeds"
    notes = [
        "Mean ± sample std (ddof = 1) over seeds; n = seeds with a completed trial; std of one seed is –; "
        "(n=k) marks a cell with fewer values than the row's seeds.",
        direction_note(present),
        *excluded_note(df),
    ]
    return Table(
        "table1_retrieval",
        title,
        pd.DataFrame(frame),
        pd.DataFrame(best),
        notes,
        pd.DataFrame(values, index=[display_name(m) for m in methods]),
    )


def _flag(group: pd.DataFrame, col: str) -> str:
    v = pd.to_numeric(group[col], errors="coerce").max()
    return "✓" if pd.notna(v) and v > 0 else DASH


def _components(group: pd.DataFrame, terms: dict[str, str]) -> dict[str, str]:
    """✓/– per mix term from ``loss.w_*``, plus geometry, input-level mix and τ of one method's trials."""
    out = {symbol: _flag(group, f"loss.w_{t}") for t, symbol in terms.items()}
    any_mix = any(v == "✓" for v in out.values())
    geometry = (
        group["mix.geometry"].dropna() if "mix.geometry" in group.columns else pd.Series([], dtype=object)
    )
    out["geometry"] = str(geometry.iloc[0]) if any_mix and len(geometry) else DASH
    kind = group["loss.kind"].dropna() if "loss.kind" in group.columns else pd.Series([], dtype=object)
    kind_s = str(kind.iloc[0]) if len(kind) else ""
    out["input mix"] = INPUT_MIXES.get(kind_s, DASH)
    if "loss.tau" in group.columns:
        tau = pd.to_numeric(group["loss.tau"], errors="coerce").dropna()
        out["τ"] = "learned" if tau.empty else "/".join(f"{t:g}" for t in sorted(tau.unique()))
    return out


@table(20)
def table_quality(trials: pd.DataFrame, metrics: dict[str, str] | None = None) -> Table | None:
    """Embedding-quality / ablation table: components on/off -> rsum, align, unif, gap, ECE, ZS acc.

    Rows are methods (per data set when there are several); component flags come from the config
    columns (``loss.w_m2 > 0`` etc., one column per registered term the data has), so the table shows
    what actually ran.
    """
    metrics = metrics or QUALITY
    found = method_rows(trials, metrics)
    if found is None:
        return None
    df, present = found
    terms = term_symbols(df)
    components = [*(f"loss.w_{t}" for t in terms), "mix.geometry", "loss.kind", "loss.tau"]
    df = numeric(df, present, keep=components)
    ok = df[df["status"] == OK]
    datasets = sorted(df["dataset"].unique())
    methods = method_order(df)
    stats, seeds = seed_stats(ok, ["dataset", "method"], present)
    runs = runs_column(df, ["dataset", "method"])
    pairs = set(zip(df["dataset"], df["method"]))
    index = [(ds, m) for ds in datasets for m in methods if (ds, m) in pairs]
    groups = {k: g for k, g in df.groupby(["dataset", "method"])}
    comps = [_components(groups[k], terms) for k in index]
    frame: dict[str, list[str]] = {}
    if len(datasets) > 1:
        frame["data"] = [k[0] for k in index]
    frame["method"] = [display_name(k[1]) for k in index]
    for c in comps[0]:
        frame[c] = [row.get(c, "?") for row in comps]
    label_cols = len(frame)
    best: dict[str, list[bool]] = {c: [False] * len(index) for c in frame}
    values: dict[str, list[float]] = {}
    row_groups = [k[0] for k in index]
    for m in present:
        col = metrics[m]
        frame[col], best[col], values[col] = cells(stats, seeds, index, m, row_groups)
    frame["n"] = [str(int(seeds.get(k, 0))) for k in index]
    frame["runs"] = [runs.get(k, "0 ok") for k in index]
    best["n"] = best["runs"] = [False] * len(index)
    notes = [
        "✓ = term on (its loss weight > 0); geometry applies to the embedding mixes; τ learned = learnable "
        "temperature. Mean ± sample std over seeds.",
        direction_note(present),
        *excluded_note(df),
    ]
    return Table(
        "table2_quality",
        "Embedding quality and ablation: components on/off",
        pd.DataFrame(frame),
        pd.DataFrame(best),
        notes,
        pd.DataFrame(values, index=[f"{k[0]}/{k[1]}" for k in index]),
        label_cols=label_cols,
    )
