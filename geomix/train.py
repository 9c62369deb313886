"""One trial from a :class:`~geomix.config.TrainConfig`, standalone or as a Ray Train worker.

:func:`run` builds the starting model (:mod:`geomix.basemodel`), runs the loop (:class:`geomix.loop.Trainer`)
and returns the summary; ``python -m geomix.train --config FILE key=value ...`` is its command line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any

import torch

from geomix import atomic, basemodel, logs
from geomix.config import TrainConfig, load_config, to_dict
from geomix.loop import Hooks, Trainer
from geomix.runtime import device_for, dist_context

log = logging.getLogger(__name__)

__all__ = ["Hooks", "run", "summary_table", "main"]


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

    t_start = time.perf_counter()
    rank, world = dist_context()
    if cfg.optim.batch_size % world:
        raise ValueError(
            f"optim.batch_size={cfg.optim.batch_size} is invalid with {world} workers: allowed is a multiple "
            "of the number of workers (each takes an equal slice of the global batch)"
        )
    gdata.validate_data(cfg.data)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = device_for(cfg.run.device, rank)
    torch.manual_seed(cfg.run.seed)
    model, preprocess, tokenizer = basemodel.starting_model(cfg.model, cfg.data, device="cpu")
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
