"""sweeps.progress: the sweep's progress line (counts, ETA) and the driver callback that logs it."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from sweeps.progress import SweepProgress, count_trials, format_duration


def _trials(*statuses: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(status=s, trial_id=f"t{i}", config={}) for i, s in enumerate(statuses)]


def test_counts_read_the_statuses_and_count_the_ending_trial():
    trials = _trials("TERMINATED", "TERMINATED", "ERROR", "RUNNING", "RUNNING", "PENDING")
    assert count_trials(trials) == (2, 2, 1)
    # Tune calls the callback before it changes the ending trial's status: it is still RUNNING here
    assert count_trials(trials, trials[3]) == (3, 1, 1)
    assert count_trials(trials, trials[3], error=True) == (2, 1, 2)


@pytest.mark.parametrize("seconds,text", [(0, "< 1 min"), (29, "< 1 min"), (240, "4 min"), (3500, "58 min"),
                                          (3599, "1 h 00 min"),
                                          (3900, "1 h 05 min"), (7260, "2 h 01 min")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_line_counts_and_eta_from_mean_wall_and_concurrency():
    p = SweepProgress(total=36)
    assert p.line(0, 2, 0) == "0/36 done, 2 running, 0 failed"  # no trial timed yet: no ETA
    p.started(2)
    for wall in (50.0, 70.0):  # mean 60 s
        p.ended(wall)
    # 24 left (12 done of 36) at 2 at once: 24 * 60 / 2 = 12 min
    assert p.eta_s(12, 2, 0) == pytest.approx(720.0)
    assert p.line(12, 2, 0) == "12/36 done, 2 running, 0 failed, ETA 12 min"
    # failed trials are finished too; the most seen at once counts even when fewer run now
    assert p.line(33, 1, 1) == "33/36 done, 1 running, 1 failed, ETA 1 min"
    assert p.line(35, 0, 1) == "35/36 done, 0 running, 1 failed"  # nothing left: no ETA


def test_unknown_walls_are_skipped_and_an_unknown_total_has_no_eta():
    p = SweepProgress(total=4)
    p.ended(None)
    p.ended(float("nan"))
    assert p.walls == [] and p.line(2, 0, 0) == "2/4 done, 0 running, 0 failed"
    q = SweepProgress()
    q.ended(10.0)
    assert q.line(3, 1, 0) == "3 done, 1 running, 0 failed"


def test_results_callback_logs_the_progress_line(monkeypatch, caplog):
    from sweeps import records

    written = []
    monkeypatch.setattr(records.store, "write_rows", lambda results, table, rows: written.append(table))
    monkeypatch.setattr(records, "finished_row", lambda spec, trial, error, env, timing: {
        "status": "failed" if error else "completed", "rsum": 120.0, "r1_i2t": 10.0, "trial_wall_s": 60.0})
    monkeypatch.setattr(records, "describe", lambda config: "ft seed=0")
    monkeypatch.setattr(records, "_timing", lambda trial: {})
    monkeypatch.setattr(records, "drop_checkpoints", lambda spec, trial: None)
    spec = SimpleNamespace(results="unused", keep_checkpoints=False)
    cb = records.ResultsCallback(spec, {}, total=4)
    trials = _trials("RUNNING", "RUNNING", "PENDING", "PENDING")
    with caplog.at_level(logging.INFO, logger="sweeps.records"):
        cb.on_trial_start(0, trials, trials[0])
        cb.on_trial_start(0, trials, trials[1])
        cb.on_trial_complete(0, trials, trials[0])
        trials[0].status = "TERMINATED"
        cb.on_trial_error(0, trials, trials[1])
    lines = [r.getMessage() for r in caplog.records if "done" in r.getMessage()]
    # 60 s a trial, 2 at once: 3 left -> 90 s, then 2 left -> 60 s
    assert lines[0].endswith("completed, test rsum 120.0, R@1 i→t 10.0 in 60 s; "
                             "1/4 done, 1 running, 0 failed, ETA 2 min")
    assert lines[1].endswith("; 1/4 done, 0 running, 1 failed, ETA 1 min")
    assert written == ["trials", "trials"]
