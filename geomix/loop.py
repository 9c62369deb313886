"""The training loop: one trial's state and the steps that change it (:class:`Trainer`).

It runs standalone and, unchanged, inside a Ray Train worker: when ``torch.distributed`` is initialised
with more than one process the model is wrapped in DistributedDataParallel, each rank takes its
contiguous slice of the same global batch, and the loss gathers features so mixing sees the global batch.
``task='classify'`` (P-Mixup's FSMDT) runs through the same loop: :mod:`geomix.classify` gives its data,
head, loss, batches and evaluation.
The trial around it (model, data, summary) is :func:`geomix.train.run`; :func:`train_model` is the loop
without evaluation or checkpoints (how :mod:`geomix.basemodel` pre-trains the embedded base model).

Read top to bottom: :class:`Hooks` -> :class:`Trainer` (fit, epoch, step, evaluation, checkpoints).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from geomix import checkpoints, logs, losses, runtime
from geomix.config import TrainConfig
from geomix.evaluation import Evaluator, save_embeddings
from geomix.registry import metric_key

log = logging.getLogger(__name__)

class Hooks(Protocol):
    """What :func:`run` tells its caller (Ray Train, a test) and asks it.

    ``report(metrics, checkpoint_dir)`` is called on rank 0 at every evaluation point (with
    ``run.eval_every > 0`` the first is the starting model's, ``epoch=0, step=0``, unless resumed), every
    ``run.report_every`` steps, and once at the end (``done=True``); with ``all_ranks = True`` on the hooks
    object the other ranks call it too, with ``({}, None)`` (Ray's report is a barrier).
    ``initial_checkpoint()`` returns a checkpoint folder to resume from, or None. ``node_id()``
    (optional) names the machine of this rank.
    """

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...

    def initial_checkpoint(self) -> str | None: ...


class _Diverged(Exception):
    """A non-finite loss term or gradient; the message names the term and the step."""


def train_model(cfg: TrainConfig, model: nn.Module, preprocess: Callable, tokenizer: Callable) -> nn.Module:
    """Train ``model`` in place with the loop of :func:`run`, on one process, without evaluation or
    checkpoints (how :mod:`geomix.basemodel` pre-trains the embedded base model; ``cfg.run.progress``:
    its bar)."""
    run_cfg = dataclasses.replace(cfg.run, eval_every=0, out_dir=None, eval_start=False)
    cfg = dataclasses.replace(cfg, run=run_cfg)
    trainer = Trainer(cfg, model, preprocess, tokenizer, device=torch.device("cpu"), rank=0, world=1,
                       hooks=None, evaluate=False)
    result = trainer.fit()
    if result["status"] != "completed":
        raise RuntimeError(f"training the model for {cfg.method!r} failed: {result['error']}")
    return model


class Trainer:
    """State of one trial and the steps that change it."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, preprocess: Callable, tokenizer: Callable, *,
                 device: torch.device, rank: int, world: int, hooks: Hooks | None, evaluate: bool = True):
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
        if cfg.model.freeze_bn_stats:  # BatchNorm always in eval mode: its starting statistics, never updated
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.register_forward_pre_hook(lambda mod, args: mod.train(False) and None)
        # The embedded images are rendered at the model's resolution: the data helper's fast transform
        # (uint8 -> normalised tensor) replaces open_clip's PIL pipeline, which is a no-op resize there.
        self.transform = None if runtime.fast_transform_ok(cfg, model) else preprocess
        self.autocast_dtype = runtime.autocast_dtype(cfg.run.precision, device)
        self.task = None  # task='classify': its data, head, loss, batches and evaluation (geomix.classify)
        if cfg.task == "classify":
            from geomix.classify import ClassifyTask

            self.task = ClassifyTask(cfg, self.model, self.transform, tokenizer, device=device, rank=rank,
                                     world=world, autocast_dtype=self.autocast_dtype)
        towers = runtime.Towers(self.model) if self.task is None else self.task.net
        self.towers: nn.Module = towers
        if world > 1:
            self.towers = nn.parallel.DistributedDataParallel(
                towers, device_ids=[device.index] if device.type == "cuda" else None
            )
        if self.task is None:
            self.train_set = gdata.build_train_set(cfg.data, self.transform, tokenizer, seed=cfg.run.seed)
        n = len(self.train_set) if self.task is None else self.task.train_size
        if n < cfg.optim.batch_size:
            raise ValueError(
                f"optim.batch_size={cfg.optim.batch_size} is invalid: allowed is at most the training set "
                f"size {n}"
            )
        self.steps_per_epoch = n // cfg.optim.batch_size  # drop_last: every step sees a full global batch
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        if cfg.optim.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.optim.max_steps)
        self.optimizer = runtime.adamw(self.model, cfg)
        warmup = int(cfg.optim.warmup_frac * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: runtime.lr_multiplier(cfg.optim.schedule, s, warmup, self.total_steps))
        # The loss owns its seeded generator (λ, partners, pixel mixing); its state is checkpointed.
        if self.task is not None:
            self.loss_fn: nn.Module = self.task.loss_fn
        elif cfg.loss.kind == "contrastive":
            self.loss_fn = losses.MixLoss(cfg.loss, cfg.mix, rank=rank, world_size=world,
                                          generator_seed=cfg.run.seed)
        else:
            self.loss_fn = losses.InputMixLoss(cfg.loss, rank=rank, world_size=world,
                                               generator_seed=cfg.run.seed)
        self.loss_fn.to(device)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None
        self.step = 0
        self.samples_seen = 0
        self.train_time = 0.0
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self.evaluator = None if self.task is not None else Evaluator(
            cfg.data, self.transform, tokenizer, device, self.autocast_dtype, cfg.evaluation,
            seed=cfg.run.seed, share_key=cfg.model.name)
        self._pending: tuple[dict[str, Any], str | None] | None = None

    # ---- the trial ----------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        result: dict[str, Any] = {"status": "completed", "error": None}
        resumed = self._maybe_resume()
        fresh = self.do_eval and not resumed and cfg.method != "zs"  # a run that trains, from its start
        if cfg.run.eval_start and fresh:
            result.update(self._evaluate("test", prefix="start_", save_as="start_test"))
        if cfg.run.eval_every > 0 and fresh:
            self._report_start()
        if cfg.method == "zs":
            self.total_steps = 0
        else:
            try:
                self._train()
            except _Diverged as e:
                log.warning("run diverged: %s", e)
                result.update(status="diverged", error=str(e))
        if result["status"] == "completed" and self.do_eval:
            result.update(self._evaluate("test", save_as="test", extra=True, probes=True))
        result.update(
            steps=self.step,
            samples_seen=self.samples_seen,
            samples_per_s=self.samples_seen / self.train_time if self.train_time > 0 else 0.0,
            device=str(self.device),
            num_workers=self.world,
            node_ids=runtime.node_ids(self.hooks, self.world),
        )
        if self.do_eval:
            self._report_final(result)
        return result

    def _report_start(self) -> None:
        """The learning curves' first point: the starting model on the validation split, reported with
        ``epoch=0, step=0`` and no checkpoint. Evaluation draws no random numbers (the loss owns its
        generator, the batches theirs, and the model is in eval mode), so training is unchanged."""
        self._report({**self._progress_metrics(0, reset=False),
                      **self._evaluate("val", extra=self.cfg.evaluation.sets_every_eval)}, None)

    def _report_final(self, result: dict[str, Any]) -> None:
        """One last report: the last evaluation point's metrics, the test metrics, ``status`` and
        ``done=True``, with a checkpoint where there are files (Ray's ``Result.metrics`` are those of the
        last reported checkpoint). A diverged run points at its last good checkpoint, if any."""
        final, ckpt = self._pending or ({}, None)
        if ckpt is None and self.cfg.run.out_dir and self.rank == 0:
            if result["status"] == "completed":
                ckpt = self._save_checkpoint(self.step // max(self.steps_per_epoch, 1))
            else:
                ckpt = checkpoints.latest(self.cfg.run.out_dir)
        final = {**final, "epoch": self.step // max(self.steps_per_epoch, 1), "step": self.step,
                 "samples_seen": self.samples_seen, "done": True, **result}
        self._report(final, ckpt)

    def _train(self) -> None:
        cfg = self.cfg
        with logs.progress_bar(cfg.run.progress and self.rank == 0, total=self.total_steps, initial=self.step,
                               desc=cfg.method, unit="step", leave=False) as bar:
            while self.step < self.total_steps:
                epoch = self.step // self.steps_per_epoch
                t0 = time.perf_counter()
                skip = self.step % self.steps_per_epoch
                batches = (self._epoch_batches(epoch, skip) if self.task is None
                           else self.task.batches(epoch, skip, self.steps_per_epoch))
                for batch in batches:
                    loss = self._train_step(batch, epoch)
                    if bar is not None:
                        bar.update(1)
                        if self.step % cfg.run.log_every == 0 or self.step == 1:  # a loss from the start
                            bar.set_postfix(loss=f"{loss:.4f}", epoch=epoch)
                    if cfg.run.report_every and self.step % cfg.run.report_every == 0:
                        self._report(self._progress_metrics(epoch, reset=True), None)
                    if self.step >= self.total_steps:
                        break
                self.train_time += time.perf_counter() - t0
                self._end_of_epoch(epoch_done=epoch + 1)

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
        if evaluate:  # extra sets on request, never at the last epoch: the final evaluation has them
            metrics_.update(self._evaluate("val", extra=cfg.evaluation.sets_every_eval and not last))
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

    def _train_step(self, batch: tuple, epoch: int) -> float:
        cfg = self.cfg
        self.towers.train()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            try:
                total, terms = self._loss(batch, epoch)
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
    def _grad_scale(self) -> float:  # classify: every term is a mean over this rank's rows (DDP averages)
        return float(self.world) if self.task is None else 1.0

    def _loss(self, batch: tuple, epoch: int) -> tuple[torch.Tensor, dict]:
        """One forward through both towers and the configured loss (a fixed τ is applied by the loss)."""
        if self.task is not None:
            return self.task.loss(self.towers, batch, step=self.step, total_steps=self.total_steps)
        (images, texts), kind = batch, self.cfg.loss.kind
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

    def _evaluate(self, split: str, *, prefix: str = "", save_as: str | None = None, extra: bool = False,
                  probes: bool = False) -> dict[str, float]:
        """Rank 0 evaluates the unwrapped model on the whole split (``extra``: and the extra sets, keys
        ``eval.<set>.<metric>``; ``probes``: few-shot and arithmetic too); the other ranks wait for it.
        Keys are ``<prefix><split>_<metric>`` (``val_rsum``, ``start_test_rsum``)."""
        out: dict[str, float] = {}
        if self.rank == 0 and self.task is not None:
            out = self.task.evaluate(self.model, split, prefix=prefix, extra=extra)
        elif self.rank == 0:
            scale = self.fixed_scale
            if scale is None:
                scale = float(self.model.logit_scale.detach().exp())
            res, emb, ev = self.evaluator.evaluate(self.model, split, scale, probes=probes)
            out = {prefix + metric_key(split, k): v for k, v in res.items()}
            if save_as and self.cfg.run.save_embeddings and self.cfg.run.out_dir:
                save_embeddings(os.path.join(self.cfg.run.out_dir, f"embeddings_{save_as}.npz"), emb, ev)
            if extra:
                out.update(self.evaluator.evaluate_sets(self.model, scale, probes=probes,
                                                        test=res if split == "test" else None))
        if self.world > 1:
            dist.barrier()
        return out

    # ---- reporting ----------------------------------------------------------------------------------------

    def _report(self, metrics_: dict[str, Any], checkpoint_dir: str | None) -> None:
        if self.hooks is None:
            return
        if self.rank == 0:
            self.hooks.report(metrics_, checkpoint_dir)
        elif getattr(self.hooks, "all_ranks", False):
            self.hooks.report({}, None)  # only rank 0 reports content; the others just meet the barrier

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
        """Rank 0 writes ``out_dir/checkpoints/ckpt-<step>`` atomically."""
        if self.rank != 0:
            return None
        return checkpoints.save(self.cfg.run.out_dir, self.step, self._state(epoch_done), self.cfg)

    def _maybe_resume(self) -> bool:
        path = self.hooks.initial_checkpoint() if self.hooks is not None else None
        if path is None and self.cfg.run.resume and self.cfg.run.out_dir:
            path = checkpoints.latest(self.cfg.run.out_dir)
        if path is None:
            return False
        state = checkpoints.load(path)
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

