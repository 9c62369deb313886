"""What the sweep scripts share on the command line: arguments, the spec from them, driver-side preparation,
the end-of-sweep printout, and :func:`cli` (a bad config or argument -> one ``error:`` line, status 2).

Modules that take seconds to import (torch, Ray, Optuna, the analysis) are imported inside the functions
that need them, so a bad argument fails at once. The end-of-sweep table comes from ``analysis.summary``,
the one analysis function a sweep may call (the layer contract in ``pyproject.toml`` allows exactly that
import, from this module).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import store
from geomix.config import EMBEDDED_BASE, TrainConfig
from store.fs import join
from sweeps import tracking
from sweeps.schema import SweepFile
from sweeps.spec import SweepSpec

log = logging.getLogger(__name__)


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every sweep script shares (results, storage, cluster, resources)."""
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the base TrainConfig")
    parser.add_argument("--smoke-test", action="store_true", help="the config's short CI version")
    parser.add_argument("--name", help="sweep name (default: the config's name); also the Optuna study name")
    parser.add_argument("--results", help="results folder or s3:// gs:// URI (default results/<name>)")
    parser.add_argument("--storage", help="Ray storage: local folder or s3:// gs:// URI (default "
                        "<results>/ray when results is local); multi-node Ray needs shared storage")
    parser.add_argument("--address", default="local",
                        help="'local' starts Ray with this machine's resources; 'auto' joins a running "
                        "cluster (ray up cluster.yaml)")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="Ray Train workers per trial; 0 = in-process (the laptop default); 1 = one "
                        "worker, run in the trial actor (GEOMIX_ONE_WORKER_GROUP=1: a Train worker group); "
                        "2+ = a Train worker group (DDP)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0,
                        help="GPUs of an in-process trial (may be fractional), or of each Ray Train worker "
                        "(0 or 1)")
    parser.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2, 3),
                        help="Ray Tune's console output: 0 = geomix's one line per trial start and end "
                        "(default), 1 = also Tune's status tables, 2-3 = every reported result")
    parser.add_argument("--max-concurrent", type=int, default=None,
                        help="running trials at once (default: what the cluster's CPUs/GPUs hold)")
    parser.add_argument("--max-failures", type=int, default=1, help="retries of a crashed trial")
    parser.add_argument("--overwrite", action="store_true",
                        help="the results folder holds another sweep: move it aside (to "
                        "<results>.old-<time>, never deleted) and start afresh")
    parser.add_argument("--mlflow", nargs="?", const=tracking.BARE, metavar="URI",
                        help="track every trial as an MLflow run (Ray Tune's MLflow callback): alone, into "
                        "sqlite:///<results>/mlflow.db; or into URI (a tracking server, e.g. "
                        "http://HOST:5000, on a cluster). TensorBoard logs are always written, under "
                        "--storage")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep finished trials' checkpoints in storage (default: delete them once the "
                        "trial's row is written; they are only needed to resume an unfinished trial)")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, then a ``key=value`` override that a bare ``--mlflow`` swallowed as its URI is
    given back to the overrides (``--mlflow optim.epochs=1`` means the flag and the override)."""
    args = parser.parse_args(argv)
    if args.mlflow is not None and not tracking.looks_like_uri(args.mlflow) and "=" in args.mlflow:
        args.overrides, args.mlflow = [args.mlflow, *args.overrides], tracking.BARE
    return args


_ADDRESS = re.compile(r"^(ray://)?([A-Za-z0-9._-]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$")
_ADDRESS_ALLOWED = ("local (start Ray here), auto (the cluster this machine belongs to: `ray up` / "
                    "`ray start --head`), or HOST:PORT / ray://HOST:PORT of a running Ray head")


def check_address(address: str) -> None:
    """``--address`` names a Ray that answers, checked in seconds before anything starts (Ray itself retries
    an unreachable address for minutes).

    Raises:
        ValueError: naming the address and what is allowed.
    """
    if address == "local":
        return
    if address == "auto":
        current = Path(tempfile.gettempdir(), "ray", "ray_current_cluster")  # where `ray start` says so
        if os.environ.get("RAY_ADDRESS") or current.is_file():
            return
        raise ValueError("--address=auto is invalid here: no running Ray cluster on this machine; allowed "
                         f"is {_ADDRESS_ALLOWED}")
    match = _ADDRESS.match(address)
    if match is None or not 0 < int(match.group(3)) < 65536:
        raise ValueError(f"--address={address!r} is invalid: allowed is {_ADDRESS_ALLOWED}")
    host, port = match.group(2).strip("[]"), int(match.group(3))
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise ValueError(f"--address={address!r} is invalid: nothing answers at {host}:{port} ({why}); "
                         f"allowed is {_ADDRESS_ALLOWED}") from None


def spec_from_args(
    args: argparse.Namespace, sweep: SweepFile, *, methods: Mapping[str, Any] | None = None
) -> SweepSpec:
    """The sweep's spec from its file and the shared arguments (:func:`add_ray_arguments`).

    Raises:
        ValueError: a URI ``--results`` without ``--storage``, or a bad value, named.
    """
    check_address(args.address)
    name = args.name or sweep.name
    results = args.results or str(Path("results") / name)
    if "://" not in results:
        results = str(Path(results).resolve())
    storage = args.storage or (join(results, "ray") if "://" not in results else None)
    if storage is None:
        raise ValueError(f"--storage is required when --results={results!r} is a URI: allowed is a local "
                         "folder or an s3:// gs:// URI")
    return SweepSpec(
        name=name, base=sweep.base, results=results, storage=storage, methods=dict(methods or {}),
        num_workers=args.num_workers, gpus_per_worker=args.gpus_per_worker,
        max_concurrent=args.max_concurrent, max_failures=args.max_failures,
        keep_checkpoints=args.keep_checkpoints, mlflow=tracking.mlflow_uri(args.mlflow, results),
    )


def prepare_base_models(cfgs: Iterable[TrainConfig]) -> None:
    """Build the embedded base model of each distinct (model, data) recipe once, on the driver, before the
    trials start: concurrent trials would otherwise each wait on (or build) the same base model."""
    from geomix import basemodel  # torch: imported when there is work for it, not to parse arguments

    recipes = dict.fromkeys((c.model, c.data) for c in cfgs if c.model.pretrained == EMBEDDED_BASE)
    for model_cfg, data_cfg in recipes:
        t0 = time.perf_counter()
        basemodel.prepare(model_cfg, data_cfg)
        log.info("base model ready (%.1f s)", time.perf_counter() - t0)


def print_summary(spec: SweepSpec, n_trials: int, wall: float, *, reused: int = 0) -> None:
    """The end of an ablation: how many trials ran now and were reused, and the paper-style table."""
    from analysis import summary  # the one analysis function a sweep calls (pyproject's layer contract)

    have = len(store.read_results(spec.results)[0])
    if have < n_trials:  # interrupted (Ctrl-C), or trials Tune never finished: say so, not "ran"
        print(f"\nsweep {spec.name}: {have} of {n_trials} trials have results after {wall:.0f} s (the sweep "
              f"stopped early); run the same command again to run the other {n_trials - have}, the finished "
              f"ones are reused; results in {spec.results}\n")
    else:
        print(f"\nsweep {spec.name}: {n_trials} trials ({n_trials - reused} ran now, {reused} reused from "
              f"earlier runs) in {wall:.0f} s; results in {spec.results}\n")
    print(summary(spec.results))
    for line in tracking.where(spec):
        print(line)


def print_search_summary(spec: SweepSpec, wall: float) -> None:
    """The end of a search: trials by status, where the Optuna study is, the five best trials."""
    from sweeps.searchers import optuna_db

    trials, _ = store.read_results(spec.results)
    print(f"\nsearch {spec.name}: {len(trials)} trials in {wall:.0f} s; "
          f"{trials['status'].value_counts().to_dict()}; Optuna study {optuna_db(spec)}\n")
    cols = [c for c in ("trial_id", "status", "val_rsum", "rsum", "epoch", "overrides") if c in trials]
    print(trials.sort_values("val_rsum", ascending=False)[cols].head(5).to_string(index=False))
    for line in [f"Optuna: optuna-dashboard sqlite:///{optuna_db(spec)}", *tracking.where(spec)]:
        print(line)


def cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> NoReturn:
    """Run a sweep script's ``main`` and exit with its status; a ``ValueError`` (a bad config or argument,
    raised before anything started) becomes one line ``error: ...`` on stderr and exit status 2."""
    try:
        status = main(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        status = 2
    sys.exit(status)
