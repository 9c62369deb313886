"""Small statistics for the tables: mean ± std over seeds, paired t intervals and tests, the minimum
detectable effect (MDE) of a paired t test, and Holm's step-down adjustment; formatted for a reader.

The formulas are written out in ``docs/statistics.md``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

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
    """Mean of ``b - a`` over ``n`` pairs with a two-sided t interval ``[lo, hi]`` (NaN when ``n < 2``).

    ``sd``: the sample sd (``ddof=1``) of the differences; ``p``: the two-sided paired t test's p-value of
    ``mean = 0``. After :func:`holm_adjust`, ``p_adj`` is Holm's adjusted p-value over the family,
    ``[lo, hi]`` the interval whose exclusion of 0 is exactly ``p_adj < 1 - confidence`` (its own
    per-comparison level is ``level``) and ``mde_alpha`` Bonferroni's ``alpha / m``; ``p_adj`` is NaN when no
    adjustment was made, ``mde_alpha`` NaN means ``1 - confidence``.
    """

    mean: float
    lo: float
    hi: float
    n: int
    confidence: float = 0.95
    sd: float = math.nan
    p: float = math.nan
    p_adj: float = math.nan
    level: float = math.nan
    mde_alpha: float = math.nan

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.lo > 0 or self.hi < 0)

    @property
    def adjusted(self) -> bool:
        return not math.isnan(self.p_adj)

    @property
    def p_test(self) -> float:
        """The p-value the decision uses: Holm's adjusted one when adjusted, else the plain one."""
        return self.p_adj if self.adjusted else self.p

    @property
    def significant(self) -> bool:
        """The test rejects ``mean = 0`` at ``alpha = 1 - confidence`` (Holm-adjusted when adjusted)."""
        return self.n >= 2 and self.p_test < 1.0 - self.confidence

    @property
    def mde(self) -> float:
        """:func:`mde` of this comparison at 80 % power: its sd and ``n``, at ``alpha = 1 - confidence``, or
        after :func:`holm_adjust` at Bonferroni's ``alpha / m`` (Holm rejects whenever Bonferroni does, so
        its power at this MDE is at least 80 %, and a comparison it does not flag has ``|mean| < mde``)."""
        alpha = self.mde_alpha if math.isfinite(self.mde_alpha) else 1.0 - self.confidence
        return mde(self.sd, self.n, alpha=alpha)


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
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if se > 0:
        p = float(2.0 * stats.t.sf(abs(mean) / se, n - 1))
    else:  # every difference equal: certain when it is not 0, no evidence at all when it is
        p = 0.0 if mean != 0 else 1.0
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    return PairedDiff(mean, mean - half, mean + half, n, confidence, sd=sd, p=p, level=confidence)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order; NaN entries are not tests (they stay NaN and
    do not count in the family size ``m``).

    With the ``m`` finite p-values sorted, ``p_(1) <= ... <= p_(m)``, the adjusted value of the ``j``-th is
    ``max_{i <= j} min(1, (m - i + 1) p_(i))``; rejecting where it is ``< alpha`` is Holm's procedure.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * float(p[i])))
        out[i] = running
    return out.tolist()


def holm_adjust(diffs: Sequence[PairedDiff]) -> list[PairedDiff]:
    """Holm's adjustment of a family of paired comparisons (those with ``n >= 2``; the rest pass unchanged).

    Each tested comparison gets ``p_adj`` (:func:`holm`) and the t interval at the per-comparison level
    ``1 - alpha * p / p_adj`` (``alpha = 1 - confidence``): it excludes 0 exactly when ``p_adj < alpha``, so
    the interval and the mark agree. For the smallest p-value this is Bonferroni's ``1 - alpha / m``; with
    one comparison nothing changes. It is not a simultaneous interval (Holm has no simple one). The MDE of
    an adjusted comparison is taken at ``alpha / m`` (``PairedDiff.mde``).
    """
    from scipy import stats

    tested = [d.n >= 2 and math.isfinite(d.p) for d in diffs]
    adj = holm([d.p if t else math.nan for d, t in zip(diffs, tested)])
    m = sum(tested)
    out = []
    for d, t, pa in zip(diffs, tested, adj):
        if not t:
            out.append(d)
            continue
        alpha = 1.0 - d.confidence
        gamma = alpha * d.p / pa if pa > 0 else alpha / m  # p = p_adj = 0: certain, Bonferroni's level
        half = float(stats.t.ppf(1.0 - gamma / 2, d.n - 1)) * d.sd / math.sqrt(d.n)
        out.append(replace(d, lo=d.mean - half, hi=d.mean + half, p_adj=pa, level=1.0 - gamma,
                           mde_alpha=alpha / m))
    return out


@functools.lru_cache(maxsize=256)
def mde_noncentrality(df: int, alpha: float = 0.05, power: float = 0.80) -> float:
    """The noncentrality ``λ`` at which the two-sided one-sample t test with ``df`` degrees of freedom has
    ``power``: ``P(T' > t_c) + P(T' < -t_c) = power`` for ``T' ~ nct(df, λ)``, ``t_c = t_{1-alpha/2, df}``
    (solved by Brent's method; the lower tail as ``nct.sf(t_c, df, -λ)``, which stays finite)."""
    from scipy import optimize, stats

    if df < 1:
        raise ValueError(f"df={df!r} is invalid: allowed an integer >= 1")
    if not (0.0 < alpha < 1.0 and alpha < power < 1.0):
        raise ValueError(f"alpha={alpha!r}, power={power!r} are invalid: allowed 0 < alpha < power < 1")
    tc = float(stats.t.ppf(1.0 - alpha / 2.0, df))

    def short(lam: float) -> float:
        return float(stats.nct.sf(tc, df, lam) + stats.nct.sf(tc, df, -lam)) - power

    hi = tc + 4.0
    while short(hi) < 0:
        hi *= 1.5
    return float(optimize.brentq(short, 0.0, hi, xtol=1e-12, rtol=1e-12))


def mde(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.80) -> float:
    """Minimum detectable effect of a paired t test over ``n`` pairs whose differences have sd ``sd``:
    ``λ(n - 1, alpha, power) · sd / sqrt(n)`` (:func:`mde_noncentrality`). NaN when ``n < 2`` or the sd is
    unknown; 0 for a zero sd."""
    if n < 2 or sd is None or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    return mde_noncentrality(int(n) - 1, alpha, power) * float(sd) / math.sqrt(n)


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


def fmt_p(p: float) -> str:
    """``"0.014"``, ``"<0.001"``; NaN -> dash."""
    if p is None or not math.isfinite(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"
