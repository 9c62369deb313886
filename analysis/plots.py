"""Figures from result frames (PNG and PDF, matplotlib's Agg backend): ``make_figures(trials, history, dir)``.

* :func:`beta_heatmap` - mean metric over the Beta(α, β) grid of each mix term that varies;
* :func:`parallel_coordinates` - the searched settings of a search, one line per trial coloured by metric;
* :func:`learning_curves` - validation metric vs step per method, mean ± std band over seeds;
* :func:`modality_gap` - image and text embeddings projected to 2-D by a joint PCA, one panel per method,
  from the ``.npz`` files (keys ``img``, ``txt``, ``txt_to_img``) named by an ``embeddings_path`` column.

Each function returns the files it wrote and logs (instead of failing) when the data it needs is absent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.frame import (  # noqa: E402
    OK,
    axis_levels,
    direction,
    display_name,
    method_order,
    prepare,
    searched_columns,
    term_symbols,
)

log = logging.getLogger("analysis.plots")
FIG_FORMATS = ("png", "pdf")
MAX_LINES = 1000  # parallel coordinates beyond this many trials are unreadable and slow


def _save(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in FIG_FORMATS:
        path = out_dir / f"{stem}.{ext}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


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


def _history_metric(history: pd.DataFrame, metric: str, split: str) -> pd.Series | None:
    """The metric at each history row of ``split``: plain name with a split column, or ``<split>_<m>``."""
    if "split" in history.columns and metric in history.columns:
        return pd.to_numeric(history[metric], errors="coerce").where(history["split"] == split)
    if f"{split}_{metric}" in history.columns:
        return pd.to_numeric(history[f"{split}_{metric}"], errors="coerce")
    return None


def learning_curves(
    history: pd.DataFrame,
    trials: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    metric: str = "rsum",
    split: str = "val",
) -> list[Path]:
    """``split`` metric vs step per method (completed trials), mean ± std band over seeds."""
    if history is None or history.empty or "step" not in history.columns:
        log.info("learning curves skipped: no history")
        return []
    values = _history_metric(history, metric, split)
    if values is None or values.notna().sum() == 0:
        log.info("learning curves skipped: history has no %s %s", split, metric)
        return []
    t = prepare(trials)
    t = t[(t["status"] == OK) & (t["method"] != "search")]
    order = method_order(t)  # while t still has method_rank
    t = t[["trial_id", "method"]]
    data = pd.DataFrame({"trial_id": history["trial_id"].astype(str), "step": history["step"], "v": values})
    data = data.dropna().merge(t, on="trial_id")
    if data.empty:
        log.info("learning curves skipped: no history rows of completed ablation trials")
        return []
    agg = data.groupby(["method", "step"])["v"].agg(["mean", "std", "count"]).reset_index()
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    colours = plt.get_cmap("tab20")
    present = set(agg["method"])
    for i, method in enumerate(m for m in order if m in present):
        a = agg[agg["method"] == method].sort_values("step")
        style = {
            "color": colours(i % 20),
            "ls": "-" if i % 2 == 0 else "--",
        }  # 12 methods: keep lines distinct
        line = ax.plot(a["step"], a["mean"], label=display_name(method), lw=1.2, **style)[0]
        std = a["std"].fillna(0.0)
        ax.fill_between(a["step"], a["mean"] - std, a["mean"] + std, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{split} {metric}")
    ax.set_title(f"{split} {metric} (mean ± std over seeds)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, Path(out_dir), f"learning_curves_{split}_{metric}")


def _find_npz(path_value: str, results_dir: str | None) -> Path | None:
    """An ``embeddings_path`` entry as a file: absolute, or relative to its results folder; a folder
    gives its first ``*.npz`` (a ``test`` one preferred)."""
    p = Path(path_value)
    if not p.is_absolute() and results_dir and "://" not in str(results_dir):
        p = Path(results_dir) / p
    if p.is_dir():
        files = sorted(p.glob("*.npz"), key=lambda f: ("test" not in f.name, f.name))
        return files[0] if files else None
    return p if p.is_file() else None


def _pca2(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` [n, d] projected on their top-2 principal directions -> [n, 2]."""
    centred = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def modality_gap(
    trials: pd.DataFrame, out_dir: str | os.PathLike[str], max_points: int = 500, max_panels: int = 12
) -> list[Path]:
    """Image vs text embeddings of one completed trial per method, joint PCA to 2-D, paired lines.

    The file is the ``embeddings_path`` column, else the first ``*.npz`` (a ``test`` one preferred) in the
    ``run.out_dir`` folder; relative paths are taken from the trial's results folder.
    """
    df = prepare(trials)
    # The training loop writes <run.out_dir>/embeddings_<split>.npz; a sweep may record the file itself.
    column = next(
        (c for c in ("embeddings_path", "run.out_dir") if c in df.columns and df[c].notna().any()), None
    )
    if column is None:
        log.info(
            "modality gap skipped: trials have no embeddings_path or run.out_dir (run.save_embeddings off)"
        )
        return []
    ok = df[(df["status"] == OK) & df[column].notna()].rename(columns={column: "_emb"})
    order = method_order(ok)  # before sorting, which would make first appearance alphabetical
    ok = ok.sort_values(["method", "seed"], kind="stable")
    panels = []
    for method in order:
        if method == "search":
            continue
        row = ok[ok["method"] == method].iloc[0]
        path = _find_npz(str(row["_emb"]), row.get("results_dir"))
        if path is None:
            log.info("modality gap: %s has no embeddings file at %s", method, row["_emb"])
            continue
        with np.load(path) as z:
            if "img" not in z or "txt" not in z:
                log.info("modality gap: %s lacks img/txt arrays", path)
                continue
            img, txt = z["img"].astype(np.float64), z["txt"].astype(np.float64)
            t2i = z["txt_to_img"] if "txt_to_img" in z else np.arange(min(len(img), len(txt)))
        panels.append((method, img, txt, np.asarray(t2i, dtype=np.int64)))
        if len(panels) == max_panels:
            break
    if not panels:
        log.info("modality gap skipped: no readable embeddings files")
        return []
    ncols = min(len(panels), 6)  # the paper's 12 rows as two rows of six panels
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.3 * nrows + 0.4), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (method, img, txt, t2i) in zip(axes.flat, panels):
        img, txt, t2i = img[:max_points], txt[:max_points], t2i[:max_points]
        xy = _pca2(np.concatenate([img, txt]))
        pi, pt = xy[: len(img)], xy[len(img) :]
        for k in range(min(len(pt), 50)):  # a few caption -> image pairs show the gap's direction
            if 0 <= t2i[k] < len(pi):
                ax.plot([pt[k, 0], pi[t2i[k], 0]], [pt[k, 1], pi[t2i[k], 1]], color="0.8", lw=0.4, zorder=0)
        ax.scatter(pi[:, 0], pi[:, 1], s=5, label="image", alpha=0.7)
        ax.scatter(pt[:, 0], pt[:, 1], s=5, label="text", alpha=0.7)
        gap = np.linalg.norm(img.mean(0) - txt.mean(0))
        ax.set_title(f"{display_name(method)}  (gap {gap:.3f})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Image and text embeddings, joint PCA to 2-D")
    return _save(fig, Path(out_dir), "modality_gap")


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
