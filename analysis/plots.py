"""Figures from result frames (PNG and PDF, matplotlib's Agg backend): ``make_figures(trials, history, dir)``.

* :func:`beta_heatmap` - mean metric over the Beta(α, β) grid of each mix term that varies;
* :func:`parallel_coordinates` - the searched settings of a search, one line per trial coloured by metric;
* :func:`learning_curves` - validation metric vs step, one panel per method family (:data:`FAMILIES`),
  mean ± std band over seeds, FT in every panel and a lower row of differences to FT paired by seed;
* :func:`modality_gap` - one trial per method (the lowest seed): its test images, each with all its
  captions, projected to 2-D by a joint PCA (axes ``PC1 (xx % var.)``), from the ``.npz`` files (keys
  ``img``, ``txt``, ``txt_to_img``) named by an ``embeddings_path`` column. The gap printed on a panel is
  the trial's ``gap`` column, the number Table 2 averages, and beside it Table 2's cell.

Each function returns the files it wrote and logs (instead of failing) when the data it needs is absent.
:func:`learning_curve_plots` and :func:`gap_panels` / :func:`gap_figure` give the figures and the numbers
they show before saving (for tests and notebooks).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.curves import (
    FAMILIES,
    OTHER_FAMILY,
    CurvePlot,
    learning_curve_plots,
    learning_curves,
    method_family,
)
from analysis.figsave import (
    FIG_FORMATS,
    plt,  # pyplot with the Agg backend set first
)
from analysis.figsave import save as _save
from analysis.frame import (
    OK,
    axis_levels,
    direction,
    prepare,
    searched_columns,
    term_symbols,
)
from analysis.gapfig import (
    GapPanel,
    first_captions,
    gap_figure,
    gap_panels,
    modality_gap,
    pair_gap,
    pca2,
    sample_images,
)

log = logging.getLogger("analysis.plots")
MAX_LINES = 1000  # parallel coordinates beyond this many trials are unreadable and slow

__all__ = [
    "FAMILIES", "FIG_FORMATS", "OTHER_FAMILY", "CurvePlot", "GapPanel", "beta_heatmap", "first_captions",
    "gap_figure", "gap_panels", "learning_curve_plots", "learning_curves", "make_figures", "method_family",
    "modality_gap", "pair_gap", "parallel_coordinates", "pca2", "sample_images",
]


def beta_heatmap(trials: pd.DataFrame, out_dir: str | os.PathLike[str], metric: str = "rsum") -> list[Path]:
    """One heatmap per mix term whose Beta(α, β) varies among the completed trials that use it."""
    df = prepare(trials)
    paths: list[Path] = []
    if metric not in df.columns:
        log.info("beta heatmap skipped: no %s column", metric)
        return paths
    for term, name in term_symbols(df).items():
        a_col, b_col, w_col = f"mix.{term}.alpha", f"mix.{term}.beta", f"loss.w_{term}"
        if a_col not in df.columns:
            continue
        use = df[(pd.to_numeric(df[w_col], errors="coerce").fillna(0) > 0) & (df["status"] == OK)]
        if f"mix.{term}.policy" in use.columns:
            use = use[use[f"mix.{term}.policy"].fillna("beta") == "beta"]
        beta = use[b_col] if b_col in use.columns else pd.Series(np.nan, index=use.index)
        if use.empty or (use[a_col].nunique() < 2 and beta.nunique(dropna=False) < 2):
            continue
        data = pd.DataFrame(
            {
                "a": axis_levels(use[a_col], nan_label="?"),
                "b": axis_levels(beta, nan_label="β = α"),
                "v": pd.to_numeric(use[metric], errors="coerce"),
            }
        )
        grid = data.pivot_table(index="a", columns="b", values="v", aggfunc="mean", observed=True)
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * grid.shape[1], 1.0 + 0.6 * grid.shape[0]))
        cmap = "viridis_r" if direction(metric) is False else "viridis"
        im = ax.imshow(grid.to_numpy(dtype=float), cmap=cmap, aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], rotation=45, ha="right")
        ax.set_yticks(range(grid.shape[0]), [str(r) for r in grid.index])
        for (i, j), v in np.ndenumerate(grid.to_numpy(dtype=float)):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="w")
        ax.set_xlabel("β")
        ax.set_ylabel("α")
        ax.set_title(f"{metric} over Beta(α, β), {name} term")
        fig.colorbar(im, ax=ax, label=metric)
        paths += _save(fig, Path(out_dir), f"beta_heatmap_{term}")
    if not paths:
        log.info("beta heatmap skipped: no mix term has a varying Beta(α, β)")
    return paths


def parallel_coordinates(
    trials: pd.DataFrame, out_dir: str | os.PathLike[str], metric: str = "rsum"
) -> list[Path]:
    """The settings that vary among completed search trials, scaled to [0, 1], one line per trial."""
    df = prepare(trials)
    search = df[(df["method"] == "search") & (df["status"] == OK)]
    if metric not in search.columns or search.empty:
        log.info("parallel coordinates skipped: no completed search trials with %s", metric)
        return []
    search = search[pd.to_numeric(search[metric], errors="coerce").notna()]
    params = searched_columns(search)
    if len(search) < 2 or not params:
        log.info("parallel coordinates skipped: fewer than 2 search trials or nothing varies")
        return []
    if len(search) > MAX_LINES:
        search = search.sample(n=MAX_LINES, random_state=0)
    axes, ticks = [], []
    for p in params:
        num = pd.to_numeric(search[p], errors="coerce")
        if num.notna().all():
            lo, hi = float(num.min()), float(num.max())
            axes.append(((num - lo) / (hi - lo if hi > lo else 1.0)).to_numpy())
            ticks.append(f"{p}\n[{lo:.3g}, {hi:.3g}]")
        else:  # categorical (or with nulls, e.g. τ learned): evenly spaced levels
            labels = search[p].map(lambda v: "null" if pd.isna(v) else str(v))
            levels = sorted(set(labels))
            pos = {lv: i / max(len(levels) - 1, 1) for i, lv in enumerate(levels)}
            axes.append(labels.map(pos).to_numpy(dtype=float))
            ticks.append(f"{p}\n{'/'.join(levels)}")
    values = pd.to_numeric(search[metric], errors="coerce").to_numpy(dtype=float)
    order = np.argsort(-values if direction(metric) is False else values)  # best drawn last, on top
    coords = np.stack(axes, axis=1)[order]
    norm = plt.Normalize(values.min(), values.max())
    cmap = plt.get_cmap("viridis_r" if direction(metric) is False else "viridis")
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(params), 4.0))
    x = np.arange(len(params))
    for row, v in zip(coords, values[order]):
        ax.plot(x, row, color=cmap(norm(v)), alpha=0.5, lw=0.8)
    ax.set_xticks(x, ticks, fontsize=7)
    ax.set_yticks([0, 1], ["min", "max"])
    ax.set_title(f"Search: {len(search)} completed trials coloured by {metric}")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric)
    return _save(fig, Path(out_dir), "parallel_coordinates")



def make_figures(
    trials: pd.DataFrame,
    history: pd.DataFrame | None,
    out_dir: str | os.PathLike[str],
    metric: str = "rsum",
) -> Sequence[Path]:
    """Every figure the data supports, written to ``out_dir``; returns the paths."""
    paths: list[Path] = []
    paths += beta_heatmap(trials, out_dir, metric)
    paths += parallel_coordinates(trials, out_dir, metric)
    if history is not None:
        paths += learning_curves(history, trials, out_dir, metric)
    paths += modality_gap(trials, out_dir)
    return paths
