"""Trial checkpoints on local disk: ``<out_dir>/checkpoints/ckpt-<step>/{state.pt, config.yaml}``.

Each checkpoint folder appears whole (written beside, then renamed); the last :data:`KEEP` are kept. Ray
copies reported checkpoint folders to its own storage; this module only knows local folders.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from geomix.atomic import atomic_dir
from geomix.config import TrainConfig, save_config

__all__ = ["PREFIX", "KEEP", "save", "latest", "load"]

PREFIX = "ckpt-"
KEEP = 2


def save(out_dir: str | Path, step: int, state: dict[str, Any], cfg: TrainConfig) -> str:
    """Write ``state`` (``torch.save``) and the resolved config as the checkpoint of ``step``; prune old."""
    root = Path(out_dir) / "checkpoints"
    final = root / f"{PREFIX}{step:09d}"
    with atomic_dir(final) as tmp:
        torch.save(state, tmp / "state.pt")
        save_config(cfg, tmp / "config.yaml")
    for old in sorted(root.glob(f"{PREFIX}*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return str(final)


def latest(out_dir: str | Path) -> str | None:
    """The newest checkpoint folder under ``out_dir``, or None."""
    found = sorted((Path(out_dir) / "checkpoints").glob(f"{PREFIX}*"))
    return str(found[-1]) if found else None


def load(path: str | Path) -> dict[str, Any]:
    """A checkpoint's state (``weights_only``: no code runs from the file)."""
    return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=True)
