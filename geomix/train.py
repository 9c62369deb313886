"""One trial from a :class:`~geomix.config.TrainConfig`, standalone or as a Ray Train worker.

:func:`run` builds the starting model (:mod:`geomix.basemodel`), runs the loop (:class:`geomix.loop.Trainer`)
and returns the summary; ``python -m geomix.train --config FILE key=value ...`` is its command line. Torch
and the loop are imported when a trial is checked or run, so a bad command line fails at once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from geomix import atomic, logs, registry
from geomix.checks import check_writable_dir, fail
from geomix.config import EMBEDDED_BASE, MixConfig, TrainConfig, load_config, load_yaml, save_config, to_dict
from geomix.registry import EVAL_PREFIX, eval_key

if TYPE_CHECKING:
    from geomix.loop import Hooks

log = logging.getLogger(__name__)

__all__ = ["Hooks", "check_trial", "run", "method_name", "summary_table", "validation_line", "main"]


def __getattr__(name: str) -> Any:
    if name == "Hooks":  # re-exported from geomix.loop, which imports torch: only when asked for
        from geomix.loop import Hooks

        return Hooks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_trial(cfg: TrainConfig, *, here: bool = True) -> dict[str, int]:
    """Check what a valid config can still get wrong, before any expensive work: the data (every file, row
    and image, no image in two splits: :func:`geomix.data.validate_data`; with ``task='classify'`` the
    target, sources and shots against the domains of the data), a batch no larger than the
    training set, the model name and weights, and that the cache and output folders can be written.

    Args:
        cfg: the trial config.
        here: also check the device and precision: true in the process that runs the trial, false on a
            sweep's driver (its trials may run on other machines).

    Returns:
        Image counts per split (and ``skipped``), as :func:`geomix.data.validate_data`.

    Raises:
        ValueError: naming the field or file and what is allowed.
    """
    from geomix import basemodel, models
    from geomix import data as gdata
    from geomix.runtime import autocast_dtype, device_for

    models.check(cfg.model)
    if cfg.model.pretrained == EMBEDDED_BASE:
        if cfg.data.source != "shapes":
            fail("model.pretrained", EMBEDDED_BASE, f"None, a tag or a checkpoint path with data.source="
                 f"{cfg.data.source!r} (the embedded base model needs the embedded data)")
        if not basemodel.base_path(cfg.model, cfg.data).is_file():
            check_writable_dir("model.cache_dir", cfg.model.cache_dir)
    if cfg.run.out_dir:
        check_writable_dir("run.out_dir", cfg.run.out_dir)
    if here:
        autocast_dtype(cfg.run.precision, device_for(cfg.run.device, 0))
    # the expensive part (every image of a file data set) last; task='classify': the FSMDT task's checks
    counts = gdata.validate_data(cfg.data, task=cfg.task)
    if cfg.optim.batch_size > counts["train"]:
        fail("optim.batch_size", cfg.optim.batch_size, f"at most the training set size {counts['train']} "
             "(every step takes one full batch)")
    if cfg.evaluation.fewshot_shots and cfg.task == "retrieval":  # given: every labelled set takes every k
        from geomix.metrics.probe import check_shots

        for name, labels in gdata.eval_labels(cfg.data).items():
            if labels is not None:
                where = "the test split" if name == "test" else f"evaluation set {name!r}"
                check_shots(labels, cfg.evaluation.fewshot_shots, f"evaluation.fewshot_shots (on {where})")
    return counts


def run(cfg: TrainConfig, *, hooks: Hooks | None = None, checked: bool = False) -> dict[str, Any]:
    """Run one trial: build model, data and loss, train, evaluate, checkpoint; return the summary.

    Args:
        cfg: the validated trial config.
        hooks: optional reporting / resume hooks (see :class:`Hooks`).
        checked: the caller has run :func:`check_trial` on ``cfg`` in this process (the command line does,
            before it prints the config); otherwise the data is validated here.

    Returns:
        ``status`` ("completed" | "diverged"), ``error`` (None or the message naming term and step),
        ``test_<metric>`` for every metric of :func:`geomix.metrics.evaluate_embeddings` (absent when
        diverged), ``start_test_<metric>`` with ``run.eval_start``, ``steps``, ``samples_seen``, ``wall_s``,
        ``samples_per_s``, ``device``, ``num_workers``, ``node_ids``.
    """
    import torch

    from geomix import basemodel
    from geomix import data as gdata
    from geomix.loop import Trainer
    from geomix.runtime import device_for, dist_context

    t_start = time.perf_counter()
    rank, world = dist_context()
    if cfg.optim.batch_size % world:
        raise ValueError(
            f"optim.batch_size={cfg.optim.batch_size} is invalid with {world} workers: allowed is a multiple "
            "of the number of workers (each takes an equal slice of the global batch)"
        )
    if not checked:
        gdata.validate_data(cfg.data, task=cfg.task)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = device_for(cfg.run.device, rank)
    torch.manual_seed(cfg.run.seed)
    model, preprocess, tokenizer = basemodel.starting_model(cfg.model, cfg.data, device="cpu",
                                                            progress=cfg.run.progress and rank == 0)
    trainer = Trainer(cfg, model, preprocess, tokenizer, device=device, rank=rank, world=world, hooks=hooks)
    result = trainer.fit()
    result["wall_s"] = time.perf_counter() - t_start
    if rank == 0 and cfg.run.out_dir:
        text = json.dumps(result, indent=1, default=str)
        atomic.write_text(os.path.join(cfg.run.out_dir, "result.json"), text)
    return result


# ----------------------------------------------------------------------------------------------------------
# command line

_SUMMARY_KEYS = ("r1_i2t", "r5_i2t", "r10_i2t", "r1_t2i", "r5_t2i", "r10_t2i", "rsum", "align", "unif", "gap",
                 "zs_acc", "ece", *registry.CLASSIFY_KEYS)


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
    lines += _sets_table(result)
    if result.get("error"):
        lines.append(f"error: {result['error']}")
    return "\n".join(lines)


def _sets_table(result: dict[str, Any]) -> list[str]:
    """The final metrics of the test split and of every extra evaluation set, one column each."""
    sets = list(dict.fromkeys(k.split(".")[1] for k in result if k.startswith(EVAL_PREFIX)))
    if not sets:
        return []
    keys = [k for k in ("rsum", "r1_i2t", "zs_acc", "ece", *registry.CLASSIFY_KEYS) if f"test_{k}" in result]
    keys += sorted({k[5:] for k in result if k.startswith("test_fewshot_k")}, key=lambda k: int(k[9:]))
    keys += [k for k in ("arith_r1", "arith_r5") if f"test_{k}" in result]
    cols = ["test", *sets]
    lines = ["", "final, per evaluation set", f"{'metric':<12}" + "".join(f"{c:>10}" for c in cols)]
    for k in keys:
        got = [result.get(f"test_{k}" if c == "test" else eval_key(c, k), float("nan")) for c in cols]
        lines.append(f"{k:<12}" + "".join(f"{v:>10.2f}" for v in got))
    return lines


def method_name(cfg: TrainConfig) -> str:
    """The method id of the loss ``cfg`` actually runs (the command line's label when ``method=`` is not set).

    ``task='classify'``: ``fsmdt_nomix``, or ``fsmdt_<λ policy>_<feat|img|both>`` (the mix levels on).

    ``imix`` / ``unmix`` for those kinds; with the contrastive kind: ``ft`` without a mix term (``ft_tau0.05``
    with a fixed τ), ``<term>_mix`` for one term (``m2_mix``), ``m3_mix`` for all the paper's terms (those
    of :data:`geomix.registry.TERMS` with a paper method of their own), otherwise the terms joined by ``+``
    (``m2+vl``), in registry order; a mix geometry other than the default adds ``_<geometry>``.
    """
    if cfg.task == "classify":  # fsmdt_nomix, fsmdt_progressive_both, fsmdt_beta_img, ...
        levels = cfg.transfer.levels
        return "fsmdt_nomix" if levels == "none" else f"fsmdt_{cfg.transfer.lam.policy}_{levels}"
    loss = cfg.loss
    if loss.kind != "contrastive":
        return loss.kind
    on = [t for t in registry.TERMS if loss.weight(t) > 0]
    if not on:
        return "ft" if loss.tau is None else f"ft_tau{_short_number(loss.tau)}"
    paper = [t for t in registry.TERMS if f"{t}_mix" in registry.PAPER_METHODS]
    if len(on) == 1:
        name = f"{on[0]}_mix"
    elif on == paper:
        name = "m3_mix"
    else:
        name = "+".join(on)
    if cfg.mix.geometry != MixConfig().geometry:
        name += f"_{cfg.mix.geometry}"
    return name


def _short_number(x: float) -> str:
    """``0.05`` -> ``0.05``, ``0.1`` -> ``0.10`` (the ablation's ``ft_tau0.10``), ``0.125`` -> ``0.125``."""
    return f"{x:.2f}" if round(x, 2) == x else f"{x:g}"


def validation_line(metrics: Mapping[str, Any]) -> str:
    """One evaluation point: ``epoch 1 step 16: val rsum 93.40, R@1 i->t 3.52, t->i 4.30``."""
    def pct(key: str) -> str:
        v = metrics.get(key)
        return f"{v:.2f}" if isinstance(v, (int, float)) else "?"

    head = f"epoch {metrics.get('epoch', '?')} step {metrics.get('step', '?')}: "
    if "val_acc" in metrics:  # task='classify'
        return head + f"val acc {pct('val_acc')}, macc {pct('val_macc')}"
    return head + f"val rsum {pct('val_rsum')}, R@1 i->t {pct('val_r1_i2t')}, t->i {pct('val_r1_t2i')}"


class _ConsoleHooks:
    """The command line's hooks: one :func:`validation_line` per evaluation point (above the bar)."""

    def __init__(self) -> None:
        self._printed: set[int] = set()

    def report(self, metrics: Mapping[str, Any], checkpoint_dir: str | None) -> None:
        step = metrics.get("step")
        if ("val_rsum" in metrics or "val_acc" in metrics) and step not in self._printed:  # each point once
            self._printed.add(step)
            logs.write(validation_line(metrics))

    def initial_checkpoint(self) -> str | None:
        return None  # resuming is the loop's own (run.resume with run.out_dir)


def _sets_method(config_file: str | None, overrides: Sequence[str]) -> bool:
    """Whether the user named the method: ``method=...`` or a top-level ``method:`` in the YAML."""
    if any(o.split("=", 1)[0].strip() == "method" for o in overrides):
        return True
    return bool(config_file) and "method" in load_yaml(config_file)


def _saved_line(cfg: TrainConfig) -> str:
    """Where the run's files are, or that there are none and how to keep them."""
    out = cfg.run.out_dir
    if not out:
        return ("nothing was saved (run.out_dir is not set); add run.out_dir=DIR to keep the config, the "
                "checkpoints and result.json")
    root = Path(out)
    saved = [str(root / name) for name in ("config.yaml", "result.json") if (root / name).is_file()]
    saved += [str(p) for p in sorted(root.glob("embeddings_*.npz"))]
    from geomix import checkpoints

    ckpt = checkpoints.latest(out)
    if ckpt:
        saved.append(f"checkpoint {ckpt}")
    return "saved: " + ", ".join(saved)


def main(argv: list[str] | None = None) -> int:
    """``python -m geomix.train [--config FILE] [key=value ...]``: one trial with a progress bar, one line
    per validation point and a summary table (base vs fine-tuned when the starting model is evaluated, which
    it is by default here). The resolved config goes to ``run.out_dir/config.yaml`` (else to the console, as
    YAML); its method, unless ``method=`` is given, is :func:`method_name`."""
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
        if not _sets_method(args.config, overrides):
            cfg = dataclasses.replace(cfg, method=method_name(cfg))
        check_trial(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.run.out_dir:
        path = os.path.join(cfg.run.out_dir, "config.yaml")
        save_config(cfg, path)
        print(f"method {cfg.method}: resolved config written to {path}")
    else:
        print(f"method {cfg.method}: resolved config\n")
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    try:
        result = run(cfg, hooks=_ConsoleHooks(), checked=True)
    except ValueError as e:  # found only while building: a file that is not a checkpoint, an image that
        print(f"error: {e}", file=sys.stderr)  # does not decode; geomix names the field or file
        return 2
    print(summary_table(result))
    print(_saved_line(cfg))
    return 0 if result["status"] == "completed" else 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
