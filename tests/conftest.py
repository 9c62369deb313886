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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `sweeps` is a folder of scripts at the repo root, not an installed package
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def local_ray():
    """A 2-CPU local Ray with the sweep's trial-slot resource, as ``sweeps._tune.start_ray`` starts it."""
    ray = pytest.importorskip("ray")
    from sweeps import _tune

    assert not ray.is_initialized()
    _tune.start_ray("local", num_cpus=2)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def two_node_cluster():
    """``ray.cluster_utils.Cluster``: a head with no CPUs (only the trial slot) and two 1-CPU "nodes", so a
    2-worker trial must spread its workers over both."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from sweeps import _tune

    assert not ray.is_initialized()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "resources": {_tune.TRIAL_SLOT: 100}, "include_dashboard": True},
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
