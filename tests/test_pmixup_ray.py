"""task='classify' on Ray: 2 Ray Train workers reproduce 1 worker, and the P-Mixup sweep's smoke test writes
rows the P-Mixup tables read."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import store  # noqa: E402
from analysis.build import build_tables  # noqa: E402
from analysis.catalog.pmixup import table_pmixup  # noqa: E402
from geomix.config import build_config  # noqa: E402
from sweeps import ablation, raytrain  # noqa: E402

pytestmark = pytest.mark.slow

PMIXUP = str(Path(__file__).resolve().parent.parent / "sweeps" / "configs" / "pmixup.yaml")
# A ViT (no BatchNorm: the batch statistics would be per rank) from random weights, one source style,
# 8 global batches of 16 (the target batch: 16 of the 30 shots, drawn per step), a report per step.
SMALL = [
    "task=classify",
    "model.name=geomix-micro",
    "model.pretrained=null",
    "data.source_domains=[flat]",
    "data.train_size=128",
    "data.val_size=30",
    "data.test_size=60",
    "data.eval_size=30",
    "optim.batch_size=16",
    "optim.epochs=1",
    "optim.lr=0.002",
    "run.report_every=1",
    "run.progress=false",
    "run.threads=1",
]


@pytest.fixture(scope="module")
def ray_local():
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "20")
    if ray.is_initialized():  # a leftover of another test module in this process
        ray.shutdown()
    ray.init(address="local", num_cpus=4, include_dashboard=True)
    yield
    ray.shutdown()


def _recorder(path: str):
    """A Train callback (in the controller process) appending every report to a JSON-lines file."""

    class Record(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            with open(path, "a") as f:
                f.write(json.dumps({"metrics": metrics, "checkpoint": checkpoint is not None}) + "\n")

    return Record()


def _fit(tmp_path, name: str, num_workers: int, *overrides: str):
    log = tmp_path / f"{name}.jsonl"
    result = raytrain.fit(build_config({}, SMALL + list(overrides)), num_workers=num_workers, use_gpu=False,
                          storage_path=str(tmp_path / "storage"), name=name, callbacks=[_recorder(str(log))])
    reports = [json.loads(line)["metrics"][0] for line in log.read_text().splitlines()]
    return result, [r for r in reports if "lam_cross" in r and not r.get("done")]


def test_two_ray_train_workers_reproduce_one_worker_progressive_lambda_included(ray_local, tmp_path):
    one, steps_one = _fit(tmp_path, "one", 1)
    two, steps_two = _fit(tmp_path, "two", 2)
    for result in (one, two):
        assert result.error is None and result.metrics["status"] == "completed"
    assert two.metrics["num_workers"] == 2
    assert [r["step"] for r in steps_one] == list(range(1, 9)) == [r["step"] for r in steps_two]
    for a, b in zip(steps_one, steps_two):
        # the pairs are drawn for the global batch and the progressive policy sees every rank's features:
        # the same λ on every rank, and the 1-worker λ
        for key in ("lam_cross", "lam_base", "lam_q", "lam_d_a", "lam_d_b"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
        for key in ("train_loss", "loss_ce_src", "loss_ce_tgt", "loss_mix_img", "loss_mix_feat"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key  # the means over the ranks
    assert steps_one[-1]["lam_d_a"] != 1.0  # observed, not the start value
    for key in ("test_acc", "test_macc", "eval.flat.acc"):
        assert math.isfinite(one.metrics[key])
        assert two.metrics[key] == pytest.approx(one.metrics[key], abs=100 / 60 + 1e-9)  # at most one image
    assert one.checkpoint is not None and two.checkpoint is not None


def test_pmixup_smoke_sweep_writes_rows_the_tables_read(tiny_overrides, tmp_path, capsys):
    model = [o for o in tiny_overrides if o.startswith("model.")]  # the session's tiny cached base model
    res = tmp_path / "res"
    argv = ["--config", PMIXUP, "--smoke-test", "--results", str(res), "--storage", str(tmp_path / "st"),
            *model]
    assert ablation.main(argv) == 0
    trials, history = store.read_results(str(res))
    assert set(trials["method"]) == {"nomix_k1", "rand_both_k1", "prog_both_k1"}
    assert (trials["status"] == "completed").all() and set(trials["task"]) == {"classify"}
    for col in ("acc", "macc", "eval.flat.acc", "eval.outline.acc", "eval.textured.acc"):
        assert trials[col].between(0, 100).all(), col
    assert {"val", "test", "eval.flat"} <= set(history["split"])
    assert history["lam_d_a"].notna().any() and history["lam_cross"].notna().any()
    t = table_pmixup(trials)
    assert list(t.frame["method"]) == ["no mix", "random λ · Img-Mix + Feat-Mix",
                                       "progressive λ · Img-Mix + Feat-Mix"]
    names = [t.name for t in build_tables(trials)]
    assert names == ["table_pmixup", "table_pmixup_paired", "table_pmixup_sources"]
