"""Sweeps: config validation before Ray starts, typed sweep files, trial configs resolved once, which
module may import which Ray API, resources and concurrency, an open method id end to end, and a Ray Train
trial spread over two nodes. (Parquet rows and statuses under faults are checked in test_faults.py.)"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

pytest.importorskip("ray")

import store  # noqa: E402
import sweeps  # noqa: E402
from geomix.config import TrainConfig, from_dict  # noqa: E402
from sweeps import ablation, records, runner, search, session  # noqa: E402
from sweeps.schema import SearchSettings, SweepFile, load_sweep  # noqa: E402
from sweeps.spec import TRIAL_KEY, SweepSpec, resolve_trial, trial_config, trial_of  # noqa: E402


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


def test_console_script_prints_one_error_line_and_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        sweeps.cli.cli(ablation.main, ["--methods", "nope", "--results", str(tmp_path / "r")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --methods nope is invalid: allowed zs, ft,") and err.count("\n") == 1


def test_bad_method_row_in_yaml_is_named(tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("name: t\nmethods:\n  ft: {}\n  m2_mix: {loss.w_m2: 0.1, loss.kind: imix}\n")
    with pytest.raises(ValueError, match=r"method 'm2_mix': loss\.kind"):
        ablation.main(["--config", str(cfg), "--results", str(tmp_path / "r")])
    cfg.write_text("name: t\nmethod: {}\n")
    with pytest.raises(ValueError, match="unknown sweep key.*method"):
        ablation.main(["--config", str(cfg), "--results", str(tmp_path / "r")])
    cfg.write_text("name: t\nmethods: {ft: {}}\nsmoke_test: {epochs: 1}\n")
    with pytest.raises(ValueError, match="unknown smoke_test key.*epochs"):
        ablation.main(["--config", str(cfg), "--results", str(tmp_path / "r")])


def test_sweep_file_is_typed_frozen_and_checked_on_construction(tmp_path):
    sweep = load_sweep(ablation.DEFAULT_CONFIG, ["optim.epochs=5"], smoke_test=True)
    assert isinstance(sweep, SweepFile) and sweep.seeds == (0,) and sweep.smoke_test is None
    assert list(sweep.methods) == ["zs", "ft", "m3_mix"]  # the smoke_test subset, in its order
    assert sweep.base["optim"] == {"epochs": 5, "batch_size": 32}
    assert Path(sweep.base["model"]["cache_dir"]).is_absolute()
    with pytest.raises(dataclasses.FrozenInstanceError):
        sweep.name = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"seeds=\[\] is invalid"):
        dataclasses.replace(sweep, seeds=[])
    with pytest.raises(ValueError, match=r"methods\.ft=3 is invalid"):
        SweepFile(name="t", methods={"ft": 3})

    settings = load_sweep(search.DEFAULT_CONFIG, smoke_test=True).search
    assert isinstance(settings, SearchSettings) and settings.num_samples == 3
    assert settings.weight_range == (0.005, 0.5) and settings.terms == ("m2", "v", "l", "vl")
    with pytest.raises(ValueError, match=r"search\.grace_period=0 is invalid"):
        dataclasses.replace(settings, grace_period=0)
    with pytest.raises(ValueError, match=r"search\.tau_range=\[0.2, 0.1\] is invalid"):
        SearchSettings(tau_range=[0.2, 0.1])


def test_trial_config_is_resolved_once_and_travels_with_the_trial():
    spec = SweepSpec(name="t", base={"optim": {"epochs": 2}}, results="/unused", storage="/unused",
                     methods={"ft": {}, "m3_w1": {"loss.w_m2": 1.0}})
    cfg = resolve_trial(spec, "m3_w1", 3)
    config = trial_config(cfg, method_rank=1)
    assert config["method"] == "m3_w1" and config["seed"] == 3 and config["method_rank"] == 1
    assert from_dict(TrainConfig, config["config"]) == cfg  # the trainable builds exactly this
    # The row is made from the carried dict, not by resolving the trial again: a carried value that the
    # spec would not give shows up as carried.
    config["config"]["optim"]["epochs"] = 7
    row = records.trial_row(spec, "t_00001", config, {"test_rsum": 1.0}, "completed", None, {}, {})
    assert row["optim.epochs"] == 7 and row["loss.w_m2"] == 1.0 and row["method_rank"] == 1
    assert row["method"] == "m3_w1" and row["seed"] == 3 and row["overrides"] == "{}"
    search_row = records.trial_row(spec, "t_00002", trial_config(cfg, overrides={"loss.w_m2": 1.0}), {},
                                   "early_stopped", None, {}, {})
    assert "method_rank" not in search_row and search_row["overrides"] == '{"loss.w_m2": 1.0}'


def test_grid_keeps_the_trial_order_and_carries_each_resolved_config():
    from ray.tune.search.variant_generator import generate_variants

    spec = SweepSpec(name="t", base={}, results="/unused", storage="/unused",
                     methods={"ft": {}, "v_mix": {"loss.w_v": 0.05}, "zs": {}})
    # the ablation lists its trials in Tune's order for a methods x seeds grid: method fastest
    _, _, cfgs, _, _ = ablation.build(ablation.parse_args(["--seeds", "0,1"]))
    methods = list(load_sweep(ablation.DEFAULT_CONFIG).methods)
    assert [(c.method, c.run.seed) for c in cfgs] == [(m, s) for s in (0, 1) for m in methods]
    trials = [trial_config(resolve_trial(spec, m, s), method_rank=r)
              for s in (0, 1) for r, m in enumerate(spec.methods)]
    points = [cfg for _, cfg in generate_variants(runner.grid_space(trials))]
    assert [trial_of(p) for p in points] == trials  # in order, each with its resolved config
    assert points[1][TRIAL_KEY]["config"]["loss"]["w_v"] == 0.05 and trial_of(points[4])["seed"] == 1
    # plain nested values only: Tune keeps them in its trial state as they are (no placeholders that a
    # restored experiment would not resolve again)
    from ray.tune.impl.placeholder import create_resolvers_map, inject_placeholders

    resolvers = create_resolvers_map()
    inject_placeholders(runner.grid_space(trials), resolvers)
    assert not resolvers


def _imports(tree: ast.AST) -> set[str]:
    """Every module a file imports (``from ray import tune`` counts as ``ray.tune``), also inside
    functions, through ``importlib.import_module("...")``, or as an attribute ``ray.tune`` / ``ray.train``."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)):
            found.add(str(node.args[0].value))
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "ray" and node.attr in ("tune", "train")):
            found.add(f"ray.{node.attr}")
    return found


@pytest.mark.parametrize(("api", "owner"), [("ray.tune", "tune_api.py"), ("ray.train", "raytrain.py"),
                                            ("optuna", "searchers.py"), ("analysis", "cli.py")])
def test_one_module_each_imports_ray_tune_ray_train_optuna_analysis(api, owner):
    """The Ray API is renamed often: one module wraps Tune, one Train; others go through them."""
    files = sorted(Path(sweeps.__file__).parent.glob("*.py"))
    assert len(files) >= 10
    importers = {f.name for f in files
                 if any(m == api or m.startswith(api + ".") for m in _imports(ast.parse(f.read_text())))}
    assert importers == {owner}


def test_cli_imports_only_analysis_summary():
    tree = ast.parse((Path(sweeps.__file__).parent / "cli.py").read_text())
    from_analysis = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                     and (n.module or "").split(".")[0] == "analysis"]
    assert [(n.module, [a.name for a in n.names]) for n in from_analysis] == [("analysis", ["summary"])]


def test_resources_and_concurrency_fit_the_cluster():
    two_cpus = {"CPU": 2.0, session.TRIAL_SLOT: 1000.0}
    assert session.trial_resources(0, 0.0, two_cpus) == {"CPU": 1.0}
    # a Ray Train trial holds only the slot: 2 workers x 1 CPU must fit on 2 CPUs beside it
    assert session.trial_resources(2, 0.0, two_cpus) == {"CPU": 0.0, session.TRIAL_SLOT: 1.0}
    assert session.trial_resources(2, 0.0, {"CPU": 8.0}) == {"CPU": 0.01}
    assert session.max_concurrent_trials(0, 0.0, two_cpus) == 2
    assert session.max_concurrent_trials(2, 0.0, two_cpus) == 1
    assert session.max_concurrent_trials(3, 0.0, two_cpus) == 1
    assert session.max_concurrent_trials(2, 1.0, {"CPU": 32.0, "GPU": 8.0}) == 4
    assert session.max_concurrent_trials(2, 0.0, two_cpus, requested=3) == 3  # user's call, with a warning


@pytest.mark.slow
def test_a_method_outside_the_papers_runs_and_shows_under_its_name(tiny_overrides, tmp_path, capsys):
    """Methods are open: a row ``m3_w1`` that no paper table knows runs, is recorded with its position in
    the YAML, and shows up in the end-of-sweep table as itself (after FT, as the YAML orders them)."""
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("name: mine\nseeds: [0]\nmethods:\n  ft: {}\n"
                   "  m3_w1: {loss.w_m2: 1.0, loss.w_vl: 0.1, loss.decay: inverse_epoch}\n")
    res = tmp_path / "res"
    assert ablation.main(["--config", str(cfg), "--results", str(res), *tiny_overrides]) == 0
    trials, _ = store.read_results(str(res))
    mine = trials.set_index("method")
    assert set(mine.index) == {"ft", "m3_w1"} and (mine.status == "completed").all()
    assert mine.loc["m3_w1", "method_rank"] == 1 and mine.loc["ft", "method_rank"] == 0
    assert mine.loc["m3_w1", "loss.w_m2"] == 1.0 and mine.loc["ft", "loss.w_m2"] == 0.0
    table = capsys.readouterr().out
    first = table[table.index("| method"):].split("\n\n")[0]  # Table 1 (the robustness table follows)
    rows = [line.split("|")[1].strip() for line in first.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["FT", "m3_w1"]  # rows[0] is the header


@pytest.mark.slow
def test_ray_train_trial_spreads_two_workers_over_two_nodes(two_node_cluster, tiny_base, tmp_path):
    """A 2-worker Ray Train trial (sweeps.raytrain, gloo DDP) on a head with no CPUs + two 1-CPU nodes:
    the trial actor holds only the slot resource, the workers land on both nodes, both node ids are
    recorded, and the trial's row and history are complete."""
    import ray

    tiny_base = {**tiny_base, "run": {"save_embeddings": True}}
    spec = SweepSpec(name="nodes", base=tiny_base, results=str(tmp_path / "res"),
                     storage=str(tmp_path / "ray"), methods={"m3_mix": {"loss.w_m2": 0.05, "loss.w_vl": 0.1}},
                     num_workers=2)
    cfg = resolve_trial(spec, "m3_mix", 0)
    sweeps.cli.prepare_base_models([cfg])  # the cached base model, as ablation.py prepares it
    runner.run_sweep(spec, trials=[trial_config(cfg, method_rank=0)], verbose=0)
    trials, history = store.read_results(spec.results)
    assert len(trials) == 1
    row = trials.iloc[0]
    assert row["status"] == "completed" and row["num_workers"] == 2
    worker_nodes = row["node_ids"].split(",")
    cpu_nodes = {n["NodeID"] for n in ray.nodes() if n["Resources"].get("CPU", 0) > 0}
    assert len(worker_nodes) == 2 and set(worker_nodes) == cpu_nodes
    val = history[history.split == "val"]
    assert sorted(val.epoch) == [0, 1, 2] and row["rsum"] > 0 and row["loss.w_vl"] == 0.1  # 0: the start
    assert {"loss_m2", "loss_vl", "lam_m2"} <= set(history.columns)
    # rank 0 (on one of the worker nodes) put its test embeddings into the results folder
    assert row["embeddings_path"] == f"embeddings/{row['trial_id']}.npz"
    assert (tmp_path / "res" / row["embeddings_path"]).stat().st_size > 0
    # the Train run's checkpoints went once the trial finished
    run_dir = tmp_path / "ray" / "train" / f"nodes-{row['trial_id']}"
    assert run_dir.is_dir() and not [p for p in run_dir.glob("checkpoint_*") if p.is_dir()]
