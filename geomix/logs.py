"""Console logging for geomix's command-line entry points.

geomix's own loggers (``geomix``, ``sweeps``, ``analysis``) talk at INFO; everything else, open_clip's
root-logger chatter included, only from WARNING up. Libraries never call this; the ``main()`` functions do.
"""

from __future__ import annotations

import logging

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
