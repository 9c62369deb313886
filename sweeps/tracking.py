"""Experiment tracking through Ray Tune's own logger callbacks: TensorBoard always, MLflow on ``--mlflow``.

- **TensorBoard.** Tune adds its ``TBXLoggerCallback`` to every run by itself when ``tensorboardX`` is
  installed (it is, in the ``sweep`` extra), so each trial's reports land beside its Tune state, in
  ``<storage>/<experiment>/<trial>/events.out.tfevents.*``. ``tensorboard --logdir <storage>`` shows them
  (``tensorboard`` is in the ``dashboard`` extra).
- **MLflow.** ``--mlflow`` adds Tune's ``MLflowLoggerCallback`` (``sweeps/mlflowlog.py``): one MLflow run
  per trial (named as the trial), the trial's config as parameters, every reported result as metrics at
  its step, the run's end status. The MLflow experiment is the sweep's name. ``--mlflow`` alone tracks into
  ``sqlite:///<results>/mlflow.db`` (MLflow 3 keeps its old ``file:`` store in maintenance mode);
  ``--mlflow URI`` into a tracking server (``http://HOST:5000``, the choice on a cluster) or a database.
  The callback runs on the driver only, so a SQLite file is never written by two processes.

The tracking URI is a run-only setting of the sweep (``SweepSpec.mlflow``), not part of any trial's
identity. A resumed experiment (``Tuner.restore``) keeps the callbacks it was started with.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

BARE = "<results>/mlflow.db"  # the value of a bare ``--mlflow``
# Tracking URIs MLflow 3 writes to (``+driver`` suffixes allowed, e.g. ``postgresql+psycopg2``).
SCHEMES = ("sqlite", "http", "https", "databricks", "postgresql", "mysql", "mssql")
_URI = re.compile(r"^([a-z][a-z0-9+.-]*):")
_ALLOWED = ("a tracking URI: sqlite:///PATH.db, http(s)://HOST:PORT, databricks, or postgresql:// mysql:// "
            "mssql://; or --mlflow alone for sqlite:///<results>/mlflow.db")


def looks_like_uri(value: str) -> bool:
    """Whether ``--mlflow``'s optional value is a URI (and not a ``key=value`` override argparse took)."""
    return bool(_URI.match(value)) or value == BARE


def mlflow_uri(value: str | None, results: str) -> str | None:
    """The MLflow tracking URI of ``--mlflow [URI]`` (None when off), checked before Ray starts.

    Raises:
        ValueError: MLflow is not installed, the URI's scheme is not one MLflow writes to, or a bare
            ``--mlflow`` with a URI ``--results`` (a bucket holds no SQLite database).
    """
    if value is None:
        return None
    if importlib.util.find_spec("mlflow") is None:
        raise ValueError("--mlflow is invalid here: MLflow is not installed; allowed after "
                         "`pip install -e \".[dashboard]\"` (or `pip install mlflow-skinny`)")
    if value == BARE:
        if "://" in results:
            raise ValueError(f"--mlflow without a URI is invalid with --results={results!r}: allowed is "
                             "--mlflow URI, a tracking server such as http://HOST:5000")
        return f"sqlite:///{Path(results).resolve() / 'mlflow.db'}"
    match = _URI.match(value)
    if match is None or match.group(1).split("+")[0] not in SCHEMES:
        raise ValueError(f"--mlflow={value!r} is invalid: allowed is {_ALLOWED}")
    return value


def callbacks(spec: Any) -> list[Any]:
    """The tracking callbacks of a new Tune run of ``spec`` (a ``SweepSpec``): MLflow's when it is on.
    (TensorBoard's needs none: Tune adds it itself.)"""
    if spec.mlflow is None:
        return []
    from sweeps.mlflowlog import MetricsMLflowCallback  # Ray: imported when a sweep runs, not to parse

    return [MetricsMLflowCallback(tracking_uri=spec.mlflow, experiment_name=spec.name,
                                 tags={"sweep": spec.name, "results": spec.results})]


def where(spec: Any) -> list[str]:
    """Lines that say how to look at a sweep's logs, for the end-of-sweep printout."""
    lines = []
    if importlib.util.find_spec("tensorboardX") is not None:
        lines.append(f"TensorBoard: tensorboard --logdir {spec.storage}")
    if spec.mlflow is not None:
        lines.append(f"MLflow: mlflow ui --backend-store-uri {spec.mlflow}  (experiment {spec.name!r})")
    return lines
