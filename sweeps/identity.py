"""Trial identity: a results folder belongs to one sweep; a rerun reuses exactly the trials it has.

A trial is identified by its resolved ``TrainConfig`` (method id and seed included), without the run-only
settings of :data:`RUN_ONLY` (threads, progress bar, logging cadence, output and cache folders: where and
how a trial runs, not what it computes). Its hash is the ``trial_key`` column of its row.

Before Ray starts, :func:`plan` compares the trials a sweep wants with the rows already in its results
folder (the rows carry their whole config, so folders written before ``trial_key`` existed are compared
too):

* every existing row is a trial this sweep would run the same way -> the rerun resumes or extends: only
  the wanted trials without a row run (an identical rerun runs none);
* an existing row of a method the sweep does not define, or whose config differs from what the sweep now
  resolves for its (method, seed) -> :class:`SweepChanged`, naming the keys that differ and the two ways
  out (a new ``--results``, or ``--overwrite``, which moves the old folder aside).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomix.config import RUN_ONLY, SECTIONS, TrainConfig, admits_none, flatten, to_dict

__all__ = ["RUN_ONLY", "identity", "trial_key", "SweepChanged", "Plan", "plan", "check_saved", "move_aside"]

_PREFIXES = tuple(f"{s}." for s in SECTIONS)
_MAX_KEYS_SHOWN = 8


def _plain(value: Any) -> Any:
    """One spelling per value, whether it comes from a config or back from Parquet (numpy scalars, NaN for
    None in a float column, 3.0 for 3 in a column that also holds nulls)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return int(value) if float(value).is_integer() else float(value)
    return str(value)


@functools.cache
def _defaults() -> dict[str, Any]:
    """The default config's identity keys (every section key and top-level setting such as ``task``, less
    ``method`` and :data:`RUN_ONLY`) -> values in one spelling."""
    flat = flatten(to_dict(TrainConfig()))
    return {k: _plain(v) for k, v in flat.items() if k != "method" and k not in RUN_ONLY}


def _keyed(k: str) -> bool:
    return k.startswith(_PREFIXES) or k in _defaults()


def identity(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The identity of a trial from its flattened config (``flatten(to_dict(cfg))``, or a ``trials`` row):
    ``method`` and every config key except :data:`RUN_ONLY`, with values in one spelling.

    A row written before a config field existed has no value for it (the key is absent, or null where the
    reader unified it with newer parts). It ran with what that field's default reproduces (a field is added
    with the default that keeps earlier runs' behaviour, ``docs/results.md``), so such a key reads as the
    default, and an old folder stays this sweep's when nothing it computes changed. A null where the field
    may be null is a value and stays one."""
    out = {"method": _plain(flat.get("method"))}
    out.update({k: _plain(v) for k, v in flat.items() if _keyed(k) and k not in RUN_ONLY and k != "method"})
    if len(out) > 1:
        out.update({k: v for k, v in _defaults().items()
                    if k not in out or (out[k] is None and v is not None and admits_none(k) is False)})
    return out


def _of(cfg: TrainConfig) -> dict[str, Any]:
    return identity(flatten(to_dict(cfg)))


def trial_key(cfg: TrainConfig) -> str:
    """The trial's identity hash (16 hex digits)."""
    payload = json.dumps(_of(cfg), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class SweepChanged(ValueError):
    """The results folder holds trials of another sweep (a ``ValueError``: the CLI prints one line)."""


@dataclass(frozen=True)
class Plan:
    """What a sweep runs now: ``todo`` (its trials without a row) and how many it reuses."""

    todo: list[Mapping[str, Any]]
    reused: int
    existing: int


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = [f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}" for k in keys[:_MAX_KEYS_SHOWN]]
    return shown + ([f"... {len(keys) - _MAX_KEYS_SHOWN} more"] if len(keys) > _MAX_KEYS_SHOWN else [])


def plan(
    wanted: Sequence[Mapping[str, Any]],
    existing_rows: Sequence[Mapping[str, Any]],
    resolve: Callable[[str, int], TrainConfig | None] | None,
    results: str,
) -> Plan:
    """Which of ``wanted`` (ready trial configs, ``sweeps.spec.trial_config``) must run, given the ``trials``
    rows already in ``results``.

    Args:
        wanted: this run's trials (each with ``method``, ``seed``, ``config``).
        existing_rows: the folder's ``trials`` rows (dicts of columns).
        resolve: ``(method, seed) -> TrainConfig`` as this sweep resolves it (all of its YAML's method rows,
            not only the ``--methods`` asked for now), or None for a method it does not define; ``None``
            instead of a function skips the check (the rows were checked before, in this run).
        results: the folder, for the message.

    Raises:
        SweepChanged: an existing row is not a trial of this sweep; the message names the keys.
    """
    done: set[str] = set()
    for row in existing_rows:
        method, seed = str(row.get("method")), row.get("seed")
        have = identity(row)
        done.add(json.dumps(have, sort_keys=True))
        if resolve is None:
            continue
        ours = resolve(method, int(seed)) if _plain(seed) is not None else None
        if ours is None:
            raise SweepChanged(
                f"--results={results!r} is invalid: it holds trials of method {method!r} (seed {seed}), "
                "which this sweep does not define; allowed are a new --results folder, or --overwrite (moves "
                "the old folder aside)"
            )
        if _of(ours) != have:
            diff = "; ".join(_differences(have, _of(ours)))
            raise SweepChanged(
                f"--results={results!r} is invalid: it holds another sweep's trial {method!r} seed {seed} "
                f"(results -> this sweep: {diff}); allowed are a new --results folder, or --overwrite "
                "(moves the old folder aside)"
            )
    todo = [t for t in wanted if json.dumps(identity(flatten(t["config"])), sort_keys=True) not in done]
    return Plan(todo=todo, reused=len(wanted) - len(todo), existing=len(existing_rows))


def check_saved(saved: Mapping[str, Any] | None, current: Mapping[str, Any], results: str) -> None:
    """A search resumes only the search it was: its saved ``config.yaml`` (base and search settings) must be
    the current one.

    Raises:
        SweepChanged: naming the keys that differ.
    """
    if saved is None:
        return
    old = {k: _plain(v) for k, v in flatten(saved).items()}
    new = {k: _plain(v) for k, v in flatten(json.loads(json.dumps(dict(current), default=str))).items()}
    if old != new:
        raise SweepChanged(
            f"--results={results!r} is invalid: it holds another search (saved -> this one: "
            f"{'; '.join(_differences(old, new))}); allowed are a new --results folder, or --overwrite "
            "(moves the old folder aside)"
        )


def move_aside(folder: str) -> str:
    """Rename a local results folder to ``<folder>.old-<YYYYmmdd-HHMMSS>`` (never deletes); returns the new
    path. URIs are refused: object stores cannot rename a folder in one step."""
    if "://" in folder:
        raise ValueError(f"--overwrite with --results={folder!r} is invalid: allowed only for a local folder "
                         "(use a new --results URI instead)")
    target = f"{folder.rstrip(os.sep)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while Path(target).exists():
        target, n = f"{target.rsplit('~', 1)[0]}~{n}", n + 1
    os.replace(folder, target)
    return target
