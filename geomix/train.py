"""The one training loop: a whole trial from a validated :class:`~geomix.config.TrainConfig`.

It runs standalone (``python -m geomix.train --config FILE key=value ...``) and, unchanged, as a Ray Train
worker (:mod:`geomix.raytrain`): when ``torch.distributed`` is initialised with more than one process the
model is wrapped in DistributedDataParallel, each rank takes its contiguous slice of the same global batch,
and the loss gathers features so mixing sees the global batch.

Read top to bottom: :func:`run` (the trial) -> :class:`_Trainer` (state, one step, one epoch, evaluation,
checkpoints) -> the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from geomix import logs, losses, metrics, models
from geomix.config import TrainConfig, load_config, save_config, to_dict

log = logging.getLogger(__name__)

_CKPT_PREFIX = "ckpt-"
_KEEP_CHECKPOINTS = 2


class Hooks(Protocol):
    """What :func:`run` tells its caller (Ray Train, a test) and asks it.

    ``report(metrics, checkpoint_dir)`` is called on rank 0 at every evaluation point, every
    ``run.report_every`` steps, and once at the end (``done=True``); with ``all_ranks = True`` on the hooks
    object the other ranks call it too, with ``({}, None)`` (Ray's report is a barrier).
    ``initial_checkpoint()`` returns a checkpoint folder to resume from, or None. ``node_id()``
    (optional) names the machine of this rank.
    """

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...

    def initial_checkpoint(self) -> str | None: ...


class _Diverged(Exception):
    """A non-finite loss term or gradient; the message names the term and the step."""


# ----------------------------------------------------------------------------------------------------------
# the trial


def run(cfg: TrainConfig, *, hooks: Hooks | None = None) -> dict[str, Any]:
    """Run one trial: build model, data and loss, train, evaluate, checkpoint; return the summary.

    Args:
        cfg: the validated trial config.
        hooks: optional reporting / resume hooks (see :class:`Hooks`).

    Returns:
        ``status`` ("completed" | "diverged"), ``error`` (None or the message naming term and step),
        ``test_<metric>`` for every metric of :func:`geomix.metrics.evaluate_embeddings` (absent when
        diverged), ``start_test_<metric>`` with ``run.eval_start``, ``steps``, ``samples_seen``, ``wall_s``,
        ``samples_per_s``, ``device``, ``num_workers``, ``node_ids``.
    """
    from geomix import data as gdata

    cfg = cfg.validate()
    t_start = time.perf_counter()
    rank, world = _dist_context()
    if cfg.optim.batch_size % world:
        raise ValueError(
            f"optim.batch_size={cfg.optim.batch_size} is invalid with {world} workers: allowed is a multiple "
            "of the number of workers (each takes an equal slice of the global batch)"
        )
    gdata.validate_data(cfg.data)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = _device(cfg.run.device, rank)
    torch.manual_seed(cfg.run.seed)
    model, preprocess, tokenizer = models.create(cfg.model, data_cfg=cfg.data, device="cpu")
    trainer = _Trainer(cfg, model, preprocess, tokenizer, device=device, rank=rank, world=world, hooks=hooks)
    result = trainer.fit()
    result["wall_s"] = time.perf_counter() - t_start
    if rank == 0 and cfg.run.out_dir:
        _atomic_write_text(Path(cfg.run.out_dir) / "result.json", json.dumps(result, indent=1, default=str))
    return result


def train_model(cfg: TrainConfig, model: nn.Module, preprocess: Callable, tokenizer: Callable) -> nn.Module:
    """Train ``model`` in place with the loop of :func:`run`, on one process, without evaluation or
    checkpoints (how :mod:`geomix.models` pre-trains the embedded base model)."""
    run_cfg = dataclasses.replace(cfg.run, eval_every=0, out_dir=None, eval_start=False)
    cfg = dataclasses.replace(cfg, run=run_cfg)
    trainer = _Trainer(cfg, model, preprocess, tokenizer, device=torch.device("cpu"), rank=0, world=1,
                       hooks=None, evaluate=False)
    result = trainer.fit()
    if result["status"] != "completed":
        raise RuntimeError(f"training the model for {cfg.method!r} failed: {result['error']}")
    return model


def _dist_context() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device(name: str, rank: int) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("run.device='cuda' is invalid here: allowed 'auto' or 'cpu' (no CUDA device)")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device("cpu")


class _Towers(nn.Module):
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


@dataclasses.dataclass
class _EvalData:
    images: torch.Tensor  # [n, 3, H, W]
    captions: torch.Tensor  # [m, L]
    txt_to_img: torch.Tensor  # [m]
    labels: torch.Tensor | None  # [n]
    class_tokens: torch.Tensor | None  # [C, L]


class _Trainer:
    """State of one trial and the steps that change it."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        preprocess: Callable,
        tokenizer: Callable,
        *,
        device: torch.device,
        rank: int,
        world: int,
        hooks: Hooks | None,
        evaluate: bool = True,
    ):
        from geomix import data as gdata

        self.cfg, self.rank, self.world, self.hooks, self.device = cfg, rank, world, hooks, device
        self.tokenizer, self.preprocess = tokenizer, preprocess
        self.do_eval = evaluate
        self.model = model.to(device)
        self.fixed_scale: float | None = None
        if cfg.loss.tau is not None:
            # Fixed temperature (the paper's FT(τ) rows): freeze logit_scale at ln(1/τ).
            self.fixed_scale = 1.0 / cfg.loss.tau
            with torch.no_grad():
                model.logit_scale.fill_(math.log(self.fixed_scale))
            model.logit_scale.requires_grad_(False)
        self.max_log_scale = math.log(cfg.model.max_logit_scale)
        towers = _Towers(self.model)
        self.towers: nn.Module = towers
        if world > 1:
            self.towers = nn.parallel.DistributedDataParallel(
                towers, device_ids=[device.index] if device.type == "cuda" else None
            )
        # The embedded images are rendered at the model's resolution: the data helper's fast transform
        # (uint8 -> normalised tensor) replaces open_clip's PIL pipeline, which is a no-op resize there.
        self.transform = None if _fast_transform_ok(cfg, model) else preprocess
        self.train_set = gdata.build_train_set(cfg.data, self.transform, tokenizer, seed=cfg.run.seed)
        n = len(self.train_set)
        if n < cfg.optim.batch_size:
            raise ValueError(
                f"optim.batch_size={cfg.optim.batch_size} is invalid: allowed is at most the training set "
                f"size {n}"
            )
        self.steps_per_epoch = n // cfg.optim.batch_size  # drop_last: every step sees a full global batch
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        if cfg.optim.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.optim.max_steps)
        self.optimizer = _adamw(self.model, cfg)
        warmup = int(cfg.optim.warmup_frac * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: _warmup_cosine(s, warmup, self.total_steps)
        )
        # The loss owns its seeded generator (λ, partners, pixel mixing); its state is checkpointed.
        if cfg.loss.kind == "contrastive":
            self.loss_fn: nn.Module = losses.MixLoss(cfg.loss, cfg.mix, rank=rank, world_size=world,
                                                     generator_seed=cfg.run.seed)
        else:
            self.loss_fn = losses.InputMixLoss(cfg.loss, rank=rank, world_size=world,
                                               generator_seed=cfg.run.seed)
        self.loss_fn.to(device)
        self.autocast_dtype = _autocast_dtype(cfg.run.precision, device)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None
        self.step = 0
        self.samples_seen = 0
        self.train_time = 0.0
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self._eval_cache: dict[str, _EvalData] = {}
        self._pending: tuple[dict[str, Any], str | None] | None = None

    # ---- the trial ----------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        result: dict[str, Any] = {"status": "completed", "error": None}
        resumed = self._maybe_resume()
        if cfg.run.eval_start and self.do_eval and not resumed and cfg.method != "zs":
            result.update(self._evaluate("test", prefix="start_test_", save_as="start_test"))
        if cfg.method == "zs":
            self.total_steps = 0
        else:
            try:
                self._train()
            except _Diverged as e:
                log.warning("run diverged: %s", e)
                result.update(status="diverged", error=str(e))
        if result["status"] == "completed" and self.do_eval:
            result.update(self._evaluate("test", prefix="test_", save_as="test"))
        result.update(
            steps=self.step,
            samples_seen=self.samples_seen,
            samples_per_s=self.samples_seen / self.train_time if self.train_time > 0 else 0.0,
            device=str(self.device),
            num_workers=self.world,
            node_ids=self._node_ids(),
        )
        if self.do_eval:
            self._report_final(result)
        return result

    def _report_final(self, result: dict[str, Any]) -> None:
        """One last report: the last evaluation point's metrics, the test metrics, ``status`` and
        ``done=True``, with a checkpoint where there are files (Ray's ``Result.metrics`` are those of the
        last reported checkpoint). A diverged run points at its last good checkpoint, if any."""
        final, ckpt = self._pending or ({}, None)
        if ckpt is None and self.cfg.run.out_dir and self.rank == 0:
            if result["status"] == "completed":
                ckpt = self._save_checkpoint(self.step // max(self.steps_per_epoch, 1))
            else:
                found = sorted((Path(self.cfg.run.out_dir) / "checkpoints").glob(f"{_CKPT_PREFIX}*"))
                ckpt = str(found[-1]) if found else None
        final = {**final, "epoch": self.step // max(self.steps_per_epoch, 1), "step": self.step,
                 "samples_seen": self.samples_seen, "done": True, **result}
        self._report(final, ckpt)

    def _train(self) -> None:
        cfg = self.cfg
        bar = None
        if cfg.run.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc=cfg.method, unit="step", leave=False)
        try:
            while self.step < self.total_steps:
                epoch = self.step // self.steps_per_epoch
                t0 = time.perf_counter()
                for images, texts in self._epoch_batches(epoch, skip=self.step % self.steps_per_epoch):
                    loss = self._train_step(images, texts, epoch)
                    if bar is not None:
                        bar.update(1)
                        if self.step % cfg.run.log_every == 0:
                            bar.set_postfix(loss=f"{loss:.4f}", epoch=epoch)
                    if cfg.run.report_every and self.step % cfg.run.report_every == 0:
                        self._report(self._progress_metrics(epoch, reset=True), None)
                    if self.step >= self.total_steps:
                        break
                self.train_time += time.perf_counter() - t0
                self._end_of_epoch(epoch_done=epoch + 1)
        finally:
            if bar is not None:
                bar.close()

    def _end_of_epoch(self, epoch_done: int) -> None:
        cfg = self.cfg
        last = self.step >= self.total_steps
        evaluate = self.do_eval and cfg.run.eval_every > 0 and (epoch_done % cfg.run.eval_every == 0 or last)
        checkpoint = bool(cfg.run.out_dir) and cfg.run.checkpoint_every > 0 and (
            epoch_done % cfg.run.checkpoint_every == 0 or last
        )
        if not (evaluate or checkpoint):
            return
        metrics_ = self._progress_metrics(epoch_done, reset=True)
        if evaluate:
            metrics_.update(self._evaluate("val", prefix="val_"))
        ckpt_dir = self._save_checkpoint(epoch_done) if checkpoint else None
        if last:  # the final report carries it, with the test metrics (Ray keeps a checkpoint's metrics)
            self._pending = (metrics_, ckpt_dir)
        else:
            self._report(metrics_, ckpt_dir)

    # ---- one step -----------------------------------------------------------------------------------------

    def _epoch_batches(self, epoch: int, skip: int):
        """This rank's slices of the epoch's global batches: a permutation seeded by (seed, epoch), cut into
        global batches, each rank taking its contiguous slice, so the gathered batch is the 1-worker batch."""
        cfg = self.cfg
        self.train_set.set_epoch(epoch)
        g = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.train_set), generator=g)
        bsz, local = cfg.optim.batch_size, cfg.optim.batch_size // self.world
        batches = [
            order[s * bsz + self.rank * local : s * bsz + (self.rank + 1) * local].tolist()
            for s in range(skip, self.steps_per_epoch)
        ]
        loader = torch.utils.data.DataLoader(
            self.train_set, batch_sampler=batches, num_workers=cfg.data.loader_workers,
            pin_memory=self.device.type == "cuda",
        )
        for images, texts in loader:
            yield images.to(self.device, non_blocking=True), texts.to(self.device, non_blocking=True)

    def _train_step(self, images: torch.Tensor, texts: torch.Tensor, epoch: int) -> float:
        cfg = self.cfg
        self.towers.train()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            try:
                total, terms = self._loss(images, texts, epoch)
            except losses.NonFiniteLossError as e:
                raise _Diverged(f"{e} (epoch {epoch})") from e
        if not torch.isfinite(total):
            raise _Diverged(f"loss term 'total' is non-finite at step {self.step} (epoch {epoch})")
        self.optimizer.zero_grad(set_to_none=True)
        # The gathered loss only back-propagates into this rank's features; DDP then averages over ranks,
        # so scaling by the world size gives exactly the 1-worker gradient (open_clip leaves it 1/W).
        backward = total * self._grad_scale
        if self.scaler is not None:
            self.scaler.scale(backward).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            backward.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.optim.grad_clip is not None:
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        else:
            gnorm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        if not torch.isfinite(gnorm) and self.scaler is None:
            raise _Diverged(f"gradient norm is non-finite ({float(gnorm)}) at step {self.step} "
                            f"(epoch {epoch})")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if self.fixed_scale is None:
            with torch.no_grad():  # open_clip's clamp: τ never below 1/max_logit_scale
                self.model.logit_scale.clamp_(0, self.max_log_scale)
        self.step += 1
        self.samples_seen += cfg.optim.batch_size
        self._accumulate(total, terms)
        return float(total.detach())

    @property
    def _grad_scale(self) -> float:
        return float(self.world)

    def _loss(self, images: torch.Tensor, texts: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict]:
        """One forward through both towers and the configured loss (a fixed τ is applied by the loss)."""
        kind = self.cfg.loss.kind
        if kind == "contrastive":
            img, txt, _, scale = self.towers(images, texts)
            return self.loss_fn(img, txt, scale, epoch=epoch, step=self.step, total_steps=self.total_steps)
        batch = self.loss_fn.mix(images)
        if kind == "imix":  # i-Mix replaces the clean batch by the mixed one: one image-tower pass
            mixed, txt, _, scale = self.towers(batch.pixels, texts)
            return self.loss_fn(None, mixed, txt, batch, scale, step=self.step)
        img, txt, mixed, scale = self.towers(images, texts, batch.pixels)  # Un-Mix: clean + mixed pass
        return self.loss_fn(img, mixed, txt, batch, scale, step=self.step)

    def _accumulate(self, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        vals = {"train_loss": total.detach().float()}
        for k, v in terms.items():
            key = k if k.startswith("lam") else f"loss_{k}"
            vals[key] = torch.as_tensor(v).detach().float()
        for k, v in vals.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1

    def _progress_metrics(self, epoch: int, *, reset: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"epoch": epoch, "step": self.step, "samples_seen": self.samples_seen,
                               "lr": self.optimizer.param_groups[0]["lr"],
                               "logit_scale": float(self.model.logit_scale.detach().exp())}
        for k, v in self._sums.items():
            out[k] = float(v) / max(self._count, 1)
        if reset:
            self._sums, self._count = {}, 0
        return out

    # ---- evaluation ---------------------------------------------------------------------------------------

    def _eval_data(self, split: str) -> _EvalData:
        if split not in self._eval_cache:
            from geomix import data as gdata

            ev = gdata.build_eval_set(self.cfg.data, split, self.transform, self.tokenizer)
            images = torch.stack([ev.images[i] for i in range(len(ev.images))])
            class_tokens = self.tokenizer(list(ev.class_prompts)) if ev.class_prompts else None
            self._eval_cache[split] = _EvalData(images, ev.captions, ev.txt_to_img, ev.labels, class_tokens)
        return self._eval_cache[split]

    @torch.no_grad()
    def _embed(self, split: str) -> tuple[dict[str, torch.Tensor], _EvalData]:
        ev = self._eval_data(split)
        model, bsz = self.model, 256
        was_training = model.training
        model.eval()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            enc_i = lambda x: model.encode_image(x.to(self.device), normalize=True).float().cpu()  # noqa: E731
            enc_t = lambda x: model.encode_text(x.to(self.device), normalize=True).float().cpu()  # noqa: E731
            img = torch.cat([enc_i(ev.images[i : i + bsz]) for i in range(0, len(ev.images), bsz)])
            txt = torch.cat([enc_t(ev.captions[i : i + bsz]) for i in range(0, len(ev.captions), bsz)])
            cls = enc_t(ev.class_tokens) if ev.class_tokens is not None else None
        model.train(was_training)
        return {"img": img, "txt": txt, "class_txt": cls}, ev

    def _evaluate(self, split: str, *, prefix: str, save_as: str | None = None) -> dict[str, float]:
        """Rank 0 evaluates the unwrapped model on the whole split; the other ranks wait for it."""
        out: dict[str, float] = {}
        if self.rank == 0:
            emb, ev = self._embed(split)
            scale = self.fixed_scale
            if scale is None:
                scale = float(self.model.logit_scale.detach().exp())
            res = metrics.evaluate_embeddings(
                emb["img"], emb["txt"], ev.txt_to_img, scale=scale, class_txt=emb["class_txt"],
                labels=ev.labels,
            )
            out = {f"{prefix}{k}": float(v) for k, v in res.items()}
            if save_as and self.cfg.run.save_embeddings and self.cfg.run.out_dir:
                self._save_embeddings(save_as, emb, ev)
        if self.world > 1:
            dist.barrier()
        return out

    def _save_embeddings(self, name: str, emb: dict[str, torch.Tensor], ev: _EvalData) -> None:
        path = Path(self.cfg.run.out_dir) / f"embeddings_{name}.npz"
        arrays = {"img": emb["img"].numpy(), "txt": emb["txt"].numpy(), "txt_to_img": ev.txt_to_img.numpy()}
        if ev.labels is not None:
            arrays["labels"] = ev.labels.numpy()
        if emb["class_txt"] is not None:
            arrays["class_txt"] = emb["class_txt"].numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)

    # ---- reporting ----------------------------------------------------------------------------------------

    def _report(self, metrics_: dict[str, Any], checkpoint_dir: str | None) -> None:
        if self.hooks is None:
            return
        if self.rank == 0:
            self.hooks.report(metrics_, checkpoint_dir)
        elif getattr(self.hooks, "all_ranks", False):
            self.hooks.report({}, None)  # only rank 0 reports content; the others just meet the barrier

    def _node_ids(self) -> str | None:
        node_id = getattr(self.hooks, "node_id", None)
        mine = node_id() if callable(node_id) else None
        if self.world > 1:
            ids: list[Any] = [None] * self.world
            dist.all_gather_object(ids, mine)
        else:
            ids = [mine]
        return ",".join(str(i) for i in ids) if any(i is not None for i in ids) else None

    # ---- checkpoints --------------------------------------------------------------------------------------

    def _state(self, epoch_done: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loss_fn": self.loss_fn.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "epoch": epoch_done,
            "samples_seen": self.samples_seen,
            "train_time": self.train_time,
            "sums": {k: torch.as_tensor(v) for k, v in self._sums.items()},
            "count": self._count,
        }

    def _save_checkpoint(self, epoch_done: int) -> str | None:
        """Rank 0 writes ``out_dir/checkpoints/ckpt-<step>`` atomically (temp folder + rename)."""
        if self.rank != 0:
            return None
        root = Path(self.cfg.run.out_dir) / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"{_CKPT_PREFIX}{self.step:09d}"
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
        torch.save(self._state(epoch_done), tmp / "state.pt")
        save_config(self.cfg, tmp / "config.yaml")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(root.glob(f"{_CKPT_PREFIX}*"))[:-_KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        return str(final)

    def _maybe_resume(self) -> bool:
        path = self.hooks.initial_checkpoint() if self.hooks is not None else None
        if path is None and self.cfg.run.resume and self.cfg.run.out_dir:
            found = sorted((Path(self.cfg.run.out_dir) / "checkpoints").glob(f"{_CKPT_PREFIX}*"))
            path = str(found[-1]) if found else None
        if path is None:
            return False
        state = torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loss_fn.load_state_dict(state["loss_fn"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.samples_seen = int(state["step"]), int(state["samples_seen"])
        self.train_time = float(state["train_time"])
        self._sums, self._count = dict(state["sums"]), int(state["count"])
        log.info("resumed from %s at step %d", path, self.step)
        return True


def _fast_transform_ok(cfg: TrainConfig, model: nn.Module) -> bool:
    size = getattr(getattr(model, "visual", None), "image_size", None)
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    return cfg.data.source == "shapes" and size == (cfg.data.image_size, cfg.data.image_size)


def _adamw(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with open_clip's split: no weight decay on gains, biases, logit_scale and embeddings."""

    def no_decay(name: str, p: torch.Tensor) -> bool:
        return p.ndim < 2 or any(s in name for s in ("bn", "ln", "bias", "logit_scale", "embedding"))

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": cfg.optim.weight_decay},
    ]
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "fp32":
        return None
    if device.type != "cuda":
        raise ValueError(f"run.precision={precision!r} is invalid on the CPU: allowed are 'auto' or 'fp32'")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------
# command line

_SUMMARY_KEYS = ("r1_i2t", "r5_i2t", "r10_i2t", "r1_t2i", "r5_t2i", "r10_t2i", "rsum", "align", "unif", "gap",
                 "zs_acc", "ece")


def summary_table(result: dict[str, Any]) -> str:
    """The run summary: test metrics of the starting model and of the trained one, side by side."""
    has_start = any(k.startswith("start_test_") for k in result)
    lines = [f"{'metric':<10}" + (f"{'start':>10}" if has_start else "") + f"{'final':>10}"]
    for k in _SUMMARY_KEYS:
        if f"test_{k}" in result or f"start_test_{k}" in result:
            row = f"{k:<10}"
            if has_start:
                row += f"{result.get(f'start_test_{k}', float('nan')):>10.2f}"
            row += f"{result.get(f'test_{k}', float('nan')):>10.2f}"
            lines.append(row)
    if has_start and "test_r1_i2t" in result:
        a, b = result["start_test_r1_i2t"], result["test_r1_i2t"]
        lines.append(f"test R@1 i->t: base {a:.2f} -> fine-tuned {b:.2f} ({b - a:+.2f})")
    lines.append(
        f"status={result['status']} steps={result['steps']} samples/s={result['samples_per_s']:.1f} "
        f"wall={result.get('wall_s', 0):.1f}s device={result['device']}"
    )
    if result.get("error"):
        lines.append(f"error: {result['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m geomix.train [--config FILE] [key=value ...]``: one trial with a progress bar and a
    summary table (base vs fine-tuned when the starting model is evaluated, which it is by default here)."""
    parser = argparse.ArgumentParser(prog="python -m geomix.train", description=main.__doc__)
    parser.add_argument("--config", help="experiment YAML (layered over the defaults)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.epochs=3")
    args = parser.parse_args(argv)
    logs.setup("%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = list(args.overrides)
    if not any(o.startswith("run.eval_start=") for o in overrides):
        overrides.append("run.eval_start=true")
    try:
        cfg = load_config(args.config, overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(to_dict(cfg), default=str))
    result = run(cfg)
    print(summary_table(result))
    return 0 if result["status"] == "completed" else 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
