"""analysis/: tables on fixtures with known values (means, ddof=1 stds, t intervals, best marker, excluded
statuses, LaTeX escaping), a golden Markdown Table 1, method order and names, the summary, the CLI and the
figures."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import analysis
import store
from analysis import cli, frame, plots
from analysis.build import build_tables
from analysis.catalog.claims import table_claims
from analysis.catalog.hyper import table_beta_grid, table_policy_level, table_tau
from analysis.catalog.paired import table_paired
from analysis.catalog.retrieval import table_quality, table_retrieval
from analysis.catalog.search_tables import table_param_importance, table_top_trials
from analysis.render import Table, latex_escape, render, to_csv, to_latex, to_markdown
from analysis.stats import fmt_paired, paired_t_interval, summarize
from geomix import registry

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "fixtures" / "golden_table1.md"
T_975_2 = 4.302652729749462  # scipy.stats.t.ppf(0.975, 2), checked against printed t tables (4.303)


def _row(tid, method, seed, status="completed", **metrics):
    overrides = {
        "ft": {},
        "zs": {},
        "imix": {"loss": {"kind": "imix"}},
        "m3_mix": {"loss": {"w_m2": 0.01, "w_v": 0.05, "w_l": 0.05, "w_vl": 0.1}},
        "m3_mix_linear": {
            "loss": {"w_m2": 0.01, "w_v": 0.05, "w_l": 0.05, "w_vl": 0.1},
            "mix": {"geometry": "linear"},
        },
    }.get(method, {})  # any other id (a user's method row) is plain FT here
    cfg = {
        "method": method,
        "run": {"seed": seed},
        "data": {"source": "shapes", "styles": ["dark"]},
        "loss": {
            "kind": "contrastive",
            "w_m2": 0.0,
            "w_v": 0.0,
            "w_l": 0.0,
            "w_vl": 0.0,
            "tau": None,
            **overrides.get("loss", {}),
        },
        "mix": {"geometry": "geodesic", **overrides.get("mix", {})},
    }
    result = {f"test_{k}": v for k, v in metrics.items()}
    return store.trial_row(
        sweep="fx",
        trial_id=tid,
        config=cfg,
        result=result,
        status=status,
        error=None if status == "completed" else "boom",
        env={"git_commit": "abc"},
    )


def _fixture_rows():
    """Known values: FT r1_i2t 10/12/14 (mean 12, sd 2); m³-Mix 13/16/16 (mean 15, sd √3) plus a diverged
    seed; ZS one seed; i-Mix one seed; linear m³ two seeds, one failed."""
    return [
        _row("zs-0", "zs", 0, r1_i2t=5.0, r1_t2i=4.0, rsum=50.0, ece=20.0),
        _row("ft-0", "ft", 0, r1_i2t=10.0, r1_t2i=9.0, rsum=100.0, ece=8.0),
        _row("ft-1", "ft", 1, r1_i2t=12.0, r1_t2i=11.0, rsum=110.0, ece=7.0),
        _row("ft-2", "ft", 2, r1_i2t=14.0, r1_t2i=13.0, rsum=120.0, ece=6.0),
        _row("imix-0", "imix", 0, r1_i2t=9.0, r1_t2i=8.0, rsum=90.0, ece=9.0),
        _row("m3-0", "m3_mix", 0, r1_i2t=13.0, r1_t2i=13.0, rsum=104.0, ece=5.0),
        _row("m3-1", "m3_mix", 1, r1_i2t=16.0, r1_t2i=13.0, rsum=114.0, ece=5.0),
        _row("m3-2", "m3_mix", 2, r1_i2t=16.0, r1_t2i=12.0, rsum=122.0, ece=5.0),
        _row("m3-3", "m3_mix", 3, status="diverged"),
        _row("m3l-0", "m3_mix_linear", 0, r1_i2t=11.0, r1_t2i=9.0, rsum=101.0, ece=5.5),
        _row("m3l-1", "m3_mix_linear", 1, status="failed"),
    ]


@pytest.fixture
def results_dir(tmp_path):
    folder = tmp_path / "fx"
    store.write_rows(folder, "trials", _fixture_rows())
    return folder


@pytest.fixture
def trials(results_dir):
    return store.read_results(results_dir)[0]


# ----------------------------------------------------------------------------------------------------------
# statistics


def test_summary_and_paired_interval_by_hand():
    s = summarize([13.0, 16.0, 16.0, float("nan")])
    assert s.n == 3 and s.mean == pytest.approx(15.0) and s.std == pytest.approx(math.sqrt(3.0))
    assert math.isnan(summarize([4.0]).std)
    d = paired_t_interval([10, 12, 14], [13, 16, 16])  # differences 3, 4, 2: mean 3, sd 1
    half = T_975_2 * 1.0 / math.sqrt(3)
    assert d.n == 3 and d.mean == pytest.approx(3.0)
    assert d.lo == pytest.approx(3 - half, abs=1e-9) and d.hi == pytest.approx(3 + half, abs=1e-9)
    assert d.excludes_zero
    assert fmt_paired(d, 2) == "+3.00 [+0.52, +5.48]"
    one = paired_t_interval([1.0], [2.0])
    assert one.n == 1 and math.isnan(one.lo) and fmt_paired(one, 2) == "+1.00 (n<2, no CI)"
    with pytest.raises(ValueError, match="confidence=1.5 is invalid"):
        paired_t_interval([1, 2], [2, 3], confidence=1.5)


# ----------------------------------------------------------------------------------------------------------
# Table 1 and the quality table


def test_table1_means_stds_seed_counts_and_order(trials):
    t = table_retrieval(trials)
    f = t.frame.set_index("method")
    assert list(f.index) == ["ZS", "FT", "i-Mix", "m³-Mix", "m³-Mix (linear)"]  # the paper's order
    assert f.loc["FT", "i→t R@1"] == "12.00 ± 2.00"  # sample std: sqrt(((-2)² + 0 + 2²) / 2)
    assert f.loc["m³-Mix", "i→t R@1"] == "15.00 ± 1.73"
    assert f.loc["ZS", "i→t R@1"] == "5.00 ± –"  # one seed: no std
    assert f.loc["m³-Mix", "n"] == "3" and f.loc["ZS", "n"] == "1"
    assert t.values.loc["m³-Mix", "i→t R@1"] == pytest.approx(15.0)
    assert list(t.frame.columns) == ["method", "i→t R@1", "t→i R@1", "n", "runs"]  # only metrics present


def test_excluded_statuses_are_counted_not_averaged(trials):
    t = table_retrieval(trials)
    f = t.frame.set_index("method")
    assert f.loc["m³-Mix", "runs"] == "3 ok / 1 diverged"
    assert f.loc["m³-Mix (linear)", "runs"] == "1 ok / 1 failed"
    assert f.loc["m³-Mix (linear)", "i→t R@1"] == "11.00 ± –"
    assert t.notes[-1] == "Excluded from the means (not completed): 1 diverged, 1 failed."


def test_best_marker_per_column_and_direction(trials):
    t = table_retrieval(trials)
    best = t.best.set_index(t.frame["method"])
    assert best.loc["m³-Mix", "i→t R@1"] and best.sum()["i→t R@1"] == 1
    # t→i R@1: FT 11.00 and m³-Mix 12.67 -> m³-Mix; ties at the shown precision are all marked.
    assert best.loc["m³-Mix", "t→i R@1"] and not best.loc["FT", "t→i R@1"]
    q = table_quality(trials)
    qb = q.best.set_index(q.frame["method"])
    assert qb.loc["m³-Mix", "ECE"] and not qb.loc["ZS", "ECE"]  # lower is better for ECE
    assert not qb.loc["ZS", "rsum"]
    # Descriptive metrics (the modality gap) get no best marker; align / unif are higher-is-better here.
    q = table_quality(trials.assign(gap=np.linspace(0.1, 1.0, len(trials)), align=np.arange(len(trials))))
    assert not q.best["gap"].any() and q.best.set_index(q.frame["method"]).loc["m³-Mix (linear)", "align"]
    assert q.notes[1] == (
        "Best per column marked (bold; `*` in CSV), among rows with a value; higher is better except ece "
        "(lower is better); gap descriptive, not marked."
    )
    assert (
        to_markdown(t).splitlines()[7]
        == "| m³-Mix | **15.00 ± 1.73** | **12.67 ± 0.58** | 3 | 3 ok / 1 diverged |"
    )
    assert to_csv(t).splitlines()[4] == "m³-Mix,15.00 ± 1.73*,12.67 ± 0.58*,3,3 ok / 1 diverged"


def test_directions_decimals_and_names_are_read_from_the_registry(monkeypatch):
    for name, m in registry.METRICS.items():
        assert frame.direction(name) is m.higher and frame.decimals(name) == m.decimals
        assert frame.direction(f"val_{name}") is m.higher and frame.decimals(f"test_{name}") == m.decimals
    assert frame.direction("train_loss") is False  # a training statistic, not a registry metric
    assert frame.direction("not_a_metric") is True and frame.decimals("not_a_metric") == 2
    # Read at call time, not copied: a metric or display name added to the registry is seen at once.
    monkeypatch.setitem(registry.METRICS, "recall_x", registry.Metric("recall_x", False, 4))
    monkeypatch.setitem(registry.PAPER_METHODS, "p_mix", "P-Mixup")
    assert frame.direction("val_recall_x") is False and frame.decimals("recall_x") == 4
    assert frame.display_name("p_mix") == "P-Mixup" and frame.display_name("m3_mix") == "m³-Mix"
    assert frame.display_name("m3_w1") == "m3_w1"
    monkeypatch.setitem(registry.TERMS, "zz", registry.MixTerm("zz", "Z", "Z-Mix", "nowhere:fn"))
    assert frame.term_symbols() == {"m2": "m²", "v": "V", "l": "L", "vl": "VL", "zz": "Z"}
    with_zz = pd.DataFrame({"loss.w_m2": [0.1], "loss.w_zz": [0.5]})
    assert frame.term_symbols(with_zz) == {"m2": "m²", "zz": "Z"}  # only the terms the data has


def test_quality_table_component_flags(trials):
    q = table_quality(trials).frame.set_index("method")
    assert q.loc["m³-Mix", ["m²", "V", "L", "VL", "geometry"]].tolist() == ["✓", "✓", "✓", "✓", "geodesic"]
    assert q.loc["m³-Mix (linear)", "geometry"] == "linear"
    assert q.loc["FT", ["m²", "V", "L", "VL", "geometry", "input mix"]].tolist() == ["–"] * 6
    assert q.loc["i-Mix", "input mix"] == "i-Mix" and q.loc["FT", "τ"] == "learned"
    assert q.loc["m³-Mix", "rsum"] == "113.33 ± 9.02"  # 104, 114, 122: sd = sqrt(81.33) = 9.018


def test_golden_markdown_table1(trials):
    got = to_markdown(table_retrieval(trials))
    if os.environ.get("GEOMIX_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(got, encoding="utf-8")
    assert got == GOLDEN.read_text(encoding="utf-8")


def test_paired_table_against_ft(trials):
    t = table_paired(trials, metrics=("r1_i2t",))
    f = t.frame.set_index("method")
    assert f.loc["m³-Mix", "pairs"] == "3"
    assert f.loc["m³-Mix", "Δ r1_i2t [95% CI]"] == "+3.00 [+0.52, +5.48] †"
    assert f.loc["i-Mix", "Δ r1_i2t [95% CI]"] == "-1.00 (n<2, no CI)"
    assert f.loc["m³-Mix (linear)", "pairs"] == "1"
    assert "FT" not in f.index


# ----------------------------------------------------------------------------------------------------------
# method order and names, the end-of-sweep summary


def test_method_order_rank_then_paper_then_first_appearance():
    df = pd.DataFrame({"method": ["zz_new", "ft", "aa_new", "zs", "search", "zz_new"]})
    # No method_rank: the paper's ids in the paper's order, then the others as they first appear.
    assert frame.method_order(df) == ["zs", "ft", "search", "zz_new", "aa_new"]
    # Ranked methods first (lowest rank of their rows), then the unranked ones as before.
    df["method_rank"] = [3, np.nan, 0, np.nan, np.nan, 2]
    assert frame.method_order(df) == ["aa_new", "zz_new", "zs", "ft", "search"]


def test_user_method_id_shows_under_its_own_name_in_yaml_order(tmp_path):
    """An ablation YAML listing ``ft``, a user row ``m3_w1`` and ``zs`` (method_rank 0, 1, 2)."""
    rows = []
    for rank, method in enumerate(["ft", "m3_w1", "zs"]):
        for seed in range(2):
            value = 10.0 + 5 * rank + (rank + 1) * seed  # ft 10, 11; m3_w1 15, 17; zs 20, 23
            row = _row(f"{method}-{seed}", method, seed, r1_i2t=value, r1_t2i=value, rsum=10 * value)
            rows.append({**row, "method_rank": rank})
    store.write_rows(tmp_path, "trials", rows[::-1])  # file order must not matter
    trials = store.read_results(tmp_path)[0]
    t = table_retrieval(trials)
    assert t.frame["method"].tolist() == ["FT", "m3_w1", "ZS"]
    assert t.frame["i→t R@1"].tolist() == ["10.50 ± 0.71", "16.00 ± 1.41", "21.50 ± 2.12"]
    assert table_quality(trials).frame["method"].tolist() == ["FT", "m3_w1", "ZS"]
    paired = table_paired(trials, metrics=("r1_i2t",), holm=False).frame
    assert paired["method"].tolist() == ["m3_w1", "ZS"]
    # Differences 5, 6 and 10, 12 over two seeds: t(0.975, 1) = 12.706, half-widths 6.35 and 12.71.
    assert paired["Δ r1_i2t [95% CI]"].tolist() == ["+5.50 [-0.85, +11.85]", "+11.00 [-1.71, +23.71]"]
    # Holm (the default) over the 2 comparisons: equal p-values, both adjusted to 2p, so both intervals are
    # Bonferroni's 97.5 % ones: t(0.9875, 1) = 25.45, half-widths 12.73 and 25.45.
    holm = table_paired(trials, metrics=("r1_i2t",)).frame
    assert holm["Δ r1_i2t [95% CI]"].tolist() == ["+5.50 [-7.23, +18.23]", "+11.00 [-14.45, +36.45]"]


def test_summary_is_the_rendered_table1(results_dir, trials):
    text = analysis.summary(str(results_dir))
    table1 = render(table_retrieval(trials), "markdown")
    assert table1 == GOLDEN.read_text(encoding="utf-8")  # the sweep prints Table 1 as before ...
    # ... then, with m³-Mix and FT in the folder, the paper-claims section (no eval sets: no robustness).
    assert text == "\n".join([table1, render(table_claims(trials), "markdown")])


def test_summary_without_retrieval_metrics_is_a_plain_group_by(tmp_path):
    rows = [
        _row("a", "ft", 0, rsum=100.0),
        _row("b", "ft", 1, rsum=110.0),
        _row("c", "m3_w1", 0, rsum=120.0),
        _row("d", "m3_w1", 1, status="failed"),
    ]
    store.write_rows(tmp_path, "trials", rows)
    lines = [line.split() for line in analysis.summary(tmp_path).splitlines()]
    assert lines[:3] == [["rsum"], ["mean", "std", "count"], ["method", "status"]]
    assert lines[3:] == [
        ["ft", "completed", "105.0", "7.07", "2"],
        ["m3_w1", "completed", "120.0", "NaN", "1"],
        ["failed", "NaN", "NaN", "0"],
    ]


def test_importing_analysis_is_light_and_plots_need_no_tables():
    code = (
        "import sys, analysis; heavy = ('matplotlib', 'scipy', 'optuna', 'torch', 'open_clip', 'ray'); "
        "print(sorted(m for m in heavy if m in sys.modules)); import analysis.plots; "
        "print(sorted(m for m in sys.modules if m in ('analysis.tables', 'analysis.cli', 'analysis.build')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "[]"]


# ----------------------------------------------------------------------------------------------------------
# rendering


def test_latex_escaping():
    assert latex_escape("w_m2 & 50% #1 {x} ~ ^ \\ $") == (
        r"w\_m2 \& 50\% \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{} \$"
    )
    assert latex_escape("12.00 ± 2.00") == r"12.00 $\pm$ 2.00"
    assert latex_escape("m³-Mix (τ = 0.05) ✓ –") == r"m$^3$-Mix ($\tau$ = 0.05) \checkmark{} --"


def test_latex_table_bold_and_structure(trials):
    tex = to_latex(table_retrieval(trials)).splitlines()
    assert tex[:7] == [
        r"% Retrieval (\%) on shapes:dark: mean $\pm$ std over seeds",
        r"% needs \usepackage{booktabs,amssymb}",
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{Retrieval (\%) on shapes:dark: mean $\pm$ std over seeds}",
        r"\label{tab:table1_retrieval}",
        r"\begin{tabular}{lrrrr}",
    ]
    assert tex[7:17] == [
        r"\toprule",
        r"method & i$\to$t R@1 & t$\to$i R@1 & n & runs \\",
        r"\midrule",
        r"ZS & 5.00 $\pm$ -- & 4.00 $\pm$ -- & 1 & 1 ok \\",
        r"FT & 12.00 $\pm$ 2.00 & 11.00 $\pm$ 2.00 & 3 & 3 ok \\",
        r"i-Mix & 9.00 $\pm$ -- & 8.00 $\pm$ -- & 1 & 1 ok \\",
        r"m$^3$-Mix & \textbf{15.00 $\pm$ 1.73} & \textbf{12.67 $\pm$ 0.58} & 3 & 3 ok / 1 diverged \\",
        r"m$^3$-Mix (linear) & 11.00 $\pm$ -- & 9.00 $\pm$ -- & 1 & 1 ok / 1 failed \\",
        r"\bottomrule",
        r"\end{tabular}",
    ]
    assert tex[17].startswith(r"\par\smallskip{\footnotesize Mean $\pm$ sample std") and tex[18:] == [
        r"\end{table}"
    ]
    with pytest.raises(ValueError, match="format='html' is invalid"):
        render(table_retrieval(trials), "html")


# ----------------------------------------------------------------------------------------------------------
# hyper-parameter tables


def _grid_frame():
    rows = []
    values = {(0.5, None): [10.0, 12.0], (0.5, 2.0): [20.0], (1.0, None): [30.0, 34.0], (1.0, 2.0): [5.0]}
    for (a, b), vs in values.items():
        for i, v in enumerate(vs):
            rows.append(
                {
                    "trial_id": f"{a}-{b}-{i}",
                    "method": "search",
                    "seed": i,
                    "status": "completed",
                    "loss.w_m2": 0.1,
                    "mix.m2.alpha": a,
                    "mix.m2.beta": b,
                    "mix.m2.policy": "beta",
                    "rsum": v,
                }
            )
    rows.append(
        {
            "trial_id": "x",
            "method": "search",
            "seed": 0,
            "status": "failed",
            "loss.w_m2": 0.1,
            "mix.m2.alpha": 0.5,
            "mix.m2.beta": 2.0,
            "mix.m2.policy": "beta",
            "rsum": np.nan,
        }
    )
    return pd.DataFrame(rows)


def test_beta_grid_pivot():
    (t,) = table_beta_grid(_grid_frame())
    f = t.frame.set_index("α \\ β")
    assert list(f.columns) == ["β = α", "2"] and list(f.index) == ["0.5", "1"]
    assert f.loc["0.5", "β = α"] == "11.00 ± 1.41 (2)"
    assert f.loc["1", "β = α"] == "32.00 ± 2.83 (2)"
    assert f.loc["1", "2"] == "5.00 ± – (1)"
    assert t.best.set_index(t.frame["α \\ β"]).loc["1", "β = α"]
    assert t.notes == [
        "Cells: rsum mean ± sample std (number of completed trials), pooled over seeds and the other "
        "settings; best cell marked; – = no trial.",
        "Excluded from the means (not completed): 1 failed.",
    ]


def test_tau_and_policy_level_tables(trials):
    extra = pd.DataFrame(
        [
            {
                "trial_id": "t5",
                "method": "ft_tau0.05",
                "seed": 0,
                "status": "completed",
                "loss.tau": 0.05,
                "rsum": 90.0,
                "loss.kind": "contrastive",
            },
            {
                "trial_id": "p1",
                "method": "search",
                "seed": 0,
                "status": "completed",
                "loss.tau": np.nan,
                "loss.w_m2": 0.1,
                "mix.m2.policy": "progressive",
                "rsum": 130.0,
                "loss.kind": "contrastive",
            },
        ]
    )
    df = pd.concat([trials, extra], ignore_index=True)
    tau = table_tau(df).frame.set_index("τ")
    assert list(tau.index) == ["learned", "0.05"]
    assert tau.loc["0.05", "FT (τ = 0.05)"] == "90.00 ± – (1)"
    assert tau.loc["learned", "FT"] == "110.00 ± 10.00 (3)"
    pl = table_policy_level(df).frame.set_index("λ policy")
    assert pl.loc["progressive", "feature: m²"] == "130.00 ± – (1)"
    assert pl.loc["random (Beta)", "feature: m²+V+L+VL"] == "110.25 ± 9.60 (4)"  # m³ and m³ linear pooled
    assert pl.loc["random (Beta)", "input: i-Mix"] == "90.00 ± – (1)"
    assert pl.loc["no mix", "none"] == "105.00 ± 12.91 (4)"  # FT ×3 and FT τ = 0.05; ZS is left out


def _search_frame(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, n)
    y = rng.uniform(0, 1, n)
    return pd.DataFrame(
        {
            "sweep": "s",
            "trial_id": [f"s{i}" for i in range(n)],
            "method": "search",
            "seed": 0,
            "status": "completed",
            "mix.m2.alpha": x,
            "loss.w_m2": y,
            "rsum": 100 * x + 0.1 * y,
            "r1_i2t": 10 * x,
        }
    )


def test_param_importance_from_trials_and_from_optuna_db(tmp_path):
    t = table_param_importance(_search_frame())
    f = t.frame.set_index("parameter")
    assert list(f.index)[0] == "mix.m2.alpha"  # the objective depends (almost) only on it
    assert float(f.iloc[0, 0]) > float(f.iloc[1, 0])
    assert t.notes[1] == (
        "No optuna.db found: study rebuilt from 24 completed search trials, objective rsum, parameter "
        "ranges inferred from the values seen."
    )

    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="mysweep",
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.optimize(lambda tr: 10 * tr.suggest_float("b", 0, 1) + 0.01 * tr.suggest_float("a", 0, 1), 20)
    frame = pd.DataFrame(
        {
            "sweep": ["mysweep"],
            "trial_id": ["x"],
            "method": ["search"],
            "seed": [0],
            "status": ["completed"],
            "rsum": [1.0],
            "results_dir": [str(tmp_path)],
        }
    )
    t = table_param_importance(frame)
    assert t.frame["parameter"].tolist()[0] == "b" and "importance (mysweep)" in t.frame.columns
    assert t.notes[1] == "Studies read from optuna.db."
    evaluator = "fANOVA" if _has_sklearn() else "PED-ANOVA"
    assert t.notes[0].startswith(f"Importance by {evaluator}")


def _has_sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def test_top_trials():
    df = _search_frame(12)
    df.loc[3, "status"] = "diverged"
    t = table_top_trials(df, k=3)
    best3 = df[df["status"] == "completed"].sort_values("rsum", ascending=False)["trial_id"].head(3).tolist()
    assert t.frame["trial"].tolist() == best3 and t.frame["rank"].tolist() == ["1", "2", "3"]
    assert list(t.frame.columns) == ["rank", "trial", "rsum", "r1_i2t", "mix.m2.alpha", "loss.w_m2"]
    assert t.notes == [
        "Top 3 of 11 completed search trials by rsum; columns after the metrics are the settings that vary.",
        "Excluded from the means (not completed): 1 diverged.",
    ]


def test_robust_to_nan_config_and_missing_metrics():
    df = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            "method": ["ft", None, "m2_mix", "ft"],
            "status": ["completed", "completed", None, "completed"],
            "r1_i2t": [10.0, np.nan, 5.0, 12.0],
            "loss.w_m2": [np.nan, 0.0, 0.1, 0.0],
            "loss.tau": [np.nan, np.nan, np.nan, np.nan],
        }
    )
    tables = build_tables(df)
    assert [t.name for t in tables] == ["table1_retrieval", "table4_paired_vs_ft"]
    t1 = tables[0]
    f = t1.frame.set_index("method")
    assert list(f.index) == ["FT", "m²-Mix", "unknown"]  # paper ids first, then the others
    # No seed column: each trial is its own sample, so the two FT trials give n = 2 and a std.
    assert f.loc["FT", "i→t R@1"] == "11.00 ± 1.41" and f.loc["FT", "n"] == "2"
    assert f.loc["unknown", "i→t R@1"] == "–"
    assert f.loc["m²-Mix", "runs"] == "0 ok / 1 unknown"
    assert (
        f.loc["unknown", "runs"] == "1 ok"
        and t1.notes[-1] == "Excluded from the means (not completed): 1 unknown."
    )
    paired = tables[1].frame
    assert paired["method"].tolist() == ["m²-Mix", "unknown"] and paired["pairs"].tolist() == ["0", "0"]
    assert to_markdown(t1).startswith(f"### {t1.title}\n\n| method | i→t R@1 | n | runs |\n")
    assert to_csv(t1).splitlines() == [
        "method,i→t R@1,n,runs",
        "FT,11.00 ± 1.41,2,2 ok",
        "m²-Mix,–,0,0 ok / 1 unknown",
        "unknown,–,1,1 ok",
    ]
    with pytest.raises(ValueError, match="metric='nope' is invalid"):
        build_tables(df, metric="nope")


def test_a_table_registered_in_the_catalog_is_built_in_its_order():
    """A new table is one builder decorated @catalog.table(order): build_tables finds it, passes it the
    options its signature names, and places it by its order (here between Table 2 and the Beta grid)."""
    from analysis import catalog

    df = pd.DataFrame({"trial_id": ["a", "b"], "method": ["ft", "zs"], "seed": [0, 0],
                       "status": ["completed", "completed"], "r1_i2t": [10.0, 4.0], "rsum": [50.0, 20.0]})
    seen = {}

    @catalog.table(order=25)
    def table_count(trials, metric):
        seen["metric"] = metric
        return Table("table_count", f"trials with {metric}", pd.DataFrame({"n": [str(len(trials))]}))

    try:
        names = [t.name for t in build_tables(df, metric="rsum")]
    finally:
        catalog._REGISTERED.pop(f"{table_count.__module__}.{table_count.__qualname__}")
    builtin = ["table1_retrieval", "table2_quality", "table3_top_trials", "table4_paired_vs_ft"]
    assert names == [*builtin[:2], "table_count", *builtin[2:]]
    assert seen == {"metric": "rsum"}
    assert [t.name for t in build_tables(df)] == builtin  # unregistered: gone again


# ----------------------------------------------------------------------------------------------------------
# command line and figures


def test_cli_writes_tables_and_figures(results_dir, tmp_path, capsys):
    emb = results_dir / "emb"
    emb.mkdir()
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(20, 8)), rng.normal(size=(20, 8)) + 1.0
    np.savez(emb / "test.npz", img=img, txt=txt, txt_to_img=np.arange(20))
    rows = [{**r, "embeddings_path": "emb"} for r in _fixture_rows() if r["method"] in ("ft", "m3_mix")]
    store.write_rows(results_dir, "trials", rows)
    hist = [
        {"trial_id": r["trial_id"], "step": s, "split": "val", "epoch": s, "rsum": 10.0 * s + r["seed"]}
        for r in rows
        for s in (1, 2, 3)
    ]
    store.write_rows(results_dir, "history", hist)
    out = tmp_path / "out"
    assert cli.main([str(results_dir), "--format", "latex", "--out", str(out), "--figures"]) == 0
    stdout = capsys.readouterr().out
    names = [
        "table1_retrieval",
        "table2_quality",
        "table3_policy_level",
        "table3_top_trials",
        "table4_paired_vs_ft",
        "paper_claims",
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{n}.tex" for n in names), "figures"])
    assert stdout == "\n".join((out / f"{n}.tex").read_text(encoding="utf-8") for n in names)
    assert stdout.splitlines()[13] == (
        r"m$^3$-Mix & \textbf{15.00 $\pm$ 1.73} & \textbf{12.67 $\pm$ 0.58} & 3 & 3 ok / 1 diverged \\"
    )
    figs = {p.name: p for p in (out / "figures").iterdir()}
    assert sorted(figs) == sorted(
        f"{s}.{e}" for s in ("learning_curves_val_rsum", "modality_gap") for e in ("png", "pdf")
    )
    for stem in ("learning_curves_val_rsum", "modality_gap"):
        assert figs[f"{stem}.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert figs[f"{stem}.pdf"].read_bytes()[:5] == b"%PDF-"
        assert figs[f"{stem}.png"].stat().st_size > 1000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["{tmp}/missing"],
            "results folder '{tmp}/missing' does not exist: allowed is a folder written by store.write_rows",
        ),
        (["{tmp}", "--figures"], "--figures needs --out DIR (the figures go to DIR/figures)"),
        (["{tmp}", "--top-k", "0"], "--top-k=0 is invalid: allowed an integer >= 1"),
        (
            ["{results}", "--metric", "nope"],
            "metric='nope' is invalid: allowed one of " + ", ".join(store.METRIC_COLUMNS),
        ),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(args, message, results_dir, tmp_path, capsys):
    def fill(s):
        return s.format(tmp=tmp_path, results=results_dir)

    with pytest.raises(SystemExit) as e:
        cli.main([fill(a) for a in args])
    captured = capsys.readouterr()
    assert e.value.code == 2 and captured.out == ""
    assert captured.err.splitlines()[-1] == f"python analysis/tables.py: error: {fill(message)}"


def test_script_entry_point_runs_as_a_file(results_dir):
    out = subprocess.run(
        [sys.executable, str(ROOT / "analysis" / "tables.py"), str(results_dir), "--format", "csv"],
        capture_output=True,
        text=True,
        cwd=ROOT / "tests",
        check=False,
    )
    assert out.returncode == 0, out.stderr
    tables = build_tables(store.read_results(results_dir)[0])
    assert out.stdout == "\n".join(render(t, "csv") for t in tables)
    assert out.stdout.splitlines()[:6] == [
        "method,i→t R@1,t→i R@1,n,runs",
        "ZS,5.00 ± –,4.00 ± –,1,1 ok",
        "FT,12.00 ± 2.00,11.00 ± 2.00,3,3 ok",
        "i-Mix,9.00 ± –,8.00 ± –,1,1 ok",
        "m³-Mix,15.00 ± 1.73*,12.67 ± 0.58*,3,3 ok / 1 diverged",
        "m³-Mix (linear),11.00 ± –,9.00 ± –,1,1 ok / 1 failed",
    ]
    bad = subprocess.run(
        [sys.executable, str(ROOT / "analysis" / "tables.py"), str(results_dir / "nope")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines()[-1] == (
        f"python analysis/tables.py: error: results folder '{results_dir / 'nope'}' does not exist: "
        "allowed is a folder written by store.write_rows"
    )


def test_figures_from_a_search_and_skips(tmp_path):
    df = _grid_frame()
    df["sweep"] = "s"
    paths = plots.beta_heatmap(df, tmp_path / "f") + plots.parallel_coordinates(df, tmp_path / "f")
    assert sorted(p.name for p in paths) == [
        "beta_heatmap_m2.pdf",
        "beta_heatmap_m2.png",
        "parallel_coordinates.pdf",
        "parallel_coordinates.png",
    ]
    assert all(p.stat().st_size > 1000 for p in paths)
    # Nothing to draw: logged and skipped, no files.
    assert plots.modality_gap(df, tmp_path / "g") == []
    assert plots.learning_curves(pd.DataFrame(), df, tmp_path / "g") == []
    assert not (tmp_path / "g").exists()


def test_tables_benchmark_script_runs_small():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "tables_speed.py"), "--trials", "300"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    lines = out.stdout.splitlines()
    assert re.fullmatch(r"300 trials x \d+ columns -> 9 tables", lines[0]), lines[0]  # 8 + the claims
    steps = [
        "write_rows (not in total)",
        "read_results",
        "build tables, cold",
        "build tables, warm",
        "render md + tex + csv",
    ]
    tables = [
        "table_retrieval",
        "table_quality",
        "table_beta_grid",
        "table_tau",
        "table_policy_level",
        "table_param_importance",
        "table_top_trials",
        "table_paired",
    ]
    timed = [re.fullmatch(r"\s+(.+?)\s+(\d+\.\d{3}) s", line) for line in lines[1:14]]
    assert [m.group(1) for m in timed] == steps + tables
    total = re.fullmatch(
        r"total \(read \+ cold build \+ render\) (\d+\.\d{3}) s vs target 5\.0 s: .* -> (OK|TOO SLOW)",
        lines[14],
    )
    parts = {m.group(1): float(m.group(2)) for m in timed}
    expected = parts["read_results"] + parts["build tables, cold"] + parts["render md + tex + csv"]
    assert total and float(total.group(1)) == pytest.approx(expected, abs=0.002) and len(lines) == 15


def test_modality_gap_from_run_out_dir(tmp_path):
    run = tmp_path / "trial0" / "run"
    run.mkdir(parents=True)
    rng = np.random.default_rng(1)
    np.savez(run / "embeddings_val.npz", img=rng.normal(size=(6, 4)), txt=rng.normal(size=(6, 4)))
    np.savez(
        run / "embeddings_test.npz",
        img=rng.normal(size=(10, 4)),
        txt=rng.normal(size=(12, 4)),
        txt_to_img=np.arange(12) % 10,
    )
    df = pd.DataFrame(
        {
            "trial_id": ["a", "b"],
            "method": ["ft", "zs"],
            "seed": [0, 0],
            "status": ["completed", "completed"],
            "run.out_dir": [str(run), str(tmp_path / "none")],
        }
    )
    paths = plots.modality_gap(df, tmp_path / "figs")
    assert [p.name for p in paths] == ["modality_gap.png", "modality_gap.pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"


# ----------------------------------------------------------------------------------------------------------
# figures a reader can check: the modality gap and the learning curves


def _unit(rng, n, d, shift=0.0):
    x = rng.normal(size=(n, d)) + shift
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _gap_results(tmp_path, n_images=24, per_image=5):
    """Trials of ZS (2 seeds, identical embeddings) and FT (3 seeds), each with a test ``.npz`` of
    ``n_images`` images and ``per_image`` captions each in shuffled order, and its row's metrics computed
    by ``geomix.metrics.evaluate_embeddings`` from exactly those arrays (as the training loop does)."""
    import torch

    from geomix import metrics

    emb = tmp_path / "res" / "embeddings"
    emb.mkdir(parents=True)
    rows, files = [], {}
    for tid, method, seed, shift in [
        ("zs-0", "zs", 0, 0.8),
        ("zs-1", "zs", 1, 0.8),
        ("ft-0", "ft", 0, 0.2),
        ("ft-1", "ft", 1, 0.3),
        ("ft-2", "ft", 2, 0.1),
    ]:
        rng = np.random.default_rng(0 if method == "zs" else seed + 1)
        img = _unit(rng, n_images, 8)
        t2i = rng.permutation(np.repeat(np.arange(n_images), per_image))
        txt = _unit(rng, len(t2i), 8, shift) + 0.5 * img[t2i]
        txt = (txt / np.linalg.norm(txt, axis=1, keepdims=True)).astype(np.float32)
        np.savez(emb / f"{tid}.npz", img=img, txt=txt, txt_to_img=t2i)
        res = metrics.evaluate_embeddings(torch.from_numpy(img), torch.from_numpy(txt), torch.from_numpy(t2i))
        row = _row(tid, method, seed, **res)
        rows.append({**row, "embeddings_path": f"embeddings/{tid}.npz", "results_dir": str(tmp_path / "res")})
        files[tid] = (img, txt, t2i)
    return pd.DataFrame(rows), files


def test_modality_gap_panels_show_table2_gap_and_geomix_metrics_recomputes_it(tmp_path):
    import torch

    from geomix import metrics

    trials, files = _gap_results(tmp_path)
    panels = plots.gap_panels(trials)
    assert [(p.method, p.trial_id, p.seed, p.split) for p in panels] == [
        ("zs", "zs-0", 0, "test"),
        ("ft", "ft-0", 0, "test"),
    ]
    table = table_quality(trials)
    cell = dict(zip(table.frame["method"], table.frame["gap"]))
    for p in panels:
        img, txt, t2i = files[p.trial_id]
        first = [int(np.flatnonzero(t2i == i)[0]) for i in range(len(img))]
        recomputed = metrics.modality_gap(torch.from_numpy(img), torch.from_numpy(txt[first]))["gap"]
        row_gap = float(trials.loc[trials["trial_id"] == p.trial_id, "gap"].iloc[0])
        assert p.gap == row_gap and p.gap_source == "trials row"  # the number Table 2 averages
        assert p.gap == pytest.approx(recomputed, abs=1e-12)  # the same function on the same file
        assert p.gap_file == pytest.approx(recomputed, abs=1e-6)  # the analysis's numpy mirror (no torch)
        assert p.table_cell == cell[frame.display_name(p.method)]
        assert (p.n_images, p.n_captions) == (24, 120)
    # ZS is deterministic: the panel's number is the table's, digit for digit
    zs = panels[0]
    assert zs.table_cell == f"{zs.gap:.3f} ± 0.000"
    ft_gaps = trials.loc[trials["method"] == "ft", "gap"].astype(float)
    assert panels[1].table_cell == f"{ft_gaps.mean():.3f} ± {ft_gaps.std(ddof=1):.3f}"
    # what the figure prints: seed and split in each title, PC axes with their explained variance
    fig = plots.gap_figure(panels)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    for ax, p in zip(axes, panels):
        assert ax.get_title() == f"{frame.display_name(p.method)}\nseed {p.seed} · test split"
        pc1, pc2 = (f"{100 * v:.0f} % var.)" for v in p.explained)
        assert ax.get_xlabel() == f"PC1 ({pc1}" and ax.get_ylabel() == f"PC2 ({pc2}"
        assert 0 < p.explained[1] <= p.explained[0] < 1
        texts = [t.get_text() for t in ax.texts]
        assert f"gap {p.gap:.3f} (this seed)\nTable 2: {p.table_cell}" in texts
    plots.plt.close(fig)
    paths = plots.modality_gap(trials, tmp_path / "figs")
    assert [p.name for p in paths] == ["modality_gap.png", "modality_gap.pdf"]


def test_modality_gap_subsamples_images_and_keeps_every_caption_with_its_image(tmp_path):
    t2i = np.random.default_rng(3).permutation(np.repeat(np.arange(40), 5))
    images, captions = plots.sample_images(t2i, 40, 10)
    assert len(images) == 10 and len(set(images)) == 10 and list(images) == sorted(images)
    assert sorted(captions) == sorted(np.flatnonzero(np.isin(t2i, images)))  # all 50 of theirs, no other
    assert len(captions) == 50
    assert np.array_equal(plots.sample_images(t2i, 40, 99)[0], np.arange(40))  # all when they fit
    trials, files = _gap_results(tmp_path, n_images=40)
    for p in plots.gap_panels(trials, max_images=10):
        _, _, t2i = files[p.trial_id]
        assert len(p.images) == 10 and len(p.captions) == 50 and len(p.xy_txt) == 50
        assert np.array_equal(p.images[p.caption_image], t2i[p.captions])  # each caption drawn by its image
        assert set(t2i[p.captions]) == set(p.images)
        assert p.n_images == 40  # the gap itself is over all images, not the drawn ones
        assert p.gap == float(trials.loc[trials["trial_id"] == p.trial_id, "gap"].iloc[0])


def test_pair_gap_uses_the_first_caption_of_each_image():
    t2i = np.array([1, 0, 1, 0, 2])  # first captions: image 0 -> row 1, image 1 -> row 0, image 2 -> row 4
    assert plots.first_captions(t2i, 4).tolist() == [1, 0, 4, -1]
    img = np.eye(3)
    txt = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 5.0], [9, 9, 9], [0, 0, 1.0]])
    # each image's first caption is the image itself; the other captions would move the mean
    assert plots.pair_gap(img, txt, t2i) == pytest.approx(0.0, abs=1e-12)


def _curve_frames(step0: bool):
    methods = ["zs", "ft", "ft_tau0.05", "imix", "unmix", "v_mix", "m3_mix", "my_mix"]
    rows = [_row(f"{m}-{s}", m, s, rsum=100.0) for m in methods for s in (0, 1)]
    trials = pd.DataFrame(rows)
    hist = []
    for m in methods:
        for s in (0, 1):
            steps = [0] if m == "zs" else [10, 20]
            if step0 and m != "zs":
                steps = [0, *steps]
            for step in steps:
                v = 50.0 if step == 0 else 100.0 + step + 3.0 * (m == "imix") + s
                hist.append({"trial_id": f"{m}-{s}", "step": step, "split": "val", "rsum": v})
    return pd.DataFrame(hist), trials


@pytest.mark.parametrize("step0", [True, False])
def test_learning_curves_one_panel_per_family_with_the_start_and_differences_to_ft(tmp_path, step0):
    history, trials = _curve_frames(step0)
    (plot,) = plots.learning_curve_plots(history, trials)
    assert plot.families == {
        "baselines": ["zs", "ft", "ft_tau0.05"],
        "input mixes": ["imix", "unmix"],
        "single mix terms": ["v_mix"],
        "m³: all four terms": ["m3_mix"],
        "other methods": ["my_mix"],
    }
    fig = plot.figure
    top = fig.axes[:5]
    assert [ax.get_title() for ax in top] == list(plot.families)
    assert fig.texts[-1].get_text() == plot.note
    assert fig._suptitle.get_text() == "val rsum on shapes:dark: mean ± std over 2 seeds"
    # ZS's step-0 value (the starting model) is a star in every panel, FT a reference line
    for ax in top:
        labels = [ln.get_label() for ln in ax.get_lines()]
        assert "ZS, step 0" in labels and any(lb.startswith("FT") for lb in labels)
    trained = [ln for ax in top for ln in ax.get_lines() if not ln.get_label().startswith("ZS")]
    starts = {float(ln.get_xdata()[0]) for ln in trained}
    if step0:
        assert starts == {0.0} and plot.note.startswith("Every curve starts at step 0")
    else:  # no step-0 row is invented: the curves begin at their first evaluation, and the note says so
        assert starts == {10.0}
        assert plot.note.startswith("No step-0 evaluation in the history for the trained methods")
    # the lower row: each method minus FT of the same seed (i-Mix is +3 at every step)
    (imix,) = [ln for ln in fig.axes[6].get_lines() if ln.get_label() == "i-Mix"]
    assert list(imix.get_ydata()[-2:]) == [3.0, 3.0]
    plots.plt.close(fig)
    paths = plots.learning_curves(history, trials, tmp_path / "figs")
    assert [p.name for p in paths] == ["learning_curves_val_rsum.png", "learning_curves_val_rsum.pdf"]


def test_learning_curves_one_figure_per_data_set():
    history, trials = _curve_frames(True)
    other = trials.copy()
    other["trial_id"] = other["trial_id"] + "-b"
    other["data.styles"] = '["light"]'
    hist_b = history.assign(trial_id=history["trial_id"] + "-b")
    plots_ = plots.learning_curve_plots(pd.concat([history, hist_b]), pd.concat([trials, other]))
    assert [(p.stem, p.dataset) for p in plots_] == [
        ("learning_curves_val_rsum_shapes_dark", "shapes:dark"),
        ("learning_curves_val_rsum_shapes_light", "shapes:light"),
    ]
    for p in plots_:
        assert p.dataset in p.figure._suptitle.get_text()
        plots.plt.close(p.figure)


def test_trials_of_one_method_with_different_configs_are_never_pooled():
    """Two sweeps' folders read together, the same method id at another epoch count: two rows, each
    named by the key that tells them apart, each with its own mean; run-only settings do not split."""
    df = pd.DataFrame({
        "trial_id": list("abcd"), "method": ["ft"] * 4, "seed": [0, 1, 0, 1], "status": ["completed"] * 4,
        "optim.epochs": [3, 3, 5, 5], "run.seed": [0, 1, 0, 1], "model.cache_dir": ["/x", "/y", "/x", "/y"],
        "r1_i2t": [10.0, 12.0, 20.0, 22.0],
    })
    t = table_retrieval(df)
    assert t.frame["method"].tolist() == ["ft (optim.epochs=3)", "ft (optim.epochs=5)"]
    assert t.frame["i→t R@1"].tolist() == ["11.00 ± 1.41", "21.00 ± 1.41"]
    same = df.assign(**{"optim.epochs": 3})
    assert table_retrieval(same).frame["method"].tolist() == ["FT"]  # cache_dir alone never splits
