"""Search algorithms: Optuna TPE through Tune (told about ASHA-stopped trials as PRUNED), ASHA, the study.

The only module of ``sweeps`` that imports ``optuna``. The searcher suggests ready trial configs: the
define-by-run space (``sweeps/space.py``) resolves each sample's TrainConfig on the driver.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import ray.cloudpickle

from geomix.checks import check_choice
from sweeps import tune_api as tune
from sweeps.records import trial_status
from sweeps.spec import SWEEP_METRIC, SWEEP_MODE, TIME_ATTR, SweepSpec

log = logging.getLogger(__name__)


def optuna_db(spec: SweepSpec) -> Path:
    """``<results>/optuna.db``, or ``results/<name>/optuna.db`` when results is a URI (SQLite is a file)."""
    folder = Path(spec.results) if "://" not in spec.results else Path("results") / spec.name
    return (folder / "optuna.db").resolve()


def optuna_storage(spec: SweepSpec) -> optuna.storages.RDBStorage:
    """The sweep's Optuna study storage (SQLite), so ``optuna-dashboard sqlite:///<db>`` and
    ``optuna.importance`` read it; study name = sweep name."""
    db = optuna_db(spec)
    db.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{db}")


class PrunedAwareOptunaSearch(tune.OptunaSearch):
    """``OptunaSearch`` that tells Optuna about ASHA-stopped trials as PRUNED.

    Ray 2.60's ``OptunaSearch.on_trial_complete`` tells Optuna COMPLETE with the partial metric of a trial
    that ASHA stopped, which biases TPE towards configs that look good early; it reports intermediate values
    at ``training_iteration``, which restarts at 1 after a restore; and it saves its state with plain
    pickle, which cannot hold a define-by-run closure. All three are fixed here (pinned to Ray 2.60's
    private ``_ot_trials`` / ``_ot_study`` / ``_completed_trials``: re-check on a Ray upgrade;
    tests/test_search.py covers it).
    """

    def save(self, checkpoint_path: str) -> None:
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


#: The Optuna samplers :func:`make_searcher` offers: TPE (the search's) and random (a baseline for it).
SAMPLERS = ("tpe", "random")


def make_sampler(
    kind: str = "tpe", *, seed: int = 0, startup_trials: int | None = None
) -> optuna.samplers.BaseSampler:
    """A seeded Optuna sampler: ``tpe`` (its first ``startup_trials`` suggestions are random; None = Optuna's
    default, 10) or ``random``."""
    check_choice("sampler", kind, SAMPLERS)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = {} if startup_trials is None else {"n_startup_trials": startup_trials}
    return optuna.samplers.TPESampler(seed=seed, **startup)


def make_searcher(
    space: Callable[[Any], dict[str, Any]], spec: SweepSpec, *, seed: int = 0, sampler: str = "tpe",
    startup_trials: int | None = None,
) -> PrunedAwareOptunaSearch:
    """TPE (or another of :data:`SAMPLERS`, :func:`make_sampler`) over the define-by-run ``space``
    (``space(trial) -> {"trial": trial config}``, ``sweeps.space.make_space``), its study in
    :func:`optuna_storage` under the sweep's name."""
    return PrunedAwareOptunaSearch(
        space=space,
        metric=SWEEP_METRIC,
        mode=SWEEP_MODE,
        sampler=make_sampler(sampler, seed=seed, startup_trials=startup_trials),
        study_name=spec.name,
        storage=optuna_storage(spec),
    )


def make_asha(max_t: int, *, grace_period: int = 1, reduction_factor: float = 2) -> Any:
    """ASHA on our own ``epoch`` counter. ``max_t`` is one past the last epoch so ASHA never cuts the
    final report (with the test metrics) that follows the last epoch's evaluation."""
    return tune.ASHAScheduler(
        time_attr=TIME_ATTR,
        metric=SWEEP_METRIC,
        mode=SWEEP_MODE,
        max_t=max_t + 1,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
    )
