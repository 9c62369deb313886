"""Writing and reading a results folder: merge-by-key Parquet tables, the resolved config, embeddings.

Writes are atomic (:mod:`store.fs`) and merge with what is there by key, the last write of a key winning,
so a resumed sweep never duplicates or drops a trial. Readers check ``schema_version`` and say clearly when
a file is too old or too new.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pyarrow import fs as pafs

from geomix.dotted import flatten
from store.fs import exists, local_lock, resolve, save_file, write_bytes
from store.schema import CONFIG_FILE, SCHEMA_VERSION, SPLITS, STATUSES, TABLES, check_version

log = logging.getLogger(__name__)

__all__ = ["write_rows", "read_results", "save_resolved_config", "keep_embeddings"]


def _to_arrow(df: pd.DataFrame) -> Any:
    """A DataFrame as an Arrow table; object columns mixing types (e.g. str and float) become strings."""
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        pass
    df = df.copy()
    for col in df.columns:
        if df[col].dtype != object:
            continue
        try:
            pa.array(df[col], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            df[col] = (
                df[col]
                .map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
                .astype(pd.StringDtype())
            )
    return pa.Table.from_pandas(df, preserve_index=False)


def write_rows(folder_or_uri: str | os.PathLike[str], table: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Merge ``rows`` into ``<folder>/<table>.parquet`` by key, atomically.

    Args:
        folder_or_uri: a local folder (created if missing) or a ``file://``, ``s3://``, ``gs://`` URI.
        table: ``"trials"`` (key ``trial_id``) or ``"history"`` (key ``trial_id, step, split``).
        rows: dicts of column -> value; nested dicts are flattened to dotted columns and lists become JSON
            strings. Every row needs the key columns. Rows with a key already in the file replace that
            row (the last write for a key wins, also within ``rows``); other rows are kept.

    Raises:
        ValueError: unknown ``table``, a row without its key or with a bad ``status`` / ``split``, or an
            existing file of another ``schema_version``. The old file is untouched on any error.
    """
    if table not in TABLES:
        raise ValueError(f"table={table!r} is invalid: allowed one of {', '.join(map(repr, TABLES))}")
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
        if table == "history" and row["split"] not in SPLITS:
            raise ValueError(f"history row {i} split={row['split']!r} is invalid: allowed one of {SPLITS}")
        row["schema_version"] = SCHEMA_VERSION
    if not flat:
        return
    new = pd.DataFrame(flat)
    new["trial_id"] = new["trial_id"].astype(str)

    filesystem, folder = resolve(folder_or_uri)
    filesystem.create_dir(folder, recursive=True)
    path = f"{folder}/{table}.parquet"
    with local_lock(filesystem, folder):
        if exists(filesystem, path):
            old = pq.read_table(path, filesystem=filesystem).to_pandas()
            check_version(old, path)
            old["trial_id"] = old["trial_id"].astype(str)
            # Drop empty frames / all-NA columns from the concat so pandas keeps the dtypes it can.
            merged = pd.concat([f for f in (old, new) if len(f)], ignore_index=True, sort=False)
        else:
            merged = new
        merged = merged.drop_duplicates(subset=list(keys), keep="last").reset_index(drop=True)
        sink = pa.BufferOutputStream()
        pq.write_table(_to_arrow(merged), sink)
        write_bytes(filesystem, path, sink.getvalue().to_pybytes())


def save_resolved_config(folder_or_uri: str | os.PathLike[str], config: Mapping[str, Any]) -> None:
    """Write the resolved sweep config as ``config.yaml`` beside the results (atomically)."""
    save_file(folder_or_uri, CONFIG_FILE, yaml.safe_dump(_plain(dict(config)), sort_keys=False).encode())


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


def _folders_with_results(filesystem: Any, folder: str) -> list[str]:
    """``folder`` itself if it holds trials.parquet, else its direct sub-folders that do (a sweep root)."""
    if exists(filesystem, f"{folder}/trials.parquet"):
        return [folder]
    found = []
    for info in filesystem.get_file_info(pafs.FileSelector(folder, recursive=False)):
        if info.type == pafs.FileType.Directory and exists(filesystem, f"{info.path}/trials.parquet"):
            found.append(info.path)
    return sorted(found)


def read_results(*folders: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read and concatenate the results of one or more folders.

    A folder is a results folder (with ``trials.parquet``) or a folder whose direct sub-folders are. A
    ``results_dir`` column records where each row came from. Rows repeated across folders (same
    ``sweep`` and ``trial_id``, e.g. a folder passed twice) are kept once, the last folder winning.

    Returns:
        ``(trials, history)`` DataFrames; ``history`` is empty (with its key columns) when no folder has
        a ``history.parquet``.

    Raises:
        ValueError: no folder given, a missing folder, a folder without results, an empty
            ``trials.parquet``, or a ``schema_version`` this code does not read.
    """
    if not folders:
        raise ValueError("read_results needs at least one results folder: allowed are paths or URIs")
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
                f"results folder {os.fspath(folder_arg)!r} has no trials.parquet (nor do its "
                "sub-folders): allowed is a folder written by store.write_rows"
            )
        for sub in found:
            path = f"{sub}/trials.parquet"
            trials = pq.read_table(path, filesystem=filesystem).to_pandas()
            if trials.empty:
                raise ValueError(f"{path} is empty: allowed is a trials table with at least one trial")
            check_version(trials, path)
            trials["results_dir"] = sub
            trials_parts.append(trials)
            hpath = f"{sub}/history.parquet"
            if exists(filesystem, hpath):
                history = pq.read_table(hpath, filesystem=filesystem).to_pandas()
                if not history.empty:
                    check_version(history, hpath)
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

