"""open_clip model factory: any model name, a pretrained tag or a local checkpoint, tiny CPU configs, and
the embedded "base" model (the paper's zero-shot starting point, pre-trained on the embedded data's base
styles and cached by config hash).

Example::

    model, preprocess, tokenizer = create(ModelConfig(name="geomix-tiny", pretrained=None))
    img = preprocess(pil_image)[None]            # [1, 3, 32, 32]
    tokens = tokenizer(["a red circle"])         # [1, 32]
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from geomix.config import DataConfig, ModelConfig, config_hash
from geomix.data.shapes import GENERATOR_VERSION

log = logging.getLogger(__name__)

EMBEDDED_BASE = "embedded-base"
# Bump when the base-model recipe changes in code (not in config), so stale caches are not reused.
_BASE_RECIPE_VERSION = 2  # 2: the base's initial weights come from data.seed, not the caller's RNG

# Tiny open_clip architectures for CPU work. They use open_clip's own CLIP class and tokenizer (vocab
# 49408), so everything downstream is exactly what a real model goes through. The default image tower is
# open_clip's ModifiedResNet (layers as a list): on 32-pixel images it escapes the contrastive plateau
# (loss ~ ln n) within a couple of epochs where a same-cost ViT needs four or more, which is what makes a
# base model in a few CPU minutes possible. The ViT variants are kept for ViT-specific code paths.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "geomix-tiny": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 32},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "geomix-vit-tiny": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 32, "layers": 3, "width": 128, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
    },
    "geomix-micro": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
}

_registered = False


def register_tiny_configs() -> None:
    """Add :data:`TINY_CONFIGS` to open_clip's model-config registry (idempotent).

    ``open_clip.add_model_config(path)`` is the library's supported entry point and reads JSON files, so
    the configs are written once per process to a private temporary folder.
    """
    global _registered
    if _registered and all(n in open_clip.list_models() for n in TINY_CONFIGS):
        return
    folder = Path(tempfile.mkdtemp(prefix="geomix-model-configs-"))
    for name, cfg in TINY_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    _registered = True


def create(
    cfg: ModelConfig,
    *,
    data_cfg: DataConfig | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, Callable, Callable]:
    """Build an open_clip model with its evaluation preprocess and tokenizer.

    Args:
        cfg: model name and weights. ``cfg.pretrained`` is None (random init with ``logit_scale =
            ln(1/init_tau)``), an open_clip pretrained tag, a local checkpoint file, or ``'embedded-base'``.
        data_cfg: the data config; required for ``'embedded-base'`` (its seed, image size and
            ``base_styles`` are part of the base model's recipe).
        device: where the model lives.

    Returns:
        ``(model, preprocess, tokenizer)``: ``preprocess`` maps a PIL image to a float tensor [3, H, W]
        (deterministic: resize, centre crop, normalise), ``tokenizer`` maps ``list[str]`` to a LongTensor
        [k, context_length].

    Raises:
        ValueError: unknown model name, unknown pretrained tag, an unreadable or mismatched checkpoint, or
            ``'embedded-base'`` without embedded (``source='shapes'``) data.
    """
    cfg.validate("model")
    register_tiny_configs()
    if cfg.name not in open_clip.list_models():
        raise ValueError(
            f"model.name={cfg.name!r} is invalid: allowed are open_clip model names, e.g. "
            f"{', '.join(sorted(TINY_CONFIGS))}, ViT-B-32, RN50 (see open_clip.list_models())"
        )
    pretrained = cfg.pretrained
    if pretrained == EMBEDDED_BASE:
        return _embedded_base(cfg, data_cfg, device)
    if pretrained is not None and not Path(pretrained).is_file():
        tags = open_clip.list_pretrained_tags_by_model(cfg.name)
        if pretrained not in tags:
            raise ValueError(
                f"model.pretrained={pretrained!r} is invalid: it is not a checkpoint file and not a "
                f"pretrained tag of {cfg.name!r}; allowed are None, {EMBEDDED_BASE!r}, a local checkpoint "
                f"path, or one of the tags {sorted(tags) or '(none for this model)'}"
            )
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                cfg.name, pretrained=pretrained, device=device
            )
        except Exception as e:  # network errors, missing hub files: say what failed and what to do
            raise RuntimeError(
                f"could not load open_clip weights {cfg.name!r} / {pretrained!r} ({type(e).__name__}: {e}); "
                "without network access pass a local checkpoint path as model.pretrained"
            ) from e
        return model, preprocess, open_clip.get_tokenizer(cfg.name)

    model, preprocess, tokenizer = _random_init(cfg, device)
    if pretrained is not None:
        load_checkpoint(model, pretrained)
    return model, preprocess, tokenizer


def _quiet_no_weights(record: logging.LogRecord) -> bool:
    """Drop open_clip's "No pretrained weights loaded" warning: geomix loads its weights itself right after
    (a checkpoint, the embedded base) or was asked for a random init, so the warning only misleads."""
    return not record.getMessage().startswith("No pretrained weights loaded")


def _random_init(cfg: ModelConfig, device: str | torch.device) -> tuple[nn.Module, Callable, Callable]:
    root = logging.getLogger()
    root.addFilter(_quiet_no_weights)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(cfg.name, pretrained=None, device=device)
    finally:
        root.removeFilter(_quiet_no_weights)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1.0 / cfg.init_tau))
    return model, preprocess, open_clip.get_tokenizer(cfg.name)


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Load weights from a local file into ``model`` (strict).

    Accepts a raw ``state_dict`` or ``{"state_dict": ...}`` (open_clip_train's format), with or without
    the ``module.`` prefix DDP adds. Loaded with ``weights_only=True``: no code runs from the file.
    """
    path = str(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"model.pretrained={path!r} is invalid: could not read it as a torch checkpoint "
            f"({type(e).__name__}: {e}); allowed is a file written by torch.save(state_dict)"
        ) from e
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"model.pretrained={path!r} is invalid: allowed is a state_dict or {{'state_dict': ...}} "
            "of tensors"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # same keys, other shapes
        raise ValueError(
            f"model.pretrained={path!r} does not match the model ({str(e).splitlines()[-1].strip()}); "
            "allowed is a checkpoint of the same architecture"
        ) from e
    if missing or unexpected:
        raise ValueError(
            f"model.pretrained={path!r} does not match the model: missing keys {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}; allowed is a checkpoint of the same architecture"
        )


# ----------------------------------------------------------------------------------------------------------
# the embedded base model


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


def _embedded_base(
    cfg: ModelConfig, data_cfg: DataConfig | None, device: str | torch.device
) -> tuple[nn.Module, Callable, Callable]:
    if data_cfg is None or data_cfg.source != "shapes":
        raise ValueError(
            f"model.pretrained={EMBEDDED_BASE!r} is invalid with data.source="
            f"{getattr(data_cfg, 'source', None)!r}: allowed only with the embedded data "
            "(data.source='shapes')"
        )
    path = base_path(cfg, data_cfg)
    model, preprocess, tokenizer = _random_init(cfg, "cpu")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        # One builder per recipe: concurrent trials of a sweep wait for it instead of all training a base.
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not path.is_file():
                    _build_base(cfg, data_cfg, preprocess, tokenizer, path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    else:
        log.info("embedded base model: cache hit %s", path)
    load_checkpoint(model, path)
    return model.to(device), preprocess, tokenizer


def _build_base(
    cfg: ModelConfig,
    data_cfg: DataConfig,
    preprocess: Callable,
    tokenizer: Callable,
    path: Path,
) -> None:
    # Imported here: train imports this module.
    from geomix import train
    from geomix.config import OptimConfig, RunConfig, TrainConfig

    t0 = time.perf_counter()
    log.info("embedded base model: building %s (CLIP-only on styles %s)", path, list(data_cfg.base_styles))
    base_cfg = TrainConfig(
        method="base",
        data=dataclasses.replace(
            data_cfg, styles=tuple(data_cfg.base_styles), train_size=cfg.base_train_size
        ),
        model=dataclasses.replace(cfg, pretrained=None),
        optim=OptimConfig(epochs=cfg.base_epochs, batch_size=cfg.base_batch_size, lr=cfg.base_lr),
        run=RunConfig(seed=data_cfg.seed, device="cpu", eval_every=0, out_dir=None, progress=False),
    ).validate()
    # The base build must not disturb the caller's RNG (a cache hit and a miss give the same run), and the
    # caller's RNG must not shape the base: its initial weights come from data.seed, so whoever builds it
    # first (a sweep driver, a trial, the train CLI) gets the same model for the same recipe.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(data_cfg.seed)
        model, _, _ = _random_init(cfg, "cpu")
        train.train_model(base_cfg, model, preprocess, tokenizer)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"state_dict": model.state_dict(), "recipe": json.dumps(base_recipe(cfg, data_cfg))}, tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    log.info("embedded base model: built in %.1f s", time.perf_counter() - t0)
