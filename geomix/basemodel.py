"""The embedded base model: the paper's zero-shot starting point, for the embedded data.

No pretrained weights can be downloaded here, so the starting model is pre-trained (CLIP loss only) on the
embedded data's base styles with the training loop, once per recipe, and cached by the recipe's hash under
``model.cache_dir``. This module sits above the loop (:mod:`geomix.loop`) and the model factory
(:mod:`geomix.models`), so the factory never trains and nothing imports in a circle.

Example::

    model, preprocess, tokenizer = starting_model(cfg.model, cfg.data)   # any model, embedded base included
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geomix import logs
from geomix.atomic import atomic_path
from geomix.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, config_hash
from geomix.data.shapes import GENERATOR_VERSION
from geomix.loop import train_model
from geomix.models import EMBEDDED_BASE, TINY_CONFIGS, create, load_checkpoint, random_init

log = logging.getLogger(__name__)

__all__ = ["starting_model", "prepare", "base_recipe", "base_path"]

# Bump when the base-model recipe changes in code (not in config), so stale caches are not reused.
_BASE_RECIPE_VERSION = 2  # 2: the base's initial weights come from data.seed, not the caller's RNG


def starting_model(
    model_cfg: ModelConfig, data_cfg: DataConfig, *, device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> tuple[nn.Module, Callable, Callable]:
    """A trial's starting model: the embedded base (built and cached on first use) for
    ``model.pretrained='embedded-base'``, else :func:`geomix.models.create`. ``progress``: as
    :func:`prepare`.

    Raises:
        ValueError: as :func:`geomix.models.create`, or ``'embedded-base'`` without the embedded data.
    """
    if model_cfg.pretrained != EMBEDDED_BASE:
        return create(model_cfg, device=device)
    path = prepare(model_cfg, data_cfg, progress=progress)
    model, preprocess, tokenizer = random_init(model_cfg, "cpu")
    load_checkpoint(model, path)
    return model.to(device), preprocess, tokenizer


def prepare(model_cfg: ModelConfig, data_cfg: DataConfig, *, progress: bool | None = None) -> Path:
    """Build the cached base checkpoint of this recipe unless it exists; returns its path.

    One builder per recipe: concurrent callers (the trials of a sweep) wait on a file lock instead of all
    training the same base at once. ``progress``: a tqdm bar (steps, loss) while it is built; None = when
    this process writes to a terminal (:func:`geomix.logs.is_console`: a sweep's driver or the train
    command, never a Ray trial). The bar changes nothing in the model.
    """
    if data_cfg.source != "shapes":
        raise ValueError(
            f"model.pretrained={EMBEDDED_BASE!r} is invalid with data.source={data_cfg.source!r}: allowed "
            "only with the embedded data (data.source='shapes')"
        )
    path = base_path(model_cfg, data_cfg)
    if path.is_file():
        log.info("embedded base model: cache hit %s", path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not path.is_file():
                _build(model_cfg, data_cfg, path, logs.is_console() if progress is None else progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


def base_recipe(cfg: ModelConfig, data_cfg: DataConfig) -> dict[str, Any]:
    """What the embedded base model depends on (its cache key): model architecture and ``base_*``
    settings, and the data generator's settings that shape the base styles. Fine-tune-only fields
    (``data.styles``, ``data.train_size``, ``model.cache_dir``, ...) are left out on purpose, so every
    fine-tune of a sweep shares one base."""
    model_keys = ("name", "base_epochs", "base_lr", "base_train_size", "base_batch_size", "init_tau",
                  "max_logit_scale")
    data_keys = ("source", "seed", "image_size", "base_styles", "captions_per_image")
    return {
        "version": _BASE_RECIPE_VERSION,
        # a change of the generator's pixels or captions must rebuild the base, not reuse a stale one
        "generator": GENERATOR_VERSION,
        "model": {k: getattr(cfg, k) for k in model_keys},
        "data": {k: list(v) if isinstance(v, tuple) else v for k, v in
                 ((k, getattr(data_cfg, k)) for k in data_keys)},
        "arch": TINY_CONFIGS.get(cfg.name),
    }


def base_path(cfg: ModelConfig, data_cfg: DataConfig) -> Path:
    """Where the cached base checkpoint for this recipe lives."""
    return Path(cfg.cache_dir).expanduser() / f"base-{cfg.name}-{config_hash(base_recipe(cfg, data_cfg))}.pt"


def _build(cfg: ModelConfig, data_cfg: DataConfig, path: Path, progress: bool) -> None:
    t0 = time.perf_counter()
    log.info("embedded base model: building %s (CLIP-only on styles %s)", path, list(data_cfg.base_styles))
    base_cfg = TrainConfig(
        method="base",
        data=dataclasses.replace(data_cfg, styles=tuple(data_cfg.base_styles), train_size=cfg.base_train_size,
                                 target_domain=None, source_domains=(), shot_seed=None),  # not classify
        model=dataclasses.replace(cfg, pretrained=None),
        optim=OptimConfig(epochs=cfg.base_epochs, batch_size=cfg.base_batch_size, lr=cfg.base_lr),
        run=RunConfig(seed=data_cfg.seed, device="cpu", eval_every=0, out_dir=None, progress=progress),
    )
    # The base build must not disturb the caller's RNG (a cache hit and a miss give the same run), and the
    # caller's RNG must not shape the base: its initial weights come from data.seed, so whoever builds it
    # first (a sweep driver, a trial, the train CLI) gets the same model for the same recipe.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(data_cfg.seed)
        model, preprocess, tokenizer = random_init(cfg, "cpu")
        train_model(base_cfg, model, preprocess, tokenizer)
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "recipe": json.dumps(base_recipe(cfg, data_cfg))}, tmp)
    log.info("embedded base model: built in %.1f s", time.perf_counter() - t0)
