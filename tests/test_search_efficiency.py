"""benchmarks/search_efficiency.py: the compute accounting on hand-made trial logs, the replay trial function,
and the replayed searches (Ray Tune + Optuna + ASHA, the project's own sweep) on synthetic curve tables
whose answers are known."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "search_efficiency.py"
WEIGHTS = (0.005, 0.02, 0.1, 0.5)
ALPHAS = (0.1, 0.3, 1.0, 4.0)
EPOCHS = 4
BEST = (0.1, 1.0)


@pytest.fixture
def bench(monkeypatch):
    """The benchmark as a module (benchmarks/ is not a package), in ``sys.modules`` so that cloudpickle can
    send its replay function to Ray's workers by value."""
    spec = importlib.util.spec_from_file_location("search_efficiency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "search_efficiency", module)
    spec.loader.exec_module(module)
    return module


def _trial(w, epochs, final_val=None, test_rsum=None):
    return {"w": w, "alpha": 1.0, "epochs": epochs, "final_val": final_val, "test_rsum": test_rsum}


def test_compute_is_counted_until_the_first_full_trial_near_the_best(bench):
    trials = [_trial(1, 1), _trial(2, 4, 99.5, 80.0), _trial(3, 4, 100.4, 90.0), _trial(1, 2)]
    eff = bench.efficiency(trials, target=99.0, grid_compute=64)
    assert eff["fraction"] == 5 / 64  # 1 epoch of a stopped trial, then the 4 of the one that reached 99.5
    assert eff["total"] == 11 / 64 and eff["distinct"] == 3
    assert eff["pick_test_rsum"] == 90.0  # the pick is the best final val_rsum, not the first found
    missed = bench.efficiency(trials, target=101.0, grid_compute=64)
    assert missed["fraction"] == math.inf and missed["pick_test_rsum"] == 90.0
    # a stopped trial has no final val_rsum, however good its partial curve looked
    assert bench.efficiency([_trial(1, 2)], target=0.0, grid_compute=64)["fraction"] == math.inf


def test_replay_reports_the_recorded_curve_of_the_point_it_is_given(bench):
    table = bench.synthetic_table({(0.1, 1.0): 400.0, (0.5, 1.0): 200.0}, epochs=2)
    seen = []
    hooks = SimpleNamespace(report=lambda metrics, ckpt: seen.append(metrics))
    cfg = SimpleNamespace(loss=SimpleNamespace(w_m2=0.5), mix=SimpleNamespace(m2=SimpleNamespace(alpha=1.0)))
    result = bench.Replay(table)(cfg, hooks=hooks)
    assert [m["val_rsum"] for m in seen] == [0.0, 100.0, 200.0] and seen[-1]["done"] is True
    assert result["status"] == "completed" and result["test_rsum"] == 200.0
    cfg.loss.w_m2 = 0.3
    with pytest.raises(KeyError, match="not a grid point"):
        bench.Replay(table)(cfg, hooks=hooks)


def _table(bench, tmp_path, name, finals):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(bench.synthetic_table(finals, EPOCHS)))
    return path


@pytest.mark.slow
def test_replayed_searches_on_tables_with_known_answers(bench, local_ray, tmp_path, capsys):
    """A flat table: every point is within 1 of the best, so a search finds it on its first trial, at exactly
    4 / 64 of the grid's compute. One clearly best point, ranked the same at every epoch: ASHA never stops
    it, so a search found it exactly when it suggested it, at the trial-epochs spent up to then."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(bench)  # the trial actors cannot import benchmarks/
    flat = _table(bench, tmp_path, "flat", {(w, a): 300.0 for w in WEIGHTS for a in ALPHAS})
    assert bench.main(["--curves", str(flat), "--searches", "tpe", "--seeds", "0", "--budget", "1",
                       "--json", str(tmp_path / "flat-out.json")]) == 0
    out = json.loads((tmp_path / "flat-out.json").read_text())
    agreement = out["grid"].pop("rank_agreement")
    assert out["grid"] == {"best_val": 300.0, "target": 299.0, "near": 16, "compute": 64}
    assert [a["spearman"] for a in agreement] == [None] * (EPOCHS - 1)  # every point the same: undefined
    assert out["searches"]["tpe"]["fractions"] == [4 / 64]

    finals = {(w, a): 300.0 + 10 * i for i, (w, a) in enumerate((w, a) for w in WEIGHTS for a in ALPHAS)}
    finals[BEST] = 500.0
    one = _table(bench, tmp_path, "one", finals)
    assert bench.main(["--curves", str(one), "--searches", "tpe+asha,random+asha", "--seeds", "0",
                       "--budget", "8",
                       "--json", str(tmp_path / "one-out.json")]) == 0
    out = json.loads((tmp_path / "one-out.json").read_text())
    assert out["grid"]["best_val"] == 500.0 and out["grid"]["near"] == 1
    agreement = [(a["spearman"], a["best_rank"]) for a in out["grid"]["rank_agreement"]]
    assert agreement == [(pytest.approx(1.0), 1)] * (EPOCHS - 1)  # the same ranking at every epoch
    for name, numbers in out["searches"].items():
        trials = numbers["trials"]["0"]
        assert len(trials) == 8, name
        epochs = [t["epochs"] for t in trials]
        # ASHA's rungs at epochs 1, 2, 4; the first trial has nothing to be compared with
        assert set(epochs) <= {1, 2, 4} and epochs[0] == EPOCHS, (name, epochs)
        for t in trials:  # a full-length trial reports the table's final value; a stopped one none
            assert (t["final_val"] is not None) == (t["epochs"] == EPOCHS)
            if t["final_val"] is not None:
                assert t["final_val"] == finals[(t["w"], t["alpha"])]
        hits = [i for i, t in enumerate(trials) if (t["w"], t["alpha"]) == BEST]
        expected = sum(epochs[: hits[0] + 1]) / 64 if hits else math.inf
        assert numbers["fractions"] == [expected], (name, trials)
        if hits:
            assert trials[hits[0]]["epochs"] == EPOCHS  # the best point is never stopped
    printed = capsys.readouterr().out
    assert "grid (ground truth)" in printed and "TPE alone" in printed and "random + ASHA" in printed


def test_make_searcher_offers_tpe_and_random_samplers():
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("ray")
    from sweeps import searchers

    assert isinstance(searchers.make_sampler("random", seed=1), optuna.samplers.RandomSampler)
    tpe = searchers.make_sampler("tpe", seed=1, startup_trials=4)
    assert isinstance(tpe, optuna.samplers.TPESampler) and tpe._n_startup_trials == 4
    with pytest.raises(ValueError, match="sampler='cmaes' is invalid"):
        searchers.make_sampler("cmaes")


def test_rank_agreement_measures_whether_early_epochs_rank_as_the_last(bench):
    finals = {(1.0, 1.0): 10.0, (2.0, 1.0): 20.0, (3.0, 1.0): 30.0, (4.0, 1.0): 40.0}
    table = bench.synthetic_table(finals, epochs=3)
    assert [(a["epoch"], a["spearman"], a["best_rank"]) for a in bench.rank_agreement(table["points"])] == [
        (1, pytest.approx(1.0), 1), (2, pytest.approx(1.0), 1)]
    # Epoch 1 reversed (the best point last), epoch 2 with the best point second.
    for point, (v1, v2) in zip(table["points"], [(4, 1), (3, 2), (2, 4), (1, 3)]):
        point["reports"][1]["val_rsum"], point["reports"][2]["val_rsum"] = float(v1), float(v2)
    got = bench.rank_agreement(table["points"])
    assert got[0] == {"epoch": 1, "spearman": pytest.approx(-1.0), "best_rank": 4}
    assert got[1]["best_rank"] == 2 and got[1]["spearman"] == pytest.approx(0.8)
