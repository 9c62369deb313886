"""The on-disk layout of a results table: a folder of Parquet parts, each written once, read as one dataset.

``<folder>/<table>/part-<ns>-<id>.parquet``: ``<ns>`` (zero-padded Unix ns) sorts the parts by time and
``<id>`` (random) keeps two writers' names apart. A part goes through :func:`store.fs.write_bytes` (a temp
name beside it, then a rename or a copy), so a half-written part is never seen; temp names start with a
dot and are never listed. A version-1 folder has one ``<table>.parquet`` instead, read as it is.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from store.columns import to_arrow, unify_schemas
from store.fs import exists, write_bytes
from store.schema import LEGACY_VERSION, SCHEMA_VERSION, TABLES, WRITTEN_AT, check_version

__all__ = ["part_paths", "write_part", "check_appendable", "read_table"]

_PREFIX, _SUFFIX = "part-", ".parquet"
#: Parts smaller than this are written plainly (no dictionary, statistics or compression: on a row or two
#: these cost more bytes than they save); larger ones with zstd.
_SMALL_PART = 1000
#: (file system, folder, table) this process has checked it may append to (see check_appendable).
_appendable: set[tuple[str, str, str]] = set()


def part_paths(filesystem: Any, folder: str, table: str) -> list[str]:
    """The part files of ``table`` in ``folder``, oldest first (temp files of writes under way excluded)."""
    selector = pafs.FileSelector(f"{folder}/{table}", allow_not_found=True)
    return sorted(
        info.path for info in filesystem.get_file_info(selector)
        if info.type == pafs.FileType.File and info.base_name.startswith(_PREFIX)
        and info.base_name.endswith(_SUFFIX)
    )


def _versions(filesystem: Any, path: str) -> pd.DataFrame:
    """The ``schema_version`` column of one Parquet file (a frame without it when the file has none)."""
    handle = pq.ParquetFile(path, filesystem=filesystem)
    columns = [c for c in ("schema_version",) if c in handle.schema_arrow.names]
    return handle.read(columns=columns).to_pandas() if columns else pd.DataFrame()


def check_appendable(filesystem: Any, folder: str, table: str) -> None:
    """Refuse to append to a folder this code does not write: a version-1 single file is there, or the
    newest part has another ``schema_version``. Checked once per process, folder and table."""
    key = (filesystem.type_name, folder, table)
    if key in _appendable:
        return
    legacy = f"{folder}/{table}.parquet"
    if exists(filesystem, legacy):
        check_version(_versions(filesystem, legacy), legacy, LEGACY_VERSION)
        raise ValueError(
            f"{legacy} is a schema_version={LEGACY_VERSION} table (one file, written by an older geomix): "
            f"this geomix reads it but appends schema_version={SCHEMA_VERSION} parts only to a folder "
            f"without one; allowed is a new results folder (or move {table}.parquet aside)"
        )
    parts = part_paths(filesystem, folder, table)
    if parts:
        check_version(_versions(filesystem, parts[-1]), parts[-1])
    _appendable.add(key)


def _encode(part: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    if part.num_rows < _SMALL_PART:
        pq.write_table(part, sink, store_schema=False, compression="none", use_dictionary=False,
                       write_statistics=False)
    else:
        pq.write_table(part, sink, store_schema=False, compression="zstd")
    return sink.getvalue().to_pybytes()


def write_part(filesystem: Any, folder: str, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` (checked and typed, each with its ``written_at``) as one new part of ``table``; of
    the rows of one key only the last is written."""
    keys = TABLES[table]
    last = {tuple(row[k] for k in keys): i for i, row in enumerate(rows)}
    kept = [rows[i] for i in sorted(last.values())]
    stamp = max(row[WRITTEN_AT] for row in kept)
    name = f"{_PREFIX}{stamp:020d}-{uuid.uuid4().hex[:12]}{_SUFFIX}"
    data = _encode(to_arrow(table, kept, last=("schema_version", WRITTEN_AT)))
    write_bytes(filesystem, f"{folder}/{table}/{name}", data)


def read_table(filesystem: Any, folder: str, table: str) -> tuple[pd.DataFrame, str] | None:
    """``table`` of one results folder, one row per key, and where it lives; None when no row of it was
    ever written (no parts, no version-1 file).

    The parts are one ``pyarrow.dataset`` over the union of their schemas (a column a part lacks is null
    there); of the rows of a key, the one with the largest ``written_at`` is kept, and rows come in the
    order they were last written.
    """
    legacy = f"{folder}/{table}.parquet"
    parts = part_paths(filesystem, folder, table)
    if exists(filesystem, legacy):
        if parts:
            raise ValueError(
                f"{folder} holds both {table}.parquet (schema_version={LEGACY_VERSION}) and {table}/ "
                f"(schema_version={SCHEMA_VERSION}): allowed is one of them; move {table}.parquet aside"
            )
        frame = pq.read_table(legacy, filesystem=filesystem).to_pandas()
        if not frame.empty:
            check_version(frame, legacy, LEGACY_VERSION)
        return frame, legacy
    if not parts:
        return None
    where = f"{folder}/{table}/"
    fragments = list(ds.dataset(parts, filesystem=filesystem, format="parquet").get_fragments())
    schema = unify_schemas([f.physical_schema for f in fragments])
    dataset = ds.FileSystemDataset(fragments, schema, ds.ParquetFileFormat(), filesystem)
    frame = dataset.to_table().to_pandas()
    if frame.empty:
        return frame, where
    check_version(frame, where)
    if WRITTEN_AT in frame.columns:  # parts list oldest first: a part without it counts by its name
        frame = frame.sort_values(WRITTEN_AT, kind="stable")
    return frame.drop_duplicates(subset=list(TABLES[table]), keep="last").reset_index(drop=True), where
