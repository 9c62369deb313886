"""Group commit: inside ``with store.batched():`` the rows of many ``write_rows`` calls share one part.

A Parquet file costs about a millisecond and a few KB of footer however few rows it holds, so a sweep that
writes a part per report spends most of its store time and bytes on footers (``benchmarks/results_store.py``).
In a batch, ``write_rows`` still checks and types its rows at once (a bad row raises in the caller, nothing
written), stamps them with their ``written_at`` and queues them; a part is written per folder and table

- when ``max_rows`` rows are queued (by the caller),
- when the oldest queued row is ``max_delay_s`` old (by a background thread),
- on :func:`flush`, before :func:`store.read_results` reads (so a process reads its own writes), and when
  the block ends.

What a batch costs: a process killed outright loses the rows of its last ``max_delay_s``. An error of the
background thread keeps the rows queued and is raised by the next ``write_rows``, :func:`flush` or the end
of the block.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from store.parts import write_part

log = logging.getLogger(__name__)

__all__ = ["batched", "flush", "active"]


class _Queue:
    def __init__(self, filesystem: Any, folder: str, table: str) -> None:
        self.filesystem, self.folder, self.table = filesystem, folder, table
        self.rows: list[dict[str, Any]] = []
        self.since = 0.0


class _Batch:
    def __init__(self, max_rows: int, max_delay_s: float) -> None:
        self.max_rows, self.max_delay_s = max_rows, max_delay_s
        self.queues: dict[tuple[str, str, str], _Queue] = {}
        self.cond = threading.Condition()  # guards queues, error, closed
        self.writing = threading.Lock()  # one part write at a time: a flush waits for one under way
        self.error: BaseException | None = None
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="store-batch", daemon=True)
        self.thread.start()

    def add(self, filesystem: Any, folder: str, table: str, rows: list[dict[str, Any]]) -> None:
        self.raise_error()
        with self.cond:
            queue = self.queues.setdefault((filesystem.type_name, folder, table),
                                           _Queue(filesystem, folder, table))
            if not queue.rows:
                queue.since = time.monotonic()
            queue.rows.extend(rows)
            full = len(queue.rows) >= self.max_rows
            self.cond.notify()
        if full:
            self.flush()

    def _take(self, due_only: bool) -> list[_Queue]:
        now = time.monotonic()
        with self.cond:
            taken = [q for q in self.queues.values()
                     if q.rows and (not due_only or now - q.since >= self.max_delay_s)]
            for q in taken:
                key = (q.filesystem.type_name, q.folder, q.table)
                self.queues[key] = _Queue(q.filesystem, q.folder, q.table)
        return taken

    def flush(self, due_only: bool = False) -> None:
        with self.writing:
            taken = self._take(due_only)
            for i, queue in enumerate(taken):
                try:
                    write_part(queue.filesystem, queue.folder, queue.table, queue.rows)
                except BaseException:
                    self._put_back(taken[i:])
                    raise

    def _put_back(self, queues: list[_Queue]) -> None:
        with self.cond:
            for old in queues:
                key = (old.filesystem.type_name, old.folder, old.table)
                newer = self.queues.get(key)
                if newer is not None and newer.rows:
                    old.rows.extend(newer.rows)
                self.queues[key] = old

    def raise_error(self) -> None:
        with self.cond:
            error, self.error = self.error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        while True:
            with self.cond:
                if self.closed:
                    return
                starts = [q.since for q in self.queues.values() if q.rows]
                wait = self.max_delay_s - (time.monotonic() - min(starts)) if starts else None
                if wait is None or wait > 0:
                    self.cond.wait(wait)
                    continue
            try:
                self.flush(due_only=True)
            except Exception as e:  # raised in the writer's thread by its next call (rows stay queued)
                with self.cond:
                    self.error = e
                    self.cond.wait(self.max_delay_s)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join()
        with self.cond:
            error, self.error = self.error, None
        if error is not None:  # the final flush retries what the thread could not write
            log.warning("a background write of the results failed (%r); writing again", error)
        self.flush()


_active: _Batch | None = None


def active() -> _Batch | None:
    """The batch of the enclosing ``with batched():`` block, or None."""
    return _active


@contextlib.contextmanager
def batched(max_rows: int = 10_000, max_delay_s: float = 2.0) -> Iterator[None]:
    """Inside the block, ``write_rows`` queues its (checked) rows and writes one part per folder and
    table per ``max_rows`` rows or ``max_delay_s`` seconds; everything queued is written when the block
    ends, also on an error. A block inside a block uses the outer one's batch."""
    global _active
    if max_rows < 1 or not max_delay_s > 0:
        raise ValueError(
            f"batched(max_rows={max_rows!r}, max_delay_s={max_delay_s!r}) is invalid: allowed max_rows >= 1 "
            "and max_delay_s > 0"
        )
    if _active is not None:
        yield
        return
    _active = _Batch(max_rows, max_delay_s)
    try:
        yield
    finally:
        batch, _active = _active, None
        batch.close()


def flush() -> None:
    """Write every row queued by the enclosing ``with batched():`` block now (nothing outside a block)."""
    if _active is not None:
        _active.raise_error()
        _active.flush()
