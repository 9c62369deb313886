"""Hyper-parameter tables: the Beta(α, β) grid of each mix term, τ x method, λ policy x mixing level.

Each is a grid of ``metric`` mean ± sample std (number of completed trials), pooled over seeds and the
other settings, with the best cell of the whole grid marked (:func:`pivot`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.catalog import table
from analysis.frame import (
    INPUT_MIXES,
    OK,
    axis_levels,
    best_flags,
    decimals,
    display_name,
    excluded_note,
    method_order,
    prepare,
    term_symbols,
)
from analysis.render import Table
from analysis.stats import DASH, mean_std_text

#: λ policy id -> row label of the policy-level table (``mix.<term>.policy``).
POLICY_NAMES = {"beta": "random (Beta)", "fixed": "fixed", "progressive": "progressive", "history": "history"}


def pivot(
    df: pd.DataFrame, rows: pd.Series, cols: pd.Series, metric: str, row_name: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Cells ``mean ± std (n)`` of ``metric`` over the trials in each (row, col) level; best over the grid.

    Args:
        df: the trials; ``rows`` / ``cols``: an ordered categorical level per trial (:func:`axis_levels`).
        row_name: the header of the label column.

    Returns:
        ``(frame, best, means)``: display strings, best mask and the means behind them.
    """
    data = pd.DataFrame({"r": rows, "c": cols, "v": pd.to_numeric(df[metric], errors="coerce")}).dropna()
    agg = data.groupby(["r", "c"], observed=True)["v"].agg(["mean", "std", "count"])
    rlev = [r for r in rows.cat.categories if r in set(data["r"])]
    clev = [c for c in cols.cat.categories if c in set(data["c"])]
    dec = decimals(metric)
    frame = {row_name: rlev}
    means = {}
    for c in clev:
        col, mcol = [], []
        for r in rlev:
            if (r, c) in agg.index:
                a = agg.loc[(r, c)]
                col.append(f"{mean_std_text(a['mean'], a['std'], dec)} ({int(a['count'])})")
                mcol.append(float(a["mean"]))
            else:
                col.append(DASH)
                mcol.append(math.nan)
        frame[str(c)], means[str(c)] = col, mcol
    flat = [m for c in means for m in means[c]]
    flags = best_flags(flat, metric, None)
    best = {row_name: [False] * len(rlev)}
    for i, c in enumerate(means):
        best[c] = flags[i * len(rlev) : (i + 1) * len(rlev)]
    return pd.DataFrame(frame), pd.DataFrame(best), pd.DataFrame(means, index=rlev)


def _grid_note(metric: str) -> str:
    return (
        f"Cells: {metric} mean ± sample std (number of completed trials), pooled over seeds and the "
        f"other settings; best cell marked; {DASH} = no trial."
    )


def _grid_table(name: str, title: str, grid: tuple, metric: str, counted: pd.DataFrame) -> Table:
    frame, best, vals = grid
    return Table(name, title, frame, best, [_grid_note(metric), *excluded_note(counted)], vals)


@table(30)
def table_beta_grid(trials: pd.DataFrame, metric: str = "rsum") -> list[Table]:
    """``metric`` over the Beta(α, β) grid of each mix term whose α or β varies among trials using it.

    A term counts for a trial when its weight ``loss.w_<term>`` is > 0 and its λ policy is ``beta``; an
    unset β is the symmetric Beta(α, α). Continuous α / β (a search) are binned into quantile bins.
    """
    df = prepare(trials)
    out: list[Table] = []
    if metric not in df.columns:
        return out
    for term, name in term_symbols(df).items():
        a_col, b_col, p_col = f"mix.{term}.alpha", f"mix.{term}.beta", f"mix.{term}.policy"
        if a_col not in df.columns:
            continue
        use = df[pd.to_numeric(df[f"loss.w_{term}"], errors="coerce").fillna(0) > 0]
        if p_col in use.columns:
            use = use[use[p_col].fillna("beta") == "beta"]
        beta = use[b_col] if b_col in use.columns else pd.Series(np.nan, index=use.index)
        if use.empty or (use[a_col].nunique() < 2 and beta.nunique(dropna=False) < 2):
            continue
        ok = use[use["status"] == OK]
        if ok.empty:
            continue
        rows = axis_levels(ok[a_col], nan_label="?")
        cols = axis_levels(beta.loc[ok.index], nan_label="β = α")
        title = f"{metric} over the Beta(α, β) grid of the {name} term"
        grid = pivot(ok, rows, cols, metric, "α \\ β")
        out.append(_grid_table(f"table3_beta_grid_{term}", title, grid, metric, use))
    return out


@table(40)
def table_tau(trials: pd.DataFrame, metric: str = "rsum") -> Table | None:
    """``metric`` by temperature (rows: learned τ, then fixed values) x method (columns)."""
    df = prepare(trials)
    if "loss.tau" not in df.columns or metric not in df.columns:
        return None
    taus = pd.to_numeric(df["loss.tau"], errors="coerce")
    if taus.nunique(dropna=False) < 2:
        return None
    ok = df[df["status"] == OK]
    if ok.empty:
        return None
    rows = axis_levels(ok["loss.tau"], nan_label="learned")
    # dict.fromkeys: a user id spelled like a paper name ("FT") must not repeat a category.
    order = list(dict.fromkeys(display_name(m) for m in method_order(ok)))
    cols = pd.Series(
        pd.Categorical(ok["method"].map(display_name), categories=order, ordered=True), index=ok.index
    )
    grid = pivot(ok, rows, cols, metric, "τ")
    return _grid_table("table3_tau", f"{metric} by temperature τ and method", grid, metric, df)


def _combo_label(
    kind: str, on: tuple[bool, ...], policies: tuple[str, ...], symbols: list[str]
) -> tuple[str, str]:
    """(λ policy, mixing level) of one configuration: input-level kind, or the active embedding terms."""
    if kind in INPUT_MIXES:
        return POLICY_NAMES["beta"], "input: " + INPUT_MIXES[kind]
    names = [name for name, active in zip(symbols, on) if active]
    if not names:
        return "no mix", "none"
    used = sorted({p for p, active in zip(policies, on) if active})
    policy = POLICY_NAMES.get(used[0], used[0]) if len(used) == 1 else "mixed (" + "/".join(used) + ")"
    return policy, "feature: " + "+".join(names)


def _policy_and_level(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per trial: the λ policy of its active mix terms and the mixing level (which terms / input mix)."""
    terms = term_symbols(df)
    keys = pd.DataFrame(index=df.index)
    keys["kind"] = df["loss.kind"].fillna("contrastive").astype(str) if "loss.kind" in df else "contrastive"
    for t in terms:
        keys[f"on_{t}"] = pd.to_numeric(df[f"loss.w_{t}"], errors="coerce").fillna(0) > 0
        p = f"mix.{t}.policy"
        keys[f"p_{t}"] = df[p].fillna("beta").astype(str) if p in df else "beta"
    # Label each distinct configuration once (a search has few), then broadcast back to the trials.
    codes, uniques = pd.factorize(pd.MultiIndex.from_frame(keys))
    symbols = list(terms.values())
    labels = [_combo_label(u[0], tuple(u[1::2]), tuple(u[2::2]), symbols) for u in uniques]
    policy = pd.Series([labels[c][0] for c in codes], index=df.index, dtype=object)
    level = pd.Series([labels[c][1] for c in codes], index=df.index, dtype=object)
    return policy, level


@table(50)
def table_policy_level(trials: pd.DataFrame, metric: str = "rsum") -> Table | None:
    """λ policy (rows) x mixing level (columns), the shape of P-Mixup's ablation.

    Mixing level is ``none``, ``input: i-Mix`` / ``input: Un-Mix`` (pixels, λ ~ Beta) or ``feature: <terms>``
    (embeddings; the terms with weight > 0). Policy is that of the active terms (``mixed (...)`` if
    they differ).
    """
    df = prepare(trials)
    if metric not in df.columns:
        return None
    df = df[df["method"] != "zs"]  # no training, no mixing: not a point of this ablation
    ok = df[df["status"] == OK]
    if ok.empty:
        return None
    policy, level = _policy_and_level(ok)
    if policy.nunique() * level.nunique() < 2:
        return None
    named = ["no mix", *POLICY_NAMES.values()]
    p_order = [*named, *sorted(set(policy) - set(named))]
    l_order = [
        "none",
        *sorted(v for v in set(level) if v.startswith("input")),
        *sorted(v for v in set(level) if v.startswith("feature")),
    ]
    rows = pd.Series(pd.Categorical(policy, categories=p_order, ordered=True), index=ok.index)
    cols = pd.Series(pd.Categorical(level, categories=l_order, ordered=True), index=ok.index)
    grid = pivot(ok, rows, cols, metric, "λ policy")
    return _grid_table("table3_policy_level", f"{metric} by λ policy and mixing level", grid, metric, df)
