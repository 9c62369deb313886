"""Fault tolerance: a driver killed with SIGKILL and the same command re-run loses and duplicates no
trial; a Ray Train worker killed mid-trial makes the trial resume from its last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

import store  # noqa: E402
from store.fs import exists, resolve  # noqa: E402
from store.parts import read_table  # noqa: E402
from sweeps import runner  # noqa: E402
from sweeps.spec import SweepSpec, resolve_trial, trial_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _rows(folder: Path, table: str = "trials"):
    """One table as the store reads it now (None before its first write); every part is written
    atomically, so a reader never sees half of one."""
    filesystem, path = resolve(str(folder))
    found = read_table(filesystem, path, table) if exists(filesystem, path, "dir") else None
    return None if found is None else found[0]


@pytest.mark.slow
def test_driver_sigkill_then_same_command_resumes(tiny_overrides, tmp_path):
    """A small ablation through its command line, killed with SIGKILL once a trial is done and re-run:
    one Parquet row per trial (none lost or doubled), the expected statuses (a diverging row is recorded
    as diverged and the sweep goes on), history for every trial."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "name: killed\nseeds: [0]\nmethods:\n  zs: {}\n  ft: {}\n  ft_tau0.05: {loss.tau: 0.05}\n"
        "  m3_mix: {loss.w_m2: 0.05, loss.w_vl: 0.1, optim.lr: 1.0e+30, optim.warmup_frac: 0,"
        " optim.grad_clip: null}\n"
    )
    res = tmp_path / "res"
    cmd = [sys.executable, str(ROOT / "sweeps" / "ablation.py"), "--config", str(sweep),
           "--max-concurrent", "1", "--results", str(res), *tiny_overrides, "run.save_embeddings=true",
           # trials of a few seconds each, so the kill lands mid-sweep even on a fast, idle machine
           "data.train_size=512", "optim.epochs=3"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Own session: after the SIGKILL, the Ray processes this driver started can be ended by group id.
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # kill once a trial's row is written (the next one is under way)
            trials = _rows(res)
            if trials is not None and len(trials) >= 1:
                break
            assert first.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.5)
        else:
            pytest.fail("no finished trial within 240 s")
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        time.sleep(2)
        try:
            os.killpg(first.pid, signal.SIGKILL)  # Ray processes of the killed driver's session
        except ProcessLookupError:
            pass
    done_before = set(_rows(res).trial_id)
    assert 1 <= len(done_before) < 4

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming sweep" in second.stderr
    trials, history = store.read_results(str(res))
    assert len(trials) == 4 and trials["trial_id"].is_unique  # none lost or doubled
    assert done_before <= set(trials.trial_id)
    # each row knows its method's place in the YAML, also the rows written before the kill
    assert list(trials.sort_values("method_rank").method) == ["zs", "ft", "ft_tau0.05", "m3_mix"]
    status = dict(zip(trials.method, trials.status))
    assert status == {"zs": "completed", "ft": "completed", "ft_tau0.05": "completed", "m3_mix": "diverged"}
    assert trials.loc[trials.method == "m3_mix", "error"].str.contains("non-finite").all()
    ok = trials[trials.status == "completed"]
    assert ok["rsum"].notna().all() and ok["node_ids"].notna().all()
    assert (trials.loc[trials.method == "ft_tau0.05", "loss.tau"] == 0.05).all()
    for col in ("version.ray", "version.torch", "version.open_clip", "git_commit", "sweep", "wall_s"):
        assert col in trials.columns
    assert set(history.trial_id) >= set(ok.trial_id) and {"val", "test"} <= set(history.split)
    assert (res / "config.yaml").is_file()
    # a finished trial's checkpoints are deleted once its row is written (only resume needed them)
    for trial_id in trials.trial_id:
        trial_dir = res / "ray" / "killed" / trial_id
        assert trial_dir.is_dir()
        assert not [p for p in trial_dir.glob("checkpoint_*") if p.is_dir()], trial_id
    # each finished trial's test embeddings are kept in the results folder, and the figure reads them
    import numpy as np

    from analysis import plots

    assert ok["embeddings_path"].notna().all() and trials.loc[trials.status == "diverged",
                                                             "embeddings_path"].isna().all()
    for rel in ok["embeddings_path"]:
        with np.load(res / rel) as z:
            assert z["img"].shape[0] == 32 and z["txt"].shape[1] == z["img"].shape[1]
    assert [p.name for p in plots.modality_gap(trials, tmp_path / "figs")] == ["modality_gap.png",
                                                                                "modality_gap.pdf"]


@pytest.mark.slow
def test_worker_killed_mid_trial_resumes_from_checkpoint(local_ray, tiny_base, tmp_path):
    """One 2-worker Ray Train trial; a worker is SIGKILLed after the first epoch's report. The trial must
    complete, and the first epoch's history row must be the one written before the kill (the restarted
    worker group resumed from the epoch-1 checkpoint instead of training from scratch)."""
    from ray.util.state import list_actors

    # 4 epochs of 24 steps: long enough to kill a worker between the first and the last report
    spec = SweepSpec(
        name="faults", base=tiny_base, results=str(tmp_path / "res"), storage=str(tmp_path / "ray"),
        methods={"ft": {"optim.epochs": 4, "data.train_size": 768}}, num_workers=2, max_failures=2,
    )
    res = Path(spec.results)
    killed: dict[str, float] = {}

    def kill_a_worker_after_epoch_1():
        # The State API can take seconds under load: find the worker pids while the group starts, and
        # kill the moment the first epoch's report is on disk.
        deadline, pids = time.time() + 300, []
        alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
        while time.time() < deadline and not killed:
            if not pids:
                # this test's own Ray by address: other local clusters may run on the same machine
                state_api = f"http://{local_ray.dashboard_url}"
                pids = [a.pid for a in list_actors(address=state_api, filters=alive)]
            history = _rows(res, "history")
            if pids and history is not None and (history.epoch >= 1).any():
                killed["at"] = time.time()
                os.kill(pids[-1], signal.SIGKILL)  # a worker process of this test's own Ray
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_a_worker_after_epoch_1, daemon=True)
    killer.start()
    runner.run_sweep(spec, trials=[trial_config(resolve_trial(spec, "ft", 0), method_rank=0)], verbose=0)
    killer.join(5)
    assert "at" in killed, "no worker was killed"
    trials, history = store.read_results(spec.results)
    assert len(trials) == 1 and trials.status.iloc[0] == "completed", trials[["status", "error"]]
    val = history[history.split == "val"].sort_values("epoch")
    assert list(val.epoch) == [0, 1, 2, 3, 4]  # 0: the starting model, not repeated by the restarted group
    epoch1 = val[val.epoch == 1].iloc[0]
    assert epoch1.reported_at < killed["at"]  # not re-trained (and re-reported) after the kill
    assert (val[val.epoch > 1].reported_at > killed["at"]).any()
