"""A sweep's results folder on the driver: what it already holds, its saved sweep config, and one driver
at a time.

Two drivers writing into one local folder would run the same trials twice and interleave their Tune state,
so a sweep holds ``<results>/.sweep.lock`` while it runs and a second one is refused with a clear error
(object stores have no locks: give each driver its own ``--results`` URI).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping
from typing import Any

from store import read_results
from store.fs import exists, resolve

__all__ = ["existing_rows", "union_config", "hold"]

LOCK_FILE = ".sweep.lock"


def existing_rows(results: str) -> list[dict[str, Any]]:
    """The ``trials`` rows already in ``results`` (none for a folder that does not exist or has no rows)."""
    filesystem, folder = resolve(results)
    if not exists(filesystem, folder, "dir"):
        return []
    try:
        trials, _ = read_results(results)
    except ValueError as e:  # a folder without rows yet; any other problem (e.g. a newer schema) is raised
        if "has no" in str(e) or "is empty" in str(e):
            return []
        raise
    return trials.to_dict("records")


def union_config(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """An ablation's ``config.yaml`` after this run: the folder holds the trials of both runs, so its methods
    and seeds are the union (the identity check has made sure the rows they share agree)."""
    if not old:
        return dict(new)
    methods = {**dict(old.get("methods") or {}), **dict(new.get("methods") or {})}
    seeds = sorted({*(old.get("seeds") or []), *(new.get("seeds") or [])})
    return {**dict(new), "methods": methods, "seeds": seeds}


@contextlib.contextmanager
def hold(results: str) -> Iterator[None]:
    """Hold the local folder's sweep lock for the ``with`` block.

    Raises:
        ValueError: another running sweep holds it (the message names its pid).
    """
    if "://" in results:
        yield
        return
    os.makedirs(results, exist_ok=True)
    path = os.path.join(results, LOCK_FILE)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise ValueError(
                f"--results={results!r} is invalid now: another sweep (pid {owner}) is writing into it; "
                "allowed are a different --results folder, or waiting for that sweep to end"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
