"""Trial identity: a results folder belongs to one sweep. An identical rerun reuses every trial, an added seed
runs only that seed, any other change is refused before Ray starts (naming the keys), --overwrite keeps the
old folder, and a second driver on the same folder is refused."""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time

import pytest

import store
from sweeps import ablation, folder, identity
from sweeps.spec import SweepSpec, resolve_trial, trial_config

BASE = {"data": {"train_size": 64, "val_size": 32, "test_size": 32}, "optim": {"epochs": 2, "batch_size": 32},
        "model": {"name": "geomix-micro"}}
METHODS = {"ft": {}, "m2_mix": {"loss.w_m2": 0.1}}


def _spec(tmp_path, base=BASE, methods=METHODS) -> SweepSpec:
    return SweepSpec(name="ident", base=base, results=str(tmp_path / "res"), storage=str(tmp_path / "ray"),
                     methods=methods)


def _trials(spec, seeds=(0,)):
    return [trial_config(resolve_trial(spec, m, s)) for s in seeds for m in spec.methods]


def _write_rows(spec, trials):
    """Rows as a sweep writes them (through the store, so they come back through Parquet's types)."""
    rows = [store.trial_row(sweep=spec.name, trial_id=f"t{i}", config=t["config"],
                            result={"test_rsum": 100.0 + i, "trial_key": t["key"]}, env={})
            for i, t in enumerate(trials)]
    store.write_rows(spec.results, "trials", rows)
    return folder.existing_rows(spec.results)


def _resolver(spec):
    return lambda method, seed: resolve_trial(spec, method, seed) if method in spec.methods else None


def test_an_identical_rerun_reuses_every_trial(tmp_path):
    spec = _spec(tmp_path)
    wanted = _trials(spec, seeds=(0, 1))
    rows = _write_rows(spec, wanted)
    got = identity.plan(wanted, rows, _resolver(spec), spec.results)
    assert got.todo == [] and got.reused == 4 and got.existing == 4
    assert {r["trial_key"] for r in rows} == {t["key"] for t in wanted}  # the key is the row's column


def test_an_added_seed_or_method_runs_only_the_new_trials(tmp_path):
    spec = _spec(tmp_path)
    rows = _write_rows(spec, _trials(spec, seeds=(0,)))
    wider = _spec(tmp_path, methods={**METHODS, "m3_w1": {"loss.w_m2": 1.0, "loss.w_vl": 1.0}})
    got = identity.plan(_trials(wider, seeds=(0, 1)), rows, _resolver(wider), spec.results)
    assert sorted((t["method"], t["seed"]) for t in got.todo) == [
        ("ft", 1), ("m2_mix", 1), ("m3_w1", 0), ("m3_w1", 1)]
    assert got.reused == 2


@pytest.mark.parametrize("change, named", [
    ({"base": {**BASE, "optim": {"epochs": 3, "batch_size": 32}}}, "optim.epochs: 2 -> 3"),
    ({"methods": {"ft": {}, "m2_mix": {"loss.w_m2": 0.2}}}, "loss.w_m2: 0.1 -> 0.2"),
])
def test_a_changed_base_or_method_row_is_refused_naming_the_key(tmp_path, change, named):
    spec = _spec(tmp_path)
    rows = _write_rows(spec, _trials(spec))
    changed = dataclasses.replace(spec, **change)
    with pytest.raises(identity.SweepChanged) as err:
        identity.plan(_trials(changed), rows, _resolver(changed), spec.results)
    msg = str(err.value)
    assert named in msg and "--overwrite" in msg and "new --results" in msg


def test_a_method_the_sweep_no_longer_defines_is_refused(tmp_path):
    spec = _spec(tmp_path)
    rows = _write_rows(spec, _trials(spec))
    smaller = _spec(tmp_path, methods={"ft": {}})
    with pytest.raises(identity.SweepChanged, match="method 'm2_mix' .* which this sweep does not define"):
        identity.plan(_trials(smaller), rows, _resolver(smaller), spec.results)


def test_run_only_settings_are_not_part_of_the_identity(tmp_path):
    spec = _spec(tmp_path)
    cfg = resolve_trial(spec, "ft", 0)
    other = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, threads=1, log_every=3),
                                model=dataclasses.replace(cfg.model, cache_dir="/elsewhere"))
    assert identity.trial_key(other) == identity.trial_key(cfg)
    assert identity.trial_key(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=1))) != \
        identity.trial_key(cfg)


def test_ablation_refuses_before_ray_and_overwrite_keeps_the_old_folder(tmp_path, tiny_overrides):
    res = tmp_path / "res"
    args = ablation.parse_args(["--methods", "ft", "--seeds", "0", "--results", str(res), *tiny_overrides])
    spec, _, _, trials, rows = ablation.build(args)
    _write_rows(spec, trials)
    assert ablation.check_folder(args, spec, trials, rows).todo == []  # the same command: nothing to run
    three = [o for o in tiny_overrides if not o.startswith("optim.epochs=")] + ["optim.epochs=3"]
    changed = ablation.parse_args(["--methods", "ft", "--seeds", "0", "--results", str(res), *three])
    spec2, _, _, trials2, rows2 = ablation.build(changed)
    with pytest.raises(identity.SweepChanged, match="optim.epochs: 2 -> 3"):
        ablation.check_folder(changed, spec2, trials2, rows2)
    import ray

    assert not ray.is_initialized()  # refused before Ray started
    changed.overwrite = True
    assert len(ablation.check_folder(changed, spec2, trials2, rows2).todo) == 1
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("res.old-")]
    assert len(moved) == 1 and len(store.read_results(str(moved[0]))[0]) == 1  # kept, rows intact
    assert not res.exists()


def test_search_resumes_only_the_same_search(tmp_path):
    saved = {"name": "s", "base": {"optim": {"epochs": 4}}, "search": {"num_samples": 16, "terms": ["m2"]}}
    identity.check_saved(None, saved, "r")  # a fresh folder
    identity.check_saved(saved, dict(saved), "r")
    with pytest.raises(identity.SweepChanged, match=r"search.num_samples: 16 -> 32"):
        identity.check_saved(saved, {**saved, "search": {"num_samples": 32, "terms": ["m2"]}}, "r")


def test_a_second_driver_on_one_folder_is_refused(tmp_path):
    held, release = threading.Event(), threading.Event()

    def first():
        with folder.hold(str(tmp_path)):
            held.set()
            release.wait(10)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert held.wait(10)
        with pytest.raises(ValueError, match=rf"another sweep \(pid {os.getpid()}\) is writing into it"):
            with folder.hold(str(tmp_path)):
                pass
    finally:
        release.set()
        t.join()
    with folder.hold(str(tmp_path)):  # free again once the first has ended
        time.sleep(0)


def test_the_saved_config_of_an_extended_ablation_is_the_union():
    old = {"name": "a", "seeds": [0, 1], "base": {}, "methods": {"ft": {}, "zs": {}}}
    new = {"name": "a", "seeds": [2], "base": {}, "methods": {"ft": {}, "m3_w1": {"loss.w_m2": 1.0}}}
    merged = folder.union_config(old, new)
    assert merged["seeds"] == [0, 1, 2] and list(merged["methods"]) == ["ft", "zs", "m3_w1"]


@pytest.mark.slow
def test_rerun_reuses_and_an_added_seed_runs_alone_through_the_command_line(tmp_path, tiny_overrides, capsys):
    """Real (tiny) trials: the same command again runs nothing and starts no Ray; adding a seed runs only
    that seed, in its own Tune experiment, and the first trial's row is untouched."""
    res = tmp_path / "res"
    argv = ["--methods", "ft", "--results", str(res), *tiny_overrides]
    assert ablation.main([*argv, "--seeds", "0"]) == 0
    first, _ = store.read_results(str(res))
    assert len(first) == 1 and "(1 ran now, 0 reused" in capsys.readouterr().out
    import ray

    assert ablation.main([*argv, "--seeds", "0"]) == 0
    assert "(0 ran now, 1 reused" in capsys.readouterr().out and not ray.is_initialized()
    assert ablation.main([*argv, "--seeds", "0,1"]) == 0
    assert "(1 ran now, 1 reused" in capsys.readouterr().out
    trials, _ = store.read_results(str(res))
    assert sorted(trials["seed"]) == [0, 1] and trials["trial_id"].is_unique
    kept = trials[trials["seed"] == 0].iloc[0]
    assert kept["trial_id"] == first.iloc[0]["trial_id"] and kept["rsum"] == first.iloc[0]["rsum"]
    experiments = sorted(p.name for p in (res / "ray").iterdir() if p.name.startswith("ablation"))
    assert len(experiments) == 2 and experiments[0] == "ablation" and experiments[1].startswith("ablation-")


def test_end_of_sweep_line_says_when_trials_are_missing(tmp_path, capsys, monkeypatch):
    """An interrupted sweep (Ctrl-C) must not claim that every trial ran: it counts the rows it has."""
    from sweeps import cli

    res = tmp_path / "res"
    store.write_rows(str(res), "trials", [{"sweep": "s", "trial_id": "t0", "method": "ft", "seed": 0,
                                          "status": "completed", "rsum": 1.0}])
    spec = type("Spec", (), {"name": "s", "results": str(res)})()
    monkeypatch.setattr("analysis.summary", lambda results: "")
    monkeypatch.setattr(cli.tracking, "where", lambda spec: [])
    cli.print_summary(spec, 3, 12.0)
    out = capsys.readouterr().out
    assert "1 of 3 trials have results" in out and "the other 2" in out and "ran now" not in out
    cli.print_summary(spec, 1, 12.0)
    assert "(1 ran now, 0 reused" in capsys.readouterr().out


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _rows_without(spec, trials, dropped):
    """Rows as a geomix from before the ``dropped`` config keys existed wrote them (no such columns)."""
    rows = []
    for i, t in enumerate(trials):
        row = store.trial_row(sweep=spec.name, trial_id=f"old{i}", config=t["config"],
                              result={"test_rsum": 100.0 + i}, env={})
        rows.append({k: v for k, v in row.items() if k not in dropped})
    store.write_rows(spec.results, "trials", rows)


def test_an_old_folder_without_a_later_fields_columns_is_still_this_sweeps(tmp_path):
    """A field added later (``optim.schedule``, ``task``) reads as its default in rows written before it: a
    rerun of the old folder reuses them, also when a newer part makes the reader fill the column with null;
    a sweep that sets the new field to another value is refused, naming it."""
    spec = _spec(tmp_path)
    _rows_without(spec, _trials(spec, seeds=(0,)), {"optim.schedule", "task"})
    new = _trials(spec, seeds=(1,))
    store.write_rows(spec.results, "trials", [
        store.trial_row(sweep=spec.name, trial_id=f"new{i}", config=t["config"], result={"test_rsum": 1.0},
                        env={}) for i, t in enumerate(new)])
    rows = folder.existing_rows(spec.results)
    old = [r for r in rows if r["trial_id"].startswith("old")]
    assert len(old) == 2 and all(_missing(r[k]) for r in old for k in ("optim.schedule", "task"))
    got = identity.plan(_trials(spec, seeds=(0, 1, 2)), rows, _resolver(spec), spec.results)
    assert sorted((t["method"], t["seed"]) for t in got.todo) == [("ft", 2), ("m2_mix", 2)]
    assert got.reused == 4

    constant = _spec(tmp_path, base={**BASE, "optim": {**BASE["optim"], "schedule": "constant"}})
    with pytest.raises(identity.SweepChanged, match="optim.schedule: 'cosine' -> 'constant'"):
        identity.plan(_trials(constant), rows, _resolver(constant), spec.results)


def test_a_null_that_the_field_allows_stays_a_value(tmp_path):
    """``optim.grad_clip`` may be null (no clipping): a row with null there is not read as the default 1.0."""
    clipped = _spec(tmp_path)
    unclipped = _spec(tmp_path, base={**BASE, "optim": {**BASE["optim"], "grad_clip": None}})
    rows = _write_rows(unclipped, _trials(unclipped))
    assert identity.plan(_trials(unclipped), rows, _resolver(unclipped), unclipped.results).todo == []
    with pytest.raises(identity.SweepChanged, match="optim.grad_clip: None -> 1"):
        identity.plan(_trials(clipped), rows, _resolver(clipped), clipped.results)


def test_the_task_is_part_of_the_identity(tmp_path):
    cfg = resolve_trial(_spec(tmp_path), "ft", 0)
    assert identity.trial_key(dataclasses.replace(cfg, task="classify")) != identity.trial_key(cfg)
