"""A sweep's folders on the driver: what the results folder already holds (damaged files moved aside), its
saved sweep config, one driver at a time, and whether Ray's storage folder may be trusted.

Two drivers writing into one local folder would run the same trials twice and interleave their Tune state,
so a sweep holds ``<results>/.sweep.lock`` while it runs and a second one is refused with a clear error
(object stores have no locks: give each driver its own ``--results`` URI).

Resuming reads Ray's state back from the storage folder, and that state is pickled (``tuner.pkl``, the
searcher's state, cloudpickle inside the experiment state): whoever can write there can run code as the
user. :func:`check_private` refuses a local storage folder that another user can write.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import logging
import os
import pwd
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from geomix.checks import ConfigError
from store import DamagedFile, read_results, set_aside
from store.fs import exists, resolve

__all__ = ["existing_rows", "read_recovering", "union_config", "hold", "UntrustedStorage", "check_private"]

log = logging.getLogger(__name__)

LOCK_FILE = ".sweep.lock"


def read_recovering(results: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``store.read_results(results)``, after moving every damaged file of it to ``<results>/damaged/`` (one
    warning line each, naming the file): the rows they held are rebuilt from Ray's experiment state by
    ``sweeps.runner.reconcile``.

    Raises:
        ValueError: as ``read_results`` (a folder without rows, another schema version, ...).
    """
    seen: set[str] = set()
    while True:
        try:
            return read_results(results)
        except DamagedFile as e:
            if e.path in seen:  # moving it did not take it out of the table: never loop
                raise
            seen.add(e.path)
            moved = set_aside(e)
            log.warning("results file %s is damaged (%s): moved it to %s; the rows it held are rebuilt from "
                        "Ray's experiment state", e.value, e.reason, moved)


def existing_rows(results: str) -> list[dict[str, Any]]:
    """The ``trials`` rows already in ``results`` (none for a folder that does not exist or has no rows)."""
    filesystem, folder = resolve(results)
    if not exists(filesystem, folder, "dir"):
        return []
    try:
        trials, _ = read_recovering(results)
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


class UntrustedStorage(ConfigError):
    """A storage folder that another user can write (a ``ValueError``: the CLI prints one line)."""


def _private_gid() -> int | None:
    """The user's own group (user private groups: named as the user, no other member), else None."""
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid())
    except KeyError:
        return None
    return group.gr_gid if group.gr_name == user and set(group.gr_mem) <= {user} else None


def writable_by_others(
    st: os.stat_result, me: int, private_gid: int | None, *, sticky_ok: bool
) -> str | None:
    """Why another user can change a file or folder with this ``lstat``, or None. Root and ``me`` may own
    it; group write is allowed only for the user's private group; ``sticky_ok``: a sticky folder (``/tmp``)
    lets others add entries but not replace ours, so it is fine above the storage folder."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in (me, 0):
        return f"is owned by uid {st.st_uid}, not by you (uid {me})"
    if sticky_ok and stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX:
        return None
    if mode & stat.S_IWOTH:
        return f"is writable by every user (mode {mode:04o})"
    if mode & stat.S_IWGRP and st.st_gid != private_gid:
        return f"is writable by group {st.st_gid} (mode {mode:04o})"
    return None


def check_private(storage: str, *trees: str) -> None:
    """Refuse to read Ray's state from a local ``storage`` folder that another user can write: the folder,
    the folders above it, and everything under each of ``trees`` (the experiment to restore, the Train
    runs) must be owned by you (or root) and writable by no other user. An ``s3://`` / ``gs://`` storage is
    not checked: there the bucket's policy is the boundary.

    Raises:
        UntrustedStorage: naming the path, why, and the ``chmod`` that fixes it.
    """
    if "://" in storage and not storage.startswith("file://"):
        return
    root = Path(resolve(storage)[1])
    if not root.exists():
        return
    me, gid = os.getuid(), _private_gid()
    checks = [(p, True) for p in reversed(root.parents)] + [(root, True)]
    for tree in trees:
        top = Path(resolve(tree)[1])
        if top.exists():
            checks.append((top, False))
            for folder, dirs, files in os.walk(top):
                checks += [(Path(folder, n), False) for n in (*dirs, *files)]
    for path, sticky_ok in checks:
        why = writable_by_others(path.lstat(), me, gid, sticky_ok=sticky_ok)
        if why is None and path.is_symlink():
            why = writable_by_others(path.stat(), me, gid, sticky_ok=False)
        if why:
            fix = (f"`chown $USER {path}` (if you made it; else remove it)" if "owned" in why else
                   f"`chmod go-w {path}` (`chmod -R go-w {root}` for the whole folder)")
            raise UntrustedStorage(
                "--storage", storage,
                f"a folder only you can write: {path} {why}, and resuming unpickles Ray's state from it "
                f"(code that anyone who can write there would run as you); fix with {fix}, or use a new "
                "--storage")
