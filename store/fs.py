"""Paths and URIs of a results folder, and the one atomic write for both.

A local path (relative is fine) or a ``file://`` / ``s3://`` / ``gs://`` URI, through pyarrow's file systems.
Every write goes to a temp name beside the target and is then renamed over it (on a local disk through
:mod:`geomix.atomic`; on an object store, where a file system may not implement move, by a server-side
copy: an object appears whole or not at all), so readers see the old file or the new one. The results
tables are append-only (:mod:`store.io` writes each part once, under a new name), so no write needs a lock.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Any

from pyarrow import fs as pafs

from geomix import atomic

__all__ = ["resolve", "exists", "write_bytes", "save_file", "has_file", "join", "uri", "move"]

#: pyarrow file system type -> the URI scheme a user writes (a local path is shown as it is).
_SCHEMES = {"s3": "s3", "gcs": "gs"}


def resolve(folder_or_uri: str | os.PathLike[str]) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path)`` for a local path (relative is fine) or a URI."""
    target = os.fspath(folder_or_uri)
    if not target:
        raise ValueError("results folder '' is invalid: allowed is a local path or a file:// s3:// gs:// URI")
    if "://" not in target:
        target = os.path.abspath(target)
    filesystem, path = pafs.FileSystem.from_uri(target)
    return filesystem, path.rstrip("/") or "/"


def join(root: str, name: str) -> str:
    """``root/name`` for a local folder (made absolute) or a URI."""
    return root.rstrip("/") + "/" + name if "://" in root else os.path.join(os.path.abspath(root), name)


def uri(filesystem: Any, path: str) -> str:
    """``path`` on ``filesystem`` as a user would write it: a local path, or ``s3://`` / ``gs://`` + path."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        return path
    scheme = _SCHEMES.get(filesystem.type_name, filesystem.type_name)
    return f"{scheme}://{path}"


def move(filesystem: Any, src: str, dst: str) -> None:
    """Move a file (a rename on a local disk; a copy and a delete where the store has no move)."""
    filesystem.create_dir(dst.rsplit("/", 1)[0], recursive=True)
    try:
        filesystem.move(src, dst)
    except NotImplementedError:  # pyarrow's ArrowNotImplementedError subclasses it
        filesystem.copy_file(src, dst)
        filesystem.delete_file(src)


def exists(filesystem: Any, path: str, kind: str = "file") -> bool:
    info = filesystem.get_file_info(path)
    want = pafs.FileType.File if kind == "file" else pafs.FileType.Directory
    return info.type == want


def write_bytes(filesystem: Any, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` on ``filesystem`` atomically (temp name beside it, then a rename)."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        atomic.write_bytes(path, data)
        return
    import pyarrow as pa

    parent, name = path.rsplit("/", 1)
    filesystem.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        with filesystem.open_output_stream(tmp) as sink:
            sink.write(pa.py_buffer(data))
        try:
            filesystem.move(tmp, path)
        except NotImplementedError:  # pyarrow's ArrowNotImplementedError subclasses it
            filesystem.copy_file(tmp, path)
            filesystem.delete_file(tmp)
    except BaseException:
        with contextlib.suppress(Exception):
            filesystem.delete_file(tmp)
        raise


def save_file(folder_or_uri: str | os.PathLike[str], name: str, data: bytes) -> str:
    """Write ``data`` as ``<folder>/<name>`` atomically; ``name`` may hold ``/`` (sub-folders are made).

    Returns ``name``, the path relative to the folder, as a results column records it (``embeddings_path``).
    """
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"file name {name!r} is invalid: allowed is a relative path inside the results folder"
        )
    filesystem, folder = resolve(folder_or_uri)
    write_bytes(filesystem, f"{folder}/{name}", data)
    return name


def has_file(folder_or_uri: str | os.PathLike[str], name: str) -> bool:
    """Whether ``<folder>/<name>`` exists (local folder or URI)."""
    filesystem, folder = resolve(folder_or_uri)
    return exists(filesystem, f"{folder}/{name}")
