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

The fixed cost is the Ray Train wall time minus the in-process trial's. Two variants side by side: Ray's
default Train settings, and the ones ``sweeps.raytrain.fit`` sets (``raytrain.TRAIN_ENV``).
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

from geomix import config as C
from sweeps import cli, raytrain, session

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


def one_raytrain(cfg: C.TrainConfig, tmp: Path, i: int, env: dict[str, str]) -> dict[str, float]:
    """One 1-worker run, its phases; ``env``: the Train settings of the driver (Ray's defaults when empty)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    for key in raytrain.TRAIN_ENV:
        os.environ.pop(key, None)
    os.environ.update(env)
    stamps = tmp / f"stamps{i}-{len(env)}"
    stamps.mkdir()
    cfg_dict = C.to_dict(cfg)
    cfg_dict["stamps"] = str(stamps)
    trainer = TorchTrainer(
        probed_loop, train_loop_config=cfg_dict, torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=False),
        run_config=ray.train.RunConfig(name=f"probe{i}-{len(env)}", storage_path=str(tmp / "ray"),
                                       failure_config=ray.train.FailureConfig(controller_failure_limit=0)),
    )
    t_call = time.time()
    trainer.fit()
    t_done = time.time()
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
        variants = {"Ray's defaults": {}, "raytrain.fit's": dict(raytrain.TRAIN_ENV)}
        phases: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
        inproc: list[float] = []
        for i in range(args.repeats):  # interleaved, so load drift hits every path alike
            inproc.append(one_inproc(cfg))
            for name, env in variants.items():
                phases[name].append(one_raytrain(cfg, tmp, i, env))
        import ray

        ray.shutdown()
    base_s = statistics.median(inproc)
    print(f"\n1-worker Ray Train trial vs in-process, {args.repeats} interleaved repeats, medians; "
          f"Ray start-up {ray_start:.1f} s (once per sweep, not below)")
    print(f"{'phase':<32}" + "".join(f"{k:>18}" for k in variants))
    med = {name: {k: statistics.median(p[k] for p in runs) for k in runs[0]} for name, runs in phases.items()}
    for k in med[next(iter(variants))]:
        print(f"{k:<32}" + "".join(f"{m[k]:>18.1f}" for m in med.values()))
    print(f"{'in-process trial':<32}" + f"{base_s:>18.1f}" * len(variants))
    print(f"{'fixed cost (total - in-process)':<32}" + "".join(f"{m['total'] - base_s:>18.1f}"
                                                            for m in med.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
