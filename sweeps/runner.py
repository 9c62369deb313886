"""Running a sweep: Tune's grid or a searcher over the trainable, resume, and reconcile.

Shape of a sweep (``sweeps/ablation.py`` spells it out)::

    spec = SweepSpec(name="ablation", base=base_dict, results="results/ablation", storage=...)
    trials = [trial_config(resolve_trial(spec, method, seed)) for seed in ... for method in ...]
    with ray_session("local"):              # or "auto" to join a cluster started by `ray up`
        run_sweep(spec, trials=trials)      # or search_alg=..., scheduler=..., num_samples=...

:func:`run_sweep` re-writes every finished trial's row after ``fit`` (:func:`reconcile`), so a driver killed
between a trial's end and its write loses nothing; the same reconciliation rebuilds the rows of a damaged
results file, which the driver first moves aside (``sweeps.folder.read_recovering``). Ray's state is read
back only from a storage folder no other user can write (``sweeps.folder.check_private``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyarrow import fs as pafs

import store
from store.fs import exists, resolve
from sweeps import folder, records, session, tracking
from sweeps import tune_api as tune
from sweeps.spec import TRIAL_KEY, SweepSpec, experiment_path, train_storage, trial_of
from sweeps.trainable import trainable

log = logging.getLogger(__name__)


def grid_space(trials: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Tune's grid over ready trial configs (``sweeps.spec.trial_config``), run in the order given.

    Trial ids follow that order (``<experiment>_00000``, ...): the ablation lists its trials seed by seed,
    methods within a seed, which is Tune's own order for ``{"method": grid_search(methods), "seed":
    grid_search(seeds)}``.
    """
    return {TRIAL_KEY: tune.grid_search([dict(t) for t in trials])}


def run_sweep(
    spec: SweepSpec,
    *,
    trials: Sequence[Mapping[str, Any]] = (),
    search_alg: Any = None,
    scheduler: Any = None,
    num_samples: int = 1,
    verbose: int = 1,
    experiment: str | None = None,
):
    """Run (or resume) the sweep on the connected Ray; returns Tune's ``ResultGrid``.

    Args:
        spec: the sweep.
        trials: the ready trial configs of a grid (:func:`grid_space`); empty for a searcher's sweep.
        search_alg: a searcher whose suggestions are ready trial configs (``sweeps.searchers``).
        scheduler: e.g. ``sweeps.searchers.make_asha``.
        num_samples: trials a searcher suggests.
        verbose: Tune's console output (0 = geomix's own log lines only).
        experiment: the Tune experiment's name under ``spec.storage`` (default ``spec.name``; an
            extension of an ablation runs as its own experiment, :func:`experiment_for`).

    Re-running the same command resumes: ``Tuner.can_restore(storage/name)`` -> ``Tuner.restore`` with
    ``resume_unfinished=True`` (trials that were running restart from their last checkpoint; errored trials
    stay errored and keep their ``failed`` row). The searcher (with its Optuna study), the scheduler and
    the results callback come back from the experiment's own checkpoint.

    Raises:
        sweeps.folder.UntrustedStorage: a local storage folder (or the experiment to restore) that another
            user can write, before anything is unpickled from it.
    """
    path = experiment_path(spec, experiment)
    restore = tune.Tuner.can_restore(path)
    # Tuner.restore unpickles tuner.pkl; a fresh run's state would be refused on its first resume
    folder.check_private(spec.storage, *((path, train_storage(spec)) if restore else ()))
    _existing(spec.results)  # damaged results files moved aside before the callback appends
    cluster = session.cluster_resources()
    resources = session.trial_resources(spec.num_workers, spec.gpus_per_worker, cluster)
    fn = tune.with_resources(tune.with_parameters(trainable, spec=spec), resources)
    if restore:
        log.warning("resuming sweep %s from %s", spec.name, path)
        if spec.mlflow is not None:
            log.warning("a resumed experiment keeps the tracking it was started with (--mlflow applies to "
                        "the trials of new experiments)")
        tuner = tune.Tuner.restore(path, trainable=fn, resume_unfinished=True, resume_errored=False)
    else:
        concurrent = session.max_concurrent_trials(spec.num_workers, spec.gpus_per_worker, cluster,
                                                   spec.max_concurrent)
        tuner = tune.Tuner(
            fn,
            param_space=grid_space(trials) if trials else {},
            tune_config=tune.TuneConfig(
                search_alg=search_alg,
                scheduler=scheduler,
                num_samples=num_samples,
                max_concurrent_trials=concurrent,
                reuse_actors=True,  # a new trial in a warm actor skips process start and imports
                trial_dirname_creator=lambda t: t.trial_id,
                trial_name_creator=lambda t: f"{trial_of(t.config)['method']}-{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=experiment or spec.name,
                storage_path=spec.storage if "://" in spec.storage else str(Path(spec.storage).resolve()),
                callbacks=[records.ResultsCallback(spec, store.environment_info(),
                                                   total=len(trials) if trials else num_samples),
                           *tracking.callbacks(spec)],
                # Tune retries the trials that run in their actor; Train retries its worker groups itself
                failure_config=tune.FailureConfig(max_failures=spec.max_failures
                                                  if session.in_trial_actor(spec.num_workers) else 0),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                verbose=verbose,
            ),
        )
    grid = tuner.fit()
    reconcile(spec, path, check=False)  # the state this process has just written
    return grid


def reconcile(
    spec: SweepSpec, path: str | None = None, *, keys: set[str] | None = None, analysis: Any = None,
    check: bool = True,
) -> int:
    """Write a ``trials`` row for every finished trial of the experiment at ``path`` that has none
    (idempotent: rows merge by ``trial_id``), from Ray's experiment state. Covers a driver killed after a
    trial ended but before its row was written, and the rows of a damaged file moved aside. While a
    damaged ``history`` file is set aside in the folder, the missing ``history`` rows of these trials are
    rebuilt too, from Tune's log of their results.

    Args:
        keys: only the trials with these ``trial_key`` (None: all).
        analysis: the experiment's ``ExperimentAnalysis``, when the caller has loaded (and checked) it.
        check: refuse a storage folder another user can write (``sweeps.folder.check_private``).

    Returns:
        The number of ``trials`` rows written.
    """
    path = path or experiment_path(spec)
    if analysis is None:
        if check:
            folder.check_private(spec.storage, path)
        analysis = tune.ExperimentAnalysis(path)  # its state may hold cloudpickle: checked above
    env = store.environment_info()
    have, logged = _existing(spec.results)
    finished = [t for t in analysis.trials if t.status in ("TERMINATED", "ERROR")
                and (keys is None or trial_of(t.config).get("key") in keys)]
    rows = []
    for trial in finished:
        error = trial.status == "ERROR"
        if not error and not spec.keep_checkpoints:  # a driver killed before its callback deleted them
            records.drop_checkpoints(spec, trial)
        if trial.trial_id not in have:
            rows.append(records.finished_row(spec, trial, error, env,
                                             {"started_at": getattr(trial.run_metadata, "start_time", None)}))
    if rows:
        store.write_rows(spec.results, "trials", rows)
        log.info("wrote %d trials rows from Ray's experiment state (%s)", len(rows), path)
    if store.damaged_files(spec.results, "history"):
        lost = [r for t in finished for r in records.logged_history(t)
                if (r["trial_id"], int(r["step"]), r["split"]) not in logged]
        if lost:
            store.write_rows(spec.results, "history", lost)
            log.warning("rebuilt %d history rows from Tune's log of the trials' results (%s)", len(lost),
                        path)
    return len(rows)


def _existing(results: str) -> tuple[set[str], set[tuple[str, int, str]]]:
    """The trial ids and the history keys the results folder holds (damaged files moved aside first)."""
    try:
        trials, history = folder.read_recovering(results)
    except (ValueError, FileNotFoundError):
        return set(), set()
    ids = set(trials["trial_id"]) if "trial_id" in trials else set()
    steps = zip(history["trial_id"], history["step"], history["split"])
    return ids, {(str(t), int(s), str(p)) for t, s, p in steps}


def experiment_for(spec: SweepSpec, todo: Sequence[Mapping[str, Any]], fresh: bool) -> str:
    """The Tune experiment of an ablation's ``todo`` trials: the sweep's name for a fresh folder, else
    ``<name>-<hash of the todo trials' keys>`` (an extension gets its own experiment; Tune cannot add
    trials to a finished grid, and an experiment left in the storage folder by another run must never be
    restored in place of these trials: the hash names exactly this set)."""
    filesystem, path = resolve(experiment_path(spec))
    if fresh and not exists(filesystem, path, "dir"):
        return spec.name
    digest = hashlib.sha256(",".join(sorted(t["key"] for t in todo)).encode()).hexdigest()[:8]
    return f"{spec.name}-{digest}"


def resume_unfinished(spec: SweepSpec, wanted_keys: set[str], verbose: int = 1) -> int:
    """Resume every Tune experiment of this sweep in ``spec.storage`` that has unfinished trials, all of
    them trials this run wants (a driver killed mid-sweep: its running trials continue from their last
    checkpoint), after writing the missing rows of its finished trials that this run wants
    (:func:`reconcile`). Returns the number of experiments resumed."""
    resumed = 0
    filesystem, root = resolve(spec.storage)
    if not exists(filesystem, root, "dir"):
        return 0
    for info in filesystem.get_file_info(pafs.FileSelector(root, recursive=False)):
        name = info.base_name
        ours = name == spec.name or name.startswith(spec.name + "-")
        if info.type != pafs.FileType.Directory or not ours:
            continue
        path = experiment_path(spec, name)
        if not tune.Tuner.can_restore(path):
            continue
        folder.check_private(spec.storage, path, train_storage(spec))
        analysis = tune.ExperimentAnalysis(path)
        # finished trials of this run without a row (a driver killed before writing it, a damaged file)
        reconcile(spec, path, keys=wanted_keys, analysis=analysis)
        unfinished = [t for t in analysis.trials if t.status not in ("TERMINATED", "ERROR")]
        keys = {trial_of(t.config).get("key") for t in unfinished}
        if unfinished and keys <= wanted_keys:
            run_sweep(spec, verbose=verbose, experiment=name)
            resumed += 1
    return resumed
