"""open_clip model factory: any model name, a pretrained tag or a local checkpoint, and tiny CPU configs.

The factory never trains: the embedded "base" model (the paper's zero-shot starting point, pre-trained on
the embedded data) is built above the training loop, in :mod:`geomix.basemodel`.

Example::

    model, preprocess, tokenizer = create(ModelConfig(name="geomix-tiny", pretrained=None))
    img = preprocess(pil_image)[None]            # [1, 3, 32, 32]
    tokens = tokenizer(["a red circle"])         # [1, 32]
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from geomix.config import EMBEDDED_BASE, ModelConfig

log = logging.getLogger(__name__)


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


def create(cfg: ModelConfig, *, device: str | torch.device = "cpu") -> tuple[nn.Module, Callable, Callable]:
    """Build an open_clip model with its evaluation preprocess and tokenizer.

    Args:
        cfg: model name and weights. ``cfg.pretrained`` is None (random init with ``logit_scale =
            ln(1/init_tau)``), an open_clip pretrained tag or a local checkpoint file (``'embedded-base'``
            is :func:`geomix.basemodel.starting_model`'s).
        device: where the model lives.

    Returns:
        ``(model, preprocess, tokenizer)``: ``preprocess`` maps a PIL image to a float tensor [3, H, W]
        (deterministic: resize, centre crop, normalise), ``tokenizer`` maps ``list[str]`` to a LongTensor
        [k, context_length].

    Raises:
        ValueError: unknown model name, unknown pretrained tag, an unreadable or mismatched checkpoint, or
            ``'embedded-base'`` (built by :mod:`geomix.basemodel`, not here).
    """
    _check_name(cfg)
    pretrained = cfg.pretrained
    if pretrained == EMBEDDED_BASE:
        raise ValueError(
            f"model.pretrained={EMBEDDED_BASE!r} is invalid for geomix.models.create: allowed is None, a tag "
            "or a checkpoint path; the embedded base model is geomix.basemodel.starting_model's"
        )
    if pretrained is not None and not Path(pretrained).is_file():
        _check_tag(cfg)
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

    model, preprocess, tokenizer = random_init(cfg, device)
    if pretrained is not None:
        load_checkpoint(model, pretrained)
    return model, preprocess, tokenizer


def check(cfg: ModelConfig) -> None:
    """Check ``cfg`` without building anything: ``model.name`` is an open_clip model and ``model.pretrained``
    is None, ``'embedded-base'``, an existing file or a pretrained tag of that model (whether a file is a
    checkpoint of this model is known only when :func:`load_checkpoint` reads it).

    Raises:
        ValueError: naming ``model.name`` or ``model.pretrained`` and what is allowed.
    """
    _check_name(cfg)
    if cfg.pretrained not in (None, EMBEDDED_BASE) and not Path(cfg.pretrained).is_file():
        _check_tag(cfg)


def _check_tag(cfg: ModelConfig) -> None:
    tags = open_clip.list_pretrained_tags_by_model(cfg.name)
    if cfg.pretrained not in tags:
        raise ValueError(
            f"model.pretrained={cfg.pretrained!r} is invalid: it is not a checkpoint file and not a "
            f"pretrained tag of {cfg.name!r}; allowed are None, {EMBEDDED_BASE!r}, a local checkpoint "
            f"path, or one of the tags {sorted(tags) or '(none for this model)'}"
        )


def _check_name(cfg: ModelConfig) -> None:
    """``model.name`` must be an open_clip model (geomix's tiny configs registered first)."""
    register_tiny_configs()
    if cfg.name not in open_clip.list_models():
        raise ValueError(
            f"model.name={cfg.name!r} is invalid: allowed are open_clip model names, e.g. "
            f"{', '.join(sorted(TINY_CONFIGS))}, ViT-B-32, RN50 (see open_clip.list_models())"
        )


def _quiet_no_weights(record: logging.LogRecord) -> bool:
    """Drop open_clip's "No pretrained weights loaded" warning: geomix loads its weights itself right after
    (a checkpoint, the embedded base) or was asked for a random init, so the warning only misleads."""
    return not record.getMessage().startswith("No pretrained weights loaded")


def random_init(cfg: ModelConfig, device: str | torch.device) -> tuple[nn.Module, Callable, Callable]:
    """A randomly initialised ``cfg.name`` (from the caller's torch RNG), ``logit_scale = ln(1/init_tau)``."""
    _check_name(cfg)
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
        reason = (str(e).strip().splitlines() or [""])[0][:120]  # torch's messages run over several lines
        raise ValueError(
            f"model.pretrained={path!r} is invalid: could not read it as a torch checkpoint "
            f"({type(e).__name__}: {reason}); allowed is a file written by torch.save(state_dict)"
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
