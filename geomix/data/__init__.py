"""Image-caption data: the embedded shapes generator and loaders for real CSV / Karpathy-JSON data.

Public API (pinned in the team contract)::

    train = build_train_set(cfg.data, preprocess, tokenizer)          # (image [3,H,W], tokens [L])
    train.set_epoch(epoch)                                              # one caption per image per epoch
    ev = build_eval_set(cfg.data, "val", preprocess, tokenizer)         # EvalSet: images, captions [m,L], ...
    validate_data(cfg.data)                                             # before any expensive work

``transform`` is open_clip's preprocess (PIL -> tensor) or None for :class:`FastTransform` (uint8 ->
CLIP-normalised tensor at ``cfg.image_size``, resizing only images of another size), which is much
faster on the 32-pixel embedded images. ``tokenize`` is an open_clip tokenizer (list[str] -> [k, L]).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from geomix.checks import check_choice
from geomix.config import DataConfig
from geomix.data.sets import EvalSet, FastTransform, ImageSet, TrainSet, make_eval_set
from geomix.data.shapes import STYLES, ShapesData

__all__ = [
    "STYLES",
    "EvalSet",
    "FastTransform",
    "ImageSet",
    "ShapesData",
    "TrainSet",
    "build_eval_set",
    "build_named_set",
    "eval_labels",
    "same_as_test",
    "build_train_set",
    "build_transfer",
    "validate_data",
]

log = logging.getLogger(__name__)


def _transform(
    cfg: DataConfig, transform: Callable[[Any], torch.Tensor] | None
) -> Callable[[Any], torch.Tensor]:
    return FastTransform(cfg.image_size) if transform is None else transform


def _source(cfg: DataConfig, split: str, styles: tuple[str, ...] | list[str] | None, size: int | None):
    if cfg.source == "shapes":
        default = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}[split]
        return ShapesData(
            split,
            default if size is None else size,
            tuple(cfg.styles if styles is None else styles),
            seed=cfg.seed,
            image_size=cfg.image_size,
            captions_per_image=cfg.captions_per_image,
        )
    from geomix.data.loaders import file_source

    return file_source(cfg, split, size=size)


def build_train_set(
    cfg: DataConfig,
    transform: Callable[[Any], torch.Tensor] | None,
    tokenize: Callable[[list[str]], torch.Tensor],
    *,
    styles: tuple[str, ...] | list[str] | None = None,
    size: int | None = None,
    seed: int | None = None,
) -> TrainSet:
    """The training split as a torch Dataset of ``(image [3, H, W], tokens [L])``.

    Args:
        cfg: the data config.
        transform: open_clip preprocess (PIL -> tensor), or None for the fast built-in transform.
        tokenize: open_clip tokenizer (list[str] -> LongTensor [k, L]); every caption is tokenised once.
        styles: embedded data only: styles to draw (default ``cfg.styles``; the base model uses
            ``cfg.base_styles``). Ignored by file sources.
        size: number of images (default ``cfg.train_size`` for the embedded data, every image for files;
            a file source keeps its first ``size`` images).
        seed: seeds the per-epoch caption choice (default ``cfg.seed``). The images themselves depend on
            ``cfg.seed`` only, so runs with different seeds train on the same data.

    Returns:
        A :class:`TrainSet`; call ``set_epoch(e)`` at the start of every epoch.
    """
    if cfg.source == "shapes" and styles is not None:
        _check_styles(styles)
    source = _source(cfg, "train", styles, size)
    log.info("train set: %s", source.describe())
    return TrainSet(source, _transform(cfg, transform), tokenize, seed=cfg.seed if seed is None else seed)


def build_eval_set(
    cfg: DataConfig,
    split: str,
    transform: Callable[[Any], torch.Tensor] | None,
    tokenize: Callable[[list[str]], torch.Tensor],
    *,
    styles: tuple[str, ...] | list[str] | None = None,
    size: int | None = None,
) -> EvalSet:
    """An evaluation split ('val' or 'test') with every caption tokenised (see :class:`EvalSet`).

    ``cfg.eval_captions='first'`` keeps only each image's first caption. ``styles`` / ``size`` as in
    :func:`build_train_set` (defaults ``cfg.styles`` and ``cfg.val_size`` / ``cfg.test_size``).
    """
    check_choice("split", split, ("val", "test"))
    if cfg.source == "shapes" and styles is not None:
        _check_styles(styles)
    source = _source(cfg, split, styles, size)
    log.info("%s set: %s", split, source.describe())
    first_only = cfg.eval_captions == "first"
    return make_eval_set(source, _transform(cfg, transform), tokenize, first_only=first_only)


def build_named_set(
    cfg: DataConfig,
    name: str,
    transform: Callable[[Any], torch.Tensor] | None,
    tokenize: Callable[[list[str]], torch.Tensor],
) -> EvalSet:
    """Extra evaluation set ``name`` (one of ``cfg.eval_set_names()``): ``cfg.eval_size`` test images of
    style ``name`` for the embedded data, the file ``cfg.eval_sets[name]`` otherwise."""
    check_choice("evaluation set", name, cfg.eval_set_names())
    source = _named_source(cfg, name)
    log.info("evaluation set %s: %s", name, source.describe())
    first_only = cfg.eval_captions == "first"
    return make_eval_set(source, _transform(cfg, transform), tokenize, first_only=first_only)


def _named_source(cfg: DataConfig, name: str):
    if cfg.source == "shapes":
        return _source(cfg, "test", (name,), cfg.eval_size or cfg.test_size)
    from geomix.data.loaders import eval_set_source

    return eval_set_source(cfg, name)


def same_as_test(cfg: DataConfig, name: str) -> bool:
    """Whether extra set ``name`` holds exactly the images and captions of the test split (the embedded
    target style at the test size), so its metrics are the test split's and need no second pass."""
    return (cfg.source == "shapes" and tuple(cfg.styles) == (name,)
            and (cfg.eval_size or cfg.test_size) == cfg.test_size)


def eval_labels(cfg: DataConfig) -> dict[str, list[int] | None]:
    """Class ids of every evaluation set, for checks before training: ``"test"`` and each extra set's name
    -> its labels, or None for a set without labels. Reads the files (no image is decoded)."""
    out: dict[str, list[int] | None] = {"test": _source(cfg, "test", None, None).labels}
    for name in cfg.eval_set_names():
        out[name] = _named_source(cfg, name).labels
    return out


def build_transfer(cfg: DataConfig, *, shot_seed: int):
    """The sets of a ``task='classify'`` trial (FSMDT): :func:`geomix.data.transfer.build_transfer`."""
    from geomix.data.transfer import build_transfer as build

    return build(cfg, shot_seed=shot_seed)


def _check_styles(styles: tuple[str, ...] | list[str]) -> None:
    if not styles:
        raise ValueError(f"styles={styles!r} is invalid: allowed a non-empty subset of {STYLES}")
    for s in styles:
        check_choice("styles", s, STYLES)


def validate_data(cfg: DataConfig, task: str = "retrieval") -> dict[str, int]:
    """Check the data can be built, before any expensive work; returns image counts per split.

    ``task='classify'``: the FSMDT task against its domains (:func:`geomix.data.transfer.validate_transfer`;
    counts ``train`` = source images, ``shots``, ``test``).

    Embedded data: the config (styles, sizes, image size). File sources: every file, column, row and image
    of every split (see :mod:`geomix.data.loaders`); a ValueError names the file and row, unless
    ``cfg.skip_bad``, which skips bad rows and reports them under ``'skipped'``. (The config itself was
    validated when it was built.)
    """
    if task == "classify":
        from geomix.data.transfer import validate_transfer

        return validate_transfer(cfg)
    if cfg.source == "shapes":
        overlap = sorted(set(cfg.styles) & set(cfg.base_styles))
        if overlap:
            log.warning("data.styles and data.base_styles share %s: fine-tune style not held back", overlap)
        return {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size, "skipped": 0}
    from geomix.data.loaders import validate_files

    return validate_files(cfg)
