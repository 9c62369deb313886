"""The modality-gap figure: one trial per method, its test images each with all its captions, joint PCA to
2-D; the gap on a panel is the trial's ``gap`` column (the number Table 2 averages), beside Table 2's cell."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.figsave import plt  # pyplot with the Agg backend set first
from analysis.figsave import save as _save
from analysis.frame import (
    OK,
    cells,
    decimals,
    display_name,
    method_order,
    numeric,
    prepare,
    seed_stats,
)

log = logging.getLogger("analysis.plots")



def _find_npz(path_value: str, results_dir: str | None) -> Path | None:
    """An ``embeddings_path`` entry as a file: absolute, or relative to its results folder; a folder
    gives its first ``*.npz`` (a ``test`` one preferred)."""
    p = Path(path_value)
    if not p.is_absolute() and results_dir and "://" not in str(results_dir):
        p = Path(results_dir) / p
    if p.is_dir():
        files = sorted(p.glob("*.npz"), key=lambda f: ("test" not in f.name, f.name))
        return files[0] if files else None
    return p if p.is_file() else None


def _split_of(path: Path) -> str:
    """``embeddings_<split>.npz`` (the training loop's name) gives its split; any other name is the final
    test split that ``store.keep_embeddings`` copies as ``embeddings/<trial_id>.npz``."""
    stem = path.stem
    return stem[len("embeddings_") :] if stem.startswith("embeddings_") else "test"


def first_captions(txt_to_img: np.ndarray, n_images: int) -> np.ndarray:
    """The first caption (lowest txt row) of each image, -1 for an image without captions: int [n]."""
    first = np.full(n_images, -1, dtype=np.int64)
    t2i = np.asarray(txt_to_img, dtype=np.int64)
    valid = (t2i >= 0) & (t2i < n_images)
    images, rows = np.unique(t2i[valid], return_index=True)
    first[images] = np.flatnonzero(valid)[rows]
    return first


def pair_gap(img: np.ndarray, txt: np.ndarray, txt_to_img: np.ndarray) -> float:
    """Table 2's modality gap from an embeddings file: ``||mean(I) - mean(T)||`` over all images and their
    FIRST captions, rows L2-normalised, in float64.

    The formula of ``geomix.metrics.modality_gap`` as ``evaluate_embeddings`` applies it (the analysis does
    not import torch; the tests compare the two). Images without a caption are left out.
    """
    first = first_captions(txt_to_img, len(img))
    keep = first >= 0
    i = np.asarray(img, dtype=np.float64)[keep]
    t = np.asarray(txt, dtype=np.float64)[first[keep]]
    i /= np.linalg.norm(i, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return float(np.linalg.norm(i.mean(axis=0) - t.mean(axis=0)))


def sample_images(
    txt_to_img: np.ndarray, n_images: int, max_images: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``max_images`` images (a fixed random subset, sorted) and EVERY caption of them.

    Returns ``(images, captions)``: image rows and caption rows; no caption is separated from its image.
    """
    images = np.arange(n_images)
    if n_images > max_images:
        images = np.sort(np.random.default_rng(seed).choice(n_images, size=max_images, replace=False))
    captions = np.flatnonzero(np.isin(np.asarray(txt_to_img, dtype=np.int64), images))
    return images, captions


def pca2(x: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Rows of ``x`` [n, d] projected on their top-2 principal directions -> ``([n, 2], explained)``,
    ``explained`` = the share of the total variance along PC1 and PC2."""
    centred = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2
    share = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    share = np.pad(share, (0, max(0, 2 - len(share))))
    return centred @ vt[:2].T, (float(share[0]), float(share[1]))


@dataclass
class GapPanel:
    """One panel of the modality-gap figure and the numbers it shows.

    Attributes:
        gap: the number printed: the trial's ``gap`` column (what Table 2 averages) when the file is its
            test split, else :func:`pair_gap` of the file; ``gap_source`` says which.
        gap_file: :func:`pair_gap` of the file (a check: equal to ``gap`` for the test file).
        table_cell: Table 2's gap cell of the method (mean ± std over seeds), or "" without a gap column.
        images, captions: the rows drawn (all captions of the drawn images); ``caption_image`` is each drawn
            caption's position in ``images``.
        explained: the share of variance along PC1 and PC2 of the joint projection.
    """

    dataset: str
    method: str
    trial_id: str
    seed: object
    split: str
    path: Path
    gap: float
    gap_source: str
    gap_file: float
    table_cell: str
    n_images: int
    n_captions: int
    images: np.ndarray = field(repr=False)
    captions: np.ndarray = field(repr=False)
    caption_image: np.ndarray = field(repr=False)
    xy_img: np.ndarray = field(repr=False)
    xy_txt: np.ndarray = field(repr=False)
    explained: tuple[float, float] = (0.0, 0.0)


def _table_gap_cells(df: pd.DataFrame) -> dict[tuple[str, str], str]:
    """Table 2's gap cell per (data set, method): the same statistics and formatting as the table."""
    if "gap" not in df.columns:
        return {}
    ok = numeric(df, ["gap"])
    ok = ok[ok["status"] == OK]
    if ok.empty:
        return {}
    stats, seeds = seed_stats(ok, ["dataset", "method"], ["gap"])
    index = [tuple(k) for k in stats.index]
    texts, _, _ = cells(stats, seeds, index, "gap", None)
    return dict(zip(index, texts))


def _gap_panel(row: pd.Series, path: Path, table_cell: str, max_images: int) -> GapPanel | None:
    with np.load(path) as z:
        if "img" not in z or "txt" not in z:
            log.info("modality gap: %s lacks img/txt arrays", path)
            return None
        img, txt = z["img"].astype(np.float64), z["txt"].astype(np.float64)
        paired = "txt_to_img" in z
        t2i = np.asarray(z["txt_to_img"] if paired else np.arange(len(txt)), dtype=np.int64)
    if not paired and len(txt) != len(img):
        log.info("modality gap: %s has %d images, %d captions and no txt_to_img", path, len(img), len(txt))
        return None
    split = _split_of(path)
    gap_file = pair_gap(img, txt, t2i)
    row_gap = pd.to_numeric(pd.Series([row.get("gap")]), errors="coerce").iloc[0]
    if split == "test" and pd.notna(row_gap):
        gap, source = float(row_gap), "trials row"
        if abs(gap - gap_file) > 1e-4:
            log.warning(
                "modality gap: %s gives gap %.4f, trial %s's row %.4f: not that trial's test embeddings?",
                path,
                gap_file,
                row["trial_id"],
                gap,
            )
    else:
        gap, source = gap_file, "embeddings file"
    images, captions = sample_images(t2i, len(img), max_images)
    xy, explained = pca2(np.concatenate([img[images], txt[captions]]))
    return GapPanel(
        dataset=str(row["dataset"]),
        method=str(row["method"]),
        trial_id=str(row.get("trial_id", "")),
        seed=row["seed"],
        split=split,
        path=path,
        gap=gap,
        gap_source=source,
        gap_file=gap_file,
        table_cell=table_cell,
        n_images=len(img),
        n_captions=len(txt),
        images=images,
        captions=captions,
        caption_image=np.searchsorted(images, t2i[captions]),
        xy_img=xy[: len(images)],
        xy_txt=xy[len(images) :],
        explained=explained,
    )


def gap_panels(trials: pd.DataFrame, max_images: int = 300, max_panels: int = 12) -> list[GapPanel]:
    """The panels of the modality-gap figure: per (data set, method) in table order, its completed trial
    of the lowest seed that has an embeddings file, up to ``max_panels``.

    The file is the ``embeddings_path`` column, else the first ``*.npz`` (a ``test`` one preferred) in the
    ``run.out_dir`` folder; relative paths are taken from the trial's results folder.
    """
    df = prepare(trials)
    # The training loop writes <run.out_dir>/embeddings_<split>.npz; a sweep records the kept test file.
    column = next(
        (c for c in ("embeddings_path", "run.out_dir") if c in df.columns and df[c].notna().any()), None
    )
    if column is None:
        log.info(
            "modality gap skipped: trials have no embeddings_path or run.out_dir (run.save_embeddings off)"
        )
        return []
    table = _table_gap_cells(df)
    ok = df[(df["status"] == OK) & df[column].notna() & (df["method"] != "search")]
    order = method_order(ok)  # before sorting, which would make first appearance alphabetical
    ok = ok.assign(_seed=pd.to_numeric(ok["seed"], errors="coerce")).sort_values(
        ["_seed", "seed"], kind="stable"
    )
    panels: list[GapPanel] = []
    for ds in sorted(ok["dataset"].unique()):
        for method in order:
            for _, row in ok[(ok["dataset"] == ds) & (ok["method"] == method)].iterrows():
                path = _find_npz(str(row[column]), row.get("results_dir"))
                panel = (
                    None if path is None else _gap_panel(row, path, table.get((ds, method), ""), max_images)
                )
                if panel is not None:
                    panels.append(panel)
                    break
                log.info(
                    "modality gap: trial %s (%s) has no readable embeddings at %s",
                    row.get("trial_id"),
                    method,
                    row[column],
                )
            if len(panels) == max_panels:
                return panels
    return panels


def gap_figure(panels: Sequence[GapPanel], lines: int = 8) -> plt.Figure:
    """The modality-gap figure of ``panels``: images and their captions, each panel its own joint PCA,
    ``lines`` images joined to each of their captions, the two modality means joined by a black line."""
    ncols = min(len(panels), 6)  # the paper's 12 rows as two rows of six panels
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.5 * nrows + 0.9), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    several = len({p.dataset for p in panels}) > 1
    for ax, p in zip(axes.flat, panels):
        for k in np.linspace(0, len(p.images) - 1, min(lines, len(p.images))).astype(int):
            for c in np.flatnonzero(p.caption_image == k):
                xs = [p.xy_img[k, 0], p.xy_txt[c, 0]]
                ax.plot(xs, [p.xy_img[k, 1], p.xy_txt[c, 1]], color="0.45", lw=0.6, zorder=0)
        ax.scatter(p.xy_img[:, 0], p.xy_img[:, 1], s=5, alpha=0.7, color="C0", label="image", lw=0)
        ax.scatter(p.xy_txt[:, 0], p.xy_txt[:, 1], s=3, alpha=0.5, color="C1", label="caption", lw=0)
        (ci, ct) = p.xy_img.mean(axis=0), p.xy_txt.mean(axis=0)
        ax.plot([ci[0], ct[0]], [ci[1], ct[1]], color="k", lw=1.2, marker="X", ms=6, label="means")
        ds = f"{p.dataset} · " if several else ""
        ax.set_title(f"{display_name(p.method)}\n{ds}seed {p.seed} · {p.split} split", fontsize=9)
        text = f"gap {p.gap:.{decimals('gap')}f} (this seed)"
        if p.table_cell:
            text += f"\nTable 2: {p.table_cell}"
        ax.text(
            0.02,
            0.98,
            text,
            transform=ax.transAxes,
            va="top",
            fontsize=7,
            bbox={"facecolor": "w", "alpha": 0.8, "lw": 0},
        )
        ax.set_xlabel(f"PC1 ({100 * p.explained[0]:.0f} % var.)", fontsize=8)
        ax.set_ylabel(f"PC2 ({100 * p.explained[1]:.0f} % var.)", fontsize=8)
        ax.tick_params(labelsize=6)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper right", ncol=3, fontsize=8, markerscale=2, frameon=False)
    splits = "/".join(sorted({p.split for p in panels}))
    fig.suptitle(
        f"Image and caption embeddings of the {splits} split, one trial per method, joint PCA to 2-D"
    )
    shown = max(len(p.images) for p in panels)
    fig.text(
        0.5,
        0.0,
        f"gap = ‖mean image − mean caption‖ over all images and their first captions (geomix.metrics."
        f"modality_gap at the trial's end, the trials' gap column); Table 2 = its mean ± std over seeds. "
        f"Points: up to {shown} images, each with all its captions; grey lines join {lines} images to their "
        "captions; the black line joins the means of the image and of the caption points drawn.",
        ha="center",
        va="top",
        fontsize=7,
        wrap=True,
    )
    fig.tight_layout()
    return fig


def modality_gap(
    trials: pd.DataFrame, out_dir: str | os.PathLike[str], max_images: int = 300, max_panels: int = 12
) -> list[Path]:
    """The modality-gap figure (:func:`gap_panels`, :func:`gap_figure`), saved; returns the paths."""
    panels = gap_panels(trials, max_images=max_images, max_panels=max_panels)
    if not panels:
        log.info("modality gap skipped: no readable embeddings files")
        return []
    return _save(gap_figure(panels), Path(out_dir), "modality_gap")

