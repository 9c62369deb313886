"""analysis/ for the extra evaluations: Table 1 per evaluation set, robustness, few-shot and arithmetic
tables on a fixture with known values; the MDE (noncentral t) and Holm's adjustment against hand and
independent computations; A/A and planted-shift checks of the paired table and the claims; the command
line and the summary on a results folder written by the store."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

import analysis
import store
from analysis import cli, frame
from analysis.build import build_tables
from analysis.catalog.claims import table_claims
from analysis.catalog.evals import table_arithmetic, table_fewshot, table_retrieval_sets, table_robustness
from analysis.catalog.paired import table_paired
from analysis.render import render
from analysis.render import to_markdown as to_md
from analysis.stats import holm, holm_adjust, mde, mde_noncentrality, paired_t_interval
from analysis.synthetic import synthetic_trials

ROOT = Path(__file__).resolve().parent.parent
SQ3 = math.sqrt(3.0)
T_975_2 = 4.302652729749462  # t(0.975, 2)
# t(0.9875, 2) in closed form (df = 2: t_q = (2q - 1) sqrt(2 / (4 q (1 - q)))): Bonferroni's level for k = 2.
T_9875_2 = 0.975 * math.sqrt(2.0 / (4 * 0.9875 * 0.0125))
LAMBDA_2 = 5.653489266197125  # the noncentrality of 80 % power at df = 2 (checked below two ways)


def _row(tid, method, seed, status="completed", *, styles=("dark",), base=("flat", "outline"),
         source="shapes", **metrics):
    """A trials row through store.trial_row: plain metrics as the test split's, ``eval__<set>__<m>`` as
    ``eval.<set>.<m>``."""
    cfg = {
        "method": method,
        "run": {"seed": seed},
        "data": {"source": source, "styles": list(styles), "base_styles": list(base)},
        "evaluation": {"fewshot_shots": [1, 4]},
    }
    result = {}
    for k, v in metrics.items():
        if k.startswith("eval__"):
            _, s, m = k.split("__")
            result[f"eval.{s}.{m}"] = v
        else:
            result[f"test_{k}"] = v
    return store.trial_row(sweep="ev", trial_id=tid, config=cfg, result=result, status=status,
                           error=None if status == "completed" else "boom", env={"git_commit": "abc"})


def _fixture_rows():
    """Known values, seeds 0-2 (see each table's test); i-Mix one seed; a diverged m³-Mix seed 3."""
    rows = []
    per_method = {
        "zs": dict(rsum=[50, 50, 50], eval__dark__rsum=[50, 50, 50], eval__flat__rsum=[200, 200, 200],
                   eval__outline__rsum=[190, 190, 190], eval__flat__r1_i2t=[30, 30, 30]),
        "ft": dict(rsum=[100, 110, 120], ece=[8, 7, 6], eval__dark__rsum=[100, 110, 120],
                   eval__flat__rsum=[150, 160, 170], eval__outline__rsum=[140, 150, 160],
                   eval__flat__r1_i2t=[10, 12, 14], fewshot_k1=[30, 32, 34], fewshot_k4=[40, 42, 44],
                   eval__flat__fewshot_k4=[20, 21, 22], arith_r1=[20, 22, 24], arith_r5=[50, 50, 50],
                   arith_r1_colour=[30, 30, 30], arith_r1_count=[10, 14, 18]),
        "m3_mix": dict(rsum=[103, 114, 122], ece=[5, 5, 5], eval__dark__rsum=[104, 114, 122],
                       eval__flat__rsum=[160, 172, 178], eval__outline__rsum=[150, 160, 170],
                       eval__flat__r1_i2t=[13, 16, 16], fewshot_k1=[31, 34, 35], fewshot_k4=[41, 43, 47],
                       eval__flat__fewshot_k4=[25, 25, 25], arith_r1=[25, 28, 29], arith_r5=[55, 56, 60],
                       arith_r1_colour=[40, 41, 42], arith_r1_count=[12, 15, 15]),
    }
    for method, cols in per_method.items():
        for seed in range(3):
            values = {k: float(v[seed]) for k, v in cols.items()}
            rows.append(_row(f"{method}-{seed}", method, seed, **values))
    rows.append(_row("imix-0", "imix", 0, rsum=90.0, eval__dark__rsum=90.0, eval__flat__rsum=140.0,
                     eval__outline__rsum=130.0))
    rows.append(_row("m3-3", "m3_mix", 3, status="diverged"))
    return rows


@pytest.fixture
def results_dir(tmp_path):
    folder = tmp_path / "ev"
    store.write_rows(folder, "trials", _fixture_rows())
    return folder


@pytest.fixture
def trials(results_dir):
    return store.read_results(results_dir)[0]


def _plain(trials):
    """The fixture without any of the new columns."""
    new = [c for c in trials.columns if c.startswith(("eval.", "fewshot_", "arith_"))]
    return trials.drop(columns=new)


# ----------------------------------------------------------------------------------------------------------
# MDE and Holm


def test_mde_power_is_80_percent_by_nct_and_by_an_independent_integral():
    n, sd = 3, 1.0
    got = mde(sd, n)
    assert got == pytest.approx(LAMBDA_2 / SQ3, rel=1e-9) and got == pytest.approx(3.2640, abs=1e-4)
    lam = got * math.sqrt(n) / sd
    tc = stats.t.ppf(0.975, n - 1)
    # The power at the reported MDE, from scipy's noncentral t (upper tail sf, lower tail cdf) ...
    power = stats.nct.sf(tc, n - 1, lam) + stats.nct.cdf(-tc, n - 1, lam)
    assert power == pytest.approx(0.80, abs=1e-6)

    # ... and with no noncentral t at all: T' = (Z + λ) / sqrt(V / df), V ~ χ²(df), integrated over V.
    def given_v(v):
        s = math.sqrt(v / (n - 1))
        return (stats.norm.sf(tc * s - lam) + stats.norm.cdf(-tc * s - lam)) * stats.chi2.pdf(v, n - 1)

    assert integrate.quad(given_v, 0, np.inf, epsabs=1e-12)[0] == pytest.approx(0.80, abs=1e-6)
    # The textbook approximation (t_{1-α/2, df} + t_{power, df}) · sd / sqrt(n), by hand:
    # (4.303 + 1.061) / 1.732 = 3.097.
    assert got == pytest.approx((4.303 + 1.061) / 1.732, abs=0.2)
    # G*Power, one-sample / paired t, d = 0.5, α = 0.05 two-sided, power 0.80: n = 34 (actual power 0.8078).
    assert mde(1.0, 34) < 0.5 < mde(1.0, 33)
    lam34 = 0.5 * math.sqrt(34)
    tc34 = stats.t.ppf(0.975, 33)
    assert stats.nct.sf(tc34, 33, lam34) + stats.nct.cdf(-tc34, 33, lam34) == pytest.approx(0.8078, abs=5e-4)
    # Scales with the sd; none without 2 pairs; zero for identical differences; df = 1 stays finite.
    assert mde(2.5, 3) == pytest.approx(2.5 * got)
    assert math.isnan(mde(1.0, 1)) and math.isnan(mde(float("nan"), 5)) and mde(0.0, 4) == 0.0
    assert mde_noncentrality(1) == pytest.approx(16.334, abs=1e-3)


def test_mde_monte_carlo_power_and_null_rejection_rate():
    """Simulated paired data with a known sd: a true shift of the MDE is found ~80 % of the time, no shift
    ~5 % (the A/A false-positive rate)."""
    rng = np.random.default_rng(0)
    n, reps = 5, 2000
    shift = mde(1.0, n)
    a = rng.normal(0, 1, (reps, n))
    hit = np.mean([paired_t_interval(np.zeros(n), x + shift).p < 0.05 for x in a])
    null = np.mean([paired_t_interval(np.zeros(n), x).p < 0.05 for x in a])
    assert hit == pytest.approx(0.80, abs=0.03) and null == pytest.approx(0.05, abs=0.015)


def test_paired_test_p_value_by_hand():
    d = paired_t_interval([10, 12, 14], [13, 16, 16])  # differences 3, 4, 2: mean 3, sd 1, t = 3 sqrt(3)
    assert d.sd == pytest.approx(1.0) and d.p == pytest.approx(2 * stats.t.sf(3 * SQ3, 2))
    assert d.mde == pytest.approx(LAMBDA_2 / SQ3)
    same = paired_t_interval([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])  # A/A: every difference exactly 0
    assert same.p == 1.0 and same.lo == same.hi == 0.0 and not same.significant and same.mde == 0.0
    shifted = paired_t_interval([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])  # all differences 1: certain
    assert shifted.p == 0.0 and shifted.significant


def test_holm_by_hand_on_four_p_values():
    # Sorted 0.005, 0.01, 0.03, 0.04 -> 4·0.005 = 0.02, 3·0.01 = 0.03, 2·0.03 = 0.06, max(0.06, 0.04) = 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = holm([0.01, float("nan"), 0.04, 0.03, 0.005])  # a NaN is not a test: m stays 4
    assert math.isnan(got[1]) and [got[i] for i in (0, 2, 3, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([0.02]) == pytest.approx([0.02])


def test_an_unflagged_comparison_is_always_smaller_than_its_mde():
    """With the MDE at the level actually guaranteed (α/k under Holm, α without), 'inconclusive: no difference
    larger than the MDE' is literally true of the observed difference."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        fam = [paired_t_interval(np.zeros(3), rng.normal(rng.uniform(-3, 3), 1.0, 3)) for _ in range(4)]
        for d in [*fam, *holm_adjust(fam)]:
            if not d.significant:
                assert abs(d.mean) < d.mde


def test_holm_adjusted_intervals_agree_with_the_mark():
    d1 = paired_t_interval([0, 0, 0], [9, 10, 11])  # mean 10, sd 1: p = 0.0033
    d2 = paired_t_interval([0, 0, 0], [30, 40, 50])  # mean 40, sd 10: p = 0.0202
    d3 = paired_t_interval([0, 0, 0], [-1, 2, 5])  # mean 2, sd 3: p = 0.39
    a1, a2, a3 = holm_adjust([d1, d2, d3])
    assert a1.p_adj == pytest.approx(3 * d1.p) and a2.p_adj == pytest.approx(2 * d2.p)
    assert a3.p_adj == pytest.approx(max(2 * d2.p, d3.p))
    # The smallest p gets Bonferroni's interval (level 1 - 0.05/3); each excludes 0 iff p_adj < 0.05.
    half = stats.t.ppf(1 - 0.05 / 6, 2) / SQ3
    assert (a1.lo, a1.hi) == pytest.approx((10 - half, 10 + half))
    for a in (a1, a2, a3):
        assert a.excludes_zero == a.significant == (a.p_adj < 0.05)
        assert a.level == pytest.approx(1 - 0.05 * a.p / a.p_adj)
    assert a1.mde == pytest.approx(mde(1.0, 3, alpha=0.05 / 3)) and d1.mde == pytest.approx(mde(1.0, 3))
    one = holm_adjust([d1])[0]  # one comparison: nothing changes
    assert (one.lo, one.hi, one.p_adj) == (d1.lo, d1.hi, d1.p)
    few = paired_t_interval([1.0], [2.0])
    assert holm_adjust([few, d1])[0] is few  # n < 2: no test, not in the family
    assert holm_adjust([few, d1])[1].p_adj == pytest.approx(d1.p)


# ----------------------------------------------------------------------------------------------------------
# the tables on the fixture


def test_eval_columns_take_the_direction_and_decimals_of_their_metric():
    assert frame.direction("eval.flat.ece") is False and frame.direction("eval.coco.rsum") is True
    assert frame.direction("eval.flat.gap") is None and frame.decimals("eval.flat.gap") == 3
    assert frame.direction("fewshot_k4") is True and frame.decimals("arith_r1_colour") == 2


def test_table1_per_evaluation_set(trials):
    t = table_retrieval_sets(trials)
    assert t.name == "table1_retrieval_sets"
    assert list(t.frame.columns) == ["method", "dark rsum", "flat i→t R@1", "flat rsum", "outline rsum", "n"]
    f = t.frame.set_index("method")
    assert list(f.index) == ["ZS", "FT", "i-Mix", "m³-Mix"]
    assert f.loc["FT", "flat i→t R@1"] == "12.00 ± 2.00" and f.loc["m³-Mix", "flat i→t R@1"] == "15.00 ± 1.73"
    assert f.loc["i-Mix", "flat i→t R@1"] == "–"
    assert f.loc["m³-Mix", "flat rsum"] == "170.00 ± 9.17"  # 160, 172, 178
    best = t.best.set_index(t.frame["method"])
    assert best.loc["ZS", "flat i→t R@1"] and best.loc["ZS", "flat rsum"] and best.loc["m³-Mix", "dark rsum"]
    assert f.loc["m³-Mix", "n"] == "3"
    assert (
        "Evaluation sets: dark = fine-tune target (data.styles); flat, outline = the base model's source "
        "styles (data.base_styles)."
    ) in t.notes
    assert t.values.loc["m³-Mix", "flat rsum"] == pytest.approx(170.0)
    # Today's Table 1 of the primary split is unchanged by the new columns.
    from analysis.catalog.retrieval import table_retrieval

    one = {"rsum": "rsum"}
    assert to_md(table_retrieval(trials, one)) == to_md(table_retrieval(_plain(trials), one))


def test_robustness_table(trials):
    (t,) = table_robustness(trials)  # no eval.<set>.zs_acc: only the rsum table
    assert t.name == "table_robustness_rsum"
    assert list(t.frame.columns) == [
        "method", "dark (target)", "flat (source)", "outline (source)", "source mean", "worst set",
        "source mean − ZS", "Δ source mean rsum vs FT [95% CI]", "p (Holm)", "MDE (80 %)", "n",
    ]
    f = t.frame.set_index("method")
    # Source means per seed: ZS 195 x3; FT 145, 155, 165; m³-Mix 155, 166, 174; i-Mix (140 + 130) / 2.
    assert f["source mean"].tolist() == ["195.00 ± 0.00", "155.00 ± 10.00", "135.00 ± –", "165.00 ± 9.54"]
    assert f.loc["FT", "worst set"] == "110.00 (dark)" and f.loc["ZS", "worst set"] == "50.00 (dark)"
    assert f["source mean − ZS"].tolist() == ["–", "-40.00", "-60.00", "-30.00"]
    # Paired vs FT (k = 2 tests; i-Mix has one pair): m³-Mix differences 10, 11, 9 (p = 0.0033, smallest:
    # Bonferroni's 97.5 % interval, t = 6.205); ZS 50, 40, 30 (p = 0.0202, its own 95 % interval).
    half_m3, half_zs = T_9875_2 / SQ3, T_975_2 * 10 / SQ3
    assert f"{40 - half_zs:.2f}, {40 + half_zs:.2f}" == "15.16, 64.84"
    assert f.loc["m³-Mix", "Δ source mean rsum vs FT [95% CI]"] == (
        f"+10.00 [+{10 - half_m3:.2f}, +{10 + half_m3:.2f}] †") == "+10.00 [+6.42, +13.58] †"
    assert f.loc["ZS", "Δ source mean rsum vs FT [95% CI]"] == "+40.00 [+15.16, +64.84] †"
    assert f.loc["m³-Mix", "p (Holm)"] == "0.007" and f.loc["ZS", "p (Holm)"] == "0.020"
    # MDE under Holm: at Bonferroni's 0.05 / 2, λ(df 2) = 8.0104, times sd / √3.
    assert mde(1.0, 3, alpha=0.025) == pytest.approx(8.0104 / SQ3, abs=1e-4)
    assert f.loc["m³-Mix", "MDE (80 %)"] == "4.62" and f.loc["ZS", "MDE (80 %)"] == "46.25"
    assert f.loc["i-Mix", "Δ source mean rsum vs FT [95% CI]"] == "-10.00 (n<2, no CI)"  # 135 - 145
    assert f.loc["i-Mix", "MDE (80 %)"] == "–" and f.loc["FT", "p (Holm)"] == "–"
    assert any("Holm-adjusted over k = 2 comparisons with FT" in n for n in t.notes)
    assert t.best.set_index(t.frame["method"]).loc["ZS", "source mean"]
    # Unadjusted: the ordinary 95 % interval and the raw p.
    (u,) = table_robustness(trials, holm=False)
    g = u.frame.set_index("method")
    assert g.loc["m³-Mix", "Δ source mean rsum vs FT [95% CI]"] == "+10.00 [+7.52, +12.48] †"
    assert g.loc["m³-Mix", "MDE (80 %)"] == "3.26"  # unadjusted: α = 0.05, λ = 5.6535, sd 1 / √3
    assert g.loc["m³-Mix", "p"] == "0.003" and any(n.startswith("Δ source mean rsum = method − FT") and
                                                   "Unadjusted" in n for n in u.notes)


def test_robustness_on_file_data_uses_every_set_and_one_table_per_metric():
    rows = []
    for i, (method, shift) in enumerate([("ft", 0.0), ("m3_mix", 5.0)]):
        for seed in range(2):
            rows.append({"trial_id": f"{i}{seed}", "method": method, "seed": seed, "status": "completed",
                         "data.source": "csv", "data.styles": '["dark"]',
                         "eval.coco.rsum": 300 + shift + seed, "eval.flickr.rsum": 310 + shift + 2 * seed,
                         "eval.coco.zs_acc": np.nan, "eval.flickr.zs_acc": 40.0 + shift})
    tables = table_robustness(pd.DataFrame(rows))
    assert [t.name for t in tables] == ["table_robustness_rsum", "table_robustness_zs_acc"]
    rsum = tables[0].frame.set_index("method")
    assert list(rsum.columns[:3]) == ["coco", "flickr", "mean of other sets"]  # no target / source here
    assert rsum.loc["FT", "mean of other sets"] == "305.75 ± 1.06"  # seeds (300 + 310) / 2, (301 + 312) / 2
    zs = tables[1].frame
    assert "coco" not in zs.columns and "worst set" not in zs.columns  # an all-NaN set is left out


def test_fewshot_table(trials):
    t = table_fewshot(trials)
    assert list(t.frame.columns) == [
        "method", "test k=1", "test k=4", "flat k=4", "test mean (k = 1, 4)", "Δ test mean vs FT [95% CI]",
        "p (Holm)", "MDE (80 %)", "n",
    ]
    f = t.frame.set_index("method")
    assert list(f.index) == ["FT", "m³-Mix"]  # ZS and i-Mix measured no few-shot: not shown, named in a note
    assert "Not shown (no value in these columns): ZS, i-Mix." in t.notes
    assert f.loc["FT", "test mean (k = 1, 4)"] == "37.00 ± 2.00"  # per seed 35, 37, 39
    assert f.loc["m³-Mix", "test mean (k = 1, 4)"] == "38.50 ± 2.50"  # 36, 38.5, 41
    assert f.loc["m³-Mix", "flat k=4"] == "25.00 ± 0.00" and f.loc["FT", "test k=1"] == "32.00 ± 2.00"
    # Differences 1, 1.5, 2 (mean 1.5, sd 0.5); one test, so Holm changes nothing.
    half = T_975_2 * 0.5 / SQ3
    assert f.loc["m³-Mix", "Δ test mean vs FT [95% CI]"] == f"+1.50 [+{1.5 - half:.2f}, +{1.5 + half:.2f}] †"
    assert f.loc["m³-Mix", "MDE (80 %)"] == f"{LAMBDA_2 * 0.5 / SQ3:.2f}" == "1.63"
    assert t.best.set_index(t.frame["method"]).loc["m³-Mix", "test mean (k = 1, 4)"]


def test_arithmetic_table(trials):
    t = table_arithmetic(trials)
    assert list(t.frame.columns) == [
        "method", "R@1 colour", "R@1 count", "R@1", "R@5", "Δ R@1 vs FT [95% CI]", "p (Holm)", "MDE (80 %)",
        "n",
    ]
    f = t.frame.set_index("method")
    assert f.loc["FT", "R@1"] == "22.00 ± 2.00" and f.loc["m³-Mix", "R@1"] == "27.33 ± 2.08"
    assert f.loc["m³-Mix", "R@1 colour"] == "41.00 ± 1.00" and f.loc["FT", "R@5"] == "50.00 ± 0.00"
    sd = math.sqrt(1 / 3)  # differences 5, 6, 5
    half = T_975_2 * sd / SQ3
    assert f.loc["m³-Mix", "Δ R@1 vs FT [95% CI]"] == f"+5.33 [+{16 / 3 - half:.2f}, +{16 / 3 + half:.2f}] †"
    assert f.loc["m³-Mix", "MDE (80 %)"] == f"{LAMBDA_2 * sd / SQ3:.2f}" == "1.88"


def test_new_tables_are_none_without_their_columns(trials):
    plain = _plain(trials)
    assert table_retrieval_sets(plain) is None and table_robustness(plain) == []
    assert table_fewshot(plain) is None and table_arithmetic(plain) is None
    # All-NaN columns count as absent.
    new = [c for c in trials.columns if c.startswith(("eval.", "fewshot_", "arith_"))]
    nan = trials.assign(**{c: np.nan for c in new})
    assert table_retrieval_sets(nan) is None and table_robustness(nan) == []
    assert table_fewshot(nan) is None and table_arithmetic(nan) is None
    names = [t.name for t in build_tables(plain)]
    new_tables = {"table1_retrieval_sets", "table_robustness_rsum", "table_fewshot", "table_arithmetic"}
    assert not new_tables & set(names)
    # No FT: the tables stand, without the paired columns.
    no_ft = trials[trials["method"] != "ft"]
    assert "p (Holm)" not in table_arithmetic(no_ft).frame.columns
    assert "No completed FT trial: no paired comparison." in table_arithmetic(no_ft).notes


def test_paired_table_shows_holm_p_and_mde(trials):
    t = table_paired(trials, metrics=("rsum",))
    f = t.frame.set_index("method")
    assert list(t.frame.columns) == ["method", "pairs", "Δ rsum [95% CI]", "p (Holm) rsum", "MDE (80 %) rsum"]
    # m³-Mix differences 3, 4, 2 (mean 3, sd 1: p = 0.035); ZS -50, -60, -70 (p = 0.009); i-Mix one pair.
    p_m3, p_zs = 2 * stats.t.sf(3 * SQ3, 2), 2 * stats.t.sf(60 / (10 / SQ3), 2)
    assert f.loc["m³-Mix", "p (Holm) rsum"] == f"{max(2 * min(p_m3, p_zs), max(p_m3, p_zs)):.3f}"
    assert f.loc["m³-Mix", "MDE (80 %) rsum"] == "4.62" and f.loc["i-Mix", "MDE (80 %) rsum"] == "–"
    assert "Intervals and marks Holm-adjusted over k = 2 comparisons with FT" in t.notes[1]
    u = table_paired(trials, metrics=("rsum",), holm=False).frame.set_index("method")
    assert u.loc["m³-Mix", "Δ rsum [95% CI]"] == "+3.00 [+0.52, +5.48] †" and "p rsum" in u.columns


def test_claims_on_the_fixture(trials):
    t = table_claims(trials)
    assert t.name == "paper_claims"
    assert list(t.frame.columns) == [
        "claim", "metric", "verdict", "Δ [95% CI]", "p (Holm)", "MDE (80 %)", "pairs",
    ]
    v = dict(zip(t.frame["claim"].str[:3] + " " + t.frame["metric"], t.frame["verdict"]))
    # Measured: rsum (3, 4, 2), ece (-3, -2, -1), source-mean rsum (10, 11, 9), few-shot mean (1, 1.5, 2) and
    # arith_r1 (5, 6, 5): k = 5; Holm keeps the two with p < 0.004 (source mean, arithmetic).
    assert v == {
        "(a) rsum": "inconclusive: no difference larger than the MDE (7.32, 80 % power) found",
        "(b) align": "not measured (no align values)",
        "(b) unif": "not measured (no unif values)",
        "(c) gap": "not measured (no gap values)",
        "(d) ece": "inconclusive: no difference larger than the MDE (7.32, 80 % power) found",
        "(e) source mean rsum": "holds",
        "(f) fewshot mean k=1,4": "inconclusive: no difference larger than the MDE (3.66, 80 % power) found",
        "(g) arith_r1": "holds",
    }
    row = t.frame.set_index("metric").loc["source mean rsum"]
    half = stats.t.ppf(1 - 0.05 / 10, 2) / SQ3  # the smallest of 5 p-values: Bonferroni's 1 - 0.05/5
    assert row["Δ [95% CI]"] == f"+10.00 [+{10 - half:.2f}, +{10 + half:.2f}] †"
    assert row["p (Holm)"] == f"{5 * 2 * stats.t.sf(10 * SQ3, 2):.3f}" and row["pairs"] == "3"
    assert row["MDE (80 %)"] == f"{mde(1.0, 3, alpha=0.01):.2f}" == "7.32"  # Bonferroni's 0.05 / 5
    assert "Holm-adjusted over the k = 5 claims measured" in t.notes[0]
    # Unadjusted, rsum (p = 0.035) and the few-shot mean hold too; ECE (p = 0.074) stays inconclusive.
    u = table_claims(trials, holm=False)
    uv = dict(zip(u.frame["metric"], u.frame["verdict"]))
    assert uv["rsum"] == uv["fewshot mean k=1,4"] == "holds"
    assert uv["ece"] == "inconclusive: no difference larger than the MDE (3.26, 80 % power) found"
    assert "p" in u.frame.columns
    # Without m³-Mix or FT there is no claims section; without the new columns the claims say so.
    assert table_claims(trials[trials["method"] != "m3_mix"]) is None
    bare = table_claims(_plain(trials)).frame
    plain = dict(zip(bare["metric"], bare["verdict"]))
    assert plain["shifted-set mean"].startswith("not measured (no eval.<set>.rsum")
    assert plain["fewshot mean"] == "not measured (no fewshot_k<k> values on the test split)"
    assert plain["arith_r1"] == "not measured (no arith_r1 values)"


# ----------------------------------------------------------------------------------------------------------
# A/A and planted shifts


def _five_seeds(shift: dict[str, float], *, copy_of_ft: bool = False) -> pd.DataFrame:
    """FT and m³-Mix over 5 seeds with seed noise (sd ~1 of the differences); m³-Mix = FT + ``shift``
    (per metric) + its own noise, or exactly FT's values with ``copy_of_ft``."""
    rng = np.random.default_rng(7)
    base = {"rsum": 300.0, "align": 1.0, "unif": -1.5, "gap": 0.8, "ece": 8.0, "arith_r1": 20.0,
            "fewshot_k1": 30.0, "fewshot_k4": 40.0, "eval.flat.rsum": 250.0, "eval.outline.rsum": 240.0}
    noise_sd = {"align": 0.01, "unif": 0.01, "gap": 0.01, "ece": 0.1}
    rows = []
    for seed in range(5):
        ft = {k: v + rng.normal(0, 3 * noise_sd.get(k, 1.0)) for k, v in base.items()}
        m3 = dict(ft) if copy_of_ft else {
            k: v + shift.get(k, 0.0) + rng.normal(0, noise_sd.get(k, 1.0)) for k, v in ft.items()
        }
        for method, vals in (("ft", ft), ("m3_mix", m3), ("m3_copy", m3)):
            rows.append({"trial_id": f"{method}-{seed}", "method": method, "seed": seed,
                         "status": "completed", "data.source": "shapes", "data.styles": '["dark"]',
                         "data.base_styles": '["flat", "outline"]', **vals})
    return pd.DataFrame(rows)


def _mde_of(cell: str) -> float:
    return float(cell)


def test_aa_identical_rows_are_never_flagged_and_claims_are_inconclusive():
    df = _five_seeds({}, copy_of_ft=True)  # m³-Mix is FT under another name
    paired = table_paired(df, metrics=("rsum", "gap")).frame.set_index("method")
    assert paired.loc["m³-Mix", "Δ rsum [95% CI]"] == "+0.00 [+0.00, +0.00]"  # no mark
    assert paired.loc["m³-Mix", "p (Holm) rsum"] == "1.000"
    claims = table_claims(df)
    verdicts = claims.frame["verdict"].tolist()
    assert all(v.startswith("inconclusive") for v in verdicts), verdicts
    # Two identical non-baseline rows: the same cells against FT, and no difference against each other.
    df = _five_seeds({"rsum": 3.0})
    p = table_paired(df, metrics=("rsum",)).frame.set_index("method")
    assert p.loc["m³-Mix"].tolist() == p.loc["m3_copy"].tolist()
    aa = table_paired(df, metrics=("rsum",), baseline="m3_mix").frame.set_index("method")
    assert aa.loc["m3_copy", "Δ rsum [95% CI]"] == "+0.00 [+0.00, +0.00]"
    assert not aa.loc["m3_copy", "Δ rsum [95% CI]"].endswith("†")


def test_planted_shift_holds_and_its_reverse_does_not_hold():
    shift = {"rsum": 20.0, "ece": -2.0, "gap": 0.2, "align": 0.1, "unif": 0.1, "arith_r1": 10.0,
             "fewshot_k1": 10.0, "fewshot_k4": 10.0, "eval.flat.rsum": 20.0, "eval.outline.rsum": 20.0}
    t = table_claims(_five_seeds(shift))
    f = t.frame.set_index("metric")
    assert f["pairs"].tolist() == ["5"] * 8
    for metric in ("rsum", "align", "unif", "ece", "source mean rsum", "fewshot mean k=1,4", "arith_r1"):
        assert f.loc[metric, "verdict"] == "holds", (metric, f.loc[metric].tolist())
    assert f.loc["gap", "verdict"] == "does not hold"  # the gap grew: the claim (smaller gap) is contradicted
    for metric, s in (("rsum", 20.0), ("ece", 2.0), ("arith_r1", 10.0)):
        assert abs(s) > 3 * _mde_of(f.loc[metric, "MDE (80 %)"])  # the planted shift is >> the MDE
    reverse = table_claims(_five_seeds({k: -v for k, v in shift.items()})).frame.set_index("metric")
    for metric in ("rsum", "align", "unif", "ece", "source mean rsum", "fewshot mean k=1,4", "arith_r1"):
        assert reverse.loc[metric, "verdict"] == "does not hold", metric
    assert reverse.loc["gap", "verdict"] == "holds"
    paired = table_paired(_five_seeds(shift), metrics=("rsum",)).frame.set_index("method")
    assert paired.loc["m³-Mix", "Δ rsum [95% CI]"].endswith("†")


# ----------------------------------------------------------------------------------------------------------
# the public entry points


@pytest.fixture
def synthetic_dir(tmp_path):
    df = synthetic_trials(36, search_frac=0.0, fail_frac=0.0, seed=1, evals=True)
    folder = tmp_path / "syn"
    store.write_rows(folder, "trials", df.to_dict("records"))
    return folder


def test_script_prints_the_new_tables_and_the_claims(synthetic_dir):
    def run(*extra):
        out = subprocess.run(
            [sys.executable, str(ROOT / "analysis" / "tables.py"), str(synthetic_dir), *extra],
            capture_output=True, text=True, cwd=ROOT / "tests", check=False,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    text = run()
    titles = re.findall(r"^### (.+)$", text, flags=re.M)
    assert titles == [
        "Retrieval (%) on shapes:dark: mean ± std over seeds",
        "Retrieval (%) per evaluation set: mean ± std over seeds",
        "Embedding quality and ablation: components on/off",
        "Robustness: rsum per evaluation set, mean ± std over seeds",
        "Robustness: zs_acc per evaluation set, mean ± std over seeds",
        "Few-shot probe accuracy (%): mean ± std over seeds",
        "Embedding arithmetic (%): mean ± std over seeds",
        "rsum by temperature τ and method",
        "rsum by λ policy and mixing level",
        "Best trials by rsum",
        "Paired differences against FT",
        "Paper claims: m³-Mix against FT",
    ]
    tables = build_tables(store.read_results(synthetic_dir)[0])
    assert text == "\n".join(render(t, "markdown") for t in tables)
    claims = text.split("### Paper claims")[1]
    assert "| (e) more robust on shifted sets (shifted-set mean higher) | source mean rsum |" in claims
    assert "Holm-adjusted over the k = 8 claims measured" in claims
    unadjusted = run("--no-holm")
    paired = unadjusted.split("### Paired differences")[1].split("###")[0]
    assert "p (Holm)" not in paired and "Holm-adjusted over" not in paired
    assert "Unadjusted: each interval" in paired
    assert "unadjusted 95% intervals (--no-holm)" in unadjusted


def test_cli_no_holm_flag_reaches_the_tables(synthetic_dir, capsys):
    assert cli.main([str(synthetic_dir), "--no-holm", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "p rsum" in out and "p (Holm)" not in out


def test_summary_has_table1_robustness_and_claims(synthetic_dir):
    text = analysis.summary(str(synthetic_dir))
    titles = re.findall(r"^### (.+)$", text, flags=re.M)
    assert titles == [
        "Retrieval (%) on shapes:dark: mean ± std over seeds",
        "Robustness: rsum per evaluation set, mean ± std over seeds",
        "Paper claims: m³-Mix against FT",
    ]
    trials = store.read_results(synthetic_dir)[0]
    assert text.endswith(render(table_claims(trials), "markdown"))
    assert analysis.summary(str(synthetic_dir), holm=False).endswith(render(table_claims(trials, holm=False),
                                                                             "markdown"))
