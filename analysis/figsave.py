"""Saving figures: PNG and PDF through matplotlib's Agg backend (files only, never a display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402

FIG_FORMATS = ("png", "pdf")


def save(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``<out_dir>/<stem>.png`` and ``.pdf`` (150 dpi), close it; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in FIG_FORMATS:
        path = out_dir / f"{stem}.{ext}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths

__all__ = ["FIG_FORMATS", "plt", "save"]
