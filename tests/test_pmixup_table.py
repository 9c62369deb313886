"""analysis.catalog.pmixup: the P-Mixup tables on a small frame with known cells."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from analysis.build import build_tables
from analysis.catalog.pmixup import table_pmixup, table_pmixup_paired, table_pmixup_sources
from analysis.synthetic import synthetic_trials

#: Row -> (effect in points, mix weights, λ policy); the no-mix row is progressive in its config (ignored).
ROWS = {
    "nomix": (0.0, (0.0, 0.0), "progressive"),
    "rand_feat": (-1.0, (0.0, 1.0), "beta"),
    "rand_img": (1.0, (1.0, 0.0), "beta"),
    "rand_both": (4.0, (1.0, 1.0), "beta"),
    "prog_feat": (3.0, (0.0, 1.0), "progressive"),
    "prog_img": (6.0, (1.0, 0.0), "progressive"),
    "prog_both": (8.0, (1.0, 1.0), "progressive"),
}
BASE = {1: 20.0, 5: 30.0}
NOISE = [-1.0, 0.0, 1.0]  # per seed, shared by every row: it cancels in the paired differences
EXTRA = [0.5, -0.5, 0.0]  # prog_both only: its differences against no mix vary by seed


def frame(*, failed: bool = True) -> pd.DataFrame:
    rows = []
    for rank, (k, (name, (effect, (w_img, w_feat), policy))) in enumerate(
            (k, item) for k in BASE for item in ROWS.items()):
        for seed in range(3):
            acc = BASE[k] + effect + NOISE[seed] + (EXTRA[seed] if name == "prog_both" else 0.0)
            rows.append({
                "trial_id": f"{name}_k{k}_{seed}", "method": f"{name}_k{k}", "method_rank": rank,
                "seed": seed,
                "status": "completed", "task": "classify", "data.source": "shapes",
                "data.styles": json.dumps(["dark"]), "data.shots": k, "transfer.w_img": w_img,
                "transfer.w_feat": w_feat, "transfer.lam.policy": policy, "acc": acc, "macc": acc - 2.0,
                "eval.flat.acc": 50.0 + effect, "eval.outline.acc": 40.0 - effect,
            })
    if failed:  # a diverged trial: excluded from every mean, counted in the notes
        rows.append({**rows[0], "trial_id": "bad", "seed": 0, "status": "diverged", "acc": math.nan,
                     "macc": math.nan})
    return pd.DataFrame(rows)


def test_accuracy_table_rows_columns_cells_and_best():
    t = table_pmixup(frame())
    assert list(t.frame["method"]) == [
        "no mix", "random λ · Feat-Mix", "random λ · Img-Mix", "random λ · Img-Mix + Feat-Mix",
        "progressive λ · Feat-Mix", "progressive λ · Img-Mix", "progressive λ · Img-Mix + Feat-Mix"]
    assert list(t.frame.columns) == ["method", "acc k=1", "macc k=1", "acc k=5", "macc k=5", "seeds"]
    cell = t.frame.set_index("method")
    assert cell.loc["no mix", "acc k=1"] == "20.00 ± 1.00"  # mean over seeds ± sample std
    assert cell.loc["random λ · Img-Mix", "acc k=5"] == "31.00 ± 1.00"
    assert cell.loc["progressive λ · Img-Mix + Feat-Mix", "macc k=5"] == "36.00 ± 0.87"  # 35.5, 35.5, 37
    assert cell.loc["no mix", "seeds"] == "3"
    best = t.best.set_index(t.frame["method"])
    assert best["acc k=1"].tolist() == [False] * 6 + [True]  # progressive, both levels
    assert t.values.loc["progressive λ · Feat-Mix", "acc k=1"] == pytest.approx(23.0)
    assert any("1 diverged" in n for n in t.notes)


def test_paired_table_against_no_mix_and_progressive_against_random():
    t = table_pmixup_paired(frame(), holm=False)
    comparisons = list(t.frame["comparison"])
    assert comparisons[:6] == [f"{r} − no mix" for r in (
        "random λ · Feat-Mix", "random λ · Img-Mix", "random λ · Img-Mix + Feat-Mix",
        "progressive λ · Feat-Mix", "progressive λ · Img-Mix", "progressive λ · Img-Mix + Feat-Mix")]
    assert comparisons[6:] == [
        "progressive λ · Feat-Mix − random λ · Feat-Mix", "progressive λ · Img-Mix − random λ · Img-Mix",
        "progressive λ · Img-Mix + Feat-Mix − random λ · Img-Mix + Feat-Mix"]
    cell = t.frame.set_index("comparison")
    # the seed noise cancels: a constant difference, an interval of width 0, significant
    assert cell.loc["random λ · Img-Mix − no mix", "Δacc k=1 [95% CI]"] == "+1.00 [+1.00, +1.00] †"
    # prog_both − no mix = 8 + (0.5, -0.5, 0): mean 8, sd 0.5, half-width t(0.975, 2)·0.5/√3 = 1.242
    assert cell.loc["progressive λ · Img-Mix + Feat-Mix − no mix", "Δacc k=5 [95% CI]"] == \
        "+8.00 [+6.76, +9.24] †"
    prog_vs_random = cell.loc["progressive λ · Feat-Mix − random λ · Feat-Mix", "Δmacc k=1 [95% CI]"]
    assert prog_vs_random.startswith("+4.00")
    assert set(cell["pairs"]) == {"3"}
    v = t.values.set_index(["b", "a", "k", "metric"])
    row = v.loc[("progressive λ · Img-Mix + Feat-Mix", "no mix", 5, "acc")]
    assert row["mean"] == pytest.approx(8.0) and row["hi"] - row["lo"] == pytest.approx(2 * 1.2421, abs=1e-3)
    holm = table_pmixup_paired(frame()).values  # Holm within each family: p-values only grow
    assert (holm["p"].to_numpy() >= t.values["p"].to_numpy() - 1e-12).all()


def test_source_accuracy_table_pooled_over_shots():
    t = table_pmixup_sources(frame())
    assert list(t.frame.columns) == ["method", "flat", "outline", "source mean"]
    cell = t.frame.set_index("method")
    assert cell.loc["random λ · Img-Mix + Feat-Mix", "flat"] == "54.00 ± 0.00"
    assert cell.loc["random λ · Img-Mix + Feat-Mix", "source mean"] == "45.00 ± 0.00"
    assert t.best.set_index(t.frame["method"])["outline"].tolist() == [False, True] + [False] * 5


def test_no_classify_trials_no_table_and_the_retrieval_tables_are_unaffected():
    retrieval = synthetic_trials(40, seeds=2)
    assert set(retrieval["task"]) == {"retrieval"}  # a config column like any other
    assert table_pmixup(retrieval) is None and table_pmixup_paired(retrieval) is None
    assert table_pmixup_sources(retrieval) is None
    names = [t.name for t in build_tables(retrieval)]
    assert not any(n.startswith("table_pmixup") for n in names) and names
    mixed = pd.concat([retrieval, frame(failed=False)], ignore_index=True)
    both = [t.name for t in build_tables(mixed)]
    assert set(names) <= set(both)
    assert {"table_pmixup", "table_pmixup_paired", "table_pmixup_sources"} <= set(both)
    assert table_pmixup(frame().drop(columns=["task"])) is None


def test_only_some_rows_and_one_seed():
    df = frame(failed=False)
    df = df[df["method"].isin(["nomix_k1", "prog_both_k1"]) & (df["seed"] == 0)]
    t = table_pmixup(df)
    assert list(t.frame["method"]) == ["no mix", "progressive λ · Img-Mix + Feat-Mix"]
    assert t.frame.iloc[0]["acc k=1"] == "19.00 ± –"
    paired = table_pmixup_paired(df)
    assert paired.frame.iloc[0]["Δacc k=1 [95% CI]"] == "+8.50 (n<2, no CI)"
