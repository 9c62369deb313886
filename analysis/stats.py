"""Small statistics for the tables: mean ± std over seeds and paired t intervals, formatted for a reader."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DASH = "–"  # shown where a number does not exist (std of one seed, an empty cell)


@dataclass(frozen=True)
class Summary:
    """Mean and sample std (``ddof=1``; NaN for one value) of ``n`` finite values."""

    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class PairedDiff:
    """Mean of ``b - a`` over ``n`` pairs with a two-sided t interval ``[lo, hi]`` (NaN when ``n < 2``)."""

    mean: float
    lo: float
    hi: float
    n: int
    confidence: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.lo > 0 or self.hi < 0)


def summarize(values: np.ndarray | list[float]) -> Summary:
    """Mean ± sample std of the finite entries of ``values`` [n]."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return Summary(math.nan, math.nan, 0)
    return Summary(float(x.mean()), float(x.std(ddof=1)) if n > 1 else math.nan, n)


def paired_t_interval(
    a: np.ndarray | list[float], b: np.ndarray | list[float], confidence: float = 0.95
) -> PairedDiff:
    """Paired difference ``b - a`` [n] with a Student-t interval; pairs with a non-finite side are dropped.

    The interval is ``mean ± t_{(1+c)/2, n-1} · sd / sqrt(n)`` with the sample sd (``ddof=1``).
    """
    from scipy import stats

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} is invalid: allowed a number in (0, 1)")
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples have shapes {a.shape} and {b.shape}: allowed equal shapes")
    keep = np.isfinite(a) & np.isfinite(b)
    d = b[keep] - a[keep]
    n = int(d.size)
    if n == 0:
        return PairedDiff(math.nan, math.nan, math.nan, 0, confidence)
    mean = float(d.mean())
    if n < 2:
        return PairedDiff(mean, math.nan, math.nan, n, confidence)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return PairedDiff(mean, mean - half, mean + half, n, confidence)


def fmt_num(x: float, decimals: int, *, sign: bool = False) -> str:
    """``x`` with fixed decimals; NaN -> dash; never ``-0.00``."""
    if x is None or not math.isfinite(x):
        return DASH
    s = f"{x:+.{decimals}f}" if sign else f"{x:.{decimals}f}"
    if float(s) == 0.0:
        s = f"{0.0:+.{decimals}f}" if sign else f"{0.0:.{decimals}f}"
    return s


def mean_std_text(mean: float, std: float, decimals: int) -> str:
    """``"81.20 ± 0.35"``; a NaN std (one seed) gives ``"81.20 ± –"``."""
    return f"{fmt_num(mean, decimals)} ± {fmt_num(std, decimals)}"


def fmt_paired(d: PairedDiff, decimals: int) -> str:
    """``"+1.20 [−0.31, +2.71]"``; with fewer than 2 pairs the interval is replaced by a marker."""
    if d.n == 0:
        return DASH
    if d.n < 2:
        return f"{fmt_num(d.mean, decimals, sign=True)} (n<2, no CI)"
    return (
        f"{fmt_num(d.mean, decimals, sign=True)} [{fmt_num(d.lo, decimals, sign=True)}, "
        f"{fmt_num(d.hi, decimals, sign=True)}]"
    )
