"""The analysis's shared vocabulary and frame preparation, under both the tables and the figures.

Names, directions and decimals come from :mod:`geomix.registry` (one vocabulary for the project); this
module adds what only the analysis needs: a prepared trials frame (:func:`prepare`), the row order of
methods (:func:`method_order`), per-seed statistics and display cells with best flags, the notes under a
table, and the axis levels of a hyper-parameter grid.

Only ``completed`` trials enter a mean; means are over seeds (trials of one seed are averaged first) and
std is the sample std (``ddof = 1``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.stats import DASH, mean_std_text
from geomix.config import RUN_ONLY, SECTIONS
from geomix.registry import METRICS, PAPER_METHODS, TERMS, method_display, split_metric_key

OK = "completed"
CONFIG_PREFIXES = ("data.", "model.", "loss.", "mix.", "optim.")
MAX_LEVELS = 6  # a continuous hyper-parameter is binned into this many quantile bins
#: ``loss.kind`` values that mix inputs (pixels) instead of embeddings, with their display names.
INPUT_MIXES = {"imix": "i-Mix", "unmix": "Un-Mix"}
# Training statistics a trials or history row may carry besides the registry's metrics.
_LOWER_IS_BETTER_STATS = frozenset({"train_loss"})
_PREPARED = "geomix_prepared"


# ----------------------------------------------------------------------------------------------------------
# vocabulary (read from geomix.registry at call time, so terms registered at run time are seen)


def _metric_name(metric: str) -> str:
    """The registry name of a column: ``val_rsum``, ``test_rsum`` and ``eval.<set>.rsum`` -> ``rsum``."""
    if metric.startswith("eval."):
        _, dot, name = metric[len("eval."):].partition(".")
        return name if dot and name else metric
    parsed = split_metric_key(metric)
    return parsed[1] if parsed is not None else metric


def direction(metric: str) -> bool | None:
    """True if higher ``metric`` is better, False if lower, None if descriptive (never marked best).

    ``val_`` / ``test_`` / ``eval.<set>.`` prefixes are ignored; a name the registry does not know counts as
    higher-is-better (the few-shot and arithmetic percentages among them).
    """
    name = _metric_name(metric)
    if name in _LOWER_IS_BETTER_STATS:
        return False
    known = METRICS.get(name)
    return known.higher if known is not None else True


def decimals(metric: str) -> int:
    """Digits shown for ``metric`` (the registry's: percentages 2, distances and log-potentials 3)."""
    known = METRICS.get(_metric_name(metric))
    return known.decimals if known is not None else 2


def display_name(method: str) -> str:
    """A paper method's name (``m3_mix`` -> ``m³-Mix``); any other id as itself."""
    return method_display(method)


def term_symbols(df: pd.DataFrame | None = None) -> dict[str, str]:
    """Registered mix terms -> table symbol (``m2`` -> ``m²``), in registry order.

    With ``df``, only the terms whose weight column ``loss.w_<term>`` it has (results written before a
    term was registered say nothing about it).
    """
    return {name: t.symbol for name, t in TERMS.items() if df is None or f"loss.w_{name}" in df.columns}


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


_CONFIG_PREFIXES = tuple(f"{s}." for s in SECTIONS)


def prepare(trials: pd.DataFrame) -> pd.DataFrame:
    """A copy with the columns every table relies on: ``method``, ``seed``, ``status``, ``dataset``.

    A missing ``status`` counts as completed (hand-written files), a null one as ``unknown`` (excluded
    and counted); a trial without a seed is its own sample. A frame this function returned is passed
    through as it is (the table builders never modify their input), so ``build_tables`` prepares once for
    all tables.
    """
    if trials.attrs.get(_PREPARED) and {"method", "seed", "status", "dataset"} <= set(trials.columns):
        return trials
    df = trials.copy()
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
    _split_pooled(df)
    df.attrs[_PREPARED] = True
    return df


def _split_pooled(df: pd.DataFrame) -> None:
    """Trials of one method id (per data set) whose configs differ beyond the seed (e.g. two sweeps' folders
    read together) are never pooled into one row: each variant becomes its own method,
    ``<method> (<key>=<value>)`` after the first config key that tells them apart. Search trials vary by
    design and are left as they are."""
    cols = [c for c in df.columns
            if c.startswith(_CONFIG_PREFIXES) and c not in RUN_ONLY and c != "run.seed"]
    if not cols or df.empty:
        return
    ablation = df["method"] != "search"
    # A missing value (a hand-written frame, a column an older writer lacked) tells nothing apart.
    varying = df[ablation].groupby(["dataset", "method"])[cols].nunique(dropna=True)
    varying = varying[(varying > 1).any(axis=1)]
    for (ds, method), counts in varying.iterrows():
        keys = [c for c in cols if counts[c] > 1]
        rows = ablation & (df["dataset"] == ds) & (df["method"] == method)
        label = df.loc[rows, keys[0]].map(lambda v: "null" if pd.isna(v) else f"{v}")
        suffix = f", +{len(keys) - 1} more" if len(keys) > 1 else ""
        df.loc[rows, "method"] = f"{method} ({keys[0]}=" + label + suffix + ")"


def method_order(trials: pd.DataFrame) -> list[str]:
    """The methods of ``trials`` (its ``method`` column) in table order.

    First the methods with a ``method_rank`` (their position in the sweep YAML, lowest rank over their
    rows), then the paper's ids in the paper's order, then any other id in order of first appearance.
    """
    methods = trials["method"].astype(str)
    first_seen = pd.unique(methods)
    rank: dict[str, float] = {}
    if "method_rank" in trials.columns:
        lowest = pd.to_numeric(trials["method_rank"], errors="coerce").groupby(methods).min()
        rank = {m: r for m, r in lowest.items() if pd.notna(r)}
    paper = {m: i for i, m in enumerate(PAPER_METHODS)}

    def key(item: tuple[int, str]) -> tuple[int, float, int]:
        seen, m = item
        if m in rank:
            return (0, rank[m], seen)
        if m in paper:
            return (1, paper[m], seen)
        return (2, seen, seen)

    return [m for _, m in sorted(enumerate(first_seen), key=key)]


def method_rows(trials: pd.DataFrame, metrics: Iterable[str]) -> tuple[pd.DataFrame, list[str]] | None:
    """The prepared trials of the compared methods (all but ``search``) and which of ``metrics`` they
    have, or None when there are no such trials or none has one of ``metrics``."""
    df = prepare(trials)
    df = df[df["method"] != "search"]
    present = metrics_present(df, metrics)
    if df.empty or not present:
        return None
    return df, present


def metrics_present(df: pd.DataFrame, metrics: Iterable[str]) -> list[str]:
    """The ``metrics`` that ``df`` has with at least one numeric value, in the given order."""
    return [m for m in metrics if m in df.columns and pd.to_numeric(df[m], errors="coerce").notna().any()]


def numeric(df: pd.DataFrame, cols: Sequence[str], keep: Iterable[str] = ()) -> pd.DataFrame:
    """The bookkeeping columns, ``keep`` and ``cols`` (as numbers) of ``df``: a small copy, fast to group."""
    base = ["dataset", "method", "seed", "status", *[c for c in keep if c in df.columns]]
    if "method_rank" in df.columns:
        base.append("method_rank")
    # One concat instead of a column assignment per metric: no fragmented frame on hundreds of columns.
    rest = {c: pd.to_numeric(df[c], errors="coerce") for c in cols if c not in base}
    out = pd.concat([df[base], pd.DataFrame(rest, index=df.index)], axis=1)
    for c in cols:
        if c in base:
            out[c] = pd.to_numeric(out[c], errors="coerce")
    return out


# ----------------------------------------------------------------------------------------------------------
# statistics per group, display cells and best flags


def seed_stats(ok: pd.DataFrame, keys: list[str], metrics: list[str]) -> tuple[pd.DataFrame, pd.Series]:
    """Per group: mean / std (ddof=1) / count over seeds of the per-seed means, and seeds per group."""
    per_seed = ok.groupby([*keys, "seed"], dropna=False)[metrics].mean()
    stats = per_seed.groupby(level=list(range(len(keys))), dropna=False).agg(["mean", "std", "count"])
    seeds = per_seed.groupby(level=list(range(len(keys))), dropna=False).size()
    return stats, seeds


def cells(
    stats: pd.DataFrame, seeds: pd.Series, index: list[tuple], metric: str, groups: list[object] | None
) -> tuple[list[str], list[bool], list[float]]:
    """Display strings, best flags (per group of rows) and means for one metric column.

    Args:
        stats: :func:`seed_stats`'s first result; ``index`` its group keys in row order.
        groups: a group per row (best is marked within a group), or None for one group.
    """
    dec = decimals(metric)
    keys = pd.MultiIndex.from_tuples(index) if len(index[0]) > 1 else pd.Index([k[0] for k in index])
    mean = stats[(metric, "mean")].reindex(keys).to_numpy(dtype=float)
    std = stats[(metric, "std")].reindex(keys).to_numpy(dtype=float)
    count = stats[(metric, "count")].reindex(keys).fillna(0).to_numpy(dtype=int)
    n_seeds = seeds.reindex(keys).fillna(0).to_numpy(dtype=int)
    means, texts = [], []
    for mu, sd, c, ns in zip(mean, std, count, n_seeds):
        means.append(float(mu) if c else math.nan)
        text = DASH if not c else mean_std_text(float(mu), float(sd), dec)
        texts.append(text + (f" (n={c})" if c and c < ns else ""))
    return texts, best_flags(means, metric, groups), means


def best_flags(means: list[float], metric: str, groups: list[object] | None) -> list[bool]:
    """True where a mean equals its group's best at the shown precision (ties all marked); a group of
    one row marks nothing."""
    dec = decimals(metric)
    higher = direction(metric)
    if higher is None:
        return [False] * len(means)
    groups = groups if groups is not None else [0] * len(means)
    rounded = [round(m, dec) if math.isfinite(m) else math.nan for m in means]
    best_of: dict[object, float] = {}
    size: dict[object, int] = {}
    for g, r in zip(groups, rounded):
        if math.isnan(r):
            continue
        size[g] = size.get(g, 0) + 1
        cur = best_of.get(g)
        if cur is None or (r > cur if higher else r < cur):
            best_of[g] = r
    return [not math.isnan(r) and best_of.get(g) == r and size[g] > 1 for g, r in zip(groups, rounded)]


# ----------------------------------------------------------------------------------------------------------
# notes and run counts


def runs_column(df: pd.DataFrame, keys: list[str]) -> dict[tuple, str]:
    """Per group of ``keys``: ``"3 ok / 1 diverged"`` (completed first, then every other status seen)."""
    ct = df.groupby([*keys, "status"], dropna=False).size()
    out: dict[tuple, dict[str, int]] = {}
    for idx, v in ct.items():
        out.setdefault(tuple(idx[:-1]), {})[idx[-1]] = int(v)
    return {k: _runs_text(v) for k, v in out.items()}


def _runs_text(counts: dict[str, int]) -> str:
    parts = [f"{counts.get(OK, 0)} ok"]
    parts += [f"{v} {k}" for k, v in sorted(counts.items()) if k != OK and v]
    return " / ".join(parts)


def excluded_note(df: pd.DataFrame) -> list[str]:
    """One sentence: how many trials of each status other than completed were left out of the means."""
    bad = df.loc[df["status"] != OK, "status"].value_counts()
    if bad.empty:
        return ["All trials completed; none excluded."]
    listed = ", ".join(f"{int(v)} {k}" for k, v in sorted(bad.items()))
    return [f"Excluded from the means (not completed): {listed}."]


def direction_note(metrics: Iterable[str]) -> str:
    """How the best cell of each column is chosen, naming the lower-is-better and descriptive metrics."""
    metrics = list(metrics)
    low = [m for m in metrics if direction(m) is False]
    plain = [m for m in metrics if direction(m) is None]
    text = "Best per column marked (bold; `*` in CSV), among rows with a value; higher is better"
    text += f" except {', '.join(low)} (lower is better)" if low else ""
    return text + (f"; {', '.join(plain)} descriptive, not marked." if plain else ".")


# ----------------------------------------------------------------------------------------------------------
# hyper-parameter axes (tables and figures)


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


def searched_columns(trials: pd.DataFrame) -> list[str]:
    """Config columns that vary among the given trials (the search space as it was sampled)."""
    cols = [c for c in trials.columns if c.startswith(CONFIG_PREFIXES)]
    return [c for c in cols if trials[c].nunique(dropna=False) > 1]
