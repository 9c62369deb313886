"""Paper tables from result folders: ``python analysis/tables.py RESULTS... [--format ...] [--out DIR]``.

Every table is a pure function ``trials DataFrame -> Table`` (see :mod:`analysis._render`), so it can be
tested on a fixture and reused in a notebook:

* :func:`table_retrieval` - the Table-1 analog: methods in the paper's order x R@1/5/10 both directions
  per data set, mean ± std over seeds, seed counts, best per column marked;
* :func:`table_quality` - components on/off -> rsum, alignment, uniformity, modality gap, ECE, ZS acc;
* :func:`table_beta_grid`, :func:`table_tau`, :func:`table_policy_level` - hyper-parameter tables;
* :func:`table_param_importance`, :func:`table_top_trials` - an Optuna search's importances and best trials;
* :func:`table_paired` - each method minus FT, paired by seed, with a 95 % t interval.

Only ``completed`` trials enter a mean; failed, diverged and early-stopped ones are counted in a ``runs``
column or a note. Means are over seeds (trials of one seed are averaged first); std is the sample std.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as ``python analysis/tables.py``: import from the repository root, not from analysis/ itself
    # (its module names would otherwise shadow installed packages).
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis._render import EXTENSIONS, FORMATS, Table, render  # noqa: E402
from analysis._stats import DASH, fmt_num, fmt_paired, paired_t_interval  # noqa: E402
from geomix import logs  # noqa: E402
from geomix.results import METHOD_IDS, METRIC_COLUMNS, read_results  # noqa: E402

log = logging.getLogger("analysis.tables")

METHOD_NAMES: dict[str, str] = {
    "zs": "ZS",
    "ft": "FT",
    "ft_tau0.05": "FT (τ = 0.05)",
    "ft_tau0.10": "FT (τ = 0.10)",
    "imix": "i-Mix",
    "unmix": "Un-Mix",
    "m2_mix": "m²-Mix",
    "v_mix": "V-Mix",
    "l_mix": "L-Mix",
    "vl_mix": "VL-Mix",
    "m3_mix": "m³-Mix",
    "m3_mix_linear": "m³-Mix (linear)",
    "search": "search",
}
RETRIEVAL = {
    "r1_i2t": "i→t R@1",
    "r5_i2t": "i→t R@5",
    "r10_i2t": "i→t R@10",
    "r1_t2i": "t→i R@1",
    "r5_t2i": "t→i R@5",
    "r10_t2i": "t→i R@10",
}
QUALITY = {"rsum": "rsum", "align": "align", "unif": "unif", "gap": "gap", "ece": "ECE", "zs_acc": "ZS acc"}
# Direction of each metric: True = higher is better, False = lower, None = descriptive (never marked best).
# A copy of geomix.metrics.HIGHER_IS_BETTER (a test keeps them equal) so that tables need not import torch.
HIGHER_IS_BETTER: dict[str, bool | None] = {
    **dict.fromkeys(("r1_i2t", "r5_i2t", "r10_i2t", "r1_t2i", "r5_t2i", "r10_t2i", "rsum"), True),
    "align": True,
    "unif": True,
    "unif_img": False,
    "unif_txt": False,
    "gap": None,
    "cos_pos": None,
    "cos_neg": None,
    "zs_acc": True,
    "ece": False,
}
LOWER_IS_BETTER = frozenset(k for k, v in HIGHER_IS_BETTER.items() if v is False) | {"train_loss"}
TERMS = {"m2": "m²", "v": "V", "l": "L", "vl": "VL"}
POLICY_NAMES = {"beta": "random (Beta)", "fixed": "fixed", "progressive": "progressive", "history": "history"}
CONFIG_PREFIXES = ("data.", "model.", "loss.", "mix.", "optim.")
OK = "completed"
MAX_LEVELS = 6  # a continuous hyper-parameter is binned into this many quantile bins
_PREPARED = "geomix_prepared"


def direction(metric: str) -> bool | None:
    """True if higher ``metric`` is better, False if lower, None if descriptive; ``val_`` / ``test_``
    prefixes are ignored and unknown metrics count as higher-is-better."""
    name = metric.split("_", 1)[1] if metric.startswith(("val_", "test_")) else metric
    if name in LOWER_IS_BETTER:
        return False
    return HIGHER_IS_BETTER.get(name, True)


def decimals(metric: str) -> int:
    """Digits shown for ``metric``: percentages get 2, distances and log-potentials 3."""
    return 3 if metric in {"align", "unif", "unif_img", "unif_txt", "gap", "cos_pos", "cos_neg"} else 2


def display_name(method: str) -> str:
    return METHOD_NAMES.get(method, str(method))


# ----------------------------------------------------------------------------------------------------------
# preparing a trials frame


def _dataset_label(source: object, styles: object, path: object) -> str:
    if isinstance(source, str) and source == "shapes":
        try:
            names = json.loads(styles) if isinstance(styles, str) else list(styles)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            names = []
        return "shapes:" + "+".join(map(str, names)) if names else "shapes"
    if isinstance(path, str) and path:
        return Path(path).stem
    return str(source) if isinstance(source, str) else "data"


def dataset_names(trials: pd.DataFrame) -> pd.Series:
    """One data set name per trial: the ``dataset`` column, else from ``data.source`` / styles / path.

    The embedded data is ``shapes:<fine-tune styles>`` (e.g. ``shapes:dark``); CSV / JSON data is the stem
    of ``data.path`` (e.g. ``flickr30k_train``).
    """
    n = len(trials)
    src = trials["data.source"] if "data.source" in trials else pd.Series([None] * n, index=trials.index)
    sty = trials["data.styles"] if "data.styles" in trials else pd.Series([None] * n, index=trials.index)
    pth = trials["data.path"] if "data.path" in trials else pd.Series([None] * n, index=trials.index)
    keys = pd.DataFrame({"s": src.astype(object), "y": sty.astype(object), "p": pth.astype(object)})
    keys = keys.where(keys.notna(), None)
    # Few distinct combinations: label each once, then map (fast on 10 000 trials).
    combos = {k: _dataset_label(*k) for k in set(map(tuple, keys.to_numpy().tolist()))}
    derived = pd.Series(
        [combos[tuple(r)] for r in keys.to_numpy().tolist()], index=trials.index, dtype=object
    )
    if "dataset" in trials:
        given = trials["dataset"]
        return given.where(given.notna(), derived).astype(str)
    return derived


def prepare(trials: pd.DataFrame) -> pd.DataFrame:
    """A copy with the columns every table relies on: ``method``, ``seed``, ``status``, ``dataset``.

    Metrics written as ``test_<m>`` get their plain name; a missing ``status`` counts as completed (old
    hand-written files), a null one as ``unknown`` (excluded and counted); a trial without a seed is its
    own sample. A frame this function returned
    is passed through as it is (the table builders never modify their input), so :func:`build_tables`
    prepares once for all tables.
    """
    if trials.attrs.get(_PREPARED) and {"method", "seed", "status", "dataset"} <= set(trials.columns):
        return trials
    df = trials.copy()
    for m in METRIC_COLUMNS:
        if m not in df.columns and f"test_{m}" in df.columns:
            df[m] = df[f"test_{m}"]
    if "method" not in df.columns:
        df["method"] = "unknown"
    df["method"] = df["method"].fillna("unknown").astype(str)
    if "seed" not in df.columns:
        df["seed"] = df["run.seed"] if "run.seed" in df.columns else np.nan
    if df["seed"].isna().any():
        # Without a seed a trial is its own sample: never pooled with others, never paired.
        tid = df["trial_id"].astype(str) if "trial_id" in df.columns else pd.Series(df.index.astype(str))
        df["seed"] = df["seed"].astype(object).where(df["seed"].notna(), "trial:" + tid)
    df["status"] = df["status"].fillna("unknown").astype(str) if "status" in df.columns else OK
    df["dataset"] = dataset_names(df)
    df.attrs[_PREPARED] = True
    return df


def _metrics_present(df: pd.DataFrame, metrics: Iterable[str]) -> list[str]:
    return [m for m in metrics if m in df.columns and pd.to_numeric(df[m], errors="coerce").notna().any()]


def _numeric(df: pd.DataFrame, cols: Sequence[str], keep: Iterable[str] = ()) -> pd.DataFrame:
    """The bookkeeping columns, ``keep`` and ``cols`` (as numbers) of ``df``: a small copy, fast to group."""
    base = ["dataset", "method", "seed", "status", *[c for c in keep if c in df.columns]]
    out = df[[*base, *[c for c in cols if c not in base]]].copy()
    for c in cols:
        out[c] = pd.to_numeric(out[c], errors="coerce")
    return out


def method_order(methods: Iterable[str]) -> list[str]:
    present = set(methods)
    known = [m for m in METHOD_IDS if m in present]
    return known + sorted(present - set(known))


def _runs_text(counts: dict[str, int]) -> str:
    """``"3 ok / 1 diverged"``: completed first, then every other status that occurred."""
    parts = [f"{counts.get(OK, 0)} ok"]
    parts += [f"{v} {k}" for k, v in sorted(counts.items()) if k != OK and v]
    return " / ".join(parts)


def _runs_column(df: pd.DataFrame, keys: list[str]) -> dict[tuple, str]:
    ct = df.groupby([*keys, "status"], dropna=False).size()
    out: dict[tuple, dict[str, int]] = {}
    for idx, v in ct.items():
        out.setdefault(tuple(idx[:-1]), {})[idx[-1]] = int(v)
    return {k: _runs_text(v) for k, v in out.items()}


def _excluded_note(df: pd.DataFrame) -> list[str]:
    bad = df.loc[df["status"] != OK, "status"].value_counts()
    if bad.empty:
        return ["All trials completed; none excluded."]
    listed = ", ".join(f"{int(v)} {k}" for k, v in sorted(bad.items()))
    return [f"Excluded from the means (not completed): {listed}."]


def _seed_stats(ok: pd.DataFrame, keys: list[str], metrics: list[str]) -> tuple[pd.DataFrame, pd.Series]:
    """Per group: mean / std (ddof=1) / count over seeds of the per-seed means, and seeds per group."""
    per_seed = ok.groupby([*keys, "seed"], dropna=False)[metrics].mean()
    stats = per_seed.groupby(level=list(range(len(keys))), dropna=False).agg(["mean", "std", "count"])
    seeds = per_seed.groupby(level=list(range(len(keys))), dropna=False).size()
    return stats, seeds


def _cells(
    stats: pd.DataFrame, seeds: pd.Series, index: list[tuple], metric: str, groups: list[object] | None
) -> tuple[list[str], list[bool], list[float]]:
    """Display strings, best flags (per group of rows) and means for one metric column."""
    dec = decimals(metric)
    keys = pd.MultiIndex.from_tuples(index) if len(index[0]) > 1 else pd.Index([k[0] for k in index])
    mean = stats[(metric, "mean")].reindex(keys).to_numpy(dtype=float)
    std = stats[(metric, "std")].reindex(keys).to_numpy(dtype=float)
    count = stats[(metric, "count")].reindex(keys).fillna(0).to_numpy(dtype=int)
    n_seeds = seeds.reindex(keys).fillna(0).to_numpy(dtype=int)
    means, texts = [], []
    for mu, sd, c, ns in zip(mean, std, count, n_seeds):
        means.append(float(mu) if c else math.nan)
        text = DASH if not c else f"{fmt_num(float(mu), dec)} ± {fmt_num(float(sd), dec)}"
        texts.append(text + (f" (n={c})" if c and c < ns else ""))
    best = _best_flags(means, metric, groups)
    return texts, best, means


def _best_flags(means: list[float], metric: str, groups: list[object] | None) -> list[bool]:
    """True where a mean equals its group's best at the shown precision (ties all marked)."""
    dec = decimals(metric)
    higher = direction(metric)
    if higher is None:
        return [False] * len(means)
    groups = groups if groups is not None else [0] * len(means)
    rounded = [round(m, dec) if math.isfinite(m) else math.nan for m in means]
    best_of: dict[object, float] = {}
    for g, r in zip(groups, rounded):
        if math.isnan(r):
            continue
        cur = best_of.get(g)
        better = cur is None or (r > cur if higher else r < cur)
        if better:
            best_of[g] = r
    return [
        not math.isnan(r) and best_of.get(g) == r and _n_in_group(groups, rounded, g) > 1
        for g, r in zip(groups, rounded)
    ]


def _n_in_group(groups: list[object], rounded: list[float], g: object) -> int:
    return sum(1 for h, r in zip(groups, rounded) if h == g and not math.isnan(r))


def _direction_note(metrics: Iterable[str]) -> str:
    metrics = list(metrics)
    low = [m for m in metrics if direction(m) is False]
    plain = [m for m in metrics if direction(m) is None]
    text = "Best per column marked (bold; `*` in CSV), among rows with a value; higher is better"
    text += f" except {', '.join(low)} (lower is better)" if low else ""
    return text + (f"; {', '.join(plain)} descriptive, not marked." if plain else ".")


# ----------------------------------------------------------------------------------------------------------
# Table 1 and the embedding-quality table


def table_retrieval(trials: pd.DataFrame, metrics: dict[str, str] | None = None) -> Table | None:
    """The Table-1 analog: rows = methods in the paper's order, columns = recall per data set.

    Args:
        trials: a trials frame (``read_results``); ``search`` trials are left out.
        metrics: metric column -> header; default R@1/5/10 image->text and text->image.

    Returns:
        A :class:`Table` (``values``: the means), or None when no trial has a retrieval metric.
    """
    df = prepare(trials)
    df = df[df["method"] != "search"]
    metrics = metrics or RETRIEVAL
    present = _metrics_present(df, metrics)
    if df.empty or not present:
        return None
    df = _numeric(df, present)
    ok = df[df["status"] == OK]
    datasets = sorted(df["dataset"].unique())
    methods = method_order(df["method"].unique())
    stats, seeds = _seed_stats(ok, ["dataset", "method"], present)
    runs = _runs_column(df, ["method"])
    frame = {"method": [display_name(m) for m in methods]}
    best: dict[str, list[bool]] = {"method": [False] * len(methods)}
    values: dict[str, list[float]] = {}
    multi = len(datasets) > 1
    for ds in datasets:
        prefix = f"{ds} " if multi else ""
        index = [(ds, m) for m in methods]
        for m in present:
            col = prefix + metrics[m]
            frame[col], best[col], values[col] = _cells(stats, seeds, index, m, None)
        ncol = prefix + "n"
        frame[ncol] = [str(int(seeds.get((ds, m), 0))) for m in methods]
        best[ncol] = [False] * len(methods)
    frame["runs"] = [runs.get((m,), "0 ok") for m in methods]
    best["runs"] = [False] * len(methods)
    title = "Retrieval (%) on " + ", ".join(datasets) + ": mean ± std over seeds"
    notes = [
        "Mean ± sample std (ddof = 1) over seeds; n = seeds with a completed trial; std of one seed is –; "
        "(n=k) marks a cell with fewer values than the row's seeds.",
        _direction_note(present),
        *_excluded_note(df),
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
    if col not in group.columns:
        return "?"
    v = pd.to_numeric(group[col], errors="coerce").max()
    return "✓" if pd.notna(v) and v > 0 else DASH


def _components(group: pd.DataFrame) -> dict[str, str]:
    """✓/– per mix term from ``loss.w_*``, plus geometry, input-level mix and τ of one method's trials."""
    out = {TERMS[t]: _flag(group, f"loss.w_{t}") for t in TERMS}
    any_mix = any(v == "✓" for v in out.values())
    geometry = (
        group["mix.geometry"].dropna() if "mix.geometry" in group.columns else pd.Series([], dtype=object)
    )
    out["geometry"] = str(geometry.iloc[0]) if any_mix and len(geometry) else DASH
    kind = group["loss.kind"].dropna() if "loss.kind" in group.columns else pd.Series([], dtype=object)
    kind_s = str(kind.iloc[0]) if len(kind) else ""
    out["input mix"] = {"imix": "i-Mix", "unmix": "Un-Mix"}.get(kind_s, DASH)
    if "loss.tau" in group.columns:
        tau = pd.to_numeric(group["loss.tau"], errors="coerce").dropna()
        out["τ"] = "learned" if tau.empty else "/".join(f"{t:g}" for t in sorted(tau.unique()))
    return out


def table_quality(trials: pd.DataFrame, metrics: dict[str, str] | None = None) -> Table | None:
    """Embedding-quality / ablation table: components on/off -> rsum, align, unif, gap, ECE, ZS acc.

    Rows are methods (per data set when there are several); component flags come from the config
    columns (``loss.w_m2 > 0`` etc.), so the table shows what actually ran.
    """
    df = prepare(trials)
    df = df[df["method"] != "search"]
    metrics = metrics or QUALITY
    present = _metrics_present(df, metrics)
    if df.empty or not present:
        return None
    components = [*(f"loss.w_{t}" for t in TERMS), "mix.geometry", "loss.kind", "loss.tau"]
    df = _numeric(df, present, keep=components)
    ok = df[df["status"] == OK]
    datasets = sorted(df["dataset"].unique())
    methods = method_order(df["method"].unique())
    stats, seeds = _seed_stats(ok, ["dataset", "method"], present)
    runs = _runs_column(df, ["dataset", "method"])
    index = [
        (ds, m) for ds in datasets for m in methods if ((df["dataset"] == ds) & (df["method"] == m)).any()
    ]
    groups = {k: g for k, g in df.groupby(["dataset", "method"])}
    comps = [_components(groups[k]) for k in index]
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
        frame[col], best[col], values[col] = _cells(stats, seeds, index, m, row_groups)
    frame["n"] = [str(int(seeds.get(k, 0))) for k in index]
    frame["runs"] = [runs.get(k, "0 ok") for k in index]
    best["n"] = best["runs"] = [False] * len(index)
    notes = [
        "✓ = term on (its loss weight > 0); geometry applies to the embedding mixes; τ learned = learnable "
        "temperature. Mean ± sample std over seeds.",
        _direction_note(present),
        *_excluded_note(df),
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


# ----------------------------------------------------------------------------------------------------------
# hyper-parameter tables


def axis_levels(values: pd.Series, *, nan_label: str, max_levels: int = MAX_LEVELS) -> pd.Series:
    """Ordered categorical labels: distinct values, or quantile bins when a numeric axis has many."""
    num = pd.to_numeric(values, errors="coerce")
    is_num = num.notna().sum() == values.notna().sum()
    if is_num and num.nunique() > max_levels:
        bins = pd.qcut(num, q=max_levels, duplicates="drop")
        cats = [f"[{iv.left:.3g}, {iv.right:.3g}]" for iv in bins.cat.categories]
        labels = bins.cat.rename_categories(cats).astype(object)
        order = cats
    elif is_num:
        uniq = sorted(num.dropna().unique())
        names = {u: f"{u:g}" for u in uniq}
        labels = num.map(names).astype(object)
        order = [names[u] for u in uniq]
    else:
        labels = values.astype(object).where(values.notna(), None)
        order = sorted({str(v) for v in labels.dropna()})
        labels = labels.map(lambda v: None if v is None else str(v))
    if labels.isna().any():
        order = [nan_label, *order]
        labels = labels.where(labels.notna(), nan_label)
    return pd.Series(pd.Categorical(labels, categories=order, ordered=True), index=values.index)


def _pivot(
    df: pd.DataFrame, rows: pd.Series, cols: pd.Series, metric: str, row_name: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Cells ``mean ± std (n)`` of ``metric`` over the trials in each (row, col) level; best over the grid."""
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
                s = f"{fmt_num(a['mean'], dec)} ± {fmt_num(a['std'], dec)} ({int(a['count'])})"
                col.append(s)
                mcol.append(float(a["mean"]))
            else:
                col.append(DASH)
                mcol.append(math.nan)
        frame[str(c)], means[str(c)] = col, mcol
    flat = [m for c in means for m in means[c]]
    flags = _best_flags(flat, metric, None)
    best = {row_name: [False] * len(rlev)}
    for i, c in enumerate(means):
        best[c] = flags[i * len(rlev) : (i + 1) * len(rlev)]
    return pd.DataFrame(frame), pd.DataFrame(best), pd.DataFrame(means, index=rlev)


def _grid_note(metric: str) -> str:
    return (
        f"Cells: {metric} mean ± sample std (number of completed trials), pooled over seeds and the "
        f"other settings; best cell marked; {DASH} = no trial."
    )


def table_beta_grid(trials: pd.DataFrame, metric: str = "rsum") -> list[Table]:
    """``metric`` over the Beta(α, β) grid of each mix term whose α or β varies among trials using it.

    A term counts for a trial when its weight ``loss.w_<term>`` is > 0 and its λ policy is ``beta``; an
    unset β is the symmetric Beta(α, α). Continuous α / β (a search) are binned into quantile bins.
    """
    df = prepare(trials)
    out = []
    if metric not in df.columns:
        return out
    for term, name in TERMS.items():
        a_col, b_col, w_col, p_col = (
            f"mix.{term}.alpha",
            f"mix.{term}.beta",
            f"loss.w_{term}",
            f"mix.{term}.policy",
        )
        if a_col not in df.columns or w_col not in df.columns:
            continue
        use = df[pd.to_numeric(df[w_col], errors="coerce").fillna(0) > 0]
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
        frame, best, vals = _pivot(ok, rows, cols, metric, "α \\ β")
        notes = [_grid_note(metric), *_excluded_note(use)]
        out.append(
            Table(
                f"table3_beta_grid_{term}",
                f"{metric} over the Beta(α, β) grid of the {name} term",
                frame,
                best,
                notes,
                vals,
            )
        )
    return out


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
    order = [display_name(m) for m in method_order(ok["method"].unique())]
    cols = pd.Series(
        pd.Categorical(ok["method"].map(display_name), categories=order, ordered=True), index=ok.index
    )
    frame, best, vals = _pivot(ok, rows, cols, metric, "τ")
    return Table(
        "table3_tau",
        f"{metric} by temperature τ and method",
        frame,
        best,
        [_grid_note(metric), *_excluded_note(df)],
        vals,
    )


def _combo_label(kind: str, on: tuple[bool, ...], policies: tuple[str, ...]) -> tuple[str, str]:
    """(λ policy, mixing level) of one configuration: input-level kind, or the active embedding terms."""
    if kind in ("imix", "unmix"):
        return POLICY_NAMES["beta"], "input: " + {"imix": "i-Mix", "unmix": "Un-Mix"}[kind]
    names = [name for name, active in zip(TERMS.values(), on) if active]
    if not names:
        return "no mix", "none"
    used = sorted({p for p, active in zip(policies, on) if active})
    policy = POLICY_NAMES.get(used[0], used[0]) if len(used) == 1 else "mixed (" + "/".join(used) + ")"
    return policy, "feature: " + "+".join(names)


def _policy_and_level(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per trial: the λ policy of its active mix terms and the mixing level (which terms / input mix)."""
    keys = pd.DataFrame(index=df.index)
    keys["kind"] = df["loss.kind"].fillna("contrastive").astype(str) if "loss.kind" in df else "contrastive"
    for t in TERMS:
        w = f"loss.w_{t}"
        keys[f"on_{t}"] = pd.to_numeric(df[w], errors="coerce").fillna(0) > 0 if w in df else False
        p = f"mix.{t}.policy"
        keys[f"p_{t}"] = df[p].fillna("beta").astype(str) if p in df else "beta"
    # Label each distinct configuration once (a search has few), then broadcast back to the trials.
    codes, uniques = pd.factorize(pd.MultiIndex.from_frame(keys))
    labels = [_combo_label(u[0], tuple(u[1::2]), tuple(u[2::2])) for u in uniques]
    policy = pd.Series([labels[c][0] for c in codes], index=df.index, dtype=object)
    level = pd.Series([labels[c][1] for c in codes], index=df.index, dtype=object)
    return policy, level


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
    p_order = [
        "no mix",
        *[v for v in POLICY_NAMES.values()],
        *sorted(set(policy) - {"no mix", *POLICY_NAMES.values()}),
    ]
    l_order = [
        "none",
        *sorted(v for v in set(level) if v.startswith("input")),
        *sorted(v for v in set(level) if v.startswith("feature")),
    ]
    rows = pd.Series(pd.Categorical(policy, categories=p_order, ordered=True), index=ok.index)
    cols = pd.Series(pd.Categorical(level, categories=l_order, ordered=True), index=ok.index)
    frame, best, vals = _pivot(ok, rows, cols, metric, "λ policy")
    return Table(
        "table3_policy_level",
        f"{metric} by λ policy and mixing level",
        frame,
        best,
        [_grid_note(metric), *_excluded_note(df)],
        vals,
    )


# ----------------------------------------------------------------------------------------------------------
# Optuna search: parameter importance and best trials


def searched_columns(trials: pd.DataFrame) -> list[str]:
    """Config columns that vary among the given trials (the search space as it was sampled)."""
    cols = [c for c in trials.columns if c.startswith(CONFIG_PREFIXES)]
    return [c for c in cols if trials[c].nunique(dropna=False) > 1]


def _importance_evaluator() -> tuple[object, str]:
    """fANOVA when scikit-learn is there (it needs it); else PED-ANOVA, which needs nothing more.

    The forest is 32 trees of depth 8 instead of Optuna's 64 of depth 64: on 500 trials that is 0.9 s
    instead of 6.6 s, and the importances moved by at most 0.01 in ``benchmarks/tables_speed.py``'s data.
    """
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    try:
        import sklearn  # noqa: F401
    except ImportError:
        return PedAnovaImportanceEvaluator(), "PED-ANOVA (fANOVA needs scikit-learn, which is not installed)"
    return FanovaImportanceEvaluator(n_trees=32, max_depth=8, seed=0), "fANOVA (32 trees, depth 8)"


def _study_from_trials(search: pd.DataFrame, metric: str, params: list[str]) -> object:
    """An in-memory Optuna study rebuilt from trial rows (distributions inferred from the values seen)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    dists, values = {}, {}
    for p in params:
        num = pd.to_numeric(search[p], errors="coerce")
        if num.notna().all() and not search[p].map(lambda v: isinstance(v, bool)).any():
            lo, hi = float(num.min()), float(num.max())
            dists[p] = FloatDistribution(lo, hi)
            values[p] = num.astype(float).tolist()
        else:
            labels = search[p].map(
                lambda v: "null" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            )
            dists[p] = CategoricalDistribution(sorted(set(labels)))
            values[p] = labels.tolist()
    study = optuna.create_study(direction="minimize" if direction(metric) is False else "maximize")
    target = pd.to_numeric(search[metric], errors="coerce").tolist()
    frozen = [
        optuna.trial.create_trial(
            value=float(target[i]), params={p: values[p][i] for p in params}, distributions=dists
        )
        for i in range(len(search))
    ]
    study.add_trials(frozen)
    return study


def _studies_from_db(folder: str, sweeps: list[str]) -> list[tuple[str, object]]:
    import optuna

    db = os.path.join(folder, "optuna.db")
    if "://" in folder or not os.path.isfile(db):
        return []
    storage = f"sqlite:///{db}"
    names = optuna.get_all_study_names(storage)
    chosen = [n for n in names if n in sweeps] or (names if len(names) == 1 else [])
    return [(n, optuna.load_study(study_name=n, storage=storage)) for n in chosen]


def table_param_importance(trials: pd.DataFrame, metric: str = "rsum", max_trials: int = 500) -> Table | None:
    """Optuna parameter importances of each search.

    A study is read from ``optuna.db`` (sqlite) in a ``results_dir`` of the trials, study name = the
    sweep name. Without one, completed ``search`` trials are rebuilt into an in-memory study (their
    varying config columns as parameters, ``metric`` as the objective). Searches of more than
    ``max_trials`` trials are fitted on a seeded random subset, said in a note.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    df = prepare(trials)
    studies: list[tuple[str, object]] = []
    notes: list[str] = []
    folders = df["results_dir"].dropna().unique().tolist() if "results_dir" in df.columns else []
    sweeps = df["sweep"].dropna().astype(str).unique().tolist() if "sweep" in df.columns else []
    for folder in folders:
        studies += _studies_from_db(str(folder), sweeps)
    if studies:
        notes.append("Studies read from optuna.db.")
    else:
        search = df[(df["method"] == "search") & (df["status"] == OK)]
        search = (
            search[pd.to_numeric(search.get(metric), errors="coerce").notna()]
            if metric in search
            else search[:0]
        )
        params = searched_columns(search)
        if len(search) < 4 or not params:
            return None
        if len(search) > max_trials:
            notes.append(f"Fitted on a random {max_trials} of {len(search)} search trials.")
            search = search.sample(n=max_trials, random_state=0)
        studies.append(
            (
                ", ".join(sorted(search["sweep"].astype(str).unique())) if "sweep" in search else "search",
                _study_from_trials(search, metric, params),
            )
        )
        notes.append(
            f"No optuna.db found: study rebuilt from {len(search)} completed search trials, objective "
            f"{metric}, parameter ranges inferred from the values seen."
        )
    evaluator, ev_name = _importance_evaluator()
    cols: dict[str, dict[str, float]] = {}
    for name, study in studies:
        try:
            cols[name] = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except (RuntimeError, ValueError) as e:  # too few complete trials, or no varying parameter
            notes.append(f"study {name}: importance not computable ({e}).")
    if not cols:
        return None
    params = sorted(
        {p for v in cols.values() for p in v}, key=lambda p: -max(v.get(p, 0.0) for v in cols.values())
    )
    frame = {"parameter": params}
    for name, imp in cols.items():
        frame[f"importance ({name})"] = [fmt_num(imp[p], 3) if p in imp else DASH for p in params]
    notes.insert(0, f"Importance by {ev_name}, normalised to sum to 1 per study.")
    return Table(
        "table3_param_importance",
        f"Hyper-parameter importance for {metric}",
        pd.DataFrame(frame),
        None,
        notes,
    )


def table_top_trials(trials: pd.DataFrame, metric: str = "rsum", k: int = 10) -> Table | None:
    """The ``k`` best completed search trials (all trials when there is no search) by ``metric``."""
    df = prepare(trials)
    if metric not in df.columns:
        return None
    pool = df[df["method"] == "search"]
    source = "search trials"
    if pool.empty:
        pool, source = df, "trials"
    ok = pool[(pool["status"] == OK)].copy()
    ok[metric] = pd.to_numeric(ok[metric], errors="coerce")
    ok = ok[ok[metric].notna()]
    if ok.empty:
        return None
    ok = ok.sort_values(metric, ascending=direction(metric) is False, kind="stable").head(k)
    params = searched_columns(pool[pool["status"] == OK])[:8]
    extra = [m for m in ("r1_i2t", "r1_t2i") if m in ok.columns and m != metric]
    frame = {"rank": [str(i + 1) for i in range(len(ok))], "trial": ok["trial_id"].astype(str).tolist()}
    if ok["method"].nunique() > 1:
        frame["method"] = ok["method"].map(display_name).tolist()
    for m in [metric, *extra]:
        frame[m] = [fmt_num(v, decimals(m)) for v in pd.to_numeric(ok[m], errors="coerce")]
    for p in params:
        frame[p] = [_fmt_value(v) for v in ok[p]]
    notes = [
        f"Top {len(ok)} of {int((pool['status'] == OK).sum())} completed {source} by {metric}; "
        f"columns after the metrics are the settings that vary.",
        *_excluded_note(pool),
    ]
    return Table(
        "table3_top_trials", f"Best {source} by {metric}", pd.DataFrame(frame), None, notes, label_cols=2
    )


def _fmt_value(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)


# ----------------------------------------------------------------------------------------------------------
# statistics: paired differences against FT


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
    df = prepare(trials)
    df = df[df["method"] != "search"]
    present = _metrics_present(df, metrics)
    if not present or baseline not in set(df["method"]):
        return None
    df = _numeric(df, present)
    ok = df[df["status"] == OK]
    per_seed = ok.groupby(["dataset", "method", "seed"])[present].mean()
    datasets = sorted(df["dataset"].unique())
    multi = len(datasets) > 1
    frame: dict[str, list[str]] = {"data": [], "method": [], "pairs": []}
    for m in present:
        frame[f"Δ {m} [{confidence:.0%} CI]"] = []
    notes = []
    for ds in datasets:
        if (ds, baseline) not in per_seed.index.droplevel("seed"):
            notes.append(f"{ds}: no completed {display_name(baseline)} trial, no comparison.")
            continue
        base = per_seed.loc[(ds, baseline)]
        for method in method_order(df.loc[df["dataset"] == ds, "method"].unique()):
            if method == baseline:
                continue
            other = (
                per_seed.loc[(ds, method)] if (ds, method) in per_seed.index.droplevel("seed") else base[:0]
            )
            seeds = base.index.intersection(other.index)
            frame["data"].append(ds)
            frame["method"].append(display_name(method))
            frame["pairs"].append(str(len(seeds)))
            for m in present:
                d = paired_t_interval(
                    base.loc[seeds, m].to_numpy(), other.loc[seeds, m].to_numpy(), confidence
                )
                text = fmt_paired(d, decimals(m))
                frame[f"Δ {m} [{confidence:.0%} CI]"].append(text + (" †" if d.excludes_zero else ""))
    if not frame["method"]:
        return None
    if not multi:
        del frame["data"]
    notes = [
        f"Difference method − {display_name(baseline)} over seeds both completed (paired by seed), mean and "
        f"{confidence:.0%} Student-t interval; † = the interval excludes 0; "
        "(n<2, no CI) = fewer than 2 pairs.",
        *notes,
        *_excluded_note(df),
    ]
    return Table(
        "table4_paired_vs_ft",
        f"Paired differences against {display_name(baseline)}",
        pd.DataFrame(frame),
        None,
        notes,
        label_cols=2 if multi else 1,
    )


# ----------------------------------------------------------------------------------------------------------
# all tables and the command line


def build_tables(trials: pd.DataFrame, *, metric: str = "rsum", top_k: int = 10) -> list[Table]:
    """Every table the data supports, in the paper's order (tables without data are left out)."""
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python analysis/tables.py",
        description="The paper's tables (Markdown, LaTeX or CSV) and figures from geomix result folders.",
    )
    p.add_argument("results", nargs="+", help="result folders or URIs (with trials.parquet, or sweep roots)")
    p.add_argument("--format", choices=FORMATS, default="markdown", help="output format (default markdown)")
    p.add_argument("--out", help="also write one file per table (and figures) into this folder")
    p.add_argument("--figures", action="store_true", help="write the figures (PNG + PDF) under OUT/figures")
    p.add_argument("--metric", default="rsum", help="objective for the hyper-parameter tables (default rsum)")
    p.add_argument("--top-k", type=int, default=10, help="rows of the best-trials table (default 10)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.figures and not args.out:
        parser.error("--figures needs --out DIR (the figures go to DIR/figures)")
    if args.top_k < 1:
        parser.error(f"--top-k={args.top_k} is invalid: allowed an integer >= 1")
    logs.setup("%(levelname)s %(name)s: %(message)s")
    try:
        trials, history = read_results(*args.results)
        tables = build_tables(trials, metric=args.metric, top_k=args.top_k)
    except ValueError as e:
        parser.error(str(e))
    sys.stdout.write("\n".join(render(t, args.format) for t in tables))
    if args.out:
        for path in write_tables(tables, args.out, args.format):
            log.info("wrote %s", path)
    if args.figures:
        from analysis import plots

        for path in plots.make_figures(trials, history, Path(args.out) / "figures", metric=args.metric):
            log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
