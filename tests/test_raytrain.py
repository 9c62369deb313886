"""sweeps.raytrain: the loop as a Ray Train V2 TorchTrainer (2 gloo workers, 1 worker, local mode)."""

from __future__ import annotations

import json
import math
import os

import pytest

ray = pytest.importorskip("ray")

from geomix.config import build_config, to_dict  # noqa: E402
from sweeps import raytrain  # noqa: E402

pytestmark = pytest.mark.slow

SMALL = [
    "model.name=geomix-micro",
    "model.pretrained=null",
    "data.train_size=64",
    "data.val_size=16",
    "data.test_size=16",
    "optim.batch_size=32",
    "optim.epochs=2",
    "optim.lr=0.001",
    "loss.w_m2=0.3",
    "loss.w_vl=0.3",
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
    """A Train callback (runs in the controller process) appending every report to a JSON-lines file.
    Defined in a function so that Ray pickles it by value."""

    class Record(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            with open(path, "a") as f:
                f.write(json.dumps({"metrics": metrics, "checkpoint": checkpoint is not None}) + "\n")

    return Record()


def _fit(tmp_path, name: str, num_workers: int):
    log = tmp_path / f"{name}.jsonl"
    result = raytrain.fit(
        build_config({}, SMALL),
        num_workers=num_workers,
        use_gpu=False,
        storage_path=str(tmp_path / "storage"),
        name=name,
        callbacks=[_recorder(str(log))],
    )
    reports = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, reports


def test_two_gloo_workers_reproduce_one_worker(ray_local, tmp_path):
    one, one_reports = _fit(tmp_path, "one", 1)
    two, two_reports = _fit(tmp_path, "two", 2)

    for result in (one, two):
        assert result.error is None
        assert result.metrics["done"] is True and result.metrics["status"] == "completed"
        assert math.isfinite(result.metrics["test_r1_i2t"]) and result.checkpoint is not None
    assert two.metrics["num_workers"] == 2
    node_ids = two.metrics["node_ids"].split(",")
    assert len(node_ids) == 2 and all(node_ids)

    # Every report carries rank 0's content only; the other rank reports nothing.
    assert all(len(r["metrics"]) == 2 and r["metrics"][1] == {} for r in two_reports)

    def per_step(reports):
        rows = [r["metrics"][0] for r in reports if "val_r1_i2t" not in r["metrics"][0]]
        return [row for row in rows if not row.get("done")]

    steps_one, steps_two = per_step(one_reports), per_step(two_reports)
    # Once per step (4 steps: 64 pairs, global batch 32, 2 epochs), in order.
    assert [r["step"] for r in steps_two] == [1, 2, 3, 4] == [r["step"] for r in steps_one]
    for a, b in zip(steps_one, steps_two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4, abs=1e-4)
        assert b["loss_m2"] == pytest.approx(a["loss_m2"], rel=1e-4, abs=1e-4)
        assert b["lam_vl"] == pytest.approx(
            a["lam_vl"], abs=1e-6
        )  # same λ draws: mixing sees the global batch
    # Evaluation points carry a checkpoint and the validation metrics.
    # The first is the starting model (step 0, before any training), reported without a checkpoint.
    evals = [r for r in two_reports if "val_r1_i2t" in r["metrics"][0]]
    assert [r["metrics"][0]["step"] for r in evals] == [0, 2, 4]
    assert [r["checkpoint"] for r in evals] == [False, True, True]


def test_local_mode_runs_in_process(ray_local, tmp_path):
    result, _ = _fit(tmp_path, "local", 0)
    assert result.metrics["done"] is True and result.metrics["status"] == "completed"
    assert result.metrics["num_workers"] == 1 and result.metrics["steps"] == 4
    assert result.metrics["node_ids"] == ray.get_runtime_context().get_node_id()


def test_fit_rejects_bad_worker_counts():
    with pytest.raises(ValueError, match="num_workers=-1 is invalid"):
        raytrain.fit(build_config({}, SMALL), num_workers=-1, use_gpu=False, storage_path="/tmp/x", name="x")
    with pytest.raises(ValueError, match="optim.batch_size=32 is invalid with num_workers=3"):
        raytrain.fit(build_config({}, SMALL), num_workers=3, use_gpu=False, storage_path="/tmp/x", name="x")


def test_worker_removes_its_scratch_and_restored_checkpoint(tmp_path, monkeypatch):
    """A resumed worker copies the checkpoint into a folder of its own; that folder goes with the worker's
    scratch folder when the loop ends (it used to be left behind in the temp folder)."""
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "state.pt").write_bytes(b"weights")
    seen = {}

    class Context:
        def get_world_rank(self):
            return 0

    def fake_run(cfg, *, hooks):
        restored = hooks.initial_checkpoint()
        seen.update(restored=restored, out_dir=cfg.run.out_dir, resume=cfg.run.resume)
        with open(os.path.join(restored, "state.pt"), "rb") as f:
            assert f.read() == b"weights"
        return {"status": "completed"}

    monkeypatch.setattr(ray.train, "get_context", Context)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(str(saved)))
    monkeypatch.setattr(raytrain.train, "run", fake_run)

    raytrain.train_loop_per_worker(to_dict(build_config({}, SMALL)))
    assert seen["restored"].startswith(seen["out_dir"]) and seen["resume"] is False
    assert not os.path.exists(seen["restored"]) and not os.path.exists(seen["out_dir"])
    assert (saved / "state.pt").is_file()  # the stored checkpoint itself is untouched
