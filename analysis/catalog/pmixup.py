"""P-Mixup's ablation (Zhu, Yu, Li, ICLR 2023, the shape of its Table 3): few-shot supervised multi-source
domain transfer, λ policy × mixing level, per shot count (``sweeps/configs/pmixup.yaml``,
``docs/pmixup.md``).

The rows are read from the trials' configs, not from their method ids: ``task = classify`` trials grouped
by the mix levels that are on (``transfer.w_img`` / ``transfer.w_feat`` > 0: none, Feat-Mix, Img-Mix, both)
and the λ policy (``transfer.lam.policy``: ``beta`` = random λ, ``progressive``, ``fixed``; ignored for no
mix), the columns by ``data.shots``. Three tables:

- :func:`table_pmixup`: target-domain accuracy ``acc`` and mean per-class accuracy ``macc`` (%), mean ± std
  over seeds per shot count, the best of each column marked;
- :func:`table_pmixup_paired`: each mix row − no mix, and progressive − random λ at each level, paired by
  seed (the same seed draws the same shots), with a Student-t interval; Holm-adjusted within each family
  (one metric, one shot count, one kind of comparison) by default;
- :func:`table_pmixup_sources`: the source domains' accuracy after transfer (``eval.<domain>.acc``), pooled
  over the shot counts.

Each returns None without completed ``task = classify`` trials, so the retrieval tables are unaffected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.catalog import table
from analysis.compare import MARK
from analysis.frame import OK, cells, decimals, excluded_note, prepare, seed_stats
from analysis.render import Table
from analysis.stats import DASH, PairedDiff, fmt_paired, holm_adjust, paired_t_interval

POLICIES = {"beta": "random λ", "progressive": "progressive λ", "fixed": "fixed λ"}
LEVELS = {"feat": "Feat-Mix", "img": "Img-Mix", "both": "Img-Mix + Feat-Mix"}
NO_MIX = ("none", "")
#: P-Mixup's row order: no mix, then random λ and progressive λ with each level.
ROW_ORDER = [NO_MIX, *((lvl, pol) for pol in ("beta", "progressive") for lvl in LEVELS)]
_CONFIG = ("data.shots", "transfer.w_img", "transfer.w_feat", "transfer.lam.policy")


def row_label(level: str, policy: str) -> str:
    """``"no mix"``, ``"random λ · Img-Mix"``, ``"progressive λ · Img-Mix + Feat-Mix"``."""
    if level == "none":
        return "no mix"
    return f"{POLICIES.get(policy, policy)} · {LEVELS[level]}"


def classify_trials(trials: pd.DataFrame) -> pd.DataFrame | None:
    """The prepared ``task = classify`` trials with ``level``, ``policy`` (``""`` for no mix) and ``shots``
    columns, or None when there are none (or they lack the FSMDT config columns)."""
    if "task" not in trials.columns or not (trials["task"] == "classify").any():
        return None
    df = prepare(trials)
    df = df[df["task"] == "classify"]
    if any(c not in df.columns for c in _CONFIG) or "acc" not in df.columns:
        return None
    img = pd.to_numeric(df["transfer.w_img"], errors="coerce").fillna(0) > 0
    feat = pd.to_numeric(df["transfer.w_feat"], errors="coerce").fillna(0) > 0
    level = np.select([img & feat, img, feat], ["both", "img", "feat"], "none")
    shots = pd.to_numeric(df["data.shots"], errors="coerce")
    df = df.assign(level=level, shots=shots.fillna(0).astype(int))
    df["policy"] = df["transfer.lam.policy"].astype(str).where(df["level"] != "none", "")
    return df


def _rows(df: pd.DataFrame) -> list[tuple[str, str]]:
    present = set(zip(df["level"], df["policy"]))
    ordered = [r for r in ROW_ORDER if r in present]
    return ordered + sorted(present - set(ordered))


def _ok(df: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    ok = df[df["status"] == OK].copy()
    for m in metrics:
        ok[m] = pd.to_numeric(ok[m], errors="coerce") if m in ok.columns else math.nan
    return ok


def _shots(df: pd.DataFrame) -> list[int]:
    return sorted(int(k) for k in df["shots"].unique())


@table(85)
def table_pmixup(trials: pd.DataFrame) -> Table | None:
    """Target-domain accuracy and mean per-class accuracy (%) of P-Mixup's rows per shot count: mean ± std
    over seeds (trials of one seed averaged first), the best of each column marked."""
    df = classify_trials(trials)
    if df is None:
        return None
    metrics = [m for m in ("acc", "macc") if m in df.columns]
    ok = _ok(df, metrics)
    if ok.empty:
        return None
    stats, seeds = seed_stats(ok, ["dataset", "level", "policy", "shots"], metrics)
    datasets, shots, rows = sorted(df["dataset"].unique()), _shots(df), _rows(df)
    multi = len(datasets) > 1
    index = [(ds, lvl, pol) for ds in datasets for lvl, pol in rows]
    groups = [i[0] for i in index]
    frame: dict[str, list[str]] = {"data": groups, "method": [row_label(lvl, pol) for _, lvl, pol in index]}
    best: dict[str, list[bool]] = {"data": [False] * len(index), "method": [False] * len(index)}
    values: dict[str, list[float]] = {}
    for k in shots:
        for m in metrics:
            col = f"{m} k={k}"
            frame[col], best[col], values[col] = cells(stats, seeds, [(*i, k) for i in index], m, groups)
    n_seeds = [max(int(seeds.get((*i, k), 0)) for k in shots) for i in index]
    frame["seeds"], best["seeds"] = [str(n) for n in n_seeds], [False] * len(index)
    if not multi:
        del frame["data"], best["data"]
    notes = [
        "Few-shot supervised multi-source domain transfer (P-Mixup): target-domain test accuracy (acc) and "
        "mean per-class accuracy (macc), %, mean ± std over seeds; k = labelled target images per class; "
        "bold = best in its column.",
        "Rows from the trials' configs: the mix levels on (transfer.w_img, transfer.w_feat > 0) and the λ "
        "policy (transfer.lam.policy: random λ = beta, progressive = P-Mixup's rule), both levels at one λ.",
        *excluded_note(df),
    ]
    return Table("table_pmixup", "P-Mixup ablation: target-domain accuracy (%) per shot count",
                 pd.DataFrame(frame), pd.DataFrame(best), notes,
                 values=pd.DataFrame(values, index=[row_label(lvl, pol) for _, lvl, pol in index]),
                 label_cols=2 if multi else 1)


def _seed_means(ok: pd.DataFrame, metric: str) -> pd.Series:
    return ok.groupby(["dataset", "level", "policy", "shots", "seed"])[metric].mean()


def _pair(means: pd.Series, ds: str, k: int, a: tuple[str, str], b: tuple[str, str],
          confidence: float) -> PairedDiff:
    """``b - a`` paired by seed at data set ``ds`` and ``k`` shots."""
    def side(row: tuple[str, str]) -> pd.Series:
        key = (ds, *row, k)
        return means.loc[key] if key in means.index.droplevel("seed") else pd.Series(dtype=float)

    sa, sb = side(a), side(b)
    common = sa.index.intersection(sb.index)
    return paired_t_interval(sa.loc[common].to_numpy(), sb.loc[common].to_numpy(), confidence)


def comparisons(rows: Sequence[tuple[str, str]]) -> list[tuple[str, tuple[str, str], tuple[str, str]]]:
    """``(family, a, b)`` of the paired table: every mix row against no mix (family ``"vs no mix"``), then
    progressive against random λ at each level present (family ``"progressive vs random"``)."""
    out = [("vs no mix", NO_MIX, r) for r in rows if r != NO_MIX] if NO_MIX in rows else []
    for lvl in LEVELS:
        if (lvl, "beta") in rows and (lvl, "progressive") in rows:
            out.append(("progressive vs random", (lvl, "beta"), (lvl, "progressive")))
    return out


@table(86)
def table_pmixup_paired(trials: pd.DataFrame, confidence: float = 0.95, holm: bool = True) -> Table | None:
    """Paired differences of the P-Mixup rows: each mix row − no mix, progressive − random λ per level, per
    shot count and metric, paired by seed, mean with a Student-t interval (Holm-adjusted per family with
    ``holm``); ``†`` = significant."""
    df = classify_trials(trials)
    if df is None:
        return None
    metrics = [m for m in ("acc", "macc") if m in df.columns]
    ok = _ok(df, metrics)
    rows = _rows(df)
    pairs = comparisons(rows)
    if ok.empty or not pairs:
        return None
    datasets, shots = sorted(df["dataset"].unique()), _shots(df)
    multi = len(datasets) > 1
    frame: dict[str, list[str]] = {"data": [], "comparison": [], "pairs": []}
    cols = {(m, k): f"Δ{m} k={k} [{confidence:.0%} CI]" for k in shots for m in metrics}
    frame.update({c: [] for c in cols.values()})
    values: list[dict[str, object]] = []
    for ds in datasets:
        diffs = {(m, k, i): _pair(_seed_means(ok, m), ds, k, a, b, confidence)
                 for m in metrics for k in shots for i, (_, a, b) in enumerate(pairs)}
        if holm:
            for m in metrics:
                for k in shots:
                    for fam in dict.fromkeys(f for f, _, _ in pairs):
                        keys = [(m, k, i) for i, (f, _, _) in enumerate(pairs) if f == fam]
                        tested = [key for key in keys if diffs[key].n >= 2]
                        diffs.update(zip(tested, holm_adjust([diffs[key] for key in tested])))
        for i, (_fam, a, b) in enumerate(pairs):
            frame["data"].append(ds)
            frame["comparison"].append(f"{row_label(*b)} − {row_label(*a)}")
            frame["pairs"].append(str(max(diffs[(m, k, i)].n for m in metrics for k in shots)))
            for (m, k), col in cols.items():
                d = diffs[(m, k, i)]
                values.append({"data": ds, "a": row_label(*a), "b": row_label(*b), "k": k, "metric": m,
                               "mean": d.mean, "lo": d.lo, "hi": d.hi, "n": d.n, "p": d.p_test,
                               "significant": d.significant})
                text = fmt_paired(d, decimals(m)) if d.n else DASH
                frame[col].append(text + (MARK if d.significant else ""))
    if not multi:
        del frame["data"]
    adjust = "Holm-adjusted within each family (one metric, one k, one kind of comparison)" if holm else \
        "unadjusted"
    notes = [
        f"Differences b − a in percentage points over the seeds both completed (paired by seed: the same "
        f"seed draws the same shots), mean and {confidence:.0%} Student-t interval, {adjust}; "
        f"†{'' if not holm else ' (Holm)'} = the interval excludes 0; (n<2, no CI) = fewer than 2 pairs.",
        *excluded_note(df),
    ]
    return Table("table_pmixup_paired", "P-Mixup ablation: paired differences (target accuracy, points)",
                 pd.DataFrame(frame), None, notes, values=pd.DataFrame(values), label_cols=2 if multi else 1)


@table(87)
def table_pmixup_sources(trials: pd.DataFrame) -> Table | None:
    """Source-domain accuracy (%) after transfer (``eval.<domain>.acc``) of P-Mixup's rows, pooled over the
    shot counts (each seed's trials averaged first), mean ± std over seeds, the best of each column marked."""
    df = classify_trials(trials)
    if df is None:
        return None
    sets = sorted({c.split(".")[1] for c in df.columns if c.startswith("eval.") and c.endswith(".acc")})
    cols = [f"eval.{s}.acc" for s in sets]
    ok = _ok(df, cols)
    cols = [c for c in cols if ok[c].notna().any()]
    if ok.empty or not cols:
        return None
    mean_col = "eval.source mean.acc"  # read as an accuracy (decimals, direction) by analysis.frame
    ok[mean_col] = ok[cols].mean(axis=1)
    metrics = [*cols, mean_col]
    stats, seeds = seed_stats(ok, ["dataset", "level", "policy"], metrics)
    datasets, rows = sorted(df["dataset"].unique()), _rows(df)
    multi = len(datasets) > 1
    index = [(ds, lvl, pol) for ds in datasets for lvl, pol in rows]
    groups = [i[0] for i in index]
    frame: dict[str, list[str]] = {"data": groups, "method": [row_label(lvl, pol) for _, lvl, pol in index]}
    best: dict[str, list[bool]] = {"data": [False] * len(index), "method": [False] * len(index)}
    for m in metrics:
        name = m.split(".")[1]
        frame[name], best[name], _ = cells(stats, seeds, index, m, groups)
    if not multi:
        del frame["data"], best["data"]
    k = ", ".join(map(str, _shots(df)))
    notes = [
        f"Accuracy (%) on each source domain's evaluation images after transfer to the target, pooled over "
        f"k = {k} shots (each seed's trials averaged first), mean ± std over seeds; source mean = the mean "
        "of the source columns per trial; bold = best in its column.",
        *excluded_note(df),
    ]
    return Table("table_pmixup_sources", "P-Mixup ablation: source-domain accuracy (%) after transfer",
                 pd.DataFrame(frame), pd.DataFrame(best), notes, label_cols=2 if multi else 1)
