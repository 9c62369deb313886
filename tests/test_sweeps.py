"""Sweeps: config validation before Ray starts, resources and concurrency, a Ray Train trial spread over
two nodes. (The ablation's Parquet rows and statuses are checked end to end in test_faults.py.)"""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from geomix import results  # noqa: E402
from sweeps import _tune, ablation, search  # noqa: E402


@pytest.mark.parametrize(
    ("script", "argv", "named"),
    [
        (ablation, ["optim.lr=-1"], "optim.lr"),
        (ablation, ["loss.w_vl=oops"], "loss.w_vl"),
        (ablation, ["--methods", "ft,nope"], "nope"),
        (ablation, ["--seeds", "a,b"], "--seeds"),
        (ablation, ["mix.geometry=hyperbolic"], "mix.geometry"),
        (search, ["--num-samples", "0"], "search.num_samples"),
        (search, ["data.train_size=1"], "data.train_size"),
    ],
)
def test_bad_config_fails_before_ray_starts(script, argv, named, tmp_path):
    import ray

    if ray.is_initialized():  # a leftover of an earlier test in this process
        ray.shutdown()
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        script.main([*argv, "--results", str(tmp_path / "r")])
    assert not ray.is_initialized()
    assert not (tmp_path / "r").exists()  # nothing written either


def test_bad_method_row_in_yaml_is_named(tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("name: t\nmethods:\n  ft: {}\n  m2_mix: {loss.w_m2: 0.1, loss.kind: imix}\n")
    with pytest.raises(ValueError, match=r"method 'm2_mix': loss\.kind"):
        ablation.main(["--config", str(cfg), "--results", str(tmp_path / "r")])
    cfg.write_text("name: t\nmethod: {}\n")
    with pytest.raises(ValueError, match="unknown sweep key.*method"):
        ablation.main(["--config", str(cfg), "--results", str(tmp_path / "r")])


def test_resources_and_concurrency_fit_the_cluster():
    two_cpus = {"CPU": 2.0, _tune.TRIAL_SLOT: 1000.0}
    assert _tune.trial_resources(0, 0.0, two_cpus) == {"CPU": 1.0}
    # a Ray Train trial holds only the slot: 2 workers x 1 CPU must fit on 2 CPUs beside it
    assert _tune.trial_resources(2, 0.0, two_cpus) == {"CPU": 0.0, _tune.TRIAL_SLOT: 1.0}
    assert _tune.trial_resources(2, 0.0, {"CPU": 8.0}) == {"CPU": 0.01}
    assert _tune.max_concurrent_trials(0, 0.0, two_cpus) == 2
    assert _tune.max_concurrent_trials(2, 0.0, two_cpus) == 1
    assert _tune.max_concurrent_trials(3, 0.0, two_cpus) == 1
    assert _tune.max_concurrent_trials(2, 1.0, {"CPU": 32.0, "GPU": 8.0}) == 4
    assert _tune.max_concurrent_trials(2, 0.0, two_cpus, requested=3) == 3  # user's call, with a warning


@pytest.mark.slow
def test_ray_train_trial_spreads_two_workers_over_two_nodes(two_node_cluster, tiny_base, tmp_path):
    """A 2-worker Ray Train trial (geomix.raytrain, gloo DDP) on a head with no CPUs + two 1-CPU nodes:
    the trial actor holds only the slot resource, the workers land on both nodes, both node ids are
    recorded, and the trial's row and history are complete."""
    import ray

    from geomix import models
    from geomix.config import build_config

    cfg = build_config(tiny_base)
    models.create(cfg.model, data_cfg=cfg.data)  # the cached base model, as ablation.py prepares it
    tiny_base = {**tiny_base, "run": {"save_embeddings": True}}
    spec = _tune.SweepSpec(name="nodes", base=tiny_base, results=str(tmp_path / "res"),
                           storage=str(tmp_path / "ray"), methods={"m3_mix": {"loss.w_m2": 0.05,
                                                                               "loss.w_vl": 0.1}},
                           num_workers=2)
    _tune.run_sweep(spec, param_space={"method": "m3_mix", "seed": 0}, verbose=0)
    trials, history = results.read_results(spec.results)
    assert len(trials) == 1
    row = trials.iloc[0]
    assert row["status"] == "completed" and row["num_workers"] == 2
    worker_nodes = row["node_ids"].split(",")
    cpu_nodes = {n["NodeID"] for n in ray.nodes() if n["Resources"].get("CPU", 0) > 0}
    assert len(worker_nodes) == 2 and set(worker_nodes) == cpu_nodes
    assert len(history[history.split == "val"]) == 2 and row["rsum"] > 0 and row["loss.w_vl"] == 0.1
    assert {"loss_m2", "loss_vl", "lam_m2"} <= set(history.columns)
    # rank 0 (on one of the worker nodes) put its test embeddings into the results folder
    assert row["embeddings_path"] == f"embeddings/{row['trial_id']}.npz"
    assert (tmp_path / "res" / row["embeddings_path"]).stat().st_size > 0
    # the Train run's checkpoints went once the trial finished
    run_dir = tmp_path / "ray" / "train" / f"nodes-{row['trial_id']}"
    assert run_dir.is_dir() and not [p for p in run_dir.glob("checkpoint_*") if p.is_dir()]
