"""The one module that talks to Ray Tune / Ray Train / Optuna (checked against Ray 2.60.0, Optuna 5.0).

Ray's APIs have been renamed often (Train V2 in 2.5x changed how Train runs inside Tune), so every Ray call
of the sweeps lives here and the entry scripts (``ablation.py``, ``search.py``) stay argument parsing plus
a handful of calls. See ``docs/ray-notes.md`` of the team for the traps this module works around.

Shape of a sweep::

    spec = SweepSpec(name="ablation", base=base_dict, results="results/ablation", storage=...)
    start_ray("local")                      # or "auto" to join a cluster started by `ray up`
    grid = run_sweep(spec, param_space={"method": tune.grid_search([...]), "seed": ...})

Each Tune trial is a *function trainable* whose config is ``{"method", "seed", "overrides"}``
(``overrides`` maps dotted TrainConfig keys to values). It resolves the trial's ``TrainConfig`` from the
sweep's base config and either

* runs ``geomix.train.run`` in the trial's own process (``num_workers=0``, the laptop default: no worker
  group start-up per trial), reporting through Tune with Tune checkpoints, or
* runs a Ray Train ``TorchTrainer`` through ``geomix.raytrain.fit`` (``num_workers >= 1``, the cluster
  path) with a deterministic Train run name per trial (so a restarted trial restores its Train run),
  ``FailureConfig(max_failures, controller_failure_limit)``, and a ``TuneReportCallback`` that forwards
  rank 0's metrics to Tune.

Results: :class:`ResultsCallback` writes ``history.parquet`` on every report and a ``trials.parquet`` row
when a trial ends, through ``geomix.results.write_rows`` (atomic, merged by key), and :func:`run_sweep`
re-writes every finished trial's row after ``fit`` so a driver killed between a trial's end and its write
loses nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomix import config as C

log = logging.getLogger(__name__)

RAY_VERSION_TESTED = "2.60.0"
# Custom resource each trial's own actor holds in the Ray Train path: the Train worker group is a separate
# placement group Tune does not account for, so the trial actor must not take a CPU the workers need
# (2.01 CPUs never fit on a 2-CPU machine). A local Ray started here declares it; cluster.yaml declares it
# on the head node. Without it (a foreign cluster), the trial actor takes a 0.01-CPU share instead.
TRIAL_SLOT = "geomix_trial_slot"
_SLOTS = 1000
FINAL_KEY = "final"  # Tune treats a reported ``done=True`` as "stop this trial now", so it is renamed.
STATUS_KEY = "status"  # set by geomix.train in its final report: "completed" or "diverged"
SWEEP_METRIC = "val_rsum"
SWEEP_MODE = "max"
TIME_ATTR = "epoch"  # not training_iteration: that restarts at 1 after a restore (ray-notes 12)


# ----------------------------------------------------------------------------------------------------------
# the sweep's description


@dataclass(frozen=True)
class SweepSpec:
    """Everything a trial needs besides its own ``{"method", "seed", "overrides"}`` config.

    Attributes:
        name: sweep name: Tune experiment name, Optuna study name, ``sweep`` column.
        base: the shared base TrainConfig as a nested dict (validated by :func:`resolve_trial`).
        results: folder or ``s3://`` / ``gs://`` URI for ``trials.parquet`` / ``history.parquet``.
        storage: Ray storage root (local folder or URI); the Tune experiment is ``storage/name``.
        methods: method id -> dotted override dict (ablation rows); a trial's ``method`` picks one.
        num_workers: 0 = in-process ``geomix.train.run``; N = Ray Train with N workers per trial.
        gpus_per_worker: GPUs per worker (or for the in-process trial).
        max_concurrent: cap on running trials; None = what the cluster's CPUs/GPUs hold.
        max_failures: retries of a trial's worker group (Train) or of the trial (Tune) after a crash.
        controller_failure_limit: Train controller retries; finite so a scheduling bug fails, not hangs.
        run_fn: in-process trial function, ``run(cfg, hooks=...) -> dict``; None = ``geomix.train.run``.
        keep_checkpoints: keep a finished trial's checkpoints in storage. Off by default: they exist to
            resume a trial that has not finished (~100 MB each for the tiny model, with optimizer state),
            and a finished trial is never rerun; its metrics and embeddings are in the results folder.
    """

    name: str
    base: Mapping[str, Any]
    results: str
    storage: str
    methods: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    num_workers: int = 0
    gpus_per_worker: float = 0.0
    max_concurrent: int | None = None
    max_failures: int = 1
    controller_failure_limit: int = 2
    run_fn: Callable[..., Mapping[str, Any]] | None = None
    keep_checkpoints: bool = False

    def validate(self) -> SweepSpec:
        if not self.name or any(c in self.name for c in "/\\ "):
            C._fail("name", self.name, "a non-empty name without '/', '\\' or spaces")
        C.check_range("num_workers", self.num_workers, 0, None)
        C.check_range("gpus_per_worker", self.gpus_per_worker, 0.0, None)
        if self.num_workers > 0 and self.gpus_per_worker not in (0, 1):
            C._fail("gpus_per_worker", self.gpus_per_worker, "0 or 1 with Ray Train workers (one GPU each)")
        if self.max_concurrent is not None:
            C.check_range("max_concurrent", self.max_concurrent, 1, None)
        C.check_range("max_failures", self.max_failures, 0, None)
        C.check_range("controller_failure_limit", self.controller_failure_limit, 0, None)
        return self


def unflatten(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """``{"loss.w_m2": 0.1}`` -> ``{"loss": {"w_m2": 0.1}}`` (values kept as they are)."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {key!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return out


def resolve_trial(spec: SweepSpec, trial_config: Mapping[str, Any]) -> C.TrainConfig:
    """The validated TrainConfig of one trial: base <- method row <- trial overrides <- method, seed.

    Raises:
        ValueError: naming the method or the bad dotted field.
    """
    method = trial_config.get("method", "search")
    data = dict(spec.base)
    if spec.methods:
        if method not in spec.methods:
            C._fail("method", method, "one of " + ", ".join(spec.methods))
        data = C.merge(data, unflatten(spec.methods[method]))
    data = C.merge(data, unflatten(trial_config.get("overrides") or {}))
    data["method"] = method
    data = C.merge(data, {"run": {"seed": int(trial_config.get("seed", 0)), "progress": False}})
    try:
        return C.from_dict(C.TrainConfig, data).validate()
    except ValueError as e:
        raise ValueError(f"method {method!r}: {e}") from None


# ----------------------------------------------------------------------------------------------------------
# Ray start-up and resources


def start_ray(
    address: str | None = "local", *, num_cpus: int | None = None, num_gpus: int | None = None
) -> Any:
    """Start a local Ray (``address`` None/"local") with this machine's resources, or join ``address``.

    The dashboard stays on (bound to 127.0.0.1): Train's placement-group cleaner needs the State API it
    serves, and without it trials stopped by ASHA leak their worker groups and the sweep hangs.

    Returns:
        Ray's ``RayContext`` (``.dashboard_url``), or None when Ray was already initialised.
    """
    import ray
    import ray.cloudpickle

    # `sweeps` is a folder of scripts beside the installed `geomix`, not an installed package: ship its code
    # to the trial actors by value so they need neither the driver's working directory nor a sys.path.
    ray.cloudpickle.register_pickle_by_value(importlib.import_module("sweeps"))
    # a checkpoint per epoch forces experiment snapshots often; that is intended here, not a bottleneck
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return None
    if address in (None, "", "local"):
        context = ray.init(
            address="local",
            num_cpus=num_cpus if num_cpus is not None else os.cpu_count(),
            num_gpus=num_gpus,
            resources={TRIAL_SLOT: _SLOTS},
            include_dashboard=True,
            logging_level=logging.WARNING,
        )
    else:
        context = ray.init(address=address, logging_level=logging.WARNING)
    if ray.__version__ != RAY_VERSION_TESTED:
        log.warning("sweeps were checked against Ray %s; this is Ray %s", RAY_VERSION_TESTED, ray.__version__)
    return context


@contextlib.contextmanager
def ray_session(address: str | None = "local", **kwargs: Any) -> Iterator[Any]:
    """``start_ray`` for the length of a ``with`` block; shuts Ray down afterwards only if this block
    started it (a script's ``main()`` called from a notebook or a test leaves no Ray behind)."""
    import ray

    started = not ray.is_initialized()
    context = start_ray(address, **kwargs)
    try:
        yield context
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


def trial_resources(
    num_workers: int, gpus_per_worker: float, cluster: Mapping[str, float]
) -> dict[str, float]:
    """What the trial actor itself holds. In-process trials hold what training needs (1 CPU, GPUs);
    Ray Train trials hold only a slot, the worker group reserves its own CPUs/GPUs."""
    if num_workers == 0:
        res = {"CPU": 1.0}
        if gpus_per_worker:
            res["GPU"] = gpus_per_worker
        return res
    if cluster.get(TRIAL_SLOT, 0) >= 1:
        return {"CPU": 0.0, TRIAL_SLOT: 1.0}
    return {"CPU": 0.01}


def max_concurrent_trials(
    num_workers: int, gpus_per_worker: float, cluster: Mapping[str, float], requested: int | None = None
) -> int:
    """Trials that fit at once: cluster CPUs // CPUs per trial, and likewise for GPUs (at least 1).

    A requested cap is kept, with a warning when it is more than fits now: on an autoscaling cluster the
    GPU nodes it needs may still be launching. (Trials beyond what can ever be placed would wait on worker
    groups; the Train controller's finite failure limit turns that into a failure, not a hang.)
    """
    per_trial_cpu = max(1, num_workers)
    fits = max(1, int(cluster.get("CPU", 1) // per_trial_cpu))
    if gpus_per_worker:
        per_trial_gpu = gpus_per_worker * max(1, num_workers)
        fits = min(fits, max(1, int(cluster.get("GPU", 0) // per_trial_gpu)))
    if requested is None:
        return fits
    if requested > fits:
        log.warning("--max-concurrent %d is more than the cluster holds now (%d)", requested, fits)
    return requested


# ----------------------------------------------------------------------------------------------------------
# reporting: geomix.train hooks -> Tune


def _clean_metrics(metrics: Mapping[str, Any], last: Mapping[str, Any]) -> dict[str, Any]:
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
        from ray import tune

        self.last = _clean_metrics(metrics, self.last)
        if checkpoint_dir:
            tune.report(dict(self.last), checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))
        else:
            tune.report(dict(self.last))

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def initial_checkpoint(self) -> str | None:
        from ray import tune

        ckpt = tune.get_checkpoint()
        # to_directory() downloads a checkpoint held on s3:// / gs:// storage to local disk
        return ckpt.to_directory() if ckpt is not None else None


def _report_callback():
    """A ``TuneReportCallback`` that also renames ``done`` and carries the sweep metric forward."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

    class _ReportCallback(TuneReportCallback):
        def __init__(self) -> None:
            super().__init__()
            self._last: dict[str, Any] = {}

        def after_report(self, run_context, metrics, checkpoint):
            self._last = _clean_metrics(metrics[0], self._last)
            out = dict(self._last)
            if checkpoint:
                out[CHECKPOINT_PATH_KEY] = checkpoint.path
            self._training_actor_item_queue.put(out)

    return _ReportCallback()


# ----------------------------------------------------------------------------------------------------------
# the trainable


def trial_name(spec: SweepSpec, trial_id: str) -> str:
    """Deterministic Train run name per trial, so a restarted trial restores its Train run."""
    return f"{spec.name}-{trial_id}"


def embeddings_name(trial_id: str) -> str:
    """Where a trial's final test embeddings go, relative to the results folder."""
    return f"{_results_module().EMBEDDINGS_DIR}/{trial_id}.npz"


def _trainable(config: dict[str, Any], spec: SweepSpec) -> None:
    import ray
    from ray import tune

    cfg = resolve_trial(spec, config)
    ctx = tune.get_context()
    importlib.import_module("geomix.logs").quiet_ray_checkpoint_logs()
    if spec.num_workers == 0:
        # Scratch space outside the trial folder: Ray syncs that folder to storage while the trial runs,
        # and would trip over the run's half-written temp files. Checkpoints reach storage through
        # tune.report, embeddings through keep_embeddings; the rest goes with the folder.
        scratch = Path(tempfile.mkdtemp(prefix=f"geomix-{ctx.get_trial_id()}-"))
        try:
            cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(scratch)))
            hooks = TuneHooks()
            run_fn = spec.run_fn or importlib.import_module("geomix.train").run
            summary = dict(run_fn(cfg, hooks=hooks))
            last = hooks.last
            if cfg.run.save_embeddings:
                name = embeddings_name(ctx.get_trial_id())
                if kept := _results_module().keep_embeddings(scratch, spec.results, name):
                    summary["embeddings_path"] = kept
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        summary["node_ids"] = summary.get("node_ids") or ray.get_runtime_context().get_node_id()
        summary["num_workers"] = 0  # in-process: no Ray Train worker group
    else:
        raytrain = importlib.import_module("geomix.raytrain")
        emb_name = embeddings_name(ctx.get_trial_id())
        result = raytrain.fit(
            cfg,
            num_workers=spec.num_workers,
            use_gpu=spec.gpus_per_worker > 0,
            storage_path=_join(spec.storage, "train"),
            name=trial_name(spec, ctx.get_trial_id()),
            callbacks=[_report_callback()],
            max_failures=spec.max_failures,
            controller_failure_limit=spec.controller_failure_limit,
            embeddings_to=(spec.results, emb_name),
        )
        summary = dict(result.return_value or {})
        last = _clean_metrics(result.metrics or {}, {})
        if cfg.run.save_embeddings and _results_module().has_file(spec.results, emb_name):
            summary["embeddings_path"] = emb_name
        summary.setdefault("num_workers", spec.num_workers)
    final = _clean_metrics({**last, **summary}, last)
    final[FINAL_KEY] = True
    final.setdefault(STATUS_KEY, "completed")
    tune.report(final)


# ----------------------------------------------------------------------------------------------------------
# Optuna


def optuna_db(spec: SweepSpec) -> Path:
    """``<results>/optuna.db``, or ``results/<name>/optuna.db`` when results is a URI (SQLite is a file)."""
    folder = Path(spec.results) if "://" not in spec.results else Path("results") / spec.name
    return (folder / "optuna.db").resolve()


def optuna_storage(spec: SweepSpec):
    """The sweep's Optuna study storage (SQLite), so ``optuna-dashboard sqlite:///<db>`` and
    ``optuna.importance`` read it; study name = sweep name."""
    import optuna

    db = optuna_db(spec)
    db.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{db}")


def make_searcher(space: Callable[[Any], dict[str, Any]], spec: SweepSpec, *, seed: int = 0):
    """``OptunaSearch`` (TPE, define-by-run ``space``) that tells Optuna about ASHA-stopped trials as PRUNED.

    Ray 2.60's ``OptunaSearch.on_trial_complete`` tells Optuna COMPLETE with the partial metric of a trial
    that ASHA stopped, which biases TPE towards configs that look good early; it reports intermediate values
    at ``training_iteration``, which restarts at 1 after a restore; and it saves its state with plain
    pickle, which cannot hold a define-by-run closure. All three are fixed in this subclass (pinned to
    Ray 2.60's private ``_ot_trials`` / ``_ot_study`` / ``_completed_trials``: re-check on a Ray upgrade;
    tests/test_search.py covers it).
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class PrunedAwareOptunaSearch(OptunaSearch):
        def save(self, checkpoint_path: str) -> None:
            # The base class uses plain pickle, which cannot hold a closure as the define-by-run space.
            import ray.cloudpickle

            with open(checkpoint_path, "wb") as f:
                ray.cloudpickle.dump(self.__dict__.copy(), f)

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            value, step = result.get(self.metric), int(result.get(TIME_ATTR, 0))
            last = self.__dict__.setdefault("_last_step", {})
            if (trial_id in self._completed_trials or value is None or not math.isfinite(value)
                    or step <= last.get(trial_id, -1)):  # the final report repeats the last epoch
                return
            last[trial_id] = step
            self._ot_trials[trial_id].report(float(value), step)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            status = trial_status(result, error)
            if status == "completed" or trial_id in self._completed_trials:
                return super().on_trial_complete(trial_id, result=result, error=error)
            state = {
                "early_stopped": optuna.trial.TrialState.PRUNED,
                "diverged": optuna.trial.TrialState.FAIL,
                "failed": optuna.trial.TrialState.FAIL,
            }[status]
            try:
                self._ot_study.tell(self._ot_trials[trial_id], None, state=state)
            except Exception as exc:  # Optuna refuses a second tell; never let that kill the sweep
                log.warning("optuna tell for %s failed: %s", trial_id, exc)
            self._completed_trials.add(trial_id)

    return PrunedAwareOptunaSearch(
        space=space,
        metric=SWEEP_METRIC,
        mode=SWEEP_MODE,
        sampler=optuna.samplers.TPESampler(seed=seed),
        study_name=spec.name,
        storage=optuna_storage(spec),
    )


def make_asha(max_t: int, *, grace_period: int = 1, reduction_factor: float = 2):
    """ASHA on our own ``epoch`` counter. ``max_t`` is one past the last epoch so ASHA never cuts the
    final report (with the test metrics) that follows the last epoch's evaluation."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr=TIME_ATTR,
        metric=SWEEP_METRIC,
        mode=SWEEP_MODE,
        max_t=max_t + 1,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
    )


# ----------------------------------------------------------------------------------------------------------
# results: rows for geomix.results


def trial_status(result: Mapping[str, Any] | None, error: bool) -> str:
    """completed / diverged (the trial's own final report), failed (raised), else early_stopped."""
    if error:
        return "failed"
    if result and result.get(FINAL_KEY) and result.get(STATUS_KEY) in ("completed", "diverged"):
        return str(result[STATUS_KEY])
    return "early_stopped"


_HISTORY_KEYS = ("epoch", "step", "samples_seen", "train_loss")
_TRIAL_KEYS = (
    "epoch", "steps", "samples_seen", "wall_s", "samples_per_s", "num_workers", "device", "node_ids",
    "embeddings_path",
)


def history_rows(trial_id: str, result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One Tune result -> ``history`` rows (``geomix.results.history_rows``), without Tune's own keys."""
    report = {k: v for k, v in result.items()
              if (k in _HISTORY_KEYS or k.startswith(("val_", "test_", "loss_", "lam_"))) and _is_num(v)}
    if "step" not in report:
        return []
    rows = _results_module().history_rows(trial_id, report)
    for row in rows:  # when the driver saw it: tells a resumed trial's rows from rows of a rerun
        row["reported_at"] = time.time()
    return rows


def trial_row(
    spec: SweepSpec, trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any] | None,
    status: str, error: str | None, env: Mapping[str, Any], timing: Mapping[str, Any],
) -> dict[str, Any]:
    """One ``trials`` row (``geomix.results.trial_row``): the trial's resolved config, status, final test
    metrics, last validation metrics, timings, node ids, versions."""
    result = dict(result or {})
    try:
        nested = C.to_dict(resolve_trial(spec, config))
    except ValueError as e:  # recorded, never raised: the trial already ran (or failed) with this config
        nested = {"method": config.get("method", "search"), "run": {"seed": config.get("seed", 0)}}
        error = error or str(e)
    if result.get("steps") is None and "step" in result:
        result["steps"] = result["step"]
    kept = {k: v for k, v in result.items()
            if k in _TRIAL_KEYS or (k.startswith(("test_", "val_")) and _is_num(v))}
    kept.update(timing)
    kept["overrides"] = json.dumps(dict(config.get("overrides") or {}), sort_keys=True, default=str)
    return _results_module().trial_row(sweep=spec.name, trial_id=trial_id, config=nested, result=kept,
                                       status=status, error=error, env=env)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _results_module():
    return importlib.import_module("geomix.results")


def _error_text(trial) -> str:
    err = None
    try:
        err = trial.get_error()
    except Exception:  # the error file may be on storage that is gone; the status still says failed
        pass
    text = str(err) if err is not None else "trial failed"
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:2000] if lines else text[:2000]


def _make_results_callback(spec: SweepSpec, env: Mapping[str, Any]):
    from ray import tune

    class ResultsCallback(tune.Callback):
        """Writes history rows on every result and a trials row when a trial ends (driver side)."""

        def __init__(self) -> None:
            self.spec, self.env = spec, dict(env)
            self.finished = 0

        def on_trial_start(self, iteration, trials, trial, **info):
            log.info("trial %s (%s) started", trial.trial_id, _describe(trial.config))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            rows = history_rows(trial.trial_id, result)
            if rows:
                _results_module().write_rows(self.spec.results, "history", rows)

        def _finish(self, trial, error: bool) -> None:
            result = trial.last_result or {}
            status = trial_status(result, error)
            row = trial_row(self.spec, trial.trial_id, trial.config, result, status,
                            _error_text(trial) if error else result.get("error"), self.env,
                            _timing(trial))
            _results_module().write_rows(self.spec.results, "trials", [row])
            self.finished += 1
            done = ""
            if _is_num(row.get("rsum")) and math.isfinite(row["rsum"]):
                done = f", test rsum {row['rsum']:.1f}, R@1 i→t {row.get('r1_i2t', float('nan')):.1f}"
            wall = row.get("trial_wall_s")
            log.info("trial %s (%s): %s%s%s [%d finished]", trial.trial_id, _describe(trial.config), status,
                     done, f" in {wall:.0f} s" if wall else "", self.finished)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finish(trial, error=False)
            if not self.spec.keep_checkpoints:
                _drop_checkpoints(self.spec, trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._finish(trial, error=True)

    return ResultsCallback()


def _drop_checkpoints(spec: SweepSpec, trial) -> None:
    """Delete a completed trial's ``checkpoint_*`` folders: Tune's (in-process trials) and, for Ray Train
    trials, the Train run's. Best effort: a failure is logged, never raised (the row is already written)."""
    from pyarrow import fs as pafs

    try:
        places = [(trial.storage.storage_filesystem, trial.storage.trial_fs_path)]
        if spec.num_workers > 0:
            places.append(_results_module()._resolve(_join(_join(spec.storage, "train"),
                                                           trial_name(spec, trial.trial_id))))
        for filesystem, folder in places:
            for info in filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
                if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
                    filesystem.delete_dir(info.path)
    except Exception as e:  # cleanup only: never fail a sweep over it
        log.warning("trial %s: could not delete its checkpoints (%r)", trial.trial_id, e)


def _describe(config: Mapping[str, Any]) -> str:
    """``method, seed N`` for a log line (a search trial's config has its sampled overrides too)."""
    return f"{config.get('method', 'trial')}, seed {config.get('seed', 0)}"


def _timing(trial) -> dict[str, Any]:
    start = getattr(trial.run_metadata, "start_time", None)
    return {"started_at": start, "finished_at": time.time(),
            "trial_wall_s": (time.time() - start) if start else None}


# ----------------------------------------------------------------------------------------------------------
# running


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name if "://" in root else str(Path(root).resolve() / name)


def experiment_path(spec: SweepSpec) -> str:
    return _join(spec.storage, spec.name)


def run_sweep(
    spec: SweepSpec,
    *,
    param_space: Mapping[str, Any] | None = None,
    search_alg: Any = None,
    scheduler: Any = None,
    num_samples: int = 1,
    verbose: int = 1,
):
    """Run (or resume) the sweep on the connected Ray; returns Tune's ``ResultGrid``.

    Re-running the same command resumes: ``Tuner.can_restore(storage/name)`` -> ``Tuner.restore`` with
    ``resume_unfinished=True`` (trials that were running restart from their last checkpoint; errored trials
    stay errored and keep their ``failed`` row). The searcher (with its Optuna study), the scheduler and
    the results callback come back from the experiment's own checkpoint.
    """
    import ray
    from ray import tune

    spec.validate()
    cluster = ray.cluster_resources()
    resources = trial_resources(spec.num_workers, spec.gpus_per_worker, cluster)
    trainable = tune.with_resources(tune.with_parameters(_trainable, spec=spec), resources)
    path = experiment_path(spec)
    if tune.Tuner.can_restore(path):
        log.warning("resuming sweep %s from %s", spec.name, path)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        concurrent = max_concurrent_trials(spec.num_workers, spec.gpus_per_worker, cluster,
                                           spec.max_concurrent)
        tuner = tune.Tuner(
            trainable,
            param_space=dict(param_space or {}),
            tune_config=tune.TuneConfig(
                search_alg=search_alg,
                scheduler=scheduler,
                num_samples=num_samples,
                max_concurrent_trials=concurrent,
                reuse_actors=True,  # a new trial in a warm actor skips process start and imports
                trial_dirname_creator=lambda t: t.trial_id,
                trial_name_creator=lambda t: f"{t.config.get('method', 'trial')}-{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=spec.storage if "://" in spec.storage else str(Path(spec.storage).resolve()),
                callbacks=[_make_results_callback(spec, _results_module().environment_info())],
                failure_config=tune.FailureConfig(max_failures=spec.max_failures if spec.num_workers == 0
                                                  else 0),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                verbose=verbose,
            ),
        )
    grid = tuner.fit()
    reconcile(spec, path)
    return grid


def reconcile(spec: SweepSpec, path: str | None = None) -> int:
    """Write a ``trials`` row for every finished trial of the experiment at ``path`` (idempotent: rows merge
    by ``trial_id``). Covers a driver killed after a trial ended but before its row was written.

    Returns:
        The number of rows written.
    """
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(path or experiment_path(spec))
    env = _results_module().environment_info()
    rows = []
    for trial in analysis.trials:
        if trial.status not in ("TERMINATED", "ERROR"):
            continue
        error = trial.status == "ERROR"
        result = trial.last_result or {}
        if not error and not spec.keep_checkpoints:  # a driver killed before its callback deleted them
            _drop_checkpoints(spec, trial)
        rows.append(trial_row(spec, trial.trial_id, trial.config, result, trial_status(result, error),
                              _error_text(trial) if error else result.get("error"), env,
                              {"started_at": getattr(trial.run_metadata, "start_time", None)}))
    existing = _existing_trial_ids(spec.results)
    rows = [r for r in rows if r["trial_id"] not in existing]
    if rows:
        _results_module().write_rows(spec.results, "trials", rows)
    return len(rows)


def _existing_trial_ids(results: str) -> set[str]:
    try:
        trials, _ = _results_module().read_results(results)
    except (ValueError, FileNotFoundError):
        return set()
    return set(trials["trial_id"]) if "trial_id" in trials else set()


# ----------------------------------------------------------------------------------------------------------
# sweep files (YAML) and the checks that run before Ray starts


_SWEEP_KEYS = {"name", "seeds", "base", "methods", "smoke_test", "search"}
_PATH_FIELDS = (("data", "path"), ("data", "val_path"), ("data", "test_path"), ("data", "image_root"),
                ("model", "cache_dir"))


def load_sweep(path: str | Path, overrides: list[str] = (), *, smoke_test: bool = False) -> dict[str, Any]:
    """Read a sweep YAML: ``name``, ``seeds``, ``base`` (TrainConfig diff), ``methods`` (id -> dotted diff),
    ``search`` (search settings), ``smoke_test`` (a diff of all of these applied by ``--smoke-test``).
    ``key=value`` overrides apply to ``base``. Relative paths in ``base`` become absolute (trials run in
    their own working directories).

    Raises:
        ValueError: unknown top-level keys, or malformed blocks, naming them.
    """
    raw = C.load_yaml(path)
    unknown = sorted(set(raw) - _SWEEP_KEYS)
    if unknown:
        raise ValueError(f"unknown sweep key(s) {', '.join(unknown)} in {path}: allowed are "
                         f"{', '.join(sorted(_SWEEP_KEYS))}")
    sweep = {k: raw.get(k) for k in _SWEEP_KEYS}
    if smoke_test and raw.get("smoke_test"):
        smoke = raw["smoke_test"]
        bad = sorted(set(smoke) - (_SWEEP_KEYS - {"smoke_test"}))
        if bad:
            raise ValueError(f"unknown smoke_test key(s) {', '.join(bad)}: allowed are seeds, base, methods, "
                             "search, name")
        for key, value in smoke.items():
            if key == "methods" and isinstance(value, list):  # a subset of the rows, by id
                rows = sweep["methods"] or {}
                missing = [m for m in value if m not in rows]
                if missing:
                    raise ValueError(f"smoke_test.methods {missing} are not in methods: allowed "
                                     f"{', '.join(rows)}")
                sweep["methods"] = {m: rows[m] for m in value}
            elif isinstance(value, dict) and isinstance(sweep.get(key), dict):
                sweep[key] = C.merge(sweep[key], value)
            else:
                sweep[key] = value
    for key in ("base", "methods", "search"):
        if sweep[key] is not None and not isinstance(sweep[key], dict):
            C._fail(key, sweep[key], "a mapping")
        sweep[key] = dict(sweep[key] or {})
    sweep["base"] = C.merge(sweep["base"], C.parse_overrides(overrides))
    for section, field in _PATH_FIELDS:
        block = sweep["base"].get(section)
        value = block.get(field) if isinstance(block, dict) else None
        if field == "cache_dir" and value is None:
            value = C.ModelConfig().cache_dir
        if isinstance(value, str) and "://" not in value:
            sweep["base"].setdefault(section, {})[field] = str(Path(value).expanduser().resolve())
    for method, row in sweep["methods"].items():
        if not isinstance(row, dict):
            C._fail(f"methods.{method}", row, "a mapping of dotted TrainConfig keys to values")
    seeds = sweep["seeds"] if sweep["seeds"] is not None else [0]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        C._fail("seeds", seeds, "a non-empty list of integers")
    sweep["seeds"] = seeds
    sweep["name"] = sweep["name"] or Path(path).stem
    return sweep


def validate_trials(spec: SweepSpec, trial_configs: list[Mapping[str, Any]]) -> list[C.TrainConfig]:
    """Resolve and validate every trial's TrainConfig before Ray starts (a bad field is named)."""
    spec.validate()
    return [resolve_trial(spec, t) for t in trial_configs]


def prepare_base_models(cfgs: list[C.TrainConfig]) -> None:
    """Build the embedded base model of each distinct (model, data) recipe once, on the driver, before the
    trials start: concurrent trials would otherwise each pre-train the same base model at once."""
    from geomix import models

    seen = set()
    for cfg in cfgs:
        if cfg.model.pretrained != "embedded-base":
            continue
        key = C.config_hash({"model": C.to_dict(cfg.model), "data": C.to_dict(cfg.data)})
        if key not in seen:
            seen.add(key)
            t0 = time.perf_counter()
            models.create(cfg.model, data_cfg=cfg.data, device="cpu")
            log.info("base model ready (%.1f s)", time.perf_counter() - t0)


def add_ray_arguments(parser) -> None:
    """The arguments every sweep script shares (results, storage, cluster, resources)."""
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the base TrainConfig")
    parser.add_argument("--smoke-test", action="store_true", help="the config's short CI version")
    parser.add_argument("--name", help="sweep name (default: the config's name); also the Optuna study name")
    parser.add_argument("--results", help="results folder or s3:// gs:// URI (default results/<name>)")
    parser.add_argument("--storage", help="Ray storage: local folder or s3:// gs:// URI (default "
                        "<results>/ray when results is local); multi-node Ray needs shared storage")
    parser.add_argument("--address", default="local",
                        help="'local' starts Ray with this machine's resources; 'auto' joins a running "
                        "cluster (ray up cluster.yaml)")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="Ray Train workers per trial; 0 = in-process (the laptop default)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0,
                        help="GPUs of an in-process trial (may be fractional), or of each Ray Train worker "
                        "(0 or 1)")
    parser.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2, 3),
                        help="Ray Tune's console output: 0 = geomix's one line per trial start and end "
                        "(default), 1 = also Tune's status tables, 2-3 = every reported result")
    parser.add_argument("--max-concurrent", type=int, default=None,
                        help="running trials at once (default: what the cluster's CPUs/GPUs hold)")
    parser.add_argument("--max-failures", type=int, default=1, help="retries of a crashed trial")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep finished trials' checkpoints in storage (default: delete them once the "
                        "trial's row is written; they are only needed to resume an unfinished trial)")


def spec_from_args(args, sweep: Mapping[str, Any], *, methods: Mapping[str, Any] | None = None) -> SweepSpec:
    name = args.name or sweep["name"]
    results = args.results or str(Path("results") / name)
    storage = args.storage or (_join(results, "ray") if "://" not in results else None)
    if storage is None:
        raise ValueError(f"--storage is required when --results={results!r} is a URI: allowed is a local "
                         "folder or an s3:// gs:// URI")
    return SweepSpec(
        name=name, base=sweep["base"], results=results if "://" in results else str(Path(results).resolve()),
        storage=storage, methods=dict(methods or {}), num_workers=args.num_workers,
        gpus_per_worker=args.gpus_per_worker, max_concurrent=args.max_concurrent,
        max_failures=args.max_failures, keep_checkpoints=args.keep_checkpoints,
    ).validate()


def print_summary(results: str, metric_cols: tuple[str, ...] = ("rsum", "r1_i2t", "r1_t2i")) -> None:
    """Print the paper-style table (``analysis.tables``) of a results folder, or a plain group-by when the
    analysis code is not importable."""
    from geomix.results import read_results

    trials, _ = read_results(results)
    try:
        from analysis import tables

        table = tables.table_retrieval(tables.prepare(trials))
        if table is not None:
            from analysis._render import render

            print(render(table, "markdown"))
            return
    except ImportError as e:
        log.info("analysis.tables not importable (%s); printing a plain summary", e)
    cols = [c for c in metric_cols if c in trials.columns]
    print(trials.groupby(["method", "status"])[cols].agg(["mean", "std", "count"]).round(2).to_string())
