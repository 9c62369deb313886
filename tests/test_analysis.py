"""analysis/: tables on fixtures with known values (means, ddof=1 stds, t intervals, best marker, excluded
statuses, LaTeX escaping), a golden Markdown Table 1, the CLI and the figures."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import plots
from analysis import tables as T
from analysis._render import latex_escape, render, to_csv, to_latex, to_markdown
from analysis._stats import fmt_paired, paired_t_interval, summarize
from geomix import results as R

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
    }[method]
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
    return R.trial_row(
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
    R.write_rows(folder, "trials", _fixture_rows())
    return folder


@pytest.fixture
def trials(results_dir):
    return R.read_results(results_dir)[0]


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
    t = T.table_retrieval(trials)
    f = t.frame.set_index("method")
    assert list(f.index) == ["ZS", "FT", "i-Mix", "m³-Mix", "m³-Mix (linear)"]  # the paper's order
    assert f.loc["FT", "i→t R@1"] == "12.00 ± 2.00"  # sample std: sqrt(((-2)² + 0 + 2²) / 2)
    assert f.loc["m³-Mix", "i→t R@1"] == "15.00 ± 1.73"
    assert f.loc["ZS", "i→t R@1"] == "5.00 ± –"  # one seed: no std
    assert f.loc["m³-Mix", "n"] == "3" and f.loc["ZS", "n"] == "1"
    assert t.values.loc["m³-Mix", "i→t R@1"] == pytest.approx(15.0)
    assert list(t.frame.columns) == ["method", "i→t R@1", "t→i R@1", "n", "runs"]  # only metrics present


def test_excluded_statuses_are_counted_not_averaged(trials):
    t = T.table_retrieval(trials)
    f = t.frame.set_index("method")
    assert f.loc["m³-Mix", "runs"] == "3 ok / 1 diverged"
    assert f.loc["m³-Mix (linear)", "runs"] == "1 ok / 1 failed"
    assert f.loc["m³-Mix (linear)", "i→t R@1"] == "11.00 ± –"
    assert any("1 diverged, 1 failed" in n for n in t.notes)


def test_best_marker_per_column_and_direction(trials):
    t = T.table_retrieval(trials)
    best = t.best.set_index(t.frame["method"])
    assert best.loc["m³-Mix", "i→t R@1"] and best.sum()["i→t R@1"] == 1
    # t→i R@1: FT 11.00 and m³-Mix 12.67 -> m³-Mix; ties at the shown precision are all marked.
    assert best.loc["m³-Mix", "t→i R@1"] and not best.loc["FT", "t→i R@1"]
    q = T.table_quality(trials)
    qb = q.best.set_index(q.frame["method"])
    assert qb.loc["m³-Mix", "ECE"] and not qb.loc["ZS", "ECE"]  # lower is better for ECE
    assert not qb.loc["ZS", "rsum"]
    # Descriptive metrics (the modality gap) get no best marker; align / unif are higher-is-better here.
    q = T.table_quality(trials.assign(gap=np.linspace(0.1, 1.0, len(trials)), align=np.arange(len(trials))))
    assert not q.best["gap"].any() and q.best.set_index(q.frame["method"]).loc["m³-Mix (linear)", "align"]
    assert any("gap descriptive" in n for n in q.notes) and any("except ece (lower" in n for n in q.notes)
    md = to_markdown(t)
    assert "| **15.00 ± 1.73** |" in md
    assert "15.00 ± 1.73*" in to_csv(t)


def test_metric_directions_and_names_match_geomix_metrics():
    from geomix import metrics

    assert T.HIGHER_IS_BETTER == metrics.HIGHER_IS_BETTER
    assert R.METRIC_COLUMNS == metrics.METRIC_KEYS
    assert T.direction("val_ece") is False and T.direction("test_rsum") is True and T.direction("gap") is None


def test_quality_table_component_flags(trials):
    q = T.table_quality(trials).frame.set_index("method")
    assert q.loc["m³-Mix", ["m²", "V", "L", "VL", "geometry"]].tolist() == ["✓", "✓", "✓", "✓", "geodesic"]
    assert q.loc["m³-Mix (linear)", "geometry"] == "linear"
    assert q.loc["FT", ["m²", "V", "L", "VL", "geometry", "input mix"]].tolist() == ["–"] * 6
    assert q.loc["i-Mix", "input mix"] == "i-Mix" and q.loc["FT", "τ"] == "learned"
    assert q.loc["m³-Mix", "rsum"] == "113.33 ± 9.02"  # 104, 114, 122: sd = sqrt(81.33) = 9.018


def test_golden_markdown_table1(trials):
    got = to_markdown(T.table_retrieval(trials))
    if os.environ.get("GEOMIX_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(got, encoding="utf-8")
    assert got == GOLDEN.read_text(encoding="utf-8")


def test_paired_table_against_ft(trials):
    t = T.table_paired(trials, metrics=("r1_i2t",))
    f = t.frame.set_index("method")
    assert f.loc["m³-Mix", "pairs"] == "3"
    assert f.loc["m³-Mix", "Δ r1_i2t [95% CI]"] == "+3.00 [+0.52, +5.48] †"
    assert f.loc["i-Mix", "Δ r1_i2t [95% CI]"] == "-1.00 (n<2, no CI)"
    assert f.loc["m³-Mix (linear)", "pairs"] == "1"
    assert "FT" not in f.index


# ----------------------------------------------------------------------------------------------------------
# rendering


def test_latex_escaping():
    assert latex_escape("w_m2 & 50% #1 {x} ~ ^ \\ $") == (
        r"w\_m2 \& 50\% \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{} \$"
    )
    assert latex_escape("12.00 ± 2.00") == r"12.00 $\pm$ 2.00"
    assert latex_escape("m³-Mix (τ = 0.05) ✓ –") == r"m$^3$-Mix ($\tau$ = 0.05) \checkmark{} --"


def test_latex_table_bold_and_structure(trials):
    tex = to_latex(T.table_retrieval(trials))
    assert r"\textbf{15.00 $\pm$ 1.73}" in tex
    assert r"i$\to$t R@1" in tex and r"m$^3$-Mix (linear)" in tex
    assert tex.count(r"\toprule") == 1 and tex.rstrip().endswith(r"\end{table}")
    body = tex.split(r"\toprule")[1]  # the \label{tab:table1_retrieval} above may hold a bare _
    assert "±" not in tex and "_" not in body.replace(r"\_", "")
    with pytest.raises(ValueError, match="format='html' is invalid"):
        render(T.table_retrieval(trials), "html")


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
    (t,) = T.table_beta_grid(_grid_frame())
    f = t.frame.set_index("α \\ β")
    assert list(f.columns) == ["β = α", "2"] and list(f.index) == ["0.5", "1"]
    assert f.loc["0.5", "β = α"] == "11.00 ± 1.41 (2)"
    assert f.loc["1", "β = α"] == "32.00 ± 2.83 (2)"
    assert f.loc["1", "2"] == "5.00 ± – (1)"
    assert t.best.set_index(t.frame["α \\ β"]).loc["1", "β = α"]
    assert any("1 failed" in n for n in t.notes)


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
    tau = T.table_tau(df).frame.set_index("τ")
    assert list(tau.index) == ["learned", "0.05"]
    assert tau.loc["0.05", "FT (τ = 0.05)"] == "90.00 ± – (1)"
    assert tau.loc["learned", "FT"] == "110.00 ± 10.00 (3)"
    pl = T.table_policy_level(df).frame.set_index("λ policy")
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
    t = T.table_param_importance(_search_frame())
    f = t.frame.set_index("parameter")
    assert list(f.index)[0] == "mix.m2.alpha"  # the objective depends (almost) only on it
    assert float(f.iloc[0, 0]) > float(f.iloc[1, 0])
    assert any("rebuilt from 24" in n for n in t.notes)

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
    t = T.table_param_importance(frame)
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
    t = T.table_top_trials(df, k=3)
    best3 = df[df["status"] == "completed"].sort_values("rsum", ascending=False)["trial_id"].head(3).tolist()
    assert t.frame["trial"].tolist() == best3 and t.frame["rank"].tolist() == ["1", "2", "3"]
    assert {"mix.m2.alpha", "loss.w_m2"} <= set(t.frame.columns)
    assert any("1 diverged" in n for n in t.notes)


def test_robust_to_nan_config_and_missing_metrics():
    df = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            "method": ["ft", None, "m2_mix", "ft"],
            "status": ["completed", "completed", None, "completed"],
            "test_r1_i2t": [10.0, np.nan, 5.0, 12.0],
            "loss.w_m2": [np.nan, 0.0, 0.1, 0.0],
            "loss.tau": [np.nan, np.nan, np.nan, np.nan],
        }
    )
    tables = T.build_tables(df)
    t1 = next(t for t in tables if t.name == "table1_retrieval")
    f = t1.frame.set_index("method")
    # No seed column: each trial is its own sample, so the two FT trials give n = 2 and a std.
    assert f.loc["FT", "i→t R@1"] == "11.00 ± 1.41" and f.loc["FT", "n"] == "2"
    assert f.loc["unknown", "i→t R@1"] == "–"
    assert f.loc["m²-Mix", "runs"] == "0 ok / 1 unknown"
    for t in tables:
        for fmt in ("markdown", "latex", "csv"):
            assert render(t, fmt)
    with pytest.raises(ValueError, match="metric='nope' is invalid"):
        T.build_tables(df, metric="nope")


# ----------------------------------------------------------------------------------------------------------
# command line and figures


def test_cli_writes_tables_and_figures(results_dir, tmp_path, capsys):
    emb = results_dir / "emb"
    emb.mkdir()
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(20, 8)), rng.normal(size=(20, 8)) + 1.0
    np.savez(emb / "test.npz", img=img, txt=txt, txt_to_img=np.arange(20))
    rows = [{**r, "embeddings_path": "emb"} for r in _fixture_rows() if r["method"] in ("ft", "m3_mix")]
    R.write_rows(results_dir, "trials", rows)
    hist = [
        {"trial_id": r["trial_id"], "step": s, "split": "val", "epoch": s, "rsum": 10.0 * s + r["seed"]}
        for r in rows
        for s in (1, 2, 3)
    ]
    R.write_rows(results_dir, "history", hist)
    out = tmp_path / "out"
    assert T.main([str(results_dir), "--format", "latex", "--out", str(out), "--figures"]) == 0
    stdout = capsys.readouterr().out
    assert r"\textbf{15.00 $\pm$ 1.73}" in stdout
    assert (out / "table1_retrieval.tex").read_text() in stdout
    assert {"table1_retrieval.tex", "table2_quality.tex", "table4_paired_vs_ft.tex"} <= {
        p.name for p in out.iterdir()
    }
    figs = {p.name: p for p in (out / "figures").iterdir()}
    for stem in ("learning_curves_val_rsum", "modality_gap"):
        assert figs[f"{stem}.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert figs[f"{stem}.pdf"].read_bytes()[:5] == b"%PDF-"
        assert figs[f"{stem}.png"].stat().st_size > 1000


def test_cli_errors_are_clear(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        T.main([str(tmp_path / "missing")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        T.main([str(tmp_path), "--figures"])
    assert "--figures needs --out" in capsys.readouterr().err


def test_script_entry_point_runs_as_a_file(results_dir):
    out = subprocess.run(
        [sys.executable, str(ROOT / "analysis" / "tables.py"), str(results_dir), "--format", "csv"],
        capture_output=True,
        text=True,
        cwd=ROOT / "tests",
        check=True,
    )
    assert "method,i→t R@1,t→i R@1,n,runs" in out.stdout
    assert "m³-Mix,15.00 ± 1.73*," in out.stdout


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
    assert "300 trials" in out.stdout and "tables" in out.stdout


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
