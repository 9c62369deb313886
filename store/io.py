"""Writing and reading a results folder: append-only Parquet datasets, the resolved config, embeddings.

Each :func:`write_rows` call writes its rows once, as a new part ``<folder>/<table>/part-<ns>-<id>.parquet``
(atomic, :mod:`store.parts`), and never rewrites a file; inside ``with store.batched():`` the rows of many
calls share a part (:mod:`store.buffer`). :func:`read_results` reads each table as one ``pyarrow.dataset``
of all its parts and keeps, per key, the row written last (the largest ``written_at``), so a resumed sweep
never duplicates or drops a trial. Two drivers can write into one folder: part names never collide, so
nothing is lost. Readers check ``schema_version`` and say clearly when a folder is too old or too new; a
version-1 folder (one ``<table>.parquet``, written by an older geomix) is still read. A damaged file is
named, never skipped in silence (:class:`store.parts.DamagedFile`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pyarrow import fs as pafs

from geomix.dotted import flatten
from geomix.registry import is_split
from store import buffer
from store.columns import coerce
from store.fs import exists, resolve, save_file
from store.parts import check_appendable, read_table, write_part
from store.schema import CONFIG_FILE, SCHEMA_VERSION, SPLITS, STATUSES, TABLES, WRITTEN_AT

log = logging.getLogger(__name__)

__all__ = ["write_rows", "read_results", "save_resolved_config", "load_resolved_config", "keep_embeddings"]

_clock = threading.Lock()
_last_ns = 0


def _next_ns() -> int:
    """Unix time in ns, strictly increasing within this process (threads included)."""
    global _last_ns
    with _clock:
        _last_ns = max(time.time_ns(), _last_ns + 1)
        return _last_ns


def _check_rows(table: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Flattened, typed rows stamped with this write's ``written_at``, or ``ValueError`` for a bad row."""
    keys = TABLES[table]
    flat = [flatten(r) for r in rows]
    for i, row in enumerate(flat):
        missing = [k for k in keys if row.get(k) is None]
        if missing:
            raise ValueError(
                f"{table} row {i} has no {', '.join(missing)}: allowed rows carry {', '.join(keys)}"
            )
        if table == "trials" and row.get("status") is not None and row["status"] not in STATUSES:
            raise ValueError(f"trials row {i} status={row['status']!r} is invalid: allowed one of {STATUSES}")
        if table == "history" and not is_split(str(row["split"])):
            raise ValueError(f"history row {i} split={row['split']!r} is invalid: allowed one of {SPLITS} "
                             "or eval.<set>")
        row["trial_id"] = str(row["trial_id"])
        row["schema_version"] = SCHEMA_VERSION
        row.pop(WRITTEN_AT, None)
    typed = coerce(table, flat)
    stamp = _next_ns()
    for row in typed:
        row[WRITTEN_AT] = stamp
    return typed


def write_rows(folder_or_uri: str | os.PathLike[str], table: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append ``rows`` to ``table`` of the folder as one new Parquet part, atomically.

    Args:
        folder_or_uri: a local folder (created if missing) or a ``file://``, ``s3://``, ``gs://`` URI.
        table: ``"trials"`` (key ``trial_id``) or ``"history"`` (key ``trial_id, step, split``).
        rows: dicts of column -> value; nested dicts are flattened to dotted columns and lists become JSON
            strings. Every row needs the key columns. A key written again replaces the earlier row on
            reading (the last write for a key wins, also within ``rows``); other rows are kept.

    Inside ``with store.batched():`` the rows are queued and share a part with other calls' rows.

    Raises:
        ValueError: unknown ``table``, a row without its key, a bad ``status`` / ``split``, a value that
            does not fit its column's declared type, or a folder of another ``schema_version``. Nothing is
            written on any error.
    """
    if table not in TABLES:
        raise ValueError(f"table={table!r} is invalid: allowed one of {', '.join(map(repr, TABLES))}")
    typed = _check_rows(table, rows)
    if not typed:
        return
    filesystem, folder = resolve(folder_or_uri)
    check_appendable(filesystem, folder, table)
    batch = buffer.active()
    if batch is not None:
        batch.add(filesystem, folder, table, typed)
    else:
        write_part(filesystem, folder, table, typed)


def save_resolved_config(folder_or_uri: str | os.PathLike[str], config: Mapping[str, Any]) -> None:
    """Write the resolved sweep config as ``config.yaml`` beside the results (atomically)."""
    save_file(folder_or_uri, CONFIG_FILE, yaml.safe_dump(_plain(dict(config)), sort_keys=False).encode())


def load_resolved_config(folder_or_uri: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``config.yaml`` :func:`save_resolved_config` wrote in the folder, or None when there is none."""
    filesystem, folder = resolve(folder_or_uri)
    path = f"{folder}/{CONFIG_FILE}"
    if not exists(filesystem, path):
        return None
    with filesystem.open_input_stream(path) as src:
        return yaml.safe_load(src.read().decode()) or {}


def keep_embeddings(
    out_dir: str | os.PathLike[str], folder_or_uri: str | os.PathLike[str], name: str
) -> str | None:
    """Copy a run's final test embeddings (``<out_dir>/embeddings_test.npz``, written by ``geomix.train``
    with ``run.save_embeddings``) to ``<folder>/<name>``; returns ``name``, or None when there are none."""
    src = Path(out_dir) / "embeddings_test.npz"
    if not src.is_file():
        return None
    return save_file(folder_or_uri, name, src.read_bytes())


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _has_results(filesystem: Any, folder: str) -> bool:
    return exists(filesystem, f"{folder}/trials", "dir") or exists(filesystem, f"{folder}/trials.parquet")


def _folders_with_results(filesystem: Any, folder: str) -> list[str]:
    """``folder`` itself if it holds a trials table, else its direct sub-folders that do (a sweep root)."""
    if _has_results(filesystem, folder):
        return [folder]
    found = []
    for info in filesystem.get_file_info(pafs.FileSelector(folder, recursive=False)):
        if info.type == pafs.FileType.Directory and _has_results(filesystem, info.path):
            found.append(info.path)
    return sorted(found)


def read_results(*folders: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read and concatenate the results of one or more folders.

    A folder is a results folder (with a ``trials`` table: ``trials/`` parts, or a version-1
    ``trials.parquet``) or a folder whose direct sub-folders are. Each table keeps the last written row per
    key. A ``results_dir`` column records where each row came from. Rows repeated across folders (same
    ``sweep`` and ``trial_id``, e.g. a folder passed twice) are kept once, the last folder winning.

    Returns:
        ``(trials, history)`` DataFrames; ``history`` is empty (with its key columns) when no folder has
        history rows.

    Raises:
        ValueError: no folder given, a missing folder, a folder without results, an empty trials table,
            or a ``schema_version`` this code does not read.
        store.DamagedFile: a file of a table cannot be read (truncated, overwritten, a page checksum that
            fails); it names the file, and ``store.set_aside`` moves it out of the way.
    """
    if not folders:
        raise ValueError("read_results needs at least one results folder: allowed are paths or URIs")
    buffer.flush()  # rows this process queued in a batch are read too
    trials_parts: list[pd.DataFrame] = []
    history_parts: list[pd.DataFrame] = []
    for folder_arg in folders:
        filesystem, folder = resolve(folder_arg)
        if not exists(filesystem, folder, "dir"):
            raise ValueError(
                f"results folder {os.fspath(folder_arg)!r} does not exist: allowed is a folder "
                "written by store.write_rows"
            )
        found = _folders_with_results(filesystem, folder)
        if not found:
            raise ValueError(
                f"results folder {os.fspath(folder_arg)!r} has no trials table (trials/ or trials.parquet; "
                "nor do its sub-folders): allowed is a folder written by store.write_rows"
            )
        for sub in found:
            read = read_table(filesystem, sub, "trials")
            trials, where = read if read is not None else (pd.DataFrame(), f"{sub}/trials/")
            if trials.empty:
                raise ValueError(f"{where} is empty: allowed is a trials table with at least one trial")
            trials["results_dir"] = sub
            trials_parts.append(trials)
            read = read_table(filesystem, sub, "history")
            if read is not None and not read[0].empty:
                history = read[0]
                history["results_dir"] = sub
                history_parts.append(history)
    trials = pd.concat(trials_parts, ignore_index=True, sort=False)
    trials["trial_id"] = trials["trial_id"].astype(str)
    key = ["sweep", "trial_id"] if "sweep" in trials.columns else ["trial_id"]
    before = len(trials)
    trials = trials.drop_duplicates(subset=key, keep="last").reset_index(drop=True)
    if len(trials) < before:
        log.warning("dropped %d trial rows repeated across the given folders", before - len(trials))
    if history_parts:
        history = pd.concat(history_parts, ignore_index=True, sort=False)
        history["trial_id"] = history["trial_id"].astype(str)
        history = history.drop_duplicates(subset=["results_dir", *TABLES["history"]], keep="last")
        history = history.reset_index(drop=True)
    else:
        history = pd.DataFrame({c: pd.Series(dtype=object) for c in (*TABLES["history"], "epoch")})
    return trials, history
