"""The on-disk layout of a results table: a folder of Parquet parts, each written once, read as one dataset.

``<folder>/<table>/part-<ns>-<id>.parquet``: ``<ns>`` (zero-padded Unix ns) sorts the parts by time and
``<id>`` (random) keeps two writers' names apart. A part goes through :func:`store.fs.write_bytes` (a temp
name beside it, then a rename or a copy), so a half-written part is never seen; temp names start with a
dot and are never listed. A version-1 folder has one ``<table>.parquet`` instead, read as it is.

Every page carries a CRC checksum, checked on reading, so a flipped byte is found rather than read as a
wrong number. A file that cannot be read (truncated, overwritten, a bad checksum) raises
:class:`DamagedFile`, naming it; :func:`set_aside` moves it to ``<folder>/damaged/`` (never deletes it),
where no reader or glob of a table looks.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from geomix.checks import ConfigError
from store.columns import to_arrow, unify_schemas
from store.fs import exists, move, resolve, uri, write_bytes
from store.schema import LEGACY_VERSION, SCHEMA_VERSION, TABLES, WRITTEN_AT, check_version

__all__ = ["DAMAGED_DIR", "DamagedFile", "part_paths", "write_part", "check_appendable", "read_table",
           "set_aside", "damaged_files"]

_PREFIX, _SUFFIX = "part-", ".parquet"
#: Parts smaller than this are written plainly (no dictionary, statistics or compression: on a row or two
#: these cost more bytes than they save); larger ones with zstd.
_SMALL_PART = 1000
#: (file system, folder, table) this process has checked it may append to (see check_appendable).
_appendable: set[tuple[str, str, str]] = set()
#: Where :func:`set_aside` puts damaged files, inside the results folder (not a table, not a results folder).
DAMAGED_DIR = "damaged"
_FORMAT = ds.ParquetFileFormat(
    default_fragment_scan_options=ds.ParquetFragmentScanOptions(page_checksum_verification=True))


class DamagedFile(ConfigError):
    """A results file that cannot be read, named (a ``ValueError``: the command lines print one line).

    Attributes:
        filesystem, path: where it is; folder, table: the results folder and the table it belongs to.
    """

    def __init__(self, filesystem: Any, path: str, folder: str, table: str, reason: str) -> None:
        self.filesystem, self.path, self.folder = filesystem, path, folder
        self.table, self.reason = table, reason
        super().__init__(
            f"{table} file", uri(filesystem, path),
            f"a readable Parquet file; this one is damaged ({reason}): re-run the sweep (it moves the file "
            f"to {DAMAGED_DIR}/ and rebuilds the rows it can from Ray's experiment state), or move the file "
            "out of the results folder by hand")

    def __reduce__(self):
        return type(self), (self.filesystem, self.path, self.folder, self.table, self.reason)


def _reason(error: BaseException, path: str) -> str:
    """pyarrow's message without the file name it repeats (the error names the file once), one line."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()] or [type(error).__name__]
    text = "".join(c for c in lines[0].rsplit(f"'{path}'", 1)[-1] if c.isprintable())
    text = re.sub(r"^[.:]?\s*(Is this a 'parquet' file\?:\s*)?", "", text).strip(" :.")
    return (text or type(error).__name__)[:200]


def _damaged(filesystem: Any, path: str, table: str, error: BaseException) -> DamagedFile:
    folder = path.rsplit("/", 1)[0] if path.endswith(f"/{table}.parquet") else path.rsplit("/", 2)[0]
    return DamagedFile(filesystem, path, folder, table, _reason(error, path))


def _read_one(filesystem: Any, path: str, table: str, columns: list[str] | None = None) -> pd.DataFrame:
    """One Parquet file as a frame, its page checksums verified, or :class:`DamagedFile`."""
    try:
        read = pq.read_table(path, filesystem=filesystem, columns=columns, page_checksum_verification=True)
        return read.to_pandas()  # bad bytes in a string surface only here (UnicodeDecodeError)
    except FileNotFoundError:
        raise
    except Exception as e:  # pyarrow raises OSError, ArrowInvalid, UnicodeDecodeError, ... for bad bytes
        raise _damaged(filesystem, path, table, e) from None


def part_paths(filesystem: Any, folder: str, table: str) -> list[str]:
    """The part files of ``table`` in ``folder``, oldest first (temp files of writes under way excluded)."""
    selector = pafs.FileSelector(f"{folder}/{table}", allow_not_found=True)
    return sorted(
        info.path for info in filesystem.get_file_info(selector)
        if info.type == pafs.FileType.File and info.base_name.startswith(_PREFIX)
        and info.base_name.endswith(_SUFFIX)
    )


def _versions(filesystem: Any, path: str, table: str) -> pd.DataFrame:
    """The ``schema_version`` column of one Parquet file (a frame without it when the file has none)."""
    try:
        names = pq.read_schema(path, filesystem=filesystem).names
    except FileNotFoundError:
        raise
    except Exception as e:
        raise _damaged(filesystem, path, table, e) from None
    columns = [c for c in ("schema_version",) if c in names]
    return _read_one(filesystem, path, table, columns) if columns else pd.DataFrame()


def check_appendable(filesystem: Any, folder: str, table: str) -> None:
    """Refuse to append to a folder this code does not write: a version-1 single file is there, or the
    newest part has another ``schema_version``. Checked once per process, folder and table."""
    key = (filesystem.type_name, folder, table)
    if key in _appendable:
        return
    legacy = f"{folder}/{table}.parquet"
    if exists(filesystem, legacy):
        check_version(_versions(filesystem, legacy, table), legacy, LEGACY_VERSION)
        raise ValueError(
            f"{legacy} is a schema_version={LEGACY_VERSION} table (one file, written by an older geomix): "
            f"this geomix reads it but appends schema_version={SCHEMA_VERSION} parts only to a folder "
            f"without one; allowed is a new results folder (or move {table}.parquet aside)"
        )
    parts = part_paths(filesystem, folder, table)
    if parts:
        check_version(_versions(filesystem, parts[-1], table), parts[-1])
    _appendable.add(key)


def _encode(part: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    if part.num_rows < _SMALL_PART:
        pq.write_table(part, sink, store_schema=False, compression="none", use_dictionary=False,
                       write_statistics=False, write_page_checksum=True)
    else:
        pq.write_table(part, sink, store_schema=False, compression="zstd", write_page_checksum=True)
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
        frame = _read_one(filesystem, legacy, table)
        if not frame.empty:
            check_version(frame, legacy, LEGACY_VERSION)
        return frame, legacy
    if not parts:
        return None
    where = f"{folder}/{table}/"
    try:
        fragments = list(ds.dataset(parts, filesystem=filesystem, format=_FORMAT).get_fragments())
        schema = unify_schemas([f.physical_schema for f in fragments])
        frame = ds.FileSystemDataset(fragments, schema, _FORMAT, filesystem).to_table().to_pandas()
    except Exception:  # find the part that cannot be read, if one cannot; else this is another error
        for path in parts:
            try:
                _read_one(filesystem, path, table)
            except FileNotFoundError:  # moved or set aside meanwhile: not damage
                continue
        raise
    if frame.empty:
        return frame, where
    check_version(frame, where)
    if WRITTEN_AT in frame.columns:  # parts list oldest first: a part without it counts by its name
        frame = frame.sort_values(WRITTEN_AT, kind="stable")
    return frame.drop_duplicates(subset=list(TABLES[table]), keep="last").reset_index(drop=True), where


def set_aside(damaged: DamagedFile) -> str:
    """Move a damaged file to ``<folder>/damaged/<ns>-<table>-<name>`` (never deletes it); returns where it
    went. The folder then reads without it."""
    name = damaged.path.rsplit("/", 1)[-1]
    target = f"{damaged.folder}/{DAMAGED_DIR}/{time.time_ns()}-{damaged.table}-{name}"
    move(damaged.filesystem, damaged.path, target)
    _appendable.discard((damaged.filesystem.type_name, damaged.folder, damaged.table))
    return uri(damaged.filesystem, target)


def damaged_files(folder_or_uri: str, table: str | None = None) -> list[str]:
    """The files :func:`set_aside` moved out of the folder (of ``table`` only, when given), oldest first."""
    filesystem, folder = resolve(folder_or_uri)
    selector = pafs.FileSelector(f"{folder}/{DAMAGED_DIR}", allow_not_found=True)
    names = sorted(i.base_name for i in filesystem.get_file_info(selector) if i.type == pafs.FileType.File)
    return [n for n in names if table is None or n.split("-", 2)[1:2] == [table]]
