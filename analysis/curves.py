"""Learning curves: a validation metric vs step, one panel per method family, mean ± std over seeds, FT
in every panel and a lower row of each method minus FT (paired by seed); the starting model at step 0
when the history has it."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.figsave import plt  # pyplot with the Agg backend set first
from analysis.figsave import save as _save
from analysis.frame import (
    OK,
    display_name,
    method_order,
    prepare,
)

log = logging.getLogger("analysis.plots")


#: The panels of the learning-curve figure: the paper's methods by family. Any other ``ft_tau*`` id is a
#: baseline; any other id goes to :data:`OTHER_FAMILY`.
FAMILIES: dict[str, tuple[str, ...]] = {
    "baselines": ("zs", "ft", "ft_tau0.05", "ft_tau0.10"),
    "input mixes": ("imix", "unmix"),
    "single mix terms": ("m2_mix", "v_mix", "l_mix", "vl_mix"),
    "m³: all four terms": ("m3_mix", "m3_mix_linear"),
}
OTHER_FAMILY = "other methods"
REFERENCE = "ft"  # the lower row of the learning curves is each method minus FT, paired by seed
START = "zs"  # the base model before fine-tuning: its step-0 value is marked in every panel


def method_family(method: str) -> str:
    """The learning-curve panel of ``method`` (a key of :data:`FAMILIES`, or :data:`OTHER_FAMILY`)."""
    for family, members in FAMILIES.items():
        if method in members:
            return family
    return "baselines" if method.startswith("ft_tau") else OTHER_FAMILY


def _history_metric(history: pd.DataFrame, metric: str, split: str) -> pd.Series | None:
    """The metric at each history row of ``split``: plain name with a split column, or ``<split>_<m>``."""
    if "split" in history.columns and metric in history.columns:
        return pd.to_numeric(history[metric], errors="coerce").where(history["split"] == split)
    if f"{split}_{metric}" in history.columns:
        return pd.to_numeric(history[f"{split}_{metric}"], errors="coerce")
    return None


@dataclass
class CurvePlot:
    """One learning-curve figure (one per data set) and what it shows.

    Attributes:
        stem: file stem, ``learning_curves_<split>_<metric>`` (plus ``_<data set>`` when there are several).
        dataset: the data set of its trials.
        families: panel title -> the methods drawn in it, in table order.
        note: the line under the panels (which curves start at step 0, what the lower row is).
    """

    stem: str
    dataset: str
    families: dict[str, list[str]]
    note: str
    figure: plt.Figure = field(repr=False)


def _band(ax: plt.Axes, a: pd.DataFrame, band: bool = True, **style: object) -> None:
    """A mean line with markers and, when ``band``, a ± std band (one seed: no band)."""
    a = a.sort_values("step")
    line = ax.plot(a["step"], a["mean"], marker="o", ms=3, lw=1.3, **style)[0]
    if band:
        std = a["std"].fillna(0.0)
        ax.fill_between(a["step"], a["mean"] - std, a["mean"] + std, color=line.get_color(), alpha=0.15, lw=0)


def _over_seeds(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and count over seeds per (method, step) of per-seed values ``v``."""
    return per_seed.groupby(["method", "step"])["v"].agg(["mean", "std", "count"]).reset_index()


def _start_note(stats: pd.DataFrame, methods: list[str]) -> str:
    """Which curves start at step 0 (the starting model's evaluation); none is made up."""
    at0 = set(stats.loc[stats["step"] == 0, "method"])
    trained = [m for m in methods if m != START]
    missing = [m for m in trained if m not in at0]
    if not at0:
        return "The history has no step-0 evaluation: the starting model is not shown."
    if not missing:
        return "Every curve starts at step 0, the starting model's evaluation."
    who = "the trained methods" if len(missing) == len(trained) else ", ".join(map(display_name, missing))
    text = f"No step-0 evaluation in the history for {who}: their curves begin at their first evaluation"
    if START in at0:
        text += f"; ★ = {display_name(START)} at step 0, the base model before fine-tuning"
    return text + "."


def _curve_figure(
    data: pd.DataFrame, order: list[str], label: str, title: str
) -> tuple[plt.Figure, dict[str, list[str]], str]:
    """Small multiples of one data set's curves: a panel per family, and a row of differences to FT."""
    per_seed = data.groupby(["method", "seed", "step"], as_index=False)["v"].mean()
    stats = _over_seeds(per_seed)
    present = [m for m in order if m in set(stats["method"])]
    families: dict[str, list[str]] = {}
    for family in [*FAMILIES, OTHER_FAMILY]:
        members = [m for m in present if method_family(m) == family]
        if members:
            families[family] = members
    ref = stats[stats["method"] == REFERENCE]
    start = stats[(stats["method"] == START) & (stats["step"] == 0)]
    delta = None
    if not ref.empty:
        paired = per_seed.merge(
            per_seed[per_seed["method"] == REFERENCE][["seed", "step", "v"]],
            on=["seed", "step"],
            suffixes=("", "_ref"),
        )
        paired["v"] = paired["v"] - paired["v_ref"]
        delta = _over_seeds(paired[paired["method"] != REFERENCE])
    nrows = 1 if delta is None else 2
    ncols = len(families)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.3 * ncols + 0.5, 2.9 * nrows + 1.0), sharex=True, squeeze=False
    )
    for ax in axes[0][1:]:  # the absolute values share one scale; the differences each have their own
        ax.sharey(axes[0][0])
        ax.tick_params(labelleft=False)
    for j, (family, members) in enumerate(families.items()):
        ax = axes[0][j]
        # FT (grey, dashed) and ZS at step 0 (a black star) in every panel; the family's others in colour
        others = [m for m in members if m not in (REFERENCE, START)]
        for i, m in enumerate(others):
            _band(ax, stats[stats["method"] == m], color=f"C{i}", label=display_name(m))
        if not ref.empty:
            name = display_name(REFERENCE) + ("" if REFERENCE in members else " (reference)")
            _band(ax, ref, band=REFERENCE in members, color="0.5", ls="--", label=name)
        if not start.empty:
            name = f"{display_name(START)}, step 0"
            ax.plot([0], start["mean"], marker="*", ms=10, color="k", ls="none", label=name)
        ax.set_title(family, fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
        if delta is not None:
            dx = axes[1][j]
            dx.axhline(0.0, color="0.5", ls="--", lw=1)
            for i, m in enumerate(others):
                d = delta[delta["method"] == m]
                if not d.empty:
                    _band(dx, d, color=f"C{i}", label=display_name(m))
            dx.grid(alpha=0.3)
        axes[-1][j].set_xlabel("step")
    axes[0][0].set_ylabel(label)
    note = _start_note(stats, present)
    if delta is not None:
        axes[1][0].set_ylabel(f"Δ {label} vs {display_name(REFERENCE)}\n(same seed)")
        ref_name = display_name(REFERENCE)
        note += f" Lower row: each method minus {ref_name} of the same seed, mean ± std over seeds."
    fig.suptitle(title)
    fig.text(0.5, -0.01, note, ha="center", va="top", fontsize=8, wrap=True)
    fig.tight_layout()
    return fig, families, note


def learning_curve_plots(
    history: pd.DataFrame, trials: pd.DataFrame, metric: str = "rsum", split: str = "val"
) -> list[CurvePlot]:
    """The learning-curve figures (one per data set), not yet saved: ``split`` metric vs step of the
    completed trials, one panel per method family (:func:`method_family`), mean ± std band over seeds;
    a lower row of differences to FT (paired by seed) when FT is present. Empty when nothing to draw.

    Small multiples rather than one axis: twelve methods whose curves differ by a few points lie on top
    of each other on one axis; per family they can be told apart, the FT line in every panel and the row
    of differences make the families comparable, and the absolute row keeps the starting model in view.
    """
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
    t = t[["trial_id", "method", "seed", "dataset"]]
    data = pd.DataFrame({"trial_id": history["trial_id"].astype(str), "step": history["step"], "v": values})
    data = data.dropna().merge(t.assign(trial_id=t["trial_id"].astype(str)), on="trial_id")
    if data.empty:
        log.info("learning curves skipped: no history rows of completed ablation trials")
        return []
    datasets = sorted(data["dataset"].unique())
    plots = []
    for ds in datasets:
        d = data[data["dataset"] == ds]
        n = d.groupby("method")["seed"].nunique()
        seeds = f"{n.min()}" if n.min() == n.max() else f"{n.min()}-{n.max()}"
        title = f"{split} {metric} on {ds}: mean ± std over {seeds} seed{'s' if n.max() > 1 else ''}"
        fig, families, note = _curve_figure(d, order, f"{split} {metric}", title)
        stem = f"learning_curves_{split}_{metric}"
        if len(datasets) > 1:
            stem += "_" + "".join(c if c.isalnum() else "_" for c in ds)
        plots.append(CurvePlot(stem, ds, families, note, fig))
    return plots


def learning_curves(
    history: pd.DataFrame,
    trials: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    metric: str = "rsum",
    split: str = "val",
) -> list[Path]:
    """The figures of :func:`learning_curve_plots`, saved; returns the paths."""
    return [
        p
        for plot in learning_curve_plots(history, trials, metric, split)
        for p in _save(plot.figure, Path(out_dir), plot.stem)
    ]

