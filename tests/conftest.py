"""Shared Ray fixtures: a small local Ray (dashboard on, explicit resources), shut down after use.

Ray hygiene on a shared machine: ``address="local"`` so a test never joins someone else's cluster, explicit
small resources, ``ray.shutdown()`` / ``Cluster.shutdown()`` for what the test started (never ``ray stop``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Faster failure detection for Ray Train worker groups in tests (set before Ray starts its processes).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "20")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


@pytest.fixture
def local_ray():
    """A 2-CPU local Ray with the sweep's trial-slot resource, as ``sweeps.session.start_ray`` starts it;
    yields its ``RayContext`` (``.dashboard_url`` for the State API of exactly this cluster)."""
    ray = pytest.importorskip("ray")
    from sweeps import session

    if ray.is_initialized():  # a leftover of an earlier test in this process, never another user's Ray
        ray.shutdown()
    context = session.start_ray("local", num_cpus=2)
    try:
        yield context
    finally:
        ray.shutdown()


@pytest.fixture
def two_node_cluster():
    """``ray.cluster_utils.Cluster``: a head with no CPUs (only the trial slot) and two 1-CPU "nodes", so a
    2-worker trial must spread its workers over both."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from sweeps import session

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "resources": {session.TRIAL_SLOT: 100}, "include_dashboard": True},
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


# ----------------------------------------------------------------------------------------------------------
# A stand-in trial for testing the Ray machinery on its own: a real (tiny) torch regression loop that keeps
# geomix.train.run's hooks contract (report at each epoch with a checkpoint, final report with status and
# done=True, resume from hooks.initial_checkpoint()). Knobs ride on TrainConfig fields: optim.lr (a huge lr
# diverges), optim.epochs, data.train_size / 10000 = seconds of sleep per epoch (time to kill things).


def standin_run(cfg, *, hooks=None):
    import math
    import time

    import torch
    import torch.distributed as dist

    t0 = time.time()
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    g = torch.Generator().manual_seed(cfg.run.seed)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    w = torch.zeros(4, requires_grad=True)
    opt = torch.optim.SGD([w], lr=cfg.optim.lr)
    start = step = 0
    ckpt = hooks.initial_checkpoint() if hooks else None
    if ckpt:
        state = torch.load(Path(ckpt) / "state.pt")
        w.data.copy_(state["w"])
        start, step = state["epoch"], state["step"]
    status, error, loss = "completed", None, torch.tensor(0.0)
    for epoch in range(start, cfg.optim.epochs):
        for _ in range(4):
            loss = ((x @ w - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            if world > 1:
                dist.all_reduce(w.grad)
                w.grad /= world
            opt.step()
            step += 1
        time.sleep(cfg.data.train_size / 10000)
        if not math.isfinite(loss.item()):
            status, error = "diverged", f"non-finite loss at step {step}"
            break
        ckpt_dir = None
        if rank == 0 and cfg.run.out_dir:
            ckpt_dir = Path(cfg.run.out_dir) / f"ckpt-{epoch + 1}"
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"w": w.detach().clone(), "epoch": epoch + 1, "step": step}, ckpt_dir / "state.pt")
        if hooks and (rank == 0 or getattr(hooks, "all_ranks", False)):
            metrics = {"epoch": epoch + 1, "step": step, "train_loss": loss.item(), "val_rsum": -loss.item(),
                       "resumed_from": start}
            hooks.report(metrics, str(ckpt_dir) if ckpt_dir else None)
    node = hooks.node_id() if hooks and hasattr(hooks, "node_id") else None
    nodes = [None] * world
    if world > 1:
        dist.all_gather_object(nodes, node)
    else:
        nodes = [node]
    result = {"status": status, "error": error, "steps": step, "wall_s": time.time() - t0, "device": "cpu",
              "num_workers": world, "node_ids": ",".join(str(n) for n in nodes)}
    if status == "completed":
        result.update(test_rsum=-loss.item(), test_r1_i2t=50.0)
    if hooks and (rank == 0 or getattr(hooks, "all_ranks", False)):
        hooks.report({"epoch": cfg.optim.epochs if status == "completed" else epoch + 1, "step": step,
                      "done": True, **result}, None)
    return result


@pytest.fixture
def standin():
    """The stand-in trial functions, shipped to Ray workers by value (the workers cannot import tests/)."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return {"run_fn": standin_run}


# ----------------------------------------------------------------------------------------------------------
# tiny real trials (geomix.train) for the end-to-end tests: the micro model, a small base model cached
# once per test session, a few dozen samples.

_TINY = {
    "model": {"name": "geomix-micro", "base_epochs": 2, "base_train_size": 256, "base_batch_size": 64},
    "data": {"train_size": 64, "val_size": 32, "test_size": 32},
    "optim": {"epochs": 2, "batch_size": 32},
}


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("geomix-cache"))


@pytest.fixture
def tiny_base(tiny_cache):
    """A base TrainConfig dict for tiny real trials (shared base-model cache)."""
    from geomix import config as C

    return C.merge(_TINY, {"model": {"cache_dir": tiny_cache}})


@pytest.fixture
def tiny_overrides(tiny_base):
    """The same as ``key=value`` command-line overrides."""
    from geomix import config as C

    return [f"{k}={v}" for k, v in C.flatten(tiny_base).items()]


@pytest.fixture(scope="session")
def gloo_spawn():
    """``run(worker, world, out)``: ``worker(rank, port, out)`` in ``world`` gloo processes on a free local
    port; returns each rank's ``out/rank<r>.pt``."""
    import socket

    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    def run(worker, world: int, out: Path) -> list:
        if not dist.is_available():
            pytest.skip("torch.distributed is not available")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(worker, args=(port, str(out)), nprocs=world, join=True)
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world)]

    return run


@pytest.fixture
def nothing_starts(monkeypatch):
    """A bad input that is not refused reaches training, the base-model build or Ray: fail the test."""
    import sweeps.cli
    import sweeps.session
    from geomix import basemodel, loop

    def started(*args, **kwargs):
        raise AssertionError("a bad input was not refused: training or Ray started")

    monkeypatch.setattr(loop.Trainer, "fit", started)
    monkeypatch.setattr(basemodel, "_build", started)
    monkeypatch.setattr(sweeps.session, "ray_session", started)
    monkeypatch.setattr(sweeps.cli, "prepare_base_models", started)
