"""The Parquet result schema: one writer and one reader for every sweep's results.

A results folder (a local path, or an ``s3://`` / ``gs://`` URI: multi-node Ray needs shared storage) holds

* ``trials.parquet``: one row per trial, keyed by ``trial_id``: ``sweep``, ``trial_id``, ``method``, ``seed``,
  every config field as its own dotted column (``loss.w_m2``, ``mix.m2.alpha``), ``status``, ``error``, the
  final test metrics under their plain names (:data:`METRIC_COLUMNS`), ``steps``, ``samples_seen``,
  ``wall_s``, ``samples_per_s``, ``num_workers``, ``device``, versions, ``git_commit``, ``schema_version``;
* ``history.parquet``: one row per trial per evaluation point, keyed by ``(trial_id, step, split)``:
  ``epoch``, the metrics under their plain names and the λ / loss statistics of that point;
* optionally ``config.yaml``: the resolved sweep config (:func:`save_resolved_config`).

Writes are atomic (temp file + rename through :mod:`pyarrow.fs`) and merge with what is there by key, the
last write of a key winning, so a resumed sweep never duplicates or drops a trial. Readers check
``schema_version`` and say clearly when a file is too old or too new.

Unlike the rest of ``geomix`` this module works with pandas and pyarrow, but it imports them inside the
functions so that ``import geomix.results`` stays cheap and works without the ``analysis`` extras.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

#: Final metrics, as :func:`geomix.metrics.evaluate_embeddings` names them (trials hold the test split's).
METRIC_COLUMNS: tuple[str, ...] = (
    "r1_i2t",
    "r5_i2t",
    "r10_i2t",
    "r1_t2i",
    "r5_t2i",
    "r10_t2i",
    "rsum",
    "align",
    "unif",
    "unif_img",
    "unif_txt",
    "gap",
    "cos_pos",
    "cos_neg",
    "zs_acc",
    "ece",
)

STATUSES: tuple[str, ...] = ("completed", "early_stopped", "failed", "diverged")

#: Method ids of the ``method`` column; display names are ``analysis``'s job.
METHOD_IDS: tuple[str, ...] = (
    "zs",
    "ft",
    "ft_tau0.05",
    "ft_tau0.10",
    "imix",
    "unmix",
    "m2_mix",
    "v_mix",
    "l_mix",
    "vl_mix",
    "m3_mix",
    "m3_mix_linear",
    "search",
)

TABLES: dict[str, tuple[str, ...]] = {"trials": ("trial_id",), "history": ("trial_id", "step", "split")}
SPLITS: tuple[str, ...] = ("train", "val", "test")
CONFIG_FILE = "config.yaml"


# ----------------------------------------------------------------------------------------------------------
# file system helpers


def _resolve(folder_or_uri: str | os.PathLike[str]) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path)`` for a local path (relative is fine) or a URI."""
    from pyarrow import fs as pafs

    target = os.fspath(folder_or_uri)
    if not target:
        raise ValueError("results folder '' is invalid: allowed is a local path or a file:// s3:// gs:// URI")
    if "://" not in target:
        target = os.path.abspath(target)
    filesystem, path = pafs.FileSystem.from_uri(target)
    return filesystem, path.rstrip("/") or "/"


def _exists(filesystem: Any, path: str, kind: str = "file") -> bool:
    from pyarrow import fs as pafs

    info = filesystem.get_file_info(path)
    want = pafs.FileType.File if kind == "file" else pafs.FileType.Directory
    return info.type == want


@contextlib.contextmanager
def _local_lock(filesystem: Any, folder: str) -> Iterator[None]:
    """Serialise read-merge-write on a local folder (object stores have no locks; one driver writes)."""
    from pyarrow import fs as pafs

    if not isinstance(filesystem, pafs.LocalFileSystem):
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(os.path.join(folder, ".results.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _replace(filesystem: Any, tmp: str, path: str) -> None:
    """Put the finished ``tmp`` at ``path``: a rename on local disks and HDFS; on an object store, where a
    file system may not implement move, a server-side copy (an object appears whole or not at all)."""
    try:
        filesystem.move(tmp, path)
    except NotImplementedError:  # pyarrow's ArrowNotImplementedError subclasses it
        filesystem.copy_file(tmp, path)
        filesystem.delete_file(tmp)


def _write_table_atomic(filesystem: Any, path: str, table: Any) -> None:
    """Write to a temp file beside ``path``, then rename over it: readers see the old or the new file."""
    import pyarrow.parquet as pq

    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        with filesystem.open_output_stream(tmp) as sink:
            pq.write_table(table, sink)
        _replace(filesystem, tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            filesystem.delete_file(tmp)
        raise


# ----------------------------------------------------------------------------------------------------------
# writing


def _flatten_value(key: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten_value(f"{key}.{k}", v, out)
    elif isinstance(value, (list, tuple)):
        # Lists (e.g. data.styles) are stored as JSON strings, as geomix.config.flatten does.
        out[key] = json.dumps(list(value))
    else:
        out[key] = value


def _flatten_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        _flatten_value(str(key), value, out)
    return out


def _to_arrow(df: pd.DataFrame) -> Any:
    """A DataFrame as an Arrow table; object columns mixing types (e.g. str and float) become strings."""
    import pandas as pd
    import pyarrow as pa

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


def _check_version(df: pd.DataFrame, where: str) -> None:
    if "schema_version" not in df.columns:
        raise ValueError(
            f"{where} has no schema_version column: it is too old (written before results schema "
            f"versioning); allowed is schema_version={SCHEMA_VERSION}. Re-run the sweep with this geomix."
        )
    versions = df["schema_version"].dropna().unique().tolist()
    for v in versions:
        try:
            iv = int(v)
        except (TypeError, ValueError):
            raise ValueError(
                f"{where} has schema_version={v!r}, which is unknown: allowed is {SCHEMA_VERSION}"
            ) from None
        if iv > SCHEMA_VERSION:
            raise ValueError(
                f"{where} has schema_version={iv}, which is too new: this geomix reads schema_version="
                f"{SCHEMA_VERSION}; upgrade geomix to read it"
            )
        if iv < SCHEMA_VERSION:
            raise ValueError(
                f"{where} has schema_version={iv}, which is too old: this geomix reads schema_version="
                f"{SCHEMA_VERSION}; re-run the sweep or use an older geomix"
            )
    if df["schema_version"].isna().any():
        raise ValueError(f"{where} has rows without a schema_version: allowed is {SCHEMA_VERSION}")


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
    import pandas as pd
    import pyarrow.parquet as pq

    if table not in TABLES:
        raise ValueError(f"table={table!r} is invalid: allowed one of {', '.join(map(repr, TABLES))}")
    keys = TABLES[table]
    flat = [_flatten_row(r) for r in rows]
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

    filesystem, folder = _resolve(folder_or_uri)
    filesystem.create_dir(folder, recursive=True)
    path = f"{folder}/{table}.parquet"
    with _local_lock(filesystem, folder):
        if _exists(filesystem, path):
            old = pq.read_table(path, filesystem=filesystem).to_pandas()
            _check_version(old, path)
            old["trial_id"] = old["trial_id"].astype(str)
            # Drop empty frames / all-NA columns from the concat so pandas keeps the dtypes it can.
            merged = pd.concat([f for f in (old, new) if len(f)], ignore_index=True, sort=False)
        else:
            merged = new
        merged = merged.drop_duplicates(subset=list(keys), keep="last").reset_index(drop=True)
        _write_table_atomic(filesystem, path, _to_arrow(merged))


def save_resolved_config(folder_or_uri: str | os.PathLike[str], config: Mapping[str, Any]) -> None:
    """Write the resolved sweep config as ``config.yaml`` beside the results (atomically)."""
    import yaml

    save_file(folder_or_uri, CONFIG_FILE, yaml.safe_dump(_plain(dict(config)), sort_keys=False).encode())


#: Where a sweep puts each trial's evaluation embeddings, relative to the results folder.
EMBEDDINGS_DIR = "embeddings"


def keep_embeddings(
    out_dir: str | os.PathLike[str], folder_or_uri: str | os.PathLike[str], name: str
) -> str | None:
    """Copy a run's final test embeddings (``<out_dir>/embeddings_test.npz``, written by ``geomix.train``
    with ``run.save_embeddings``) to ``<folder>/<name>``; returns ``name``, or None when there are none."""
    src = Path(out_dir) / "embeddings_test.npz"
    if not src.is_file():
        return None
    return save_file(folder_or_uri, name, src.read_bytes())


def has_file(folder_or_uri: str | os.PathLike[str], name: str) -> bool:
    """Whether ``<folder>/<name>`` exists (local folder or URI)."""
    filesystem, folder = _resolve(folder_or_uri)
    return _exists(filesystem, f"{folder}/{name}")


def save_file(folder_or_uri: str | os.PathLike[str], name: str, data: bytes) -> str:
    """Write ``data`` as ``<folder>/<name>`` atomically (temp file + rename; readers see all or nothing).

    ``name`` may hold ``/`` (sub-folders are made). Returns ``name``, the path relative to the folder,
    as a results column records it (e.g. ``embeddings_path``).
    """
    import pyarrow as pa

    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"file name {name!r} is invalid: allowed is a relative path inside the results folder"
        )
    filesystem, folder = _resolve(folder_or_uri)
    path = f"{folder}/{name}"
    parent = path.rsplit("/", 1)[0]
    filesystem.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{parts[-1]}.{uuid.uuid4().hex}.tmp"
    try:
        with filesystem.open_output_stream(tmp) as sink:
            sink.write(pa.py_buffer(data))
        _replace(filesystem, tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            filesystem.delete_file(tmp)
        raise
    return name


def load_resolved_config(folder_or_uri: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``config.yaml`` saved by :func:`save_resolved_config`, or None when there is none."""
    import yaml

    filesystem, folder = _resolve(folder_or_uri)
    path = f"{folder}/{CONFIG_FILE}"
    if not _exists(filesystem, path):
        return None
    with filesystem.open_input_stream(path) as src:
        return yaml.safe_load(src.read().decode()) or {}


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


# ----------------------------------------------------------------------------------------------------------
# building rows (for the sweep's writer)


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
    row.update(_flatten_row({k: v for k, v in config.items()}))
    row["method"] = config.get("method")
    run = config.get("run") if isinstance(config.get("run"), Mapping) else {}
    row["seed"] = run.get("seed", config.get("run.seed"))
    for key, value in result.items():
        if key.startswith("test_"):
            row[key[len("test_") :]] = value
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
        split, _, name = key.partition("_")
        if split in ("val", "test") and name:
            per_split.setdefault(split, {})[name] = value
        elif key not in ("done", "status"):
            common[key] = value
    if "step" not in common:
        raise ValueError(f"report keys {sorted(report)} have no 'step': allowed reports carry step")
    splits = per_split or {"train": {}}
    return [{"trial_id": str(trial_id), "split": s, **common, **m} for s, m in splits.items()]


# ----------------------------------------------------------------------------------------------------------
# reading


def _folders_with_results(filesystem: Any, folder: str) -> list[str]:
    """``folder`` itself if it holds trials.parquet, else its direct sub-folders that do (a sweep root)."""
    from pyarrow import fs as pafs

    if _exists(filesystem, f"{folder}/trials.parquet"):
        return [folder]
    found = []
    for info in filesystem.get_file_info(pafs.FileSelector(folder, recursive=False)):
        if info.type == pafs.FileType.Directory and _exists(filesystem, f"{info.path}/trials.parquet"):
            found.append(info.path)
    return sorted(found)


def _alias_test_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """Rows written with ``test_<metric>`` names get the plain metric columns the analysis reads."""
    for m in METRIC_COLUMNS:
        if m not in df.columns and f"test_{m}" in df.columns:
            df[m] = df[f"test_{m}"]
    return df


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
    import pandas as pd
    import pyarrow.parquet as pq

    if not folders:
        raise ValueError("read_results needs at least one results folder: allowed are paths or URIs")
    trials_parts: list[pd.DataFrame] = []
    history_parts: list[pd.DataFrame] = []
    for folder_arg in folders:
        filesystem, folder = _resolve(folder_arg)
        if not _exists(filesystem, folder, "dir"):
            raise ValueError(
                f"results folder {os.fspath(folder_arg)!r} does not exist: allowed is a folder "
                "written by geomix.results.write_rows"
            )
        found = _folders_with_results(filesystem, folder)
        if not found:
            raise ValueError(
                f"results folder {os.fspath(folder_arg)!r} has no trials.parquet (nor do its "
                "sub-folders): allowed is a folder written by geomix.results.write_rows"
            )
        for sub in found:
            path = f"{sub}/trials.parquet"
            trials = pq.read_table(path, filesystem=filesystem).to_pandas()
            if trials.empty:
                raise ValueError(f"{path} is empty: allowed is a trials table with at least one trial")
            _check_version(trials, path)
            trials["results_dir"] = sub
            trials_parts.append(trials)
            hpath = f"{sub}/history.parquet"
            if _exists(filesystem, hpath):
                history = pq.read_table(hpath, filesystem=filesystem).to_pandas()
                if not history.empty:
                    _check_version(history, hpath)
                    history["results_dir"] = sub
                    history_parts.append(history)
    trials = pd.concat(trials_parts, ignore_index=True, sort=False)
    trials["trial_id"] = trials["trial_id"].astype(str)
    key = ["sweep", "trial_id"] if "sweep" in trials.columns else ["trial_id"]
    before = len(trials)
    trials = trials.drop_duplicates(subset=key, keep="last").reset_index(drop=True)
    if len(trials) < before:
        log.warning("dropped %d trial rows repeated across the given folders", before - len(trials))
    trials = _alias_test_metrics(trials)
    if history_parts:
        history = pd.concat(history_parts, ignore_index=True, sort=False)
        history["trial_id"] = history["trial_id"].astype(str)
        history = history.drop_duplicates(subset=["results_dir", *TABLES["history"]], keep="last")
        history = history.reset_index(drop=True)
    else:
        history = pd.DataFrame({c: pd.Series(dtype=object) for c in (*TABLES["history"], "epoch")})
    return trials, history
