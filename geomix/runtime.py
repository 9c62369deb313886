"""What one training process runs on and with: distributed rank, device, precision, optimiser, schedule,
and the two-tower forward DistributedDataParallel wraps. Pure helpers of :mod:`geomix.loop`."""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from geomix.config import LR_SCHEDULES, TrainConfig, check_choice

__all__ = ["dist_context", "device_for", "autocast_dtype", "adamw", "lr_multiplier", "Towers",
           "fast_transform_ok"]


def dist_context() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def device_for(name: str, rank: int) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("run.device='cuda' is invalid: allowed 'auto' or 'cpu' on this machine, which "
                             "has no CUDA device")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device("cpu")


class Towers(nn.Module):
    """Both encoders in one forward, so DistributedDataParallel sees one forward per step.

    ``extra`` images (Un-Mix's mixed batch) go through the image tower together with the clean ones.
    Returns normalised float32 features and the logit scale.
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(
        self, images: torch.Tensor, texts: torch.Tensor, extra: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        n = images.shape[0]
        pix = images if extra is None else torch.cat([images, extra])
        img = self.clip.encode_image(pix, normalize=True).float()
        txt = self.clip.encode_text(texts, normalize=True).float()
        img, extra_f = (img, None) if extra is None else (img[:n], img[n:])
        return img, txt, extra_f, self.clip.logit_scale.exp().float()


def fast_transform_ok(cfg: TrainConfig, model: nn.Module) -> bool:
    """Whether the embedded data's fast transform fits ``model`` (its images are at the model's size)."""
    size = getattr(getattr(model, "visual", None), "image_size", None)
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    return cfg.data.source == "shapes" and size == (cfg.data.image_size, cfg.data.image_size)


def adamw(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with open_clip's split: no weight decay on gains, biases, logit_scale and embeddings."""

    def no_decay(name: str, p: torch.Tensor) -> bool:
        return p.ndim < 2 or any(s in name for s in ("bn", "ln", "bias", "logit_scale", "embedding"))

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": cfg.optim.weight_decay},
    ]
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)


def lr_multiplier(schedule: str, step: int, warmup: int, total: int) -> float:
    """Multiplier of the base lr at ``step`` (``optim.schedule``): linear warm-up to 1 over ``warmup``
    steps, then ``cosine`` or ``linear`` decay to 0 at ``total``, or ``constant`` 1."""
    check_choice("optim.schedule", schedule, LR_SCHEDULES)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup) / max(1, total - warmup), 1.0)
    return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "fp32":
        return None
    if device.type != "cuda":
        raise ValueError(f"run.precision={precision!r} is invalid on the CPU: allowed 'auto' or 'fp32' (bf16 "
                         "and fp16 autocast are for CUDA devices)")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def node_ids(hooks: Any, world: int) -> str | None:
    """The comma-joined node id of every rank (``hooks.node_id()``, a Ray Train worker's), or None."""
    node_id = getattr(hooks, "node_id", None)
    mine = node_id() if callable(node_id) else None
    if world > 1:
        ids: list[Any] = [None] * world
        dist.all_gather_object(ids, mine)
    else:
        ids = [mine]
    return ",".join(str(i) for i in ids) if any(i is not None for i in ids) else None
