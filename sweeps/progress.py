"""The sweep's progress line: ``12/36 done, 2 running, 0 failed, ETA 4 min``.

:class:`SweepProgress` is the bookkeeping behind the line the driver logs each time a trial ends
(``sweeps.records.ResultsCallback``). It knows nothing about Ray: :func:`count_trials` reads the counts from
anything with a Tune-style ``status`` (``RUNNING``, ``TERMINATED``, ``ERROR``), so a resumed sweep counts
the trials that ended before the restart too.

The ETA is the mean wall time of the trials that ended in this driver, times the trials still to finish,
divided by how many ran at once (the most seen running together; Tune's ``max_concurrent_trials`` is a
ceiling, not a promise). Trials ASHA stops early are shorter, so a search's ETA errs on the long side.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SweepProgress", "count_trials", "format_duration"]


def count_trials(trials: Iterable[Any], ending: Any = None, *, error: bool = False) -> tuple[int, int, int]:
    """``(done, running, failed)`` over Tune trials; ``ending`` is the trial whose end is being reported
    (Tune calls its callbacks before it changes that trial's status), counted as done, or as failed with
    ``error``."""
    done = running = failed = 0
    for t in trials:
        if t is ending:
            continue
        status = getattr(t, "status", None)
        done += status == "TERMINATED"
        running += status == "RUNNING"
        failed += status == "ERROR"
    if ending is not None:
        failed += error
        done += not error
    return done, running, failed


def format_duration(seconds: float) -> str:
    """``< 1 min``, ``4 min``, ``1 h 05 min``."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "< 1 min"
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


@dataclass
class SweepProgress:
    """Counts and timings of one sweep's trials, as the driver sees them end.

    Args:
        total: the trials the sweep runs (an ablation's grid size, a search's ``num_samples``); None =
            unknown (the line then shows no ``/total`` and no ETA).
    """

    total: int | None = None
    walls: list[float] = field(default_factory=list)
    concurrency: int = 1

    def started(self, running: int) -> None:
        """Note that ``running`` trials run at once now (the ETA divides by the most seen)."""
        self.concurrency = max(self.concurrency, running)

    def ended(self, wall_s: float | None) -> None:
        """Note one trial's wall time (None or non-finite when unknown: not counted in the mean)."""
        if wall_s is not None and math.isfinite(wall_s) and wall_s >= 0:
            self.walls.append(float(wall_s))

    def eta_s(self, done: int, running: int, failed: int) -> float | None:
        """Seconds until the last trial ends, or None (no total, or no trial timed yet)."""
        if self.total is None or not self.walls:
            return None
        remaining = max(self.total - done - failed, 0)
        slots = max(self.concurrency, running, 1)
        return sum(self.walls) / len(self.walls) * remaining / slots

    def line(self, done: int, running: int, failed: int) -> str:
        """``12/36 done, 2 running, 0 failed, ETA 4 min`` (no ETA once nothing is left, or before a trial
        has ended with a wall time)."""
        head = f"{done}/{self.total} done" if self.total is not None else f"{done} done"
        text = f"{head}, {running} running, {failed} failed"
        eta = self.eta_s(done, running, failed)
        if eta is not None and self.total is not None and done + failed < self.total:
            text += f", ETA {format_duration(eta)}"
        return text
