"""Console logging for geomix's command-line entry points.

geomix's own loggers (``geomix``, ``sweeps``, ``analysis``) talk at INFO; everything else, open_clip's
root-logger chatter included, only from WARNING up. Libraries never call this; the ``main()`` functions do.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

#: Loggers that report progress at INFO on the console.
OWN_LOGGERS: tuple[str, ...] = ("geomix", "store", "sweeps", "analysis", "__main__")


def setup(fmt: str = "%(asctime)s %(name)s: %(message)s", level: int = logging.INFO) -> None:
    """Root at WARNING with one stream handler (``basicConfig``), this project's loggers at ``level``."""
    logging.basicConfig(level=logging.WARNING, format=fmt)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)


def quiet_ray_checkpoint_logs() -> None:
    """Ray Train logs "Checkpoint successfully created at ..." at INFO for every report with a checkpoint
    (each epoch of each trial); keep Ray's warnings and errors only. Called inside trial and worker
    processes, where those records are made."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)


def is_console() -> bool:
    """Whether this process writes to a terminal (stderr is a TTY): the driver of a sweep or the train
    command run by a person, not a Ray trial or worker (their output goes to log files)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


@contextlib.contextmanager
def progress_bar(enabled: bool, **tqdm_kwargs: Any) -> Iterator[Any | None]:
    """A tqdm bar (``None`` when not ``enabled``) that log lines do not overwrite: while it is open, the
    root logger's console handlers write through ``tqdm.write``
    (``tqdm.contrib.logging.logging_redirect_tqdm``), so each record lands on its own line above the bar."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(tqdm_class=tqdm), tqdm(**tqdm_kwargs) as bar:
        yield bar


def write(line: str) -> None:
    """Print one line to stdout above any open tqdm bar (``tqdm.write``)."""
    from tqdm.auto import tqdm

    tqdm.write(line)
