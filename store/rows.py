"""Rows of the results tables, built from a trial's resolved config and what ``geomix.train.run`` reported.

The final test metrics lose their ``test_`` prefix here and only here: a ``trials`` row holds them under the
plain metric names (``rsum``), a ``history`` row under the plain names with a ``split`` column.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Mapping
from typing import Any

from geomix.dotted import flatten
from geomix.registry import split_metric_key
from store.schema import STATUSES

__all__ = ["environment_info", "trial_row", "history_rows"]


def environment_info() -> dict[str, Any]:
    """Versions of geomix, torch, open_clip, ray and the git commit, for a trials row (None if unknown)."""
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    commit: str | None = None
    with contextlib.suppress(Exception):
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
        commit = (out.stdout.strip() or None) if out.returncode == 0 else None
    return {
        "version.geomix": version("geomix"),
        "version.torch": version("torch"),
        "version.open_clip": version("open_clip_torch"),
        "version.ray": version("ray"),
        "git_commit": commit,
    }


def trial_row(
    *,
    sweep: str,
    trial_id: str,
    config: Mapping[str, Any],
    result: Mapping[str, Any] | None = None,
    status: str | None = None,
    error: str | None = None,
    env: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``trials`` row from a nested config dict and the dict ``geomix.train.run`` returns.

    ``result``'s ``test_<metric>`` keys become the plain metric columns; ``status`` / ``error`` override
    the result's. ``method`` and ``seed`` come from ``config['method']`` and ``config['run']['seed']``.
    """
    result = dict(result or {})
    row: dict[str, Any] = {"sweep": sweep, "trial_id": str(trial_id)}
    row.update(flatten(config))
    row["method"] = config.get("method")
    run = config.get("run") if isinstance(config.get("run"), Mapping) else {}
    row["seed"] = run.get("seed", config.get("run.seed"))
    for key, value in result.items():
        parsed = split_metric_key(key)
        if parsed is not None and parsed[0] == "test":
            row[parsed[1]] = value
        elif key not in ("status", "error", "done"):
            row[key] = value
    row["status"] = status or result.get("status") or "completed"
    if row["status"] not in STATUSES:
        raise ValueError(f"status={row['status']!r} is invalid: allowed one of {STATUSES}")
    row["error"] = error if error is not None else result.get("error")
    row.update(env if env is not None else environment_info())
    return row


def history_rows(trial_id: str, report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``history`` rows from one ``hooks.report`` metrics dict: one row per split found.

    ``val_<m>`` / ``test_<m>`` keys go to the ``val`` / ``test`` row under their plain names; the other
    keys (``epoch``, ``step``, ``samples_seen``, ``train_loss``, ``loss_*``, ``lam_*``) go to every row. A
    report with no evaluation metrics gives one ``train`` row.
    """
    common: dict[str, Any] = {}
    per_split: dict[str, dict[str, Any]] = {}
    for key, value in report.items():
        parsed = split_metric_key(key)
        if parsed is not None:
            per_split.setdefault(parsed[0], {})[parsed[1]] = value
        elif key not in ("done", "status"):
            common[key] = value
    if "step" not in common:
        raise ValueError(f"report keys {sorted(report)} have no 'step': allowed reports carry step")
    splits = per_split or {"train": {}}
    return [{"trial_id": str(trial_id), "split": s, **common, **m} for s, m in splits.items()]
