"""The Ray Tune API the sweeps use, in one place: the only module of ``sweeps`` that imports ``ray.tune``.

Ray's APIs are renamed often (Train V2 in 2.5x changed how Train runs inside Tune; ``docs/ray-notes.md``),
so the other modules use these names (``from sweeps import tune_api as tune``) and an upgrade of Ray is
checked against this list. Checked against Ray 2.60.0 (``sweeps.session.RAY_VERSION_TESTED``). The Ray
Train side is :mod:`sweeps.raytrain`, the only module that imports ``ray.train``.
"""

from __future__ import annotations

# Experiment tracking (sweeps/tracking.py); importing it does not import mlflow, its constructor does.
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune import (
    Callback,
    Checkpoint,
    CheckpointConfig,
    ExperimentAnalysis,
    FailureConfig,
    RunConfig,
    TuneConfig,
    Tuner,
    get_checkpoint,
    get_context,
    grid_search,
    report,
    sample_from,
    with_parameters,
    with_resources,
)

# Forwards rank 0's Train reports to Tune (Train inside a Tune function trainable; docs/ray-notes.md, 1).
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

__all__ = [
    "ASHAScheduler", "CHECKPOINT_PATH_KEY", "Callback", "Checkpoint", "CheckpointConfig",
    "ExperimentAnalysis", "FailureConfig", "MLflowLoggerCallback", "OptunaSearch", "RunConfig", "TuneConfig",
    "TuneReportCallback", "Tuner", "get_checkpoint", "get_context", "grid_search", "report", "sample_from",
    "with_parameters", "with_resources",
]
