"""What a sweep is and what each of its trials runs: :class:`SweepSpec`, and trial configs resolved once.

Every trial's ``TrainConfig`` is resolved here, on the driver, before Ray starts (resolving validates it, so
a bad field is named before anything runs). The trial's Tune config then carries the resolved nested dict
(:func:`geomix.config.to_dict`) under :data:`TRIAL_KEY`, and the trial actor, the results callback and
``reconcile`` read that dict instead of resolving again::

    {"trial": {"method": "m3_mix", "seed": 0, "method_rank": 10, "config": {...}}}        # an ablation trial
    {"trial": {"method": "search", "seed": 0, "overrides": {"loss.w_m2": 0.1}, "config": {...}},
     "loss.w_m2": 0.1, ...}                            # a search trial: Optuna's parameters beside it

``method_rank`` is the method's position in the sweep YAML's ``methods`` (the analysis orders rows by it);
``overrides`` are a search trial's sampled dotted overrides, stored as they are in the ``trials`` table.
This module imports no Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from geomix.checks import check_range, check_writable_dir, fail
from geomix.config import TrainConfig, from_dict, merge, to_dict, unflatten
from store import EMBEDDINGS_DIR
from store.fs import join
from sweeps.identity import trial_key

FINAL_KEY = "final"  # Tune treats a reported ``done=True`` as "stop this trial now", so it is renamed.
STATUS_KEY = "status"  # set by geomix.train in its final report: "completed" or "diverged"
SWEEP_METRIC = "val_rsum"
SWEEP_MODE = "max"
TIME_ATTR = "epoch"  # not training_iteration: that restarts at 1 after a restore (docs/ray-notes.md, 12)
# The key of a trial's own config in its Tune config. Its values are plain nested dicts and lists, which
# Tune keeps in its trial state as they are (a ``sample_from`` value would be a placeholder there, which
# ``Tuner.restore`` does not resolve again), so a resumed trial still carries its config.
TRIAL_KEY = "trial"


@dataclass(frozen=True)
class SweepSpec:
    """Everything a trial needs besides its own trial config; validated on construction.

    Attributes:
        name: sweep name: Tune experiment name, Optuna study name, ``sweep`` column.
        base: the shared base TrainConfig as a nested dict (a diff over the defaults).
        results: folder or ``s3://`` / ``gs://`` URI of the results (``trials/``, ``history/``).
        storage: Ray storage root (local folder or URI); the Tune experiment is ``storage/name``.
        methods: method id -> dotted override dict (ablation rows); a trial's ``method`` picks one.
        num_workers: 0 = in-process ``geomix.train.run``; N = Ray Train with N workers per trial.
        gpus_per_worker: GPUs per worker (or for the in-process trial).
        max_concurrent: cap on running trials; None = what the cluster's CPUs/GPUs hold.
        max_failures: retries of a trial's worker group (Train) or of the trial (Tune) after a crash.
        controller_failure_limit: Train controller retries; finite so a scheduling bug fails, not hangs.
        run_fn: in-process trial function, ``run(cfg, hooks=...) -> dict``; None = ``geomix.train.run``.
        keep_checkpoints: keep a finished trial's checkpoints in storage. Off by default: they exist to
            resume a trial that has not finished (~100 MB each for the tiny model, with optimizer state),
            and a finished trial is never rerun; its metrics and embeddings are in the results folder.
        mlflow: MLflow tracking URI of the sweep's runs (``--mlflow``, ``sweeps/tracking.py``); None = off.
    """

    name: str
    base: Mapping[str, Any]
    results: str
    storage: str
    methods: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    num_workers: int = 0
    gpus_per_worker: float = 0.0
    max_concurrent: int | None = None
    max_failures: int = 1
    controller_failure_limit: int = 2
    run_fn: Callable[..., Mapping[str, Any]] | None = None
    keep_checkpoints: bool = False
    mlflow: str | None = None

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\ "):
            fail("name", self.name, "a non-empty name without '/', '\\' or spaces")
        check_range("num_workers", self.num_workers, 0, None)
        check_range("gpus_per_worker", self.gpus_per_worker, 0.0, None)
        if self.num_workers > 0 and self.gpus_per_worker not in (0, 1):
            fail("gpus_per_worker", self.gpus_per_worker, "0 or 1 with Ray Train workers (one GPU each)")
        if self.max_concurrent is not None:
            check_range("max_concurrent", self.max_concurrent, 1, None)
        check_range("max_failures", self.max_failures, 0, None)
        check_range("controller_failure_limit", self.controller_failure_limit, 0, None)


def resolve_base(spec: SweepSpec) -> TrainConfig:
    """The sweep's base alone (defaults <- YAML base <- command-line overrides), so a bad base value is
    named as the base's (``base: optim.lr=...``) rather than as the first method's.

    Raises:
        ValueError: naming the bad dotted field of the base (``run.seed`` among them: the sweep sets it).
    """
    _no_seed("base", spec.base)
    try:
        return from_dict(TrainConfig, merge(dict(spec.base), {"method": "base"}))
    except ValueError as e:
        raise ValueError(f"base (the sweep YAML's base and the command line's key=value): {e}") from None


def resolve_trial(
    spec: SweepSpec, method: str = "search", seed: int = 0, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """The TrainConfig of one trial: base <- method row <- dotted ``overrides`` <- method, seed.

    Raises:
        ValueError: naming the method or the bad dotted field.
    """
    data = dict(spec.base)
    if spec.methods:
        if method not in spec.methods:
            fail("method", method, "one of " + ", ".join(spec.methods))
        _no_seed(f"methods.{method}", unflatten(spec.methods[method]))
        data = merge(data, unflatten(spec.methods[method]))
    data = merge(data, unflatten(overrides or {}))
    data["method"] = method
    data = merge(data, {"run": {"seed": int(seed), "progress": False}})
    try:
        return from_dict(TrainConfig, data)
    except ValueError as e:
        raise ValueError(f"method {method!r}: {e}") from None


def _no_seed(where: str, diff: Mapping[str, Any]) -> None:
    """A sweep sets every trial's ``run.seed`` (the ablation's seeds, the search's ``trial_seed``): one in
    the base or a method row would be overwritten without a word, so it is refused."""
    run = diff.get("run")
    if isinstance(run, Mapping) and "seed" in run:
        fail(f"{where} run.seed", run["seed"], "no run.seed in a sweep's base or method rows: the sweep's "
             "seeds set it (ablation: seeds / --seeds; search: search.trial_seed)")


def check_flags(args: Any) -> None:
    """The shared command-line flags that the spec can no longer tell apart once built: an empty
    ``--name``, ``--results`` or ``--storage`` would silently become the default (or, for ``--results``,
    the working directory).

    Raises:
        ValueError: naming the flag.
    """
    for flag in ("name", "results", "storage"):
        value = getattr(args, flag, None)
        if value is not None and not value.strip():
            what = "a sweep name" if flag == "name" else "a folder or an s3:// gs:// URI"
            fail(f"--{flag}", value, f"{what} (leave the flag out for the default)")


def check_before_ray(spec: SweepSpec, cfgs: Iterable[TrainConfig]) -> None:
    """What the trial configs cannot say about themselves, checked on the driver before Ray starts: the
    results and storage folders can be written, the batch splits evenly over ``num_workers`` Ray Train
    workers, and every distinct (data, model, batch size) passes
    :func:`geomix.train.check_trial` (data files and images, a batch no larger than the training set, the
    model, its cache folder; not the device, as trials may run on other machines).

    Raises:
        ValueError: naming the flag, or the method and the field or file.
    """
    check_writable_dir("--results", spec.results)
    check_writable_dir("--storage", spec.storage)
    from geomix.train import check_trial  # torch: imported once the arguments are known to be good

    seen = set()
    for cfg in cfgs:
        if spec.num_workers > 1 and cfg.optim.batch_size % spec.num_workers:  # each worker an equal slice
            fail("optim.batch_size", cfg.optim.batch_size, f"a multiple of --num-workers={spec.num_workers} "
                 f"(method {cfg.method!r})")
        key = (cfg.data, cfg.model, cfg.optim.batch_size)
        if key not in seen:
            seen.add(key)
            try:
                check_trial(cfg, here=False)
            except ValueError as e:
                raise ValueError(f"method {cfg.method!r}: {e}") from None


def trial_config(
    cfg: TrainConfig, *, overrides: Mapping[str, Any] | None = None, method_rank: int | None = None
) -> dict[str, Any]:
    """One trial's own config (Tune's under :data:`TRIAL_KEY`): its identity and its resolved ``cfg`` as a
    nested dict."""
    out: dict[str, Any] = {"method": cfg.method, "seed": cfg.run.seed}
    if overrides is not None:
        out["overrides"] = dict(overrides)
    if method_rank is not None:
        out["method_rank"] = int(method_rank)
    out["key"] = trial_key(cfg)
    out["config"] = to_dict(cfg)
    return out


def trial_of(tune_config: Mapping[str, Any]) -> Mapping[str, Any]:
    """A trial's own config (:func:`trial_config`) from its Tune config."""
    return tune_config[TRIAL_KEY]


def describe(tune_config: Mapping[str, Any]) -> str:
    """``method, seed N`` of a trial, for log lines."""
    trial = tune_config.get(TRIAL_KEY, {})
    return f"{trial.get('method', 'trial')}, seed {trial.get('seed', 0)}"


def trial_name(spec: SweepSpec, trial_id: str) -> str:
    """Deterministic Train run name per trial, so a restarted trial restores its Train run."""
    return f"{spec.name}-{trial_id}"


def embeddings_name(trial_id: str) -> str:
    """Where a trial's final test embeddings go, relative to the results folder."""
    return f"{EMBEDDINGS_DIR}/{trial_id}.npz"


def experiment_path(spec: SweepSpec, experiment: str | None = None) -> str:
    """The Tune experiment folder (or URI): ``storage/<experiment>`` (default: the sweep's name)."""
    return join(spec.storage, experiment or spec.name)


def train_storage(spec: SweepSpec) -> str:
    """Where the Ray Train runs of the trials live: ``storage/train/<trial name>``."""
    return join(spec.storage, "train")
