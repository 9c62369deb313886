"""The classification task of the one training loop (``task='classify'``): P-Mixup's few-shot supervised
multi-source domain transfer (``docs/pmixup.md``).

:class:`ClassifyTask` is what :class:`geomix.loop.Trainer` delegates to when ``cfg.task == 'classify'``; the
epochs, steps, optimiser, schedule, checkpoints, resume, reports and Ray Train workers stay the loop's. It
holds:

- the data (:func:`geomix.data.build_transfer`): the source images (every source domain), the target's
  shots, its test images and the extra evaluation sets (the source domains);
- the head ``F``: a linear layer over the classes initialised from the class-prompt text embeddings
  (:func:`geomix.losses.crossmix.init_head_from_text`: CLIP's zero-shot classifier, so training starts at
  zero-shot accuracy), registered on the model as ``classify_head`` so the optimiser trains it with the
  image tower and the checkpoint holds it beside the model;
- the loss (:class:`geomix.losses.crossmix.FSMDTLoss`, ``transfer.*``) and its batches: each step one
  global batch of ``optim.batch_size`` source images (a permutation seeded by (seed, epoch), the
  retrieval loop's rule) and a target batch: every shot, or a sample of ``optim.batch_size`` of them seeded
  by (seed, step);
- the evaluation: ``acc`` (top-1, %) and ``macc`` (mean per-class accuracy, %) on a set, as
  ``<split>_acc`` and ``eval.<set>.acc``.

**Data parallel.** Each rank takes its contiguous slice of the global source batch and holds the whole
target batch; the pairs are drawn for the global batch and sliced (``FSMDTLoss(..., batch_labels,
offset)``); the progressive policy observes the features of every rank, gathered in rank order
(:class:`_Gathered`), so λ is the same on every rank and equal to the 1-process λ. Every term is a mean over
this rank's rows, so DDP's gradient average is the 1-process gradient (the loop's ``grad_scale`` is 1 for
this task), and the logged loss parts are averaged over the ranks. With a model whose image tower has
BatchNorm (``geomix-tiny``) the batch statistics are per rank; with a ViT (``geomix-micro``) W workers
reproduce one worker up to float summation order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from geomix.config import TrainConfig
from geomix.data import build_transfer
from geomix.data.fsmdt import LabelledSet, prompts_for
from geomix.losses.crossmix import FSMDTLoss, init_head_from_text
from geomix.mixing import LambdaPolicy, build_lambda_policy
from geomix.registry import eval_key, metric_key

__all__ = ["ClassifyTask", "accuracy"]

_EVAL_BATCH = 256
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``acc``: top-1 accuracy (%); ``macc``: the mean over the classes present in ``labels`` of each
    class's accuracy (%). ``pred``, ``labels``: int ``[n]``."""
    correct = (pred == labels).double()
    per_class = [correct[labels == c].mean() for c in torch.unique(labels)]
    return {"acc": 100.0 * float(correct.mean()), "macc": 100.0 * float(torch.stack(per_class).mean())}


class _Net(nn.Module):
    """The image tower ``G`` and the head ``F`` as one module whose forward is the whole step's loss, so
    DDP sees one forward per step and syncs exactly their gradients (the text tower gets none)."""

    def __init__(self, visual: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.visual, self.head = visual, head

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(x).float(), dim=-1)  # CLIP's encode_image(normalize=True)

    def forward(self, loss_fn: FSMDTLoss, x_s, y_s, x_t, y_t, **kw: Any):
        return loss_fn(self.encode, self.head, x_s, y_s, x_t, y_t, **kw)


class _Gathered(LambdaPolicy):
    """A λ policy that observes the whole batch under data parallelism: the (mixed, a, b) features of every
    rank are gathered in rank order, the 1-process row order, before ``policy`` sees them."""

    def __init__(self, policy: LambdaPolicy, world: int) -> None:
        self.policy, self.world, self.name = policy, world, policy.name

    @property
    def needs_observation(self) -> bool:
        return self.policy.needs_observation

    def sample(self, generator: torch.Generator, *, step: int, total_steps: int) -> float:
        return self.policy.sample(generator, step=step, total_steps=total_steps)

    def observe(self, mixed: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        if self.world > 1:
            mixed, a, b = (self._gather(x) for x in (mixed, a, b))
        self.policy.observe(mixed, a, b)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def stats(self) -> dict[str, float]:
        return self.policy.stats()

    def state_dict(self) -> dict[str, Any]:
        return self.policy.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state)


class ClassifyTask:
    """One ``task='classify'`` trial's data, head, loss, batches and evaluation (module doc).

    Args:
        cfg: the trial config. model: the CLIP model (the head is registered on it as ``classify_head``).
        transform: open_clip's preprocess, or None for the embedded data's fast transform.
        tokenizer: the model's tokenizer (the class prompts). device, rank, world: where this rank runs.
        autocast_dtype: the training precision (None = float32), for the evaluation too.
    """

    def __init__(self, cfg: TrainConfig, model: nn.Module, transform: Any, tokenizer: Any, *,
                 device: torch.device, rank: int, world: int, autocast_dtype: torch.dtype | None) -> None:
        self.cfg, self.device, self.rank, self.world = cfg, device, rank, world
        self.autocast_dtype = autocast_dtype
        seed = cfg.run.seed
        shot_seed = seed if cfg.data.shot_seed is None else cfg.data.shot_seed
        self.data = build_transfer(cfg.data, shot_seed=shot_seed)
        self.transform = cfg.data.image_size if transform is None else transform
        self.source = ConcatDataset([LabelledSet(s, self.transform) for s in self.data.sources.values()])
        self.source_labels = torch.tensor([y for s in self.data.sources.values() for y in s.labels])
        self.train_size = len(self.source)
        shots = LabelledSet(self.data.shots, self.transform)
        self.shot_x = torch.stack([shots[i][0] for i in range(len(shots))]).to(device)
        self.shot_y = torch.tensor(shots.labels, device=device)
        model.classify_head = self._head(model, tokenizer)
        self.net = _Net(model.visual, model.classify_head)
        t = cfg.transfer
        policy = _Gathered(build_lambda_policy(t.lam, seed=seed + 1), world)  # FSMDTLoss's own seeding rule
        self.loss_fn = FSMDTLoss(policy, num_classes=len(self.data.class_names), w_clean_src=t.w_clean_src,
                                 w_clean_tgt=t.w_clean_tgt, w_img=t.w_img, w_feat=t.w_feat,
                                 pairing=t.pairing, generator_seed=seed)

    @torch.no_grad()
    def _head(self, model: nn.Module, tokenizer: Any) -> nn.Linear:
        """``F`` from the text embeddings of the class prompts (the mean over ``data.class_templates`` of
        the normalised embeddings for file data; the embedded data's own prompts for the shapes)."""
        templates = self.cfg.data.class_templates if self.cfg.data.source != "shapes" else ("",)
        embs = []
        for template in templates:
            prompts = prompts_for(self.data.test, template) if template else prompts_for(self.data.test)
            tokens = torch.as_tensor(tokenizer(prompts)).to(self.device)
            embs.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
        return init_head_from_text(torch.stack(embs).mean(0), model.logit_scale.exp())

    # ---- training -----------------------------------------------------------------------------------------

    def batches(self, epoch: int, skip: int, steps_per_epoch: int) -> Iterator[Batch]:
        """This rank's step inputs of epoch ``epoch`` from step ``skip`` on: ``(x_s, y_s, x_t, y_t, labels of
        the global source batch, offset of this rank's rows)``."""
        cfg, bsz = self.cfg, self.cfg.optim.batch_size
        local = bsz // self.world
        g = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + epoch)  # the retrieval loop's order
        order = torch.randperm(self.train_size, generator=g)
        steps = range(skip, steps_per_epoch)
        rows = [order[s * bsz + self.rank * local: s * bsz + (self.rank + 1) * local].tolist() for s in steps]
        loader = DataLoader(self.source, batch_sampler=rows, num_workers=cfg.data.loader_workers,
                            pin_memory=self.device.type == "cuda")
        for s, (x_s, y_s) in zip(steps, loader):
            whole = self.source_labels[order[s * bsz:(s + 1) * bsz]].to(self.device)
            x_t, y_t = self._target_batch(epoch * steps_per_epoch + s)
            yield x_s.to(self.device), y_s.to(self.device), x_t, y_t, whole, self.rank * local

    def _target_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, bsz = len(self.shot_y), self.cfg.optim.batch_size
        if n <= bsz:
            return self.shot_x, self.shot_y
        g = torch.Generator().manual_seed(self.cfg.run.seed * 1_000_003 + 7_919 * (step + 1))
        idx = torch.randperm(n, generator=g)[:bsz].to(self.device)
        return self.shot_x[idx], self.shot_y[idx]

    def loss(self, net: nn.Module, batch: Batch, *, step: int, total_steps: int
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step's loss through ``net`` (:attr:`net`, or its DDP wrapper) and its parts to log: the
        unweighted terms, the step's λ as ``lam_cross`` and the policy's ``lam_base``, ``lam_q``,
        ``lam_d_a``, ``lam_d_b``. Under DDP the value of the returned total and the parts are the means over
        the ranks (the 1-process values); the gradient is this rank's."""
        x_s, y_s, x_t, y_t, whole, offset = batch
        total, parts = net(self.loss_fn, x_s, y_s, x_t, y_t, step=step, total_steps=total_steps,
                           batch_labels=whole, offset=offset)
        parts["lam_cross"] = parts.pop("lam")  # the step's λ: a lam_* key like the policy's other stats
        if self.world > 1:
            keys = [k for k in parts if not k.startswith("lam")]  # λ is the same on every rank
            vec = torch.stack([total.detach().float(), *(parts[k].to(total.device) for k in keys)])
            dist.all_reduce(vec)
            vec = vec / self.world
            total = total + (vec[0] - total.detach())  # the mean's value, this rank's gradient
            parts.update({k: vec[i + 1] for i, k in enumerate(keys)})
        return total, parts

    # ---- evaluation ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def scores(self, model: nn.Module, source: Any) -> dict[str, float]:
        """``acc`` and ``macc`` of ``model`` (its image tower and ``classify_head``) on a labelled set."""
        ds = LabelledSet(source, self.transform)
        loader = DataLoader(ds, batch_size=_EVAL_BATCH, num_workers=self.cfg.data.loader_workers)
        was_training = model.training
        model.eval()
        preds = []
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            for x, _ in loader:
                g = F.normalize(model.visual(x.to(self.device)).float(), dim=-1)
                preds.append(model.classify_head(g).float().argmax(-1).cpu())
        model.train(was_training)
        return accuracy(torch.cat(preds), torch.tensor(ds.labels))

    def evaluate(self, model: nn.Module, split: str, *, prefix: str = "", extra: bool = False
                 ) -> dict[str, float]:
        """``<prefix><split>_acc`` / ``_macc`` on the target's ``test`` (or ``val``) images, and with
        ``extra`` ``eval.<set>.acc`` / ``macc`` on every extra set. No validation split (file data): no
        ``val`` keys."""
        source = self.data.test if split == "test" else self.data.val
        out = {} if source is None else {prefix + metric_key(split, k): v
                                         for k, v in self.scores(model, source).items()}
        if extra:
            for name, s in self.data.evals.items():
                out.update({eval_key(name, k): v for k, v in self.scores(model, s).items()})
        return out
