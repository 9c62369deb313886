"""What a sweep records: trial statuses, ``trials`` / ``history`` rows, and the callback that writes them.

:class:`ResultsCallback` (on the driver) writes ``history`` rows on every Tune result and a ``trials`` row
when a trial ends, through ``store.write_rows`` (atomic, merged by key), then deletes the finished trial's
checkpoints. A row's config is the config the trial trained with, as its trainable reported it
(:data:`TRAINED_KEY`, in every report), so a trial restored from an experiment's state records what it ran
whatever the driver's sweep now says; a trial that failed before its first report records the resolved
nested dict it carries in its Tune config (``sweeps.spec``). Neither is ever resolved again.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from pyarrow import fs as pafs

import store
from geomix.config import TrainConfig, from_dict
from geomix.registry import EVAL_PREFIX
from store.fs import join, resolve
from sweeps import tune_api as tune
from sweeps.identity import trial_key
from sweeps.progress import SweepProgress, count_trials
from sweeps.spec import FINAL_KEY, STATUS_KEY, SweepSpec, describe, train_storage, trial_name, trial_of

log = logging.getLogger(__name__)

#: The key of a report that carries the trial's config as it trains with it (JSON of ``to_dict(cfg)``).
TRAINED_KEY = "trained_config"
#: Tune's own log of a trial's results, one JSON line per report, in the trial's folder in storage (its
#: JSON logger; off with TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1). History rows are rebuilt from it.
_RESULT_FILE = "result.json"

_HISTORY_KEYS = ("epoch", "step", "samples_seen", "train_loss")
_TRIAL_KEYS = (
    "epoch", "steps", "samples_seen", "wall_s", "samples_per_s", "num_workers", "device", "node_ids",
    "embeddings_path",
)


def trial_status(result: Mapping[str, Any] | None, error: bool) -> str:
    """completed / diverged (the trial's own final report), failed (raised), else early_stopped."""
    if error:
        return "failed"
    if result and result.get(FINAL_KEY) and result.get(STATUS_KEY) in ("completed", "diverged"):
        return str(result[STATUS_KEY])
    return "early_stopped"


#: Reported keys that are metrics: of the validation and test splits, and of the extra evaluation sets.
_METRIC_PREFIXES = ("val_", "test_", EVAL_PREFIX)


def history_rows(trial_id: str, result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One Tune result -> ``history`` rows (``store.history_rows``), without Tune's own keys."""
    report = {k: v for k, v in result.items()
              if (k in _HISTORY_KEYS or k.startswith((*_METRIC_PREFIXES, "loss_", "lam_"))) and _is_num(v)}
    if "step" not in report:
        return []
    rows = store.history_rows(trial_id, report)
    for row in rows:  # when the driver saw it: tells a resumed trial's rows from rows of a rerun
        row["reported_at"] = time.time()
    return rows


def trained_config(
    trial_id: str, trial: Mapping[str, Any], result: Mapping[str, Any] | None
) -> tuple[dict[str, Any], str | None]:
    """The config a trial trained with and its ``trial_key``: the one its trainable reported
    (:data:`TRAINED_KEY`), else (no report yet) the one its Tune config carries."""
    text = (result or {}).get(TRAINED_KEY)
    if not text:
        return dict(trial["config"]), trial.get("key")
    config = json.loads(text)
    key = trial_key(from_dict(TrainConfig, config))
    if trial.get("key") and key != trial["key"]:
        log.warning("trial %s trained with another config than its Tune config says (key %s, not %s): "
                    "its row records the config it trained with", trial_id, key, trial["key"])
    return config, key


def trial_row(
    spec: SweepSpec, trial_id: str, trial: Mapping[str, Any], result: Mapping[str, Any] | None,
    status: str, error: str | None, env: Mapping[str, Any], timing: Mapping[str, Any],
) -> dict[str, Any]:
    """One ``trials`` row (``store.trial_row``): the config the trial trained with (:func:`trained_config`),
    ``method_rank`` and ``overrides`` from its own config (``sweeps.spec.trial_config``), status, final test
    metrics, last validation metrics, timings, node ids, versions."""
    config, key = trained_config(trial_id, trial, result)
    result = dict(result or {})
    if result.get("steps") is None and "step" in result:
        result["steps"] = result["step"]
    kept = {k: v for k, v in result.items()
            if k in _TRIAL_KEYS or (k.startswith(_METRIC_PREFIXES) and _is_num(v))}
    kept.update(timing)
    if trial.get("method_rank") is not None:
        kept["method_rank"] = int(trial["method_rank"])
    if key:
        kept["trial_key"] = key  # its identity (sweeps.identity): what a rerun reuses
    kept["overrides"] = json.dumps(dict(trial.get("overrides") or {}), sort_keys=True, default=str)
    return store.trial_row(sweep=spec.name, trial_id=trial_id, config=config, result=kept,
                           status=status, error=error, env=env)


def finished_row(
    spec: SweepSpec, trial: Any, error: bool, env: Mapping[str, Any], timing: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``trials`` row of a Tune ``Trial`` that ended (``error``: it raised)."""
    result = trial.last_result or {}
    return trial_row(spec, trial.trial_id, trial_of(trial.config), result, trial_status(result, error),
                     _error_text(trial) if error else result.get("error"), env, timing)


def logged_history(trial: Any) -> list[dict[str, Any]]:
    """A Tune ``Trial``'s ``history`` rows rebuilt from Tune's own log of its results (``result.json`` in
    its folder in storage), each stamped with when Tune saw the report; none when there is no log."""
    filesystem, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
    try:
        with filesystem.open_input_stream(f"{folder}/{_RESULT_FILE}") as src:
            text = src.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, OSError):
        return []
    rows = []
    for line in text.splitlines():
        try:
            result = json.loads(line)
        except ValueError:  # a line cut short by a crash
            continue
        for row in history_rows(trial.trial_id, result) if isinstance(result, dict) else []:
            row["reported_at"] = result.get("timestamp", row["reported_at"])
            rows.append(row)
    return rows


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _error_text(trial: Any) -> str:
    err = None
    try:
        err = trial.get_error()
    except Exception:  # the error file may be on storage that is gone; the status still says failed
        pass
    text = str(err) if err is not None else "trial failed"
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:2000] if lines else text[:2000]


def drop_checkpoints(spec: SweepSpec, trial: Any) -> None:
    """Delete a completed trial's ``checkpoint_*`` folders: Tune's (in-process trials) and, for Ray Train
    trials, the Train run's. Best effort: a failure is logged, never raised (the row is already written)."""
    try:
        places = [(trial.storage.storage_filesystem, trial.storage.trial_fs_path)]
        if spec.num_workers > 0:
            places.append(resolve(join(train_storage(spec), trial_name(spec, trial.trial_id))))
        for filesystem, folder in places:
            for info in filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
                if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
                    filesystem.delete_dir(info.path)
    except Exception as e:  # cleanup only: never fail a sweep over it
        log.warning("trial %s: could not delete its checkpoints (%r)", trial.trial_id, e)


def _timing(trial: Any) -> dict[str, Any]:
    start = getattr(trial.run_metadata, "start_time", None)
    return {"started_at": start, "finished_at": time.time(),
            "trial_wall_s": (time.time() - start) if start else None}


class ResultsCallback(tune.Callback):
    """Writes history rows on every result and a trials row when a trial ends (driver side), and logs a
    line per trial end with the sweep's progress (``sweeps.progress``: ``12/36 done, 2 running, 0 failed,
    ETA 4 min``). ``total``: the trials the sweep runs (None = unknown)."""

    def __init__(self, spec: SweepSpec, env: Mapping[str, Any], total: int | None = None) -> None:
        self.spec, self.env = spec, dict(env)
        self.progress = SweepProgress(total)

    def on_trial_start(self, iteration, trials, trial, **info):
        # Tune changes the trial's status after its callbacks: the others running, plus this one
        self.progress.started(count_trials(trials, trial)[1] + 1)
        log.info("trial %s (%s) started", trial.trial_id, describe(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rows = history_rows(trial.trial_id, result)
        if rows:
            store.write_rows(self.spec.results, "history", rows)

    def _finish(self, trials, trial, error: bool) -> None:
        row = finished_row(self.spec, trial, error, self.env, _timing(trial))
        store.write_rows(self.spec.results, "trials", [row])
        done, running, failed = count_trials(trials, trial, error=error)
        self.progress.started(running + 1)
        self.progress.ended(row.get("trial_wall_s"))
        metrics = ""
        if _is_num(row.get("rsum")) and math.isfinite(row["rsum"]):
            metrics = f", test rsum {row['rsum']:.1f}, R@1 i→t {row.get('r1_i2t', float('nan')):.1f}"
        wall = row.get("trial_wall_s")
        log.info("trial %s (%s): %s%s%s; %s", trial.trial_id, describe(trial.config), row["status"], metrics,
                 f" in {wall:.0f} s" if wall else "", self.progress.line(done, running, failed))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trials, trial, error=False)
        if not self.spec.keep_checkpoints:
            drop_checkpoints(self.spec, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trials, trial, error=True)
