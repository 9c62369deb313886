"""Fast Ray Train trials (ray-notes 19): a 1-worker trial runs its worker in its own trial actor, with the
same reports, checkpoints and metrics as a 1-worker Train worker group; the Train controller unpickles
only light modules; worker errors keep their message on the way to the driver."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import store  # noqa: E402
import sweeps.cli  # noqa: E402
from geomix.checks import ConfigError  # noqa: E402
from geomix.config import build_config, to_dict  # noqa: E402
from sweeps import raytrain, runner, session  # noqa: E402
from sweeps.spec import SweepSpec, resolve_trial, trial_config  # noqa: E402

# ----------------------------------------------------------------------------------------------------------
# no Ray needed


def test_a_one_worker_trial_holds_its_worker_unless_asked_for_a_worker_group(monkeypatch):
    two_cpus = {"CPU": 2.0, session.TRIAL_SLOT: 1000.0}
    monkeypatch.delenv(session.ONE_WORKER_GROUP_ENV, raising=False)
    assert session.one_worker_in_trial(1) and not session.one_worker_in_trial(2)
    assert not session.one_worker_in_trial(0)
    assert session.trial_resources(1, 0.0, two_cpus) == {"CPU": 1.0}
    assert session.trial_resources(1, 1.0, {"CPU": 8.0, "GPU": 2.0}) == {"CPU": 1.0, "GPU": 1.0}
    assert session.trial_resources(2, 0.0, two_cpus) == {"CPU": 0.0, session.TRIAL_SLOT: 1.0}
    assert session.max_concurrent_trials(1, 0.0, two_cpus) == 2
    monkeypatch.setenv(session.ONE_WORKER_GROUP_ENV, "1")
    assert not session.one_worker_in_trial(1)
    assert session.trial_resources(1, 0.0, two_cpus) == {"CPU": 0.0, session.TRIAL_SLOT: 1.0}
    assert session.trial_resources(1, 0.0, {"CPU": 8.0}) == {"CPU": 0.01}
    # the trial actor goes by what it holds: a restored slot-only trial keeps its Train run
    assert session.holds_worker(1, {"CPU": 1.0}) and session.holds_worker(1, {"CPU": 1.0, "GPU": 1.0})
    assert not session.holds_worker(1, {"CPU": 0.0, session.TRIAL_SLOT: 1.0})
    assert not session.holds_worker(1, {"CPU": 0.01}) and not session.holds_worker(2, {"CPU": 2.0})


def test_the_train_controller_unpickles_only_light_modules():
    """The report callback runs in the Train controller, a fresh process per trial: its module must not pull
    in Tune's search and tracking stack (Optuna, MLflow: ~2 s a trial on 2 cores), torch or the store."""
    code = ("import sys, sweeps.raytrain; "
            "print(','.join(m for m in ('sweeps.tune_api', 'sweeps.trainable', 'optuna', 'mlflow', 'torch', "
            "'store', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == ""


def test_forwarder_cleans_reports_like_the_in_process_hooks():
    class Queue:
        def __init__(self):
            self.items = []

        def put(self, item):
            self.items.append(item)

    class Ckpt:
        path = "/storage/run/checkpoint_1"

    q = Queue()
    fwd = raytrain.TuneForwarder(q, done_key="final", carry={"val_rsum": float("nan"), "epoch": 0},
                                 checkpoint_key="checkpoint_path", extra={"trained_config": "{}"})
    fwd.after_report(None, [{"step": 1, "train_loss": 0.5, "tensorish": [1, 2]}, {}], None)
    fwd.after_report(None, [{"step": 2, "epoch": 1, "val_rsum": 40.0}, {}], Ckpt())
    fwd.after_report(None, [{"step": 2, "done": 1, "status": "completed"}, {}], None)
    first, second, last = q.items
    assert first == {"step": 1, "train_loss": 0.5, "val_rsum": first["val_rsum"], "epoch": 0,
                     "trained_config": "{}"} and first["val_rsum"] != first["val_rsum"]  # NaN
    assert second["checkpoint_path"] == Ckpt.path and second["val_rsum"] == 40.0
    assert last["final"] is True and "done" not in last and (last["epoch"], last["val_rsum"]) == (1, 40.0)


def test_an_error_that_cannot_be_unpickled_keeps_its_message(tmp_path, monkeypatch):
    """geomix's ConfigError takes (name, value, allowed): unpickled by Ray from its args it raised a
    TypeError in the controller, and the trial's error said that instead of the bad value."""
    err = ConfigError("evaluation.fewshot_shots", 16, "at most 3")
    portable = raytrain.portable_error(err)
    assert isinstance(portable, RuntimeError)
    last = "geomix.checks.ConfigError: evaluation.fewshot_shots=16 is invalid: allowed at most 3"
    assert str(portable).splitlines()[-1] == last
    plain = ValueError("x")
    assert raytrain.portable_error(plain) is plain

    class Context:
        def get_world_rank(self):
            return 0

    def bad_run(cfg, *, hooks):
        raise err

    monkeypatch.setattr(ray.train, "get_context", Context)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    monkeypatch.setattr(raytrain.train, "run", bad_run)
    small = build_config({}, ["model.name=geomix-micro", "model.pretrained=null", "run.progress=false"])
    with pytest.raises(RuntimeError, match="fewshot_shots=16 is invalid") as caught:
        raytrain.train_loop_per_worker(to_dict(small))
    import pickle

    assert "fewshot_shots=16" in str(pickle.loads(pickle.dumps(caught.value)))


# ----------------------------------------------------------------------------------------------------------
# one local Ray (tests/conftest.py: 2 CPUs, the trial slot, the dashboard)


def _train_controllers(context) -> int:
    from ray.util.state import list_actors

    return len(list_actors(address=f"http://{context.dashboard_url}",
                           filters=[("class_name", "=", "TrainController")]))


def _state(folder: Path) -> dict:
    import torch

    return torch.load(folder / "state.pt", map_location="cpu", weights_only=True)


def _same(a, b) -> None:
    import torch

    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a.keys() - {"train_time"}:  # a wall-clock time
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(a, b)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    else:
        assert a == b


_TIMING = {"trial_wall_s", "wall_s", "samples_per_s", "started_at", "finished_at", "reported_at",
           store.schema.WRITTEN_AT}
#: what names the sweep or the trial rather than what it computed
_NAMES = {"sweep", "trial_id", "embeddings_path", "results_dir"}


@pytest.mark.slow
def test_one_worker_trial_in_its_actor_matches_a_one_worker_train_run(local_ray, tiny_base, tmp_path,
                                                                      monkeypatch):
    """The same 1-worker trial twice on one Ray: as a Train worker group (GEOMIX_ONE_WORKER_GROUP=1, how
    every 1-worker trial ran before) and in its trial actor (the default). Same rows, same history, same
    final checkpoint; the second starts no Train controller and no Train run."""
    base = {**tiny_base, "run": {"save_embeddings": True}}

    def sweep(name: str) -> SweepSpec:
        spec = SweepSpec(name=name, base=base, results=str(tmp_path / name / "res"),
                         storage=str(tmp_path / name / "ray"), num_workers=1, keep_checkpoints=True,
                         methods={"m3_mix": {"loss.w_m2": 0.05, "loss.w_vl": 0.1}})
        cfg = resolve_trial(spec, "m3_mix", 0)
        sweeps.cli.prepare_base_models([cfg])  # the cached base model, as ablation.py prepares it
        runner.run_sweep(spec, trials=[trial_config(cfg, method_rank=0)], verbose=0)
        return spec

    monkeypatch.setenv(session.ONE_WORKER_GROUP_ENV, "1")
    group = sweep("group")
    controllers = _train_controllers(local_ray)
    assert controllers == 1
    monkeypatch.delenv(session.ONE_WORKER_GROUP_ENV)
    here = sweep("here")
    assert _train_controllers(local_ray) == controllers  # no Train run for the in-actor trial

    (g_trials, g_hist), (h_trials, h_hist) = (store.read_results(s.results) for s in (group, here))
    g_row, h_row = g_trials.iloc[0], h_trials.iloc[0]
    assert g_row["status"] == h_row["status"] == "completed"
    assert g_row["num_workers"] == h_row["num_workers"] == 1
    assert g_row["trial_key"] == h_row["trial_key"] and g_row["node_ids"] == h_row["node_ids"]
    for col in g_trials.columns:
        if col in _TIMING or col in _NAMES:
            continue
        a, b = g_row[col], h_row[col]
        if isinstance(a, float):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-6, nan_ok=True), col
        else:
            assert a == b or (a != a and b != b), col
    # every report: the same steps, splits and values
    keys = ["step", "split"]
    g_hist, h_hist = (h.sort_values(keys).reset_index(drop=True) for h in (g_hist, h_hist))
    assert g_hist[keys].values.tolist() == h_hist[keys].values.tolist()
    assert sorted(h_hist[h_hist.split == "val"].epoch) == [0, 1, 2]
    for col in sorted(set(g_hist.columns) - _TIMING - _NAMES):
        if g_hist[col].dtype.kind == "f":
            assert g_hist[col].tolist() == pytest.approx(h_hist[col].tolist(), rel=1e-5, abs=1e-6,
                                                         nan_ok=True), col
        else:
            assert g_hist[col].tolist() == h_hist[col].tolist(), col
    # both put their test embeddings into their results folder
    for spec, row in ((group, g_row), (here, h_row)):
        assert (Path(spec.results) / row["embeddings_path"]).stat().st_size > 0
    # the last checkpoint: the Train run's (a Train run exists only for the group) and Tune's
    g_run = tmp_path / "group" / "ray" / "train" / f"group-{g_row['trial_id']}"
    h_run = tmp_path / "here" / "ray" / "train" / f"here-{h_row['trial_id']}"
    assert g_run.is_dir() and not h_run.exists()
    g_last = sorted(p for p in g_run.glob("checkpoint_*") if p.is_dir())[-1]
    h_last = sorted(p for p in (tmp_path / "here" / "ray" / "here" / h_row["trial_id"]).glob("checkpoint_*")
                    if p.is_dir())[-1]
    _same(_state(g_last), _state(h_last))


def _flaky(run, root: Path):
    """``run`` (conftest's stand-in trial) whose worker dies once, right after its first checkpointed
    report, with an error Ray cannot unpickle from its args; every start logs the epoch it resumed from."""

    def flaky_run(cfg, *, hooks=None):
        class Hooks:
            all_ranks = False

            def report(self, metrics, checkpoint_dir=None):
                hooks.report(metrics, checkpoint_dir)
                if checkpoint_dir and not (root / "failed").exists():
                    (root / "failed").touch()
                    raise ConfigError("worker", "lost", "a worker that stays")

            def initial_checkpoint(self):
                path = hooks.initial_checkpoint()
                with open(root / "starts.jsonl", "a") as f:
                    f.write(json.dumps(None if path is None else _epoch(path)) + "\n")
                return path

            def node_id(self):
                return hooks.node_id()

        return run(cfg, hooks=Hooks())

    return flaky_run


def _epoch(path: str) -> int:
    return int(_state(Path(path))["epoch"])


@pytest.mark.slow
@pytest.mark.parametrize("max_failures", [1, 0])
def test_one_worker_in_its_actor_restarts_from_its_last_checkpoint(local_ray, standin, tmp_path, max_failures,
                                                                  monkeypatch):
    """A worker that raises is run again from the last checkpoint it reported, max_failures times, as Train
    restarts its worker group; past that the trial fails, with the error's own message."""
    monkeypatch.delenv(session.ONE_WORKER_GROUP_ENV, raising=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    root = tmp_path / "marks"
    root.mkdir()
    spec = SweepSpec(name="flaky", base={"optim": {"epochs": 3}, "data": {"train_size": 10}},
                     results=str(tmp_path / "res"), storage=str(tmp_path / "ray"), methods={"ft": {}},
                     num_workers=1, max_failures=max_failures, run_fn=_flaky(standin["run_fn"], root))
    trial = trial_config(resolve_trial(spec, "ft", 0), method_rank=0)
    grid = runner.run_sweep(spec, trials=[trial], verbose=0)
    trials, history = store.read_results(spec.results)
    row = trials.iloc[0]
    starts = [json.loads(line) for line in (root / "starts.jsonl").read_text().splitlines()]
    if max_failures:
        assert row["status"] == "completed" and row["num_workers"] == 1, row["error"]
        assert starts == [None, 1]  # from scratch, then from the epoch-1 checkpoint
        assert sorted(history[history.split == "val"].epoch) == [1, 2, 3]
    else:
        assert row["status"] == "failed" and starts == [None]
        # the error's own message reaches the driver (it was a TypeError from rebuilding the ConfigError)
        assert "worker='lost' is invalid: allowed a worker that stays" in str(grid[0].error)
    # every attempt's scratch folder (and its copy of the checkpoint) went with it
    assert not list(Path(tempfile.gettempdir()).glob(f"geomix-{row['trial_id']}-*"))
