"""Ray Train V2 wrapper: the geomix training loop as a ``TorchTrainer`` worker, :func:`fit`, and the callback
that forwards a run's reports to the Tune trial that started it (:class:`TuneForwarder`).

This is the only module of ``sweeps`` that imports ``ray.train`` (its API has been renamed often; the Tune
side is :mod:`sweeps.tune_api`). Checked against Ray 2.60: ``ray.train.torch.TorchTrainer``,
``ray.train.{ScalingConfig, RunConfig, FailureConfig, Checkpoint, UserCallback, report, get_context,
get_checkpoint}``; ``ScalingConfig(num_workers=0)`` runs the loop in-process (Train V2 local mode, no worker
group: saves ~10 s of start-up per trial on a laptop).

Every Train run starts fresh processes (its controller, a placement-group cleaner, a synchronisation actor,
the workers), and each imports what its pickled arguments name. So this module is **light to import**: the
controller unpickles :class:`TuneForwarder` from it, and it must not pull in Tune, Optuna, MLflow or the
results store (``docs/ray-notes.md``, item 19). ``torch`` and ``store`` are imported where they are used.

Example::

    result = fit(cfg, num_workers=2, use_gpu=False, storage_path="/tmp/runs", name="trial-0")
    result.metrics["test_r1_i2t"], result.checkpoint
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ray
import ray.train

from geomix import train
from geomix.config import TrainConfig, from_dict, merge, to_dict
from geomix.logs import quiet_ray_checkpoint_logs

#: Ray Train settings of every run ``fit`` starts (a user's own environment variables win). Train's controller
#: polls its workers every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (2 s by default): a trial waits up to one
#: interval to be seen started and again to be seen finished (``benchmarks/raytrain_startup.py``).
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


class _RayHooks:
    """:class:`geomix.train.Hooks` that forward to ``ray.train``.

    ``ray.train.report`` is a barrier across workers, so every rank reports (``all_ranks``); only rank
    0's metrics and checkpoint are kept by Ray.
    """

    all_ranks = True

    def __init__(self, restore_dir: str) -> None:
        self._restore_dir = restore_dir

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(_plain(metrics), checkpoint=checkpoint)

    def initial_checkpoint(self) -> str | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        # Copied to a folder this worker owns (removed with its scratch folder): the storage copy may be
        # remote or cleaned up.
        return checkpoint.to_directory(self._restore_dir)

    def node_id(self) -> str | None:
        if not ray.is_initialized():
            return None
        return ray.get_runtime_context().get_node_id()


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """Ray stores reported metrics as-is; keep them plain Python numbers and strings."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if hasattr(v, "item"):
            v = v.item()
        out[k] = v
    return out


def scalar_metrics(
    metrics: Mapping[str, Any], last: Mapping[str, Any], *, done_key: str, carry: Mapping[str, Any]
) -> dict[str, Any]:
    """A report as Tune takes it: scalars only (0-d tensors and numpy scalars as Python numbers), ``done``
    renamed to ``done_key`` (Tune stops a trial on ``done=True``), and every ``carry`` key carried forward
    from ``last`` when this report lacks it, else set to its default (Tune rejects a result without the
    scheduler's metric)."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if k == "done":
            out[done_key] = bool(v)
        elif isinstance(v, (bool, int, float, str)) or v is None:
            out[k] = v
        elif hasattr(v, "item"):
            out[k] = v.item()
    for key, default in carry.items():
        if key not in out:
            out[key] = last.get(key, default)
    return out


class TuneForwarder(ray.train.UserCallback):
    """Forwards rank 0's reports to the Tune trial that started the run: what Ray's ``TuneReportCallback``
    does, with the report cleaned for Tune (:func:`scalar_metrics`), ``extra`` added to every report and the
    persisted checkpoint's path under ``checkpoint_key``.

    It runs in the Train controller, a fresh process per trial that unpickles it: it is defined here, not
    next to the trainable, so that the controller imports only ``ray.train`` and geomix's config modules, not
    Tune's search and tracking modules (ray-notes 19). ``queue``: the Tune session's queue to the trial
    (``TuneReportCallback()._training_actor_item_queue``, made in the trial's own process).
    """

    def __init__(self, queue: Any, *, done_key: str, carry: Mapping[str, Any], checkpoint_key: str,
                 extra: Mapping[str, Any] | None = None) -> None:
        self._queue = queue
        self._done_key, self._carry, self._checkpoint_key = done_key, dict(carry), checkpoint_key
        self._extra = dict(extra or {})
        self._last: dict[str, Any] = {}

    def after_report(self, run_context, metrics, checkpoint):
        self._last = scalar_metrics(metrics[0], self._last, done_key=self._done_key, carry=self._carry)
        out = {**self._last, **self._extra}
        if checkpoint:
            out[self._checkpoint_key] = checkpoint.path
        self._queue.put(out)


def portable_error(error: BaseException) -> BaseException:
    """``error`` itself when it survives a pickle round trip, else a ``RuntimeError`` whose message is the
    error's traceback, ending in its type and message (the line a trial's row keeps).

    Ray pickles a worker's exception to hand it to the controller (and a trial's to the driver), and Tune
    copies a trial's exception and its ``__cause__`` chain (``copy.copy``, the same protocol). An exception
    class whose ``__init__`` takes other arguments than its ``args`` (``geomix.checks.ConfigError``) cannot
    be rebuilt, and the failure was reported as that ``TypeError`` instead of the error (ray-notes 19).
    Raise the result ``from None``: a cause is copied too."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError("".join(traceback.format_exception(error)).rstrip())


@contextlib.contextmanager
def portable_errors() -> Iterator[None]:
    """Re-raise an error of the block as :func:`portable_error` makes it (``from None``), so that its
    message survives Ray's pickling; an error that pickles is re-raised as it is."""
    try:
        yield
    except Exception as e:
        error = portable_error(e)
        if error is e:
            raise
        raise error from None


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker entry: build the :class:`TrainConfig` from ``config`` (a :func:`to_dict` dict,
    plus ``embeddings_to``) and run the trial.

    Every worker runs :func:`geomix.train.run`; Ray has initialised ``torch.distributed`` (gloo / nccl)
    when there is more than one worker. Checkpoints are written to a worker-local folder and handed to
    ``ray.train.report``, which persists them under the run's storage path; a restarted run resumes from
    ``ray.train.get_checkpoint()``.
    """
    quiet_ray_checkpoint_logs()
    config = dict(config)
    embeddings_to = config.pop("embeddings_to", None)
    rank = ray.train.get_context().get_world_rank()
    scratch = tempfile.mkdtemp(prefix=f"geomix-rank{rank}-")
    with portable_errors():  # Ray pickles a worker's error for the controller
        try:
            # Resume is Ray's job (get_checkpoint); never pick up a stale local folder.
            run = {"resume": False, "progress": False}
            if config["run"].get("out_dir") is None or rank != 0:
                # Checkpoints and embeddings go to a local folder; Ray copies reported checkpoints to storage.
                run["out_dir"] = scratch
            cfg = from_dict(TrainConfig, merge(config, {"run": run}))
            train.run(cfg, hooks=_RayHooks(os.path.join(scratch, "restore")))
            if embeddings_to and rank == 0 and cfg.run.save_embeddings:
                import store  # only here: the results store is not needed to train

                # rank 0's folder is local to its node: put the file where the sweep's results are
                store.keep_embeddings(cfg.run.out_dir, *embeddings_to)
        finally:
            # every epoch's checkpoint is already in Ray's storage (ray.train.report copies it), and the
            # restored checkpoint was read at the start
            shutil.rmtree(scratch, ignore_errors=True)


def fit(
    cfg: TrainConfig,
    *,
    num_workers: int,
    use_gpu: bool,
    storage_path: str,
    name: str,
    callbacks: Sequence[Any] = (),
    max_failures: int = 0,
    controller_failure_limit: int = 2,
    embeddings_to: tuple[str, str] | None = None,
) -> ray.train.Result:
    """Run one trial as a Ray Train ``TorchTrainer``.

    Args:
        cfg: the trial config.
        num_workers: training workers (DDP ranks); 0 runs the loop in this process (Train V2 local mode).
        use_gpu: one GPU per worker and the NCCL backend; otherwise CPU workers with gloo.
        storage_path: where Ray persists checkpoints and results (a local folder, or shared storage
            such as ``s3://`` on a multi-node cluster).
        name: the Train run name; a deterministic name lets a restarted trial resume from
            ``(storage_path, name)``.
        callbacks: Train ``UserCallback`` objects (e.g. :class:`TuneForwarder`). They run in the run's
            controller, a fresh process that imports the modules they are defined in.
        max_failures: worker-group failures to recover from (from the last checkpoint).
        controller_failure_limit: controller failures tolerated before failing (finite, so a scheduling
            problem fails instead of hanging; ``docs/ray-notes.md``, item 3).
        embeddings_to: ``(results folder or URI, relative name)``: with ``run.save_embeddings`` rank 0
            copies its final ``embeddings_test.npz`` there (its own folder is local to its node).

    Returns:
        The ``ray.train.Result``: ``metrics`` is rank 0's last report (``done=True``, ``status``,
        ``test_*``), ``checkpoint`` the last reported checkpoint.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers={num_workers} is invalid: allowed is an integer >= 0")
    if num_workers > 1 and cfg.optim.batch_size % num_workers:
        raise ValueError(
            f"optim.batch_size={cfg.optim.batch_size} is invalid with num_workers={num_workers}: allowed "
            "is a multiple of the number of workers"
        )
    # Workers may start in another working directory: make every local path absolute here.
    cfg_dict = to_dict(cfg)
    cfg_dict["model"]["cache_dir"] = _absolute(cfg.model.cache_dir)
    if cfg.run.out_dir:
        cfg_dict["run"]["out_dir"] = _absolute(cfg.run.out_dir)
    for key in ("path", "val_path", "test_path", "image_root"):
        if cfg_dict["data"].get(key):
            cfg_dict["data"][key] = _absolute(cfg_dict["data"][key])
    if "://" not in storage_path:
        storage_path = _absolute(storage_path)
    if embeddings_to is not None:
        folder, rel = embeddings_to
        cfg_dict["embeddings_to"] = [folder if "://" in folder else _absolute(folder), rel]
    for key, value in TRAIN_ENV.items():  # read by Train's controller, which the driver's environment reaches
        os.environ.setdefault(key, value)
    from ray.train.torch import TorchConfig, TorchTrainer  # imports torch: only where a run starts

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg_dict,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu and num_workers > 0),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(
                max_failures=max_failures, controller_failure_limit=controller_failure_limit
            ),
        ),
    )
    return trainer.fit()


def _absolute(path: str) -> str:
    return str(Path(os.path.expanduser(path)).resolve())
