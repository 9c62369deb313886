"""Evaluation of a model on its evaluation sets: embed the images, captions and class prompts, then the
metrics, and at the end of a run the probes (few-shot linear probe, embedding arithmetic).

The training loop (:mod:`geomix.loop`) evaluates the unwrapped model on rank 0; each set's tensors are
built once per trial and cached here. A set is named by its key: ``"val"``, ``"test"``, or an extra set's
name (``data.eval_styles`` / ``data.eval_sets``), whose metrics the loop reports as ``eval.<set>.<metric>``.
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
from geomix.config import DataConfig, EvaluationConfig, config_hash
from geomix.registry import eval_key, fewshot_key

__all__ = ["EvalData", "Evaluator", "save_embeddings"]

_EMBED_BATCH = 256
# Built evaluation sets kept per process (see Evaluator's share_key), the oldest dropped first.
_SHARED: dict[tuple, tuple[dict[str, Any], dict[str, Any]]] = {}
_SHARED_MAX = 2


@dataclasses.dataclass
class EvalData:
    images: torch.Tensor  # [n, 3, H, W]
    captions: torch.Tensor  # [m, L]
    txt_to_img: torch.Tensor  # [m]
    labels: torch.Tensor | None  # [n]
    class_tokens: torch.Tensor | None  # [C * prompt_groups, L], class-major
    prompt_groups: int = 1


class Evaluator:
    """Embeds and scores a model on the evaluation sets of ``data_cfg``.

    Args:
        data_cfg: which data. transform: the image transform (None = the data's fast path).
        tokenizer: the model's tokenizer. device: where the model runs.
        autocast_dtype: the training precision (None = float32); the embeddings come back in float32.
        eval_cfg: the end-of-run probes (``EvaluationConfig``; None = its defaults). seed: seeds the
            few-shot draws (the run's seed). share_key: what names the tokenizer (the model name): with
            the fast transform, sets built once are kept in the process for the next Evaluator of the
            same data (None = build per Evaluator).
    """

    def __init__(
        self,
        data_cfg: DataConfig,
        transform: Callable | None,
        tokenizer: Callable,
        device: torch.device,
        autocast_dtype: torch.dtype | None,
        eval_cfg: EvaluationConfig | None = None,
        seed: int = 0,
        share_key: str | None = None,
    ) -> None:
        self.data_cfg, self.transform, self.tokenizer = data_cfg, transform, tokenizer
        self.device, self.autocast_dtype = device, autocast_dtype
        self.eval_cfg, self.seed = eval_cfg or EvaluationConfig(), int(seed)
        # With the fast transform and a tokenizer named by ``share_key`` (the model name), the built sets
        # are the same for every trial of a sweep: a reused Tune actor keeps them for the next trial.
        shared = transform is None and share_key is not None
        key = (share_key, config_hash(data_cfg), self.eval_cfg.arith_size) if shared else None
        if key is not None and key not in _SHARED:
            while len(_SHARED) >= _SHARED_MAX:
                _SHARED.pop(next(iter(_SHARED)))
            _SHARED[key] = ({}, {})
        self._cache, self._arith = _SHARED[key] if key is not None else ({}, {})

    def data(self, key: str) -> EvalData:
        """The tensors of set ``key``: ``"val"``, ``"test"`` or an extra set's name."""
        if key not in self._cache:
            from geomix import data as gdata

            if key in ("val", "test"):
                ev = gdata.build_eval_set(self.data_cfg, key, self.transform, self.tokenizer)
            elif gdata.same_as_test(self.data_cfg, key):
                self._cache[key] = self.data("test")
                return self._cache[key]
            else:
                ev = gdata.build_named_set(self.data_cfg, key, self.transform, self.tokenizer)
            images = torch.stack([ev.images[i] for i in range(len(ev.images))])
            class_tokens = self.tokenizer(list(ev.class_prompts)) if ev.class_prompts else None
            self._cache[key] = EvalData(images, ev.captions, ev.txt_to_img, ev.labels, class_tokens,
                                        ev.prompt_groups)
        return self._cache[key]

    def _encoders(self, model: nn.Module):
        def enc_i(x: torch.Tensor) -> torch.Tensor:
            return model.encode_image(x.to(self.device), normalize=True).float().cpu()

        def enc_t(x: torch.Tensor) -> torch.Tensor:
            return model.encode_text(x.to(self.device), normalize=True).float().cpu()

        return enc_i, enc_t

    def _batched(self, fn: Callable, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([fn(x[i : i + _EMBED_BATCH]) for i in range(0, len(x), _EMBED_BATCH)])

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    @torch.no_grad()
    def embed(self, model: nn.Module, key: str) -> tuple[dict[str, torch.Tensor | None], EvalData]:
        """``({"img", "txt", "class_txt"}, data)``: normalised float32 CPU embeddings of set ``key``.
        ``class_txt`` is one row per class: the normalised mean of the class's normalised prompt
        embeddings (CLIP's prompt ensembling; a single prompt per class is its own embedding)."""
        ev = self.data(key)
        was_training = model.training
        model.eval()
        with self._autocast():
            enc_i, enc_t = self._encoders(model)
            img = self._batched(enc_i, ev.images)
            txt = self._batched(enc_t, ev.captions)
            cls = None
            if ev.class_tokens is not None:
                cls = self._batched(enc_t, ev.class_tokens)
                if ev.prompt_groups > 1:
                    cls = cls.view(-1, ev.prompt_groups, cls.shape[-1]).mean(1)
                    cls = torch.nn.functional.normalize(cls, dim=-1)
        model.train(was_training)
        return {"img": img, "txt": txt, "class_txt": cls}, ev

    def evaluate(
        self, model: nn.Module, key: str, scale: float, *, probes: bool = False
    ) -> tuple[dict[str, float], dict[str, torch.Tensor | None], EvalData]:
        """``(metrics, embeddings, data)`` of set ``key``: those of :func:`geomix.metrics.evaluate_embeddings`
        under plain names; with ``probes`` also ``fewshot_k<k>`` (a labelled set, ``fewshot_shots`` not
        empty) and the ``arith_*`` keys (the embedded data, ``arith_size > 0``)."""
        emb, ev = self.embed(model, key)
        res = metrics.evaluate_embeddings(
            emb["img"], emb["txt"], ev.txt_to_img, scale=scale, class_txt=emb["class_txt"], labels=ev.labels,
        )
        out = {k: float(v) for k, v in res.items()}
        if probes:
            out.update(self._fewshot(emb["img"], ev))
            out.update(self._arithmetic(model, key))
        return out, emb, ev

    def evaluate_sets(self, model: nn.Module, scale: float, *, probes: bool = False,
                      test: dict[str, float] | None = None) -> dict[str, float]:
        """Every extra evaluation set's metrics as ``eval.<set>.<metric>``. ``test``: the test split's
        metrics of this model, reused for a set that is the test split itself (same images, same numbers)."""
        from geomix.data import same_as_test

        out: dict[str, float] = {}
        for name in self.data_cfg.eval_set_names():
            if test is not None and same_as_test(self.data_cfg, name):
                res = test
            else:
                res = self.evaluate(model, name, scale, probes=probes)[0]
            out.update({eval_key(name, k): v for k, v in res.items()})
        return out

    def _fewshot(self, img: torch.Tensor, ev: EvalData) -> dict[str, float]:
        if ev.labels is None:
            return {}
        shots = self.eval_cfg.shots_for(int(torch.unique(ev.labels, return_counts=True)[1].min()))
        if not shots:
            return {}
        from geomix.metrics.probe import few_shot_probe

        acc = few_shot_probe(img, ev.labels, shots, draws=self.eval_cfg.fewshot_draws, seed=self.seed)
        return {fewshot_key(k): float(acc[k]) for k in shots}

    def _arith_style(self, key: str) -> str | None:
        cfg = self.data_cfg
        if cfg.source != "shapes" or self.eval_cfg.arith_size == 0 or key == "val":
            return None
        return cfg.styles[0] if key == "test" else key

    @torch.no_grad()
    def _arithmetic(self, model: nn.Module, key: str) -> dict[str, float]:
        style = self._arith_style(key)
        if style is None:
            return {}
        from geomix.data.arithmetic import build_arithmetic_set
        from geomix.data.sets import _apply
        from geomix.metrics.arithmetic import arithmetic_retrieval

        cfg = self.data_cfg
        if style not in self._arith:
            aset = build_arithmetic_set(seed=cfg.seed, style=style, n=self.eval_cfg.arith_size,
                                        image_size=cfg.image_size)
            transform = self.transform
            if transform is None:
                from geomix.data.sets import FastTransform

                transform = FastTransform(cfg.image_size)
            images = torch.stack([_apply(transform, im) for im in aset.images])
            texts = list(aset.source_text) + list(aset.target_text)
            self._arith[style] = (aset, images, torch.as_tensor(self.tokenizer(texts)))
        aset, images, tokens = self._arith[style]
        was_training = model.training
        model.eval()
        with self._autocast():
            enc_i, enc_t = self._encoders(model)
            img = self._batched(enc_i, images)
            txt = self._batched(enc_t, tokens)
        model.train(was_training)
        n = len(aset.source_text)
        src, tgt = torch.as_tensor(aset.source_index), torch.as_tensor(aset.target_index)
        res = arithmetic_retrieval(img, src, tgt, txt[:n], txt[n:], aset.kinds,
                                   delta=self.eval_cfg.arith_delta)
        return {k: float(v) for k, v in res.items()}


def save_embeddings(path: str | Path, emb: dict[str, Any], ev: EvalData) -> None:
    """Write ``img``, ``txt``, ``txt_to_img`` (and ``labels``, ``class_txt`` when present) as one ``.npz``."""
    arrays = {"img": emb["img"].numpy(), "txt": emb["txt"].numpy(), "txt_to_img": ev.txt_to_img.numpy()}
    if ev.labels is not None:
        arrays["labels"] = ev.labels.numpy()
    if emb["class_txt"] is not None:
        arrays["class_txt"] = emb["class_txt"].numpy()
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
