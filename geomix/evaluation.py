"""Evaluation of a model on one split: embed the images, captions and class prompts, then the metrics.

The training loop (:mod:`geomix.loop`) evaluates the unwrapped model on rank 0; the splits' tensors are
built once per trial and cached here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geomix import atomic, metrics
from geomix.config import DataConfig

__all__ = ["EvalData", "Evaluator", "save_embeddings"]

_EMBED_BATCH = 256


@dataclasses.dataclass
class EvalData:
    images: torch.Tensor  # [n, 3, H, W]
    captions: torch.Tensor  # [m, L]
    txt_to_img: torch.Tensor  # [m]
    labels: torch.Tensor | None  # [n]
    class_tokens: torch.Tensor | None  # [C, L]


class Evaluator:
    """Embeds and scores a model on the ``val`` / ``test`` splits of ``data_cfg``.

    Args:
        data_cfg: which data. transform: the image transform (None = the data's fast path).
        tokenizer: the model's tokenizer. device: where the model runs.
        autocast_dtype: the training precision (None = float32); the embeddings come back in float32.
    """

    def __init__(
        self,
        data_cfg: DataConfig,
        transform: Callable | None,
        tokenizer: Callable,
        device: torch.device,
        autocast_dtype: torch.dtype | None,
    ) -> None:
        self.data_cfg, self.transform, self.tokenizer = data_cfg, transform, tokenizer
        self.device, self.autocast_dtype = device, autocast_dtype
        self._cache: dict[str, EvalData] = {}

    def data(self, split: str) -> EvalData:
        if split not in self._cache:
            from geomix import data as gdata

            ev = gdata.build_eval_set(self.data_cfg, split, self.transform, self.tokenizer)
            images = torch.stack([ev.images[i] for i in range(len(ev.images))])
            class_tokens = self.tokenizer(list(ev.class_prompts)) if ev.class_prompts else None
            self._cache[split] = EvalData(images, ev.captions, ev.txt_to_img, ev.labels, class_tokens)
        return self._cache[split]

    @torch.no_grad()
    def embed(self, model: nn.Module, split: str) -> tuple[dict[str, torch.Tensor | None], EvalData]:
        """``({"img", "txt", "class_txt"}, data)``: normalised float32 CPU embeddings of the split."""
        ev = self.data(split)
        was_training = model.training
        model.eval()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            def enc_i(x: torch.Tensor) -> torch.Tensor:
                return model.encode_image(x.to(self.device), normalize=True).float().cpu()

            def enc_t(x: torch.Tensor) -> torch.Tensor:
                return model.encode_text(x.to(self.device), normalize=True).float().cpu()

            bsz = _EMBED_BATCH
            img = torch.cat([enc_i(ev.images[i : i + bsz]) for i in range(0, len(ev.images), bsz)])
            txt = torch.cat([enc_t(ev.captions[i : i + bsz]) for i in range(0, len(ev.captions), bsz)])
            cls = enc_t(ev.class_tokens) if ev.class_tokens is not None else None
        model.train(was_training)
        return {"img": img, "txt": txt, "class_txt": cls}, ev

    def evaluate(
        self, model: nn.Module, split: str, scale: float
    ) -> tuple[dict[str, float], dict[str, torch.Tensor | None], EvalData]:
        """``(metrics of geomix.metrics.evaluate_embeddings under plain names, embeddings, data)``."""
        emb, ev = self.embed(model, split)
        res = metrics.evaluate_embeddings(
            emb["img"], emb["txt"], ev.txt_to_img, scale=scale, class_txt=emb["class_txt"], labels=ev.labels,
        )
        return {k: float(v) for k, v in res.items()}, emb, ev


def save_embeddings(path: str | Path, emb: dict[str, Any], ev: EvalData) -> None:
    """Write ``img``, ``txt``, ``txt_to_img`` (and ``labels``, ``class_txt`` when present) as one ``.npz``."""
    arrays = {"img": emb["img"].numpy(), "txt": emb["txt"].numpy(), "txt_to_img": ev.txt_to_img.numpy()}
    if ev.labels is not None:
        arrays["labels"] = ev.labels.numpy()
    if emb["class_txt"] is not None:
        arrays["class_txt"] = emb["class_txt"].numpy()
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
