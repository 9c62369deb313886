"""The Tune trainable: one trial, run in the Tune trial actor or as a Ray Train run, reporting to Tune.

A trial's Tune config carries its resolved TrainConfig as a nested dict (``sweeps.spec.trial_of``);
:func:`trainable` builds the TrainConfig from it once (``geomix.config.from_dict``) and either

* runs ``geomix.train.run`` in the trial's own process (``num_workers=0``, the laptop default: no worker
  group start-up per trial), reporting through Tune with Tune checkpoints (:class:`TuneHooks`), or
* runs a Ray Train ``TorchTrainer`` through :func:`sweeps.raytrain.fit` (``num_workers >= 2``, the cluster
  path) with a deterministic Train run name per trial (so a restarted trial restores its Train run),
  ``FailureConfig(max_failures, controller_failure_limit)``, and a callback that forwards rank 0's metrics
  to Tune (:func:`report_callback`), or
* runs a 1-worker trial's one worker in the trial actor itself (``num_workers=1``, when the actor holds
  the worker's CPU and GPU: ``sweeps.session.holds_worker``): the same worker function, reports and
  metrics as a 1-worker Train run, without its ~20 s of controller and worker start-up per trial. Its
  checkpoints are Tune's, and Tune retries a failed trial ``max_failures`` times from the last one, as for
  in-process trials (``docs/ray-notes.md``, item 19).

Either way its last report is the summary ``geomix.train.run`` returned, with ``final=True``. Every report
also carries the config the trial trains with (``sweeps.records.TRAINED_KEY``, as JSON), so its row records
what it ran however the trial reached this actor (fresh, restored by ``Tuner.restore``, or reconciled).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import store
from geomix import logs, train
from geomix.config import TrainConfig, from_dict, merge, to_dict
from sweeps import raytrain, session
from sweeps import tune_api as tune
from sweeps.records import TRAINED_KEY
from sweeps.spec import (
    FINAL_KEY,
    STATUS_KEY,
    SWEEP_METRIC,
    TIME_ATTR,
    SweepSpec,
    embeddings_name,
    train_storage,
    trial_name,
    trial_of,
)

#: Keys every Tune result has: the last report's value, or this default before the first one.
_CARRY = {SWEEP_METRIC: math.nan, TIME_ATTR: 0}


def clean_metrics(metrics: Mapping[str, Any], last: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars only, ``done`` renamed, and the sweep metric carried forward so every Tune result has it
    (Tune rejects results that lack the scheduler's metric)."""
    return raytrain.scalar_metrics(metrics, last, done_key=FINAL_KEY, carry=_CARRY)


def trained_json(cfg: TrainConfig) -> str:
    """The config a trial trains with, as its reports carry it (:data:`sweeps.records.TRAINED_KEY`)."""
    return json.dumps(to_dict(cfg), sort_keys=True, default=str)


class TuneHooks:
    """``geomix.train.run`` hooks for an in-process trial: reports and checkpoints go through Tune.
    ``trained``: :func:`trained_json` of the trial's config, added to every report. ``restore_dir``: where
    the checkpoint to resume from is copied (a folder the caller removes; default: a new temp folder)."""

    def __init__(self, trained: str | None = None, restore_dir: str | None = None) -> None:
        self.last: dict[str, Any] = {}
        self.trained = trained
        self.restore_dir = restore_dir

    def report(self, metrics: Mapping[str, Any], checkpoint_dir: str | None = None) -> None:
        self.last = clean_metrics(metrics, self.last)
        if self.trained is not None:
            self.last[TRAINED_KEY] = self.trained
        if checkpoint_dir:
            tune.report(dict(self.last), checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))
        else:
            tune.report(dict(self.last))

    def node_id(self) -> str:
        return session.node_id()

    def initial_checkpoint(self) -> str | None:
        # the last checkpoint reported in this trial, else the one it was restored with
        ckpt = tune.get_checkpoint()
        # to_directory() downloads a checkpoint held on s3:// / gs:// storage to local disk
        return ckpt.to_directory(self.restore_dir) if ckpt is not None else None


def report_callback(trained: str | None = None) -> raytrain.TuneForwarder:
    """The Train callback of a Ray Train trial: rank 0's reports to this Tune trial, cleaned like
    :func:`clean_metrics`, with the trial's config (``trained``: :func:`trained_json`) and the checkpoint's
    path. Made in the trial actor (it takes the Tune session's queue), run in the Train controller."""
    # Tune's own queue from a Train run to this trial (TuneReportCallback checks that this is a Tune trial)
    queue = tune.TuneReportCallback()._training_actor_item_queue
    return raytrain.TuneForwarder(queue, done_key=FINAL_KEY, carry=_CARRY,
                                  checkpoint_key=tune.CHECKPOINT_PATH_KEY,
                                  extra={TRAINED_KEY: trained} if trained is not None else None)


def trainable(config: dict[str, Any], spec: SweepSpec) -> None:
    """Tune function trainable: run the trial whose resolved TrainConfig its Tune ``config`` carries."""
    trial_id = tune.get_context().get_trial_id()
    logs.quiet_ray_checkpoint_logs()
    # The trial's own config, as Tune handed it to this actor (restored from the experiment's state after a
    # restart), never the driver's current sweep: this is what trains, and what its row records.
    cfg = from_dict(TrainConfig, trial_of(config)["config"])
    trained = trained_json(cfg)
    with raytrain.portable_errors():  # Ray pickles the trial's error for the driver
        if spec.num_workers == 0 or session.holds_worker(spec.num_workers, _held()):
            summary, last = _run_in_process(cfg, spec, trial_id, trained)
        else:
            summary, last = _run_ray_train(cfg, spec, trial_id, trained)
    final = clean_metrics({**last, **summary}, last)
    final[FINAL_KEY] = True
    final[TRAINED_KEY] = trained
    final.setdefault(STATUS_KEY, "completed")
    tune.report(final)


def _held() -> dict[str, float]:
    """What this trial actor holds (Tune's record of the trial's resources)."""
    return dict(tune.get_context().get_trial_resources().required_resources)


def _run_in_process(
    cfg: TrainConfig, spec: SweepSpec, trial_id: str, trained: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``geomix.train.run`` in this trial actor, reports and checkpoints through Tune: an in-process trial
    (``num_workers=0``), or a 1-worker trial's worker (``num_workers=1``: what
    ``raytrain.train_loop_per_worker`` runs in a 1-worker Train run, world size 1, no process group). A
    failure (an error, or the process dying) is retried by Tune from the trial's last checkpoint,
    ``spec.max_failures`` times (``sweeps.runner``)."""
    # Scratch space outside the trial folder: Ray syncs that folder to storage while the trial runs, and
    # would trip over the run's half-written temp files. Checkpoints reach storage through tune.report,
    # embeddings through keep_embeddings; the rest goes with the folder.
    scratch = Path(tempfile.mkdtemp(prefix=f"geomix-{trial_id}-"))
    try:
        # run.out_dir is a run-only setting (not part of a trial's identity): the row keeps the trial's own
        cfg = from_dict(TrainConfig, merge(to_dict(cfg), {"run": {"out_dir": str(scratch)}}))
        # the copy of the checkpoint it resumes from goes with the scratch folder too
        hooks = TuneHooks(trained, restore_dir=str(scratch / "restore"))
        summary = dict((spec.run_fn or train.run)(cfg, hooks=hooks))
        if cfg.run.save_embeddings:
            if kept := store.keep_embeddings(scratch, spec.results, embeddings_name(trial_id)):
                summary["embeddings_path"] = kept
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary["node_ids"] = summary.get("node_ids") or session.node_id()
    summary["num_workers"] = spec.num_workers  # 0: no Ray Train worker group; 1: one worker, world size 1
    return summary, hooks.last


def _run_ray_train(
    cfg: TrainConfig, spec: SweepSpec, trial_id: str, trained: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    emb_name = embeddings_name(trial_id)
    result = raytrain.fit(
        cfg,
        num_workers=spec.num_workers,
        use_gpu=spec.gpus_per_worker > 0,
        storage_path=train_storage(spec),
        name=trial_name(spec, trial_id),
        callbacks=[report_callback(trained)],
        max_failures=spec.max_failures,
        controller_failure_limit=spec.controller_failure_limit,
        embeddings_to=(spec.results, emb_name),
    )
    summary = dict(result.return_value or {})
    if cfg.run.save_embeddings and store.has_file(spec.results, emb_name):
        summary["embeddings_path"] = emb_name
    summary.setdefault("num_workers", spec.num_workers)
    return summary, clean_metrics(result.metrics or {}, {})
