"""The Parquet results schema: merge by key, atomic writes, schema_version checks, clear read errors."""

import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import store
import store as R
from geomix import registry


def _trial(tid, method="ft", seed=0, status="completed", rsum=100.0, **extra):
    return {
        "sweep": "s",
        "trial_id": tid,
        "method": method,
        "seed": seed,
        "status": status,
        "rsum": rsum,
        **extra,
    }


def test_constants_match_the_contract():
    assert R.SCHEMA_VERSION == 1
    assert R.STATUSES == ("completed", "early_stopped", "failed", "diverged")
    # the metric columns are the registry's metrics, in evaluate_embeddings' order (one vocabulary)
    assert R.METRIC_COLUMNS == registry.METRIC_KEYS and R.SPLITS == registry.SPLITS
    for m in ("r1_i2t", "r10_t2i", "rsum", "align", "unif", "gap", "ece", "zs_acc"):
        assert m in R.METRIC_COLUMNS


def test_merge_by_key_last_write_wins(tmp_path):
    R.write_rows(tmp_path, "trials", [_trial("a", rsum=1.0), _trial("b", rsum=2.0)])
    R.write_rows(tmp_path, "trials", [_trial("b", rsum=20.0), _trial("c", rsum=3.0), _trial("c", rsum=30.0)])
    trials, history = R.read_results(tmp_path)
    assert sorted(trials["trial_id"]) == ["a", "b", "c"]
    got = dict(zip(trials["trial_id"], trials["rsum"]))
    assert got == {"a": 1.0, "b": 20.0, "c": 30.0}
    assert (trials["schema_version"] == 1).all()
    assert history.empty and {"trial_id", "step", "split"} <= set(history.columns)
    # No temp files are left beside the results.
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".results.lock")) == [
        "trials.parquet"
    ]


def test_history_key_is_trial_step_split(tmp_path):
    rows = [
        {"trial_id": "a", "step": s, "split": "val", "epoch": s // 10, "rsum": float(s)} for s in (10, 20)
    ]
    R.write_rows(tmp_path, "trials", [_trial("a")])
    R.write_rows(tmp_path, "history", rows)
    R.write_rows(
        tmp_path,
        "history",
        [
            {"trial_id": "a", "step": 20, "split": "val", "rsum": 99.0},
            {"trial_id": "a", "step": 20, "split": "test", "rsum": 7.0},
        ],
    )
    _, history = R.read_results(tmp_path)
    assert len(history) == 3
    val20 = history[(history["step"] == 20) & (history["split"] == "val")]
    assert val20["rsum"].tolist() == [99.0]


def test_failure_mid_write_leaves_old_file_intact(tmp_path, monkeypatch):
    R.write_rows(tmp_path, "trials", [_trial("a", rsum=1.0)])
    before = (tmp_path / "trials.parquet").read_bytes()
    real = pq.write_table

    def half_then_fail(table, sink, **kw):
        sink.write(b"PAR1 partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        R.write_rows(tmp_path, "trials", [_trial("a", rsum=5.0), _trial("b")])
    monkeypatch.setattr(pq, "write_table", real)
    assert (tmp_path / "trials.parquet").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    trials, _ = R.read_results(tmp_path)
    assert trials["rsum"].tolist() == [1.0]


def test_file_uri_nested_dicts_and_mixed_types(tmp_path):
    uri = (tmp_path / "res").as_uri()  # file:// goes through pyarrow.fs like s3:// and gs:// do
    R.write_rows(uri, "trials", [_trial("a", loss={"tau": None, "w_m2": 0.1}, data={"styles": ["dark"]})])
    R.write_rows(uri, "trials", [_trial("b", **{"loss.tau": 0.05, "loss.w_m2": 0.0})])
    trials, _ = R.read_results(uri)
    t = trials.set_index("trial_id")
    assert t.loc["a", "data.styles"] == '["dark"]'
    assert pd.isna(t.loc["a", "loss.tau"]) and t.loc["b", "loss.tau"] == 0.05
    assert t.loc["a", "loss.w_m2"] == 0.1


def test_bad_rows_rejected_before_writing(tmp_path):
    with pytest.raises(ValueError, match="table='runs' is invalid"):
        R.write_rows(tmp_path, "runs", [_trial("a")])
    with pytest.raises(ValueError, match="row 1 has no trial_id"):
        R.write_rows(tmp_path, "trials", [_trial("a"), {"method": "ft"}])
    with pytest.raises(ValueError, match="status='done' is invalid"):
        R.write_rows(tmp_path, "trials", [_trial("a", status="done")])
    with pytest.raises(ValueError, match="has no step"):
        R.write_rows(tmp_path, "history", [{"trial_id": "a", "split": "val"}])
    assert not (tmp_path / "trials.parquet").exists()


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="at least one results folder"):
        R.read_results()
    with pytest.raises(ValueError, match="does not exist"):
        R.read_results(tmp_path / "nope")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="has no trials.parquet"):
        R.read_results(tmp_path / "empty_dir")
    empty = tmp_path / "empty"
    empty.mkdir()
    schema = {"trial_id": pa.array([], pa.string()), "schema_version": pa.array([], pa.int64())}
    pq.write_table(pa.table(schema), empty / "trials.parquet")
    with pytest.raises(ValueError, match="is empty"):
        R.read_results(empty)


@pytest.mark.parametrize(
    ("version", "match"), [(2, "too new"), (0, "too old"), ("v1x", "unknown"), (None, "no schema_version")]
)
def test_schema_version_checked(tmp_path, version, match):
    data = {"trial_id": ["a"], "method": ["ft"]}
    if version is not None:
        data["schema_version"] = [version]
    pq.write_table(pa.table(data), tmp_path / "trials.parquet")
    with pytest.raises(ValueError, match=match):
        R.read_results(tmp_path)
    # The writer refuses to merge into a file of another version rather than mixing schemas.
    with pytest.raises(ValueError, match=match):
        R.write_rows(tmp_path, "trials", [_trial("b")])


def test_several_folders_and_sweep_root(tmp_path):
    R.write_rows(tmp_path / "root" / "sweep1", "trials", [_trial("a")])
    R.write_rows(tmp_path / "root" / "sweep2", "trials", [{**_trial("a"), "sweep": "s2"}])
    trials, _ = R.read_results(tmp_path / "root")
    assert len(trials) == 2 and set(trials["sweep"]) == {"s", "s2"}
    # The same folder twice is read once.
    trials, _ = R.read_results(tmp_path / "root" / "sweep1", tmp_path / "root" / "sweep1")
    assert len(trials) == 1


def test_trial_row_and_history_rows_shape():
    cfg = {
        "method": "m3_mix",
        "run": {"seed": 3},
        "loss": {"w_vl": 0.1, "tau": None},
        "data": {"styles": ["dark"]},
    }
    row = R.trial_row(
        sweep="s",
        trial_id="t1",
        config=cfg,
        result={"status": "diverged", "error": "nan", "test_rsum": 12.5, "steps": 7},
        env={"git_commit": "abc"},
    )
    assert row["method"] == "m3_mix" and row["seed"] == 3 and row["loss.w_vl"] == 0.1
    assert row["rsum"] == 12.5 and "test_rsum" not in row and row["status"] == "diverged"
    assert row["data.styles"] == '["dark"]' and row["git_commit"] == "abc"
    rows = R.history_rows(
        "t1",
        {
            "epoch": 1,
            "step": 10,
            "train_loss": 2.0,
            "lam_m2": 0.3,
            "val_rsum": 50.0,
            "test_rsum": 40.0,
            "done": True,
        },
    )
    by = {r["split"]: r for r in rows}
    assert by["val"]["rsum"] == 50.0 and by["test"]["rsum"] == 40.0 and by["val"]["lam_m2"] == 0.3
    assert R.history_rows("t1", {"step": 3, "train_loss": 1.0})[0]["split"] == "train"


def test_resolved_config_round_trip(tmp_path):
    R.save_resolved_config(tmp_path, {"sweep": "s", "methods": ("ft", "zs"), "loss": {"tau": None}})
    saved = yaml.safe_load((tmp_path / R.CONFIG_FILE).read_text())
    assert saved == {"sweep": "s", "methods": ["ft", "zs"], "loss": {"tau": None}}


def test_import_store_does_not_import_torch():
    code = "import sys, store; assert 'torch' not in sys.modules and 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


class _NoMoveFS:
    """A file system without move (as some object stores): writes must fall back to copy + delete."""

    def __init__(self):
        from pyarrow import fs

        self._fs = fs.LocalFileSystem()
        self.copied = []

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def move(self, src, dest):
        raise NotImplementedError("move")

    def copy_file(self, src, dest):
        self.copied.append(dest)
        self._fs.copy_file(src, dest)


def test_atomic_write_falls_back_to_copy_without_move(tmp_path):
    fake = _NoMoveFS()
    path = f"{tmp_path}/trials.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"trial_id": ["a"], "schema_version": [1]}), sink)
    store.fs.write_bytes(fake, path, sink.getvalue().to_pybytes())
    assert fake.copied == [path]
    assert pq.read_table(path).column("trial_id").to_pylist() == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["trials.parquet"]  # the temp file is gone
