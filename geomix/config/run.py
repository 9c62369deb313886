"""How a trial optimises and runs: :class:`OptimConfig` (the ``optim`` section) and :class:`RunConfig`
(``run``), part of :class:`geomix.config.TrainConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from geomix.checks import check_range, check_seed
from geomix.config.sections import Device, Precision, Schedule, _Section

__all__ = ["OptimConfig", "RunConfig"]


@dataclass(frozen=True)
class OptimConfig(_Section):
    """AdamW, per step: linear warm-up over ``warmup_frac`` of the steps, then ``schedule`` (cosine or linear
    decay to 0 at the last step, or constant; :func:`geomix.runtime.lr_multiplier`)."""

    section: ClassVar[str] = "optim"
    epochs: int = 5
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.2
    warmup_frac: float = 0.1
    schedule: Schedule = "cosine"
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float | None = 1.0
    max_steps: int | None = None

    def _check(self, p: str) -> None:
        check_range(f"{p}.epochs", self.epochs, 1, None)
        check_range(f"{p}.batch_size", self.batch_size, 2, None)
        check_range(f"{p}.lr", self.lr, 0.0, None, lo_open=True)
        check_range(f"{p}.weight_decay", self.weight_decay, 0.0, None)
        check_range(f"{p}.warmup_frac", self.warmup_frac, 0.0, 1.0, hi_open=True)
        for i, b in enumerate(self.betas):
            check_range(f"{p}.betas[{i}]", b, 0.0, 1.0, hi_open=True)
        check_range(f"{p}.eps", self.eps, 0.0, None, lo_open=True)
        if self.grad_clip is not None:
            check_range(f"{p}.grad_clip", self.grad_clip, 0.0, None, lo_open=True)
        if self.max_steps is not None:
            check_range(f"{p}.max_steps", self.max_steps, 1, None)


@dataclass(frozen=True)
class RunConfig(_Section):
    """Everything about one run that is not the experiment: seed, device, evaluation, checkpoints.

    ``eval_every``: evaluate on the validation split every N epochs (0 = only at the end); the test split
    is always evaluated at the end. ``out_dir``: checkpoints, metrics and saved embeddings (None = no
    files). ``resume``: continue from the last checkpoint in ``out_dir`` if there is one.
    ``eval_start``: also evaluate the starting model on the test split (result keys ``start_test_*``; the
    command line turns it on to print base -> fine-tuned). ``report_every``: also report training
    progress (loss, λ) to the hooks every N steps (0 = only at evaluation points).
    """

    section: ClassVar[str] = "run"
    seed: int = 0
    device: Device = "auto"
    precision: Precision = "auto"
    eval_every: int = 1
    log_every: int = 10
    out_dir: str | None = None
    checkpoint_every: int = 1
    resume: bool = True
    save_embeddings: bool = False
    threads: int | None = None
    progress: bool = True
    eval_start: bool = False
    report_every: int = 0

    def _check(self, p: str) -> None:
        check_seed(f"{p}.seed", self.seed)
        check_range(f"{p}.eval_every", self.eval_every, 0, None)
        check_range(f"{p}.log_every", self.log_every, 1, None)
        check_range(f"{p}.checkpoint_every", self.checkpoint_every, 0, None)
        if self.threads is not None:
            check_range(f"{p}.threads", self.threads, 1, None)
        check_range(f"{p}.report_every", self.report_every, 0, None)
