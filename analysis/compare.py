"""Paired comparisons of methods against a baseline (FT), by seed: the shared part of the paired, robustness,
few-shot, arithmetic and claims tables.

A pair is a seed at which both methods have a completed trial (trials of one seed averaged first). Each
comparison is a paired t test (:func:`analysis.stats.paired_t_interval`); the comparisons of one metric
within one data set form a family that Holm's step-down procedure adjusts by default
(:func:`analysis.stats.holm_adjust`); the MDE is :func:`analysis.stats.mde`. ``docs/statistics.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

from analysis.stats import DASH, PairedDiff, fmt_num, fmt_p, fmt_paired, holm_adjust, paired_t_interval

MARK = " †"
MDE_HEADER = "MDE (80 %)"


def per_seed(ok: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    """Per (dataset, method, seed): the mean of ``cols`` over the completed trials ``ok`` of that seed."""
    return ok.groupby(["dataset", "method", "seed"])[list(cols)].mean()


def versus(
    seeds: pd.DataFrame,
    dataset: str,
    baseline: str,
    methods: Iterable[str],
    col: str,
    *,
    confidence: float = 0.95,
    holm: bool = True,
) -> dict[str, PairedDiff] | None:
    """``method - baseline`` of ``col`` per method (the baseline itself left out), paired by seed, Holm-
    adjusted over these comparisons when ``holm``; None when the baseline has no completed trial here.

    Args:
        seeds: :func:`per_seed`'s frame.
    """
    groups = seeds.index.droplevel("seed")
    if (dataset, baseline) not in groups:
        return None
    base = seeds.loc[(dataset, baseline), col]
    out: dict[str, PairedDiff] = {}
    for m in methods:
        if m == baseline or m in out:
            continue
        other = seeds.loc[(dataset, m), col] if (dataset, m) in groups else base[:0]
        common = base.index.intersection(other.index)
        out[m] = paired_t_interval(base.loc[common].to_numpy(), other.loc[common].to_numpy(), confidence)
    if holm and out:
        out = dict(zip(out, holm_adjust(list(out.values()))))
    return out


def n_pairs(seeds: pd.DataFrame, dataset: str, baseline: str, method: str) -> int:
    """Seeds at which both ``baseline`` and ``method`` have a completed trial (whatever their values)."""
    groups = seeds.index.droplevel("seed")
    if (dataset, baseline) not in groups or (dataset, method) not in groups:
        return 0
    a = seeds.loc[(dataset, baseline)].index
    return len(a.intersection(seeds.loc[(dataset, method)].index))


def tested(diffs: Iterable[PairedDiff]) -> int:
    """How many comparisons are tests (``n >= 2`` pairs): the family size Holm adjusts over."""
    return sum(1 for d in diffs if d.n >= 2)


def diff_text(d: PairedDiff, decimals: int) -> str:
    """``"+3.00 [+0.52, +5.48] †"`` (the mark: significant, Holm-adjusted when adjusted)."""
    return fmt_paired(d, decimals) + (MARK if d.significant else "")


def p_text(d: PairedDiff) -> str:
    return fmt_p(d.p_test) if d.n >= 2 else DASH


def mde_text(d: PairedDiff, decimals: int) -> str:
    return fmt_num(d.mde, decimals) if d.n >= 2 else DASH


def family_note(baseline: str, families: dict[str, int], *, holm: bool, confidence: float = 0.95) -> str:
    """The sentence under a table with paired columns: what the interval, the mark and the p-value are.

    Args:
        baseline: the baseline's display name.
        families: a label (a metric, or a data set) -> the number of comparisons tested in that family.
    """
    alpha = 1.0 - confidence
    if not holm:
        return (
            f"Unadjusted: each interval is a {confidence:.0%} paired Student-t interval and † marks p < "
            f"{alpha:g} (the interval excludes 0); no correction for the number of comparisons with "
            f"{baseline}."
        )
    sizes = sorted(set(families.values()))
    if len(sizes) <= 1:
        k = f"k = {sizes[0] if sizes else 0}"
    else:
        k = "k = " + ", ".join(f"{v} ({label})" for label, v in families.items())
    return (
        f"Intervals and marks Holm-adjusted over {k} comparisons with {baseline} (per metric; familywise α = "
        f"{alpha:g}): p is Holm's adjusted p-value, † = adjusted p < {alpha:g}, and the interval is the t "
        f"interval at level 1 − α·p/p_Holm, which excludes 0 exactly when † (Bonferroni's 1 − α/k for the "
        "smallest p); --no-holm (holm=False) shows unadjusted intervals."
    )


def mde_note(confidence: float = 0.95, *, holm: bool = True) -> str:
    """The sentence under a table with an MDE column."""
    alpha = 1.0 - confidence
    level = (
        f"two-sided at Bonferroni's α/k (α = {alpha:g}, k as above: Holm flags whenever Bonferroni does, so "
        "its power there is at least 80 %, and an unflagged difference is smaller than the MDE)"
        if holm else f"two-sided α = {alpha:g}"
    )
    return (
        f"{MDE_HEADER}: the smallest true difference the paired t test ({level}) detects with 80 % power, "
        "for the row's sd of the paired differences and its number of pairs (noncentral t; "
        "docs/statistics.md); – with fewer than 2 pairs."
    )
