"""Experiment tracking through Ray Tune's own callbacks (sweeps/tracking.py): ``--mlflow [URI]`` gives one
MLflow run per trial, readable through MLflow's client; TensorBoard event files hold every trial's reports;
and ``--mlflow``'s URI is checked before Ray starts."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

import store  # noqa: E402
from sweeps import ablation, tracking  # noqa: E402


def test_a_bare_mlflow_flag_tracks_into_the_results_folder(tmp_path):
    pytest.importorskip("mlflow")
    assert tracking.mlflow_uri(None, str(tmp_path)) is None
    assert tracking.mlflow_uri(tracking.BARE, str(tmp_path)) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.mlflow_uri("http://head:5000", "s3://b/r") == "http://head:5000"
    assert tracking.mlflow_uri("postgresql+psycopg2://u@h/db", str(tmp_path)).startswith("postgresql")


@pytest.mark.parametrize(("value", "results", "named"), [
    ("ftp://x", "r", "--mlflow='ftp://x' is invalid: allowed is a tracking URI"),
    ("file:///tmp/mlruns", "r", "--mlflow='file:///tmp/mlruns' is invalid"),
    ("mlruns", "r", "--mlflow='mlruns' is invalid"),
    (tracking.BARE, "s3://bucket/res", "--mlflow without a URI is invalid with --results='s3://bucket/res'"),
])
def test_a_bad_tracking_uri_is_refused_naming_it(value, results, named):
    pytest.importorskip("mlflow")
    with pytest.raises(ValueError, match="allowed") as err:
        tracking.mlflow_uri(value, results)
    assert named in str(err.value)


def test_a_bad_tracking_uri_fails_before_ray_starts(tmp_path, capsys):
    pytest.importorskip("mlflow")
    from sweeps import cli as common

    with pytest.raises(SystemExit) as done:
        common.cli(ablation.main, ["--mlflow", "ftp://x", "--results", str(tmp_path / "r")])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --mlflow='ftp://x' is invalid: allowed is {tracking._ALLOWED}"]
    assert not (tmp_path / "r").exists()  # nothing written: refused before the folder is touched


def test_a_bare_mlflow_flag_gives_back_the_override_it_swallowed():
    args = ablation.parse_args(["--mlflow", "optim.epochs=1", "run.threads=1"])
    assert args.mlflow == tracking.BARE and args.overrides == ["optim.epochs=1", "run.threads=1"]
    args = ablation.parse_args(["optim.epochs=1", "--mlflow", "sqlite:///x.db"])
    assert args.mlflow == "sqlite:///x.db" and args.overrides == ["optim.epochs=1"]
    assert ablation.parse_args([]).mlflow is None


@pytest.mark.slow
def test_a_tracked_sweep_is_readable_in_mlflow_and_tensorboard(tiny_overrides, tmp_path, capsys, monkeypatch):
    """Two tiny trials with ``--mlflow``: two FINISHED MLflow runs in the sweep's experiment, named as the
    trials, with the trial's method and seed as parameters and the same final val_rsum as the Parquet row;
    and each trial's TensorBoard events hold its val_rsum at every evaluation."""
    mlflow = pytest.importorskip("mlflow")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")  # tests/conftest.py turns them off
    res = tmp_path / "res"
    assert ablation.main(["--methods", "ft,m3_mix", "--seeds", "0", "--results", str(res), "--mlflow",
                          *tiny_overrides]) == 0
    out = capsys.readouterr().out
    uri = f"sqlite:///{res.resolve()}/mlflow.db"
    assert f"MLflow: mlflow ui --backend-store-uri {uri}" in out
    assert f"TensorBoard: tensorboard --logdir {res.resolve() / 'ray'}" in out
    trials, history = store.read_results(str(res))
    assert len(trials) == 2 and (trials.status == "completed").all()

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("ablation")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    by_trial = {r.info.run_name.split("-")[-1]: r for r in runs}  # run name = "<method>-<trial id>"
    rows = trials.set_index("trial_id")
    assert set(by_trial) == set(rows.index)
    for trial_id, run in by_trial.items():
        assert run.data.params["trial/method"] == rows.loc[trial_id, "method"]
        assert run.data.params["trial/seed"] == "0"
        assert run.data.tags["sweep"] == "ablation"
        # the last val_rsum logged is the final report's, the row's val_rsum
        val = client.get_metric_history(run.info.run_id, "val_rsum")
        assert len(val) >= 2 and val[-1].value == pytest.approx(rows.loc[trial_id, "val_rsum"], abs=1e-6)

    events = sorted((res / "ray").rglob("events.out.tfevents.*"))
    assert len(events) == 2
    for path in events:
        acc = event_accumulator.EventAccumulator(str(path))
        acc.Reload()
        assert "ray/tune/val_rsum" in acc.Tags()["scalars"]
        trial_id = path.parent.name
        points = acc.Scalars("ray/tune/val_rsum")
        evals = history[(history.trial_id == trial_id) & (history.split == "val")]
        assert len(points) >= len(evals) - 1  # every epoch's evaluation (the step-0 point may precede Tune's)
        assert points[-1].value == pytest.approx(rows.loc[trial_id, "val_rsum"], abs=1e-4)
