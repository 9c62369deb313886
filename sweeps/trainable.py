"""The Tune trainable: one trial, run in the Tune trial actor or as a Ray Train run, reporting to Tune.

A trial's Tune config carries its resolved TrainConfig as a nested dict (``sweeps.spec.trial_of``);
:func:`trainable` builds the TrainConfig from it once (``geomix.config.from_dict``) and either

* runs ``geomix.train.run`` in the trial's own process (``num_workers=0``, the laptop default: no worker
  group start-up per trial), reporting through Tune with Tune checkpoints (:class:`TuneHooks`), or
* runs a Ray Train ``TorchTrainer`` through :func:`sweeps.raytrain.fit` (``num_workers >= 1``, the cluster
  path) with a deterministic Train run name per trial (so a restarted trial restores its Train run),
  ``FailureConfig(max_failures, controller_failure_limit)``, and a ``TuneReportCallback`` that forwards
  rank 0's metrics to Tune.

Either way its last report is the summary ``geomix.train.run`` returned, with ``final=True``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import store
from geomix import logs, train
from geomix.config import TrainConfig, from_dict, merge
from sweeps import raytrain, session
from sweeps import tune_api as tune
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


def clean_metrics(metrics: Mapping[str, Any], last: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars only, ``done`` renamed, and the sweep metric carried forward so every Tune result has it
    (Tune rejects results that lack the scheduler's metric)."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if k == "done":
            out[FINAL_KEY] = bool(v)
        elif isinstance(v, (bool, int, float, str)) or v is None:
            out[k] = v
        elif hasattr(v, "item"):  # 0-d tensors / numpy scalars
            out[k] = v.item()
    for key in (SWEEP_METRIC, TIME_ATTR):
        if key not in out and key in last:
            out[key] = last[key]
    out.setdefault(TIME_ATTR, 0)
    out.setdefault(SWEEP_METRIC, float("nan"))
    return out


class TuneHooks:
    """``geomix.train.run`` hooks for an in-process trial: reports and checkpoints go through Tune."""

    def __init__(self) -> None:
        self.last: dict[str, Any] = {}

    def report(self, metrics: Mapping[str, Any], checkpoint_dir: str | None = None) -> None:
        self.last = clean_metrics(metrics, self.last)
        if checkpoint_dir:
            tune.report(dict(self.last), checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))
        else:
            tune.report(dict(self.last))

    def node_id(self) -> str:
        return session.node_id()

    def initial_checkpoint(self) -> str | None:
        ckpt = tune.get_checkpoint()
        # to_directory() downloads a checkpoint held on s3:// / gs:// storage to local disk
        return ckpt.to_directory() if ckpt is not None else None


class ReportCallback(tune.TuneReportCallback):
    """A ``TuneReportCallback`` that also renames ``done`` and carries the sweep metric forward."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, Any] = {}

    def after_report(self, run_context, metrics, checkpoint):
        self._last = clean_metrics(metrics[0], self._last)
        out = dict(self._last)
        if checkpoint:
            out[tune.CHECKPOINT_PATH_KEY] = checkpoint.path
        self._training_actor_item_queue.put(out)


def trainable(config: dict[str, Any], spec: SweepSpec) -> None:
    """Tune function trainable: run the trial whose resolved TrainConfig its Tune ``config`` carries."""
    trial_id = tune.get_context().get_trial_id()
    logs.quiet_ray_checkpoint_logs()
    nested = trial_of(config)["config"]
    if spec.num_workers == 0:
        summary, last = _run_in_process(nested, spec, trial_id)
    else:
        summary, last = _run_ray_train(nested, spec, trial_id)
    final = clean_metrics({**last, **summary}, last)
    final[FINAL_KEY] = True
    final.setdefault(STATUS_KEY, "completed")
    tune.report(final)


def _run_in_process(
    nested: Mapping[str, Any], spec: SweepSpec, trial_id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    # Scratch space outside the trial folder: Ray syncs that folder to storage while the trial runs, and
    # would trip over the run's half-written temp files. Checkpoints reach storage through tune.report,
    # embeddings through keep_embeddings; the rest goes with the folder.
    scratch = Path(tempfile.mkdtemp(prefix=f"geomix-{trial_id}-"))
    try:
        cfg = from_dict(TrainConfig, merge(nested, {"run": {"out_dir": str(scratch)}}))
        hooks = TuneHooks()
        summary = dict((spec.run_fn or train.run)(cfg, hooks=hooks))
        if cfg.run.save_embeddings:
            if kept := store.keep_embeddings(scratch, spec.results, embeddings_name(trial_id)):
                summary["embeddings_path"] = kept
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary["node_ids"] = summary.get("node_ids") or session.node_id()
    summary["num_workers"] = 0  # in-process: no Ray Train worker group
    return summary, hooks.last


def _run_ray_train(
    nested: Mapping[str, Any], spec: SweepSpec, trial_id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = from_dict(TrainConfig, nested)
    emb_name = embeddings_name(trial_id)
    result = raytrain.fit(
        cfg,
        num_workers=spec.num_workers,
        use_gpu=spec.gpus_per_worker > 0,
        storage_path=train_storage(spec),
        name=trial_name(spec, trial_id),
        callbacks=[ReportCallback()],
        max_failures=spec.max_failures,
        controller_failure_limit=spec.controller_failure_limit,
        embeddings_to=(spec.results, emb_name),
    )
    summary = dict(result.return_value or {})
    if cfg.run.save_embeddings and store.has_file(spec.results, emb_name):
        summary["embeddings_path"] = emb_name
    summary.setdefault("num_workers", spec.num_workers)
    return summary, clean_metrics(result.metrics or {}, {})
