"""Faults that must leave the results true: a resumed trial records the config it ran, not the driver's; a
damaged trials / history part is named, moved aside and rebuilt from Ray's experiment state; Ray's state is
never unpickled from a storage folder that another user can write."""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")

import store  # noqa: E402
from sweeps import folder, records, runner  # noqa: E402
from sweeps.identity import plan, trial_key  # noqa: E402
from sweeps.spec import SweepSpec, resolve_trial, trial_config  # noqa: E402
from sweeps.trainable import trained_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BASE = {"data": {"train_size": 64, "val_size": 32, "test_size": 32}, "optim": {"epochs": 2, "batch_size": 32},
        "model": {"name": "geomix-micro"}}


def _spec(tmp_path, base=BASE, **kw) -> SweepSpec:
    return SweepSpec(name="faulty", base=base, results=str(tmp_path / "res"), storage=str(tmp_path / "ray"),
                     methods={"ft": {}}, **kw)


def _epochs(base: dict, n: int) -> dict:
    return {**base, "optim": {**base["optim"], "epochs": n}}


# ----------------------------------------------------------------------------------------------------------
# 1. the row records what the trial ran


def test_a_row_records_the_config_the_trial_reported_not_its_tune_config(tmp_path):
    """A trial whose reports say it trained with 3 epochs, while its Tune config (and the driver's sweep)
    say 2: the row's config columns, method, seed and trial_key are the 3-epoch run's. A trial that failed
    before its first report records its Tune config."""
    spec = _spec(tmp_path)
    told = trial_config(resolve_trial(spec, "ft", 0))  # what the driver's sweep says now
    ran = resolve_trial(_spec(tmp_path, _epochs(BASE, 3)), "ft", 0)
    result = {records.TRAINED_KEY: trained_json(ran), "final": True, "status": "completed", "epoch": 3,
              "step": 6, "test_rsum": 120.0}
    trial = SimpleNamespace(trial_id="t0", config={"trial": told}, last_result=result)
    row = records.finished_row(spec, trial, False, {}, {})
    assert row["optim.epochs"] == 3 and row["epoch"] == 3 and row["rsum"] == 120.0
    assert row["trial_key"] == trial_key(ran) != told["key"]
    assert (row["method"], row["seed"], row["status"]) == ("ft", 0, "completed")
    assert records.TRAINED_KEY not in row
    early = SimpleNamespace(trial_id="t1", config={"trial": told}, last_result={},
                            get_error=lambda: RuntimeError("no GPU"))
    row = records.finished_row(spec, early, True, {}, {})
    assert row["optim.epochs"] == 2 and row["trial_key"] == told["key"] and row["status"] == "failed"
    assert row["error"] == "no GPU"


@pytest.mark.slow
def test_resume_with_a_changed_config_records_what_the_trial_ran(local_ray, standin, tmp_path):
    """A sweep of 3 epochs is interrupted after its trial's first epoch (Tune saves its state); the driver
    then resumes that experiment with a sweep that says 2 epochs. The trial continues with the config
    Tune restored (3 epochs, from the param_space on disk), and its row says so."""
    three = _spec(tmp_path, _epochs({**BASE, "data": {**BASE["data"], "train_size": 15000}}, 3),
                  run_fn=standin["run_fn"])  # 1.5 s per epoch: time to interrupt after the first
    trials = [trial_config(resolve_trial(three, "ft", 0), method_rank=0)]

    def interrupt_after_epoch_1():
        deadline = time.time() + 120
        while time.time() < deadline:
            history = _table(three.results, "history")
            if history is not None and (history["epoch"] >= 1).any():
                os.kill(os.getpid(), signal.SIGUSR1)  # Tune's own "stop and save the state" signal
                return
            time.sleep(0.1)

    killer = threading.Thread(target=interrupt_after_epoch_1, daemon=True)
    killer.start()
    runner.run_sweep(three, trials=trials, verbose=0)
    killer.join(5)
    assert _table(three.results, "trials") is None, "the trial finished before the interrupt"

    two = _spec(tmp_path, run_fn=standin["run_fn"])  # the driver's sweep now: 2 epochs
    runner.run_sweep(two, verbose=0)  # Tuner.restore of the experiment in storage
    got, history = store.read_results(two.results)
    assert len(got) == 1
    row = got.iloc[0]
    assert row["status"] == "completed" and row["optim.epochs"] == 3 and row["epoch"] == 3
    assert row["trial_key"] == trials[0]["key"] and row["data.train_size"] == 15000
    assert sorted(history.loc[history.split == "val", "epoch"]) == [1, 2, 3]
    # the reconciliation (a driver killed before its callback wrote the row) rebuilds the same truth
    elsewhere = dataclasses.replace(two, results=str(tmp_path / "rebuilt"))
    assert runner.reconcile(elsewhere) == 1
    rebuilt = store.read_results(elsewhere.results)[0].iloc[0]
    assert rebuilt["optim.epochs"] == 3 and rebuilt["trial_key"] == row["trial_key"]


def _table(results: str, table: str):
    """One table of the folder (None before its first write), without needing a trials table."""
    from store.fs import resolve
    from store.parts import read_table

    found = read_table(*resolve(results), table)
    return None if found is None else found[0]


# ----------------------------------------------------------------------------------------------------------
# 2. a damaged part is named, set aside and rebuilt


def _flip_a_bit(part: Path, value: float) -> None:
    """One bit of a stored number (in a data page: without the page checksum it would read back wrong)."""
    import struct

    data = bytearray(part.read_bytes())
    at = data.find(struct.pack("<d", value))
    assert at > 0, value
    data[at] ^= 0x01
    part.write_bytes(bytes(data))


@pytest.mark.slow
def test_damaged_trials_and_history_parts_are_named_set_aside_and_rebuilt(local_ray, standin, tmp_path,
                                                                          monkeypatch, caplog):
    """Two finished trials; one trials part and one history part are damaged. The tables command names the
    file in one error line (exit 2). The rerun's reads move both files to damaged/ (one warning each,
    naming the file), and its resume step rebuilds every lost row from Ray's experiment state and Tune's
    log of the results, so nothing is rerun and the folder reads back as it was."""
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")  # Tune's result.json: history's source
    spec = SweepSpec(name="faulty", base=BASE, results=str(tmp_path / "res"), storage=str(tmp_path / "ray"),
                     methods={"ft": {}, "hot": {"optim.lr": 0.01}}, run_fn=standin["run_fn"])
    trials = [trial_config(resolve_trial(spec, m, 0), method_rank=i) for i, m in enumerate(spec.methods)]
    runner.run_sweep(spec, trials=trials, verbose=0)
    before, history_before = store.read_results(spec.results)
    assert len(before) == 2 and (before.status == "completed").all() and len(history_before) >= 4

    res = Path(spec.results)
    bad_trials = sorted((res / "trials").iterdir())[0]
    bad_history = sorted((res / "history").iterdir())[-1]
    _flip_a_bit(bad_trials, float(pq.read_table(bad_trials, columns=["rsum"])["rsum"][0].as_py()))
    bad_history.write_bytes(bad_history.read_bytes()[:-40])  # cut short

    tables = subprocess.run([sys.executable, str(ROOT / "analysis" / "tables.py"), str(res)],
                            capture_output=True, text=True, timeout=120)
    errors = [line for line in tables.stderr.splitlines() if "error:" in line]
    assert tables.returncode == 2 and "Traceback" not in tables.stderr, tables.stderr[-2000:]
    assert len(errors) == 1 and str(bad_trials) in errors[0] and "damaged" in errors[0]

    caplog.set_level(logging.WARNING, logger="sweeps.folder")
    rows = folder.existing_rows(spec.results)  # what a rerun reads first (sweeps/ablation.py)
    moved = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(moved) == 2 and str(bad_trials) in moved[0] and str(bad_history) in moved[1]
    assert not bad_trials.exists() and not bad_history.exists()
    assert len(store.damaged_files(spec.results)) == 2  # kept, not deleted
    wanted = {t["key"] for t in trials}
    assert len(plan(trials, rows, None, spec.results).todo) == 1  # the lost row's trial would rerun

    runner.resume_unfinished(spec, wanted, verbose=0)  # the rerun's resume step: reconcile, then resume
    assert plan(trials, folder.existing_rows(spec.results), None, spec.results).todo == []  # none reruns
    after, history_after = store.read_results(spec.results)
    cols = ["trial_id", "method", "status", "rsum", "r1_i2t", "optim.lr", "trial_key", "epoch", "steps"]
    assert after.sort_values("trial_id")[cols].to_dict("records") == \
        before.sort_values("trial_id")[cols].to_dict("records")
    key = ["trial_id", "step", "split"]
    assert history_after.sort_values(key)[key + ["rsum", "epoch"]].to_dict("records") == \
        history_before.sort_values(key)[key + ["rsum", "epoch"]].to_dict("records")


# ----------------------------------------------------------------------------------------------------------
# 3. Ray's state is unpickled only from storage no other user can write


class _Planted:
    """A pickle that, when loaded, leaves a marker file: what a planted tuner.pkl would do, harmlessly."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


def _planted_experiment(tmp_path) -> tuple[SweepSpec, Path, Path]:
    spec = _spec(tmp_path)
    experiment = Path(spec.storage) / spec.name
    experiment.mkdir(parents=True)
    os.chmod(Path(spec.storage), 0o755)
    os.chmod(experiment, 0o755)
    marker = tmp_path / "planted-code-ran"
    (experiment / "tuner.pkl").write_bytes(pickle.dumps(_Planted(str(marker))))
    os.chmod(experiment / "tuner.pkl", 0o644)
    return spec, experiment, marker


@pytest.mark.parametrize("where, mode", [("storage", 0o777), ("experiment", 0o775), ("tuner.pkl", 0o666)])
def test_restore_from_storage_that_others_can_write_is_refused(tmp_path, where, mode, monkeypatch):
    """A world- or group-writable storage folder, experiment folder or tuner.pkl: run_sweep and the
    rerun's resume step refuse, naming the path and the chmod that fixes it, and nothing is unpickled."""
    spec, experiment, marker = _planted_experiment(tmp_path)
    target = {"storage": Path(spec.storage), "experiment": experiment, "tuner.pkl": experiment / "tuner.pkl"}
    os.chmod(target[where], mode)
    monkeypatch.setattr(folder, "_private_gid", lambda: None)  # the file's group is not the user's own
    for resume in (lambda: runner.run_sweep(spec, verbose=0), lambda: runner.resume_unfinished(spec, set())):
        with pytest.raises(folder.UntrustedStorage) as err:
            resume()
        msg = str(err.value)
        assert msg.startswith(f"--storage={spec.storage!r} is invalid: allowed a folder only you can write: "
                              f"{target[where]} is writable by ")
        assert f"chmod go-w {target[where]}" in msg and "\n" not in msg and "unpickles" in msg
    assert not marker.exists()
    os.chmod(target[where], mode & ~0o022)
    folder.check_private(spec.storage, str(experiment))  # fixed: accepted


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another uid needs root")
def test_restore_from_a_tuner_pkl_owned_by_another_user_is_refused(tmp_path):
    spec, experiment, marker = _planted_experiment(tmp_path)
    os.chown(experiment / "tuner.pkl", 12345, 12345)
    owned = r"tuner.pkl is owned by uid 12345, not by you .* fix with `chown \$USER "
    with pytest.raises(folder.UntrustedStorage, match=owned):
        runner.run_sweep(spec, verbose=0)
    assert not marker.exists()


def test_which_owners_and_modes_count_as_writable_by_others():
    def st(mode, uid=1000, gid=1000, kind=0o040000):
        return os.stat_result((kind | mode, 0, 0, 0, uid, gid, 0, 0, 0, 0))

    def why(s, private=1000, sticky_ok=False):
        return folder.writable_by_others(s, 1000, private, sticky_ok=sticky_ok)

    assert why(st(0o755)) is None and why(st(0o700, uid=0)) is None  # yours, or root's
    assert "owned by uid 2000" in why(st(0o755, uid=2000))
    assert "every user" in why(st(0o757)) and "every user" in why(st(0o666, kind=0o100000))
    assert why(st(0o775)) is None  # group write for your own private group (umask 002 systems)
    assert "group 50" in why(st(0o775, gid=50)) and "group 1000" in why(st(0o775), private=None)
    assert why(st(0o1777, uid=0), sticky_ok=True) is None  # /tmp above the storage folder
    assert "every user" in why(st(0o1777, uid=0))  # inside the experiment: anyone could add a checkpoint


def test_object_store_storage_is_left_to_the_bucket_policy(tmp_path):
    folder.check_private("s3://bucket/geomix/ray", "s3://bucket/geomix/ray/faulty")  # nothing to stat


@pytest.mark.slow
def test_a_local_ray_has_token_auth_on_and_its_dashboard_on_loopback(local_ray):
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert local_ray.dashboard_url.startswith("127.0.0.1:")
    assert get_authentication_mode() == AuthenticationMode.TOKEN
    assert os.environ["RAY_AUTH_MODE"] == "token"

