"""Ray start-up and what each trial reserves: a local Ray or a running cluster, trial resources, concurrency.

The Ray Train worker group of a trial is a placement group Tune does not account for
(``docs/ray-notes.md``, item 2): a trial's own actor must not take a CPU its workers need, and the number of
trials running at once must fit what the cluster holds. Imports Ray core only (``ray``), never Tune or Train.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import ray

log = logging.getLogger(__name__)

RAY_VERSION_TESTED = "2.60.0"
# Custom resource each trial's own actor holds in the Ray Train path: the Train worker group is a separate
# placement group Tune does not account for, so the trial actor must not take a CPU the workers need
# (2.01 CPUs never fit on a 2-CPU machine). A local Ray started here declares it; cluster.yaml declares it
# on the head node. Without it (a foreign cluster), the trial actor takes a 0.01-CPU share instead.
TRIAL_SLOT = "geomix_trial_slot"
_SLOTS = 1000
#: The dashboard (and its State API) of a local Ray listens on the loopback address only.
LOOPBACK = "127.0.0.1"
#: Ray's switch for token authentication (on for a local start unless set otherwise; ray-notes 16).
AUTH_MODE = "RAY_AUTH_MODE"
#: Set to ``1`` (on the driver) to run a 1-worker Ray Train trial as a Train worker group (controller,
#: placement group, worker actor: ~20 s more per trial on 2 cores) instead of in its own trial actor, which
#: then holds the worker's CPU and GPU (ray-notes 19).
ONE_WORKER_GROUP_ENV = "GEOMIX_ONE_WORKER_GROUP"


def start_ray(
    address: str | None = "local", *, num_cpus: int | None = None, num_gpus: int | None = None
) -> Any:
    """Start a local Ray (``address`` None/"local") with this machine's resources, or join ``address``.

    The dashboard stays on (bound to 127.0.0.1): Train's placement-group cleaner needs the State API it
    serves, and without it trials stopped by ASHA leak their worker groups and the sweep hangs.

    A local Ray's other servers (GCS, raylet, workers, agents) listen on every interface: Ray 2.60 has no
    setting to bind them to the loopback address (``_node_ip_address="127.0.0.1"`` is turned back into the
    machine's address). They require Ray's token: Ray turns token authentication on for a local start
    unless ``RAY_AUTH_MODE`` says otherwise, and a user who set it to anything else is warned
    (``docs/ray-notes.md``, item 16).

    Returns:
        Ray's ``RayContext`` (``.dashboard_url``), or None when Ray was already initialised.
    """
    # a checkpoint per epoch forces experiment snapshots often; that is intended here, not a bottleneck
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return None
    if address in (None, "", "local"):
        # Unset, Ray 2.60 turns token authentication on for a local start (and sets the variable itself)
        mode = os.environ.get(AUTH_MODE)
        if mode is not None and mode.lower() != "token":
            log.warning("%s=%s: this local Ray accepts requests from anyone who can reach this machine's "
                        "ports (they listen on every interface); unset it to turn token authentication on",
                        AUTH_MODE, mode)
        context = ray.init(
            address="local",
            num_cpus=num_cpus if num_cpus is not None else os.cpu_count(),
            num_gpus=num_gpus,
            resources={TRIAL_SLOT: _SLOTS},
            include_dashboard=True,
            dashboard_host=LOOPBACK,
            logging_level=logging.WARNING,
        )
    else:
        context = ray.init(address=address, logging_level=logging.WARNING)
    if ray.__version__ != RAY_VERSION_TESTED:
        log.warning("sweeps were checked against Ray %s; this is Ray %s", RAY_VERSION_TESTED, ray.__version__)
    return context


@contextlib.contextmanager
def ray_session(address: str | None = "local", **kwargs: Any) -> Iterator[Any]:
    """``start_ray`` for the length of a ``with`` block; shuts Ray down afterwards only if this block
    started it (a script's ``main()`` called from a notebook or a test leaves no Ray behind)."""
    started = not ray.is_initialized()
    context = start_ray(address, **kwargs)
    try:
        yield context
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


def cluster_resources() -> dict[str, float]:
    """What the connected cluster holds now (``CPU``, ``GPU``, the trial slot, ...)."""
    return dict(ray.cluster_resources())


def node_id() -> str:
    """The id of the Ray node this process runs on."""
    return ray.get_runtime_context().get_node_id()


def one_worker_in_trial(num_workers: int) -> bool:
    """Whether a trial of ``num_workers`` Ray Train workers runs its one worker in its own trial actor (a
    1-worker trial, unless :data:`ONE_WORKER_GROUP_ENV` is ``1``). Read on the driver: it decides what the
    trial actor holds (:func:`trial_resources`), and the trial actor goes by what it holds
    (:func:`holds_worker`)."""
    return num_workers == 1 and os.environ.get(ONE_WORKER_GROUP_ENV, "0").strip() != "1"


def in_trial_actor(num_workers: int) -> bool:
    """Whether a trial of ``num_workers`` trains in its own trial actor: in-process (0), or a 1-worker trial
    that runs its worker there (:func:`one_worker_in_trial`). Such an actor holds what training needs
    (:func:`trial_resources`), and Tune retries its failures (``sweeps.runner``)."""
    return num_workers == 0 or one_worker_in_trial(num_workers)


def holds_worker(num_workers: int, held: Mapping[str, float]) -> bool:
    """Whether a trial actor holding ``held`` runs its one Ray Train worker itself: a 1-worker trial whose
    actor holds a whole CPU (:func:`trial_resources` gives one only then). A trial restored from an
    experiment that started its worker groups keeps its slot-only resources, and so its Train run."""
    return num_workers == 1 and held.get("CPU", 0.0) >= 1.0


def trial_resources(
    num_workers: int, gpus_per_worker: float, cluster: Mapping[str, float]
) -> dict[str, float]:
    """What the trial actor itself holds. In-process trials, and 1-worker trials that run their worker in
    the trial actor (:func:`one_worker_in_trial`), hold what training needs (1 CPU, GPUs); other Ray Train
    trials hold only a slot, the worker group reserves its own CPUs/GPUs."""
    if in_trial_actor(num_workers):
        res = {"CPU": 1.0}
        if gpus_per_worker:
            res["GPU"] = gpus_per_worker
        return res
    if cluster.get(TRIAL_SLOT, 0) >= 1:
        return {"CPU": 0.0, TRIAL_SLOT: 1.0}
    return {"CPU": 0.01}


def max_concurrent_trials(
    num_workers: int, gpus_per_worker: float, cluster: Mapping[str, float], requested: int | None = None
) -> int:
    """Trials that fit at once: cluster CPUs // CPUs per trial, and likewise for GPUs (at least 1).

    A requested cap is kept, with a warning when it is more than fits now: on an autoscaling cluster the
    GPU nodes it needs may still be launching. (Trials beyond what can ever be placed would wait on worker
    groups; the Train controller's finite failure limit turns that into a failure, not a hang.)
    """
    per_trial_cpu = max(1, num_workers)
    fits = max(1, int(cluster.get("CPU", 1) // per_trial_cpu))
    if gpus_per_worker:
        per_trial_gpu = gpus_per_worker * max(1, num_workers)
        fits = min(fits, max(1, int(cluster.get("GPU", 0) // per_trial_gpu)))
    if requested is None:
        return fits
    if requested > fits:
        log.warning("--max-concurrent %d is more than the cluster holds now (%d)", requested, fits)
    return requested
