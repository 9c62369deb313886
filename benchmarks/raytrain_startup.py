"""Where a Ray Train trial's fixed cost goes: one 1-worker ``TorchTrainer`` run of a tiny trial, timed phase
by phase against the same trial run in-process, in one run.

    python benchmarks/raytrain_startup.py                 # 2 repeats of each path, medians
    python benchmarks/raytrain_startup.py --repeats 3 optim.epochs=1

Phases of the Ray Train path (wall-clock stamps from the driver and the worker, one machine):

- ``controller + worker start``: ``fit()`` called -> the worker process exists (Train's controller actor,
  its placement group, the worker actor's process);
- ``worker set-up``: worker process created -> the training function starts (the worker's imports,
  unpickling the function, ``torch.distributed`` init);
- ``trial``: the training function's own ``geomix.train.run`` (data, base-model load, training, evaluation,
  checkpoints), also timed in-process for comparison;
- ``shutdown``: the training function returned -> ``fit()`` returned (results, worker group teardown).

The fixed cost is the Ray Train wall time minus the in-process trial's. Every run forwards its reports the
way a sweep's Train run does (``raytrain.TuneForwarder`` into a Ray queue actor, as Tune's queue), and three
variants run side by side:

- ``Ray's defaults``: Ray's default Train settings, and a controller that imports ``sweeps.trainable`` (and
  with it Tune's search and tracking modules), as it did when the report callback was defined there;
- ``fit's, old callback``: the Train settings ``sweeps.raytrain.fit`` sets (``raytrain.TRAIN_ENV``), the
  same controller imports: how every Ray Train trial started before ray-notes 19;
- ``fit's, now``: those settings, and the callback as it is now: the controller imports only
  ``sweeps.raytrain`` (trials of 2+ workers, and 1-worker trials with ``GEOMIX_ONE_WORKER_GROUP=1``).

A 1-worker trial now runs its worker in its Tune trial actor (ray-notes 19): none of these phases, and the
cost of the in-process trial row (its per-trial overhead in a sweep: ``benchmarks/sweep_overhead.py``).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray.train

from geomix import config as C
from sweeps import cli, raytrain, session, trainable

BASE = {
    "data": {"train_size": 256, "val_size": 64, "test_size": 64},
    "model": {"base_epochs": 2, "base_train_size": 512},
    "optim": {"epochs": 1, "batch_size": 64},
    "run": {"eval_every": 1, "checkpoint_every": 1, "progress": False, "threads": 1},
}


def _stamp(folder: str, name: str) -> None:
    Path(folder, name).write_text(repr(time.time()))


def _read(folder: str, name: str) -> float:
    return float(Path(folder, name).read_text())


def _process_start() -> float:
    """This process's start time (Unix seconds), from ``/proc`` (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    since_boot = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime"))
    return boot + since_boot


def probed_loop(config: dict) -> None:
    """``raytrain.train_loop_per_worker`` with stamps: when this worker's process was created, when the
    function started, when it returned."""
    stamps = config.pop("stamps")
    Path(stamps, "worker_created").write_text(repr(_process_start()))
    _stamp(stamps, "loop_start")
    raytrain.train_loop_per_worker(config)
    _stamp(stamps, "loop_end")


class OldControllerImports(ray.train.UserCallback):
    """Does nothing but make the controller import ``sweeps.trainable``, which the sweep's report callback
    did when it was defined there: it holds a function of that module, which the controller unpickles by
    reference (this class itself travels by value, being defined in ``__main__``)."""

    def __init__(self) -> None:
        self.of_trainable = trainable.trained_json


def one_raytrain(
    cfg: C.TrainConfig, tmp: Path, name: str, env: dict[str, str], old: bool
) -> dict[str, float]:
    """One 1-worker run, its phases; ``env``: the Train settings of the driver (Ray's defaults when empty);
    ``old``: the controller imports ``sweeps.trainable`` too (:class:`OldControllerImports`)."""
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    for key in raytrain.TRAIN_ENV:
        os.environ.pop(key, None)
    os.environ.update(env)
    stamps = tmp / f"stamps-{name}"
    stamps.mkdir()
    cfg_dict = C.to_dict(cfg)
    cfg_dict["stamps"] = str(stamps)
    t_call = time.time()
    # as in a sweep: Tune's queue actor (one per trial) and the callback that forwards reports into it
    queue = Queue(actor_options={"num_cpus": 0})
    callbacks = [raytrain.TuneForwarder(queue, done_key="final", carry={"val_rsum": float("nan"), "epoch": 0},
                                        checkpoint_key="checkpoint_path")]
    if old:
        callbacks.append(OldControllerImports())
    trainer = TorchTrainer(
        probed_loop, train_loop_config=cfg_dict, torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=False),
        run_config=ray.train.RunConfig(name=f"probe-{name}", storage_path=str(tmp / "ray"),
                                       callbacks=callbacks,
                                       failure_config=ray.train.FailureConfig(controller_failure_limit=0)),
    )
    trainer.fit()
    t_done = time.time()
    reports = queue.qsize()
    queue.shutdown()
    assert reports >= 2, reports  # the starting model, then every epoch (the last one is the final report)
    created, start, end = (_read(str(stamps), n) for n in ("worker_created", "loop_start", "loop_end"))
    return {"controller + worker start": created - t_call, "worker set-up": start - created,
            "trial": end - start, "shutdown": t_done - end, "total": t_done - t_call}


def one_inproc(cfg: C.TrainConfig) -> float:
    from geomix import train

    t0 = time.time()
    result = train.run(cfg)
    assert result["status"] == "completed", result
    return time.time() - t0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    base = C.merge(BASE, C.parse_overrides(args.overrides))
    base = C.merge(base, {"model": {"cache_dir": str(Path(C.ModelConfig().cache_dir).resolve())}})
    with tempfile.TemporaryDirectory(prefix="geomix-startup-") as tmp_name:
        tmp = Path(tmp_name)
        cfg = C.build_config(C.merge(base, {"run": {"out_dir": str(tmp / "inproc")}}))
        cli.prepare_base_models([cfg])  # built once, outside every timing
        t0 = time.perf_counter()
        session.start_ray("local", num_cpus=2)
        ray_start = time.perf_counter() - t0
        variants = {"Ray's defaults": ({}, True), "fit's, old callback": (dict(raytrain.TRAIN_ENV), True),
                    "fit's, now": (dict(raytrain.TRAIN_ENV), False)}
        phases: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
        inproc: list[float] = []
        for i in range(args.repeats):  # interleaved, so load drift hits every path alike
            inproc.append(one_inproc(cfg))
            for j, (name, (env, old)) in enumerate(variants.items()):
                phases[name].append(one_raytrain(cfg, tmp, f"{i}-{j}", env, old))
        import ray

        ray.shutdown()
    base_s = statistics.median(inproc)
    print(f"\n1-worker Ray Train trial vs in-process, {args.repeats} interleaved repeats, medians; "
          f"Ray start-up {ray_start:.1f} s (once per sweep, not below)")
    print(f"{'phase':<32}" + "".join(f"{k:>21}" for k in variants))
    med = {name: {k: statistics.median(p[k] for p in runs) for k in runs[0]} for name, runs in phases.items()}
    for k in med[next(iter(variants))]:
        print(f"{k:<32}" + "".join(f"{m[k]:>21.1f}" for m in med.values()))
    print(f"{'in-process trial':<32}" + f"{base_s:>21.1f}" * len(variants))
    print(f"{'fixed cost (total - in-process)':<32}" + "".join(f"{m['total'] - base_s:>21.1f}"
                                                            for m in med.values()))
    print("A 1-worker trial now runs in its trial actor: none of these phases; it costs the in-process trial")
    return 0


if __name__ == "__main__":
    sys.exit(main())
