"""The Parquet results store: append-only parts, the last write of a key wins, declared types, atomic
writes, two writers, schema_version checks (a version-1 folder still reads), clear read errors, batches,
and the DuckDB and Polars one-liners of docs/results.md."""

import glob
import multiprocessing
import subprocess
import sys
import threading
import time
from pathlib import Path

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


def _parts(folder, table="trials"):
    return sorted(p.name for p in (Path(folder) / table).iterdir())


def _legacy(folder, table="trials", **columns):
    """A version-1 folder: one ``<table>.parquet``, as the old rewrite-the-file writer left it."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), Path(folder) / f"{table}.parquet")


def test_constants_match_the_contract():
    assert R.SCHEMA_VERSION == 2
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
    assert (trials["schema_version"] == 2).all()
    assert history.empty and {"trial_id", "step", "split"} <= set(history.columns)
    # Each call wrote one new part (its rows once: c's first row never reached the disk); no temp files.
    assert [p.name for p in tmp_path.iterdir()] == ["trials"]
    parts = _parts(tmp_path)
    assert len(parts) == 2 and all(p.startswith("part-") and p.endswith(".parquet") for p in parts)
    assert [pq.read_table(tmp_path / "trials" / p).num_rows for p in parts] == [2, 2]
    # Rows come in the order of their last write, as the rewrite-the-file writer left them.
    assert trials["trial_id"].tolist() == ["a", "b", "c"]


def test_parts_are_never_rewritten(tmp_path):
    R.write_rows(tmp_path, "trials", [_trial("a", rsum=1.0)])
    (first,) = _parts(tmp_path)
    before = (tmp_path / "trials" / first).read_bytes()
    for i in range(3):
        R.write_rows(tmp_path, "trials", [_trial("a", rsum=float(i))])
    assert (tmp_path / "trials" / first).read_bytes() == before and len(_parts(tmp_path)) == 4
    assert R.read_results(tmp_path)[0]["rsum"].tolist() == [2.0]


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


def test_failure_mid_write_leaves_nothing_visible(tmp_path, monkeypatch):
    R.write_rows(tmp_path, "trials", [_trial("a", rsum=1.0)])
    before = {p: (tmp_path / "trials" / p).read_bytes() for p in _parts(tmp_path)}
    real = pq.write_table

    def half_then_fail(table, sink, **kw):
        sink.write(b"PAR1 partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        R.write_rows(tmp_path, "trials", [_trial("a", rsum=5.0), _trial("b")])
    monkeypatch.setattr(pq, "write_table", real)
    real_write = Path.write_bytes

    def half_a_file(self, data):  # the part's bytes half on disk, then the disk fails
        real_write(self, data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", half_a_file)
    with pytest.raises(OSError, match="disk full"):
        R.write_rows(tmp_path, "trials", [_trial("a", rsum=5.0), _trial("b")])
    monkeypatch.setattr(Path, "write_bytes", real_write)
    assert {p: (tmp_path / "trials" / p).read_bytes() for p in _parts(tmp_path)} == before
    assert not [p for p in (tmp_path / "trials").iterdir() if p.name.endswith(".tmp")]
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
    # A value that does not fit its declared type: one line naming the row, the column and the value.
    for bad, message in [
        ({"seed": "3"}, "trials row 1 seed='3' (str) is invalid: allowed an integer (int64)"),
        ({"seed": 2.5}, "trials row 1 seed=2.5 (float) is invalid: allowed an integer (int64)"),
        ({"rsum": "high"}, "trials row 1 rsum='high' (str) is invalid: allowed a number (float64)"),
        ({"rsum": True}, "trials row 1 rsum=True (bool) is invalid: allowed a number (float64)"),
        ({"optim.lr": "fast"}, "trials row 1 optim.lr='fast' (str) is invalid: allowed a number"),
        ({"data.skip_bad": 1}, "trials row 1 data.skip_bad=1 (int) is invalid: allowed true or false"),
        ({"model.name": 7}, "trials row 1 model.name=7 (int) is invalid: allowed a string"),
        ({"version.ray": 2.5}, "trials row 1 version.ray=2.5 (float) is invalid: allowed a string"),
    ]:
        with pytest.raises(ValueError) as err:
            R.write_rows(tmp_path, "trials", [_trial("a"), _trial("b", **bad)])
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"history row 0 lam_m2='x' \(str\) is invalid: allowed a number"):
        R.write_rows(tmp_path, "history", [{"trial_id": "a", "step": 1, "split": "val", "lam_m2": "x"}])
    assert list(tmp_path.iterdir()) == []


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="at least one results folder"):
        R.read_results()
    with pytest.raises(ValueError, match="does not exist"):
        R.read_results(tmp_path / "nope")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="has no trials table"):
        R.read_results(tmp_path / "empty_dir")
    _legacy(tmp_path / "empty", trial_id=pa.array([], pa.string()), schema_version=pa.array([], pa.int64()))
    with pytest.raises(ValueError, match="trials.parquet is empty"):
        R.read_results(tmp_path / "empty")
    (tmp_path / "no_parts" / "trials").mkdir(parents=True)  # e.g. only a crashed write's temp file
    (tmp_path / "no_parts" / "trials" / ".part-1.parquet.x.tmp").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="trials/ is empty"):
        R.read_results(tmp_path / "no_parts")


@pytest.mark.parametrize(
    ("version", "match"), [(3, "too new"), (0, "too old"), ("v1x", "unknown"), (None, "no schema_version")]
)
def test_schema_version_checked(tmp_path, version, match):
    data = {"trial_id": ["a"], "method": ["ft"]}
    if version is not None:
        data["schema_version"] = [version]
    _legacy(tmp_path / "one_file", **data)
    part = tmp_path / "parts" / "trials" / "part-00000000000000000001-abc.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(pa.table(data), part)
    for folder in ("one_file", "parts"):
        with pytest.raises(ValueError, match=match):
            R.read_results(tmp_path / folder)
        # The writer refuses to append to a folder of another version rather than mixing schemas.
        with pytest.raises(ValueError, match=match):
            R.write_rows(tmp_path / folder, "trials", [_trial("b")])


def test_version_1_folder_is_read_not_appended(tmp_path):
    """A folder of the old writer (one trials.parquet / history.parquet, schema_version 1) reads as it did;
    appending to it is refused, naming the way out."""
    _legacy(tmp_path, trial_id=["a", "b"], method=["ft", "zs"], rsum=[1.0, None], schema_version=[1, 1])
    _legacy(tmp_path, "history", trial_id=["a"], step=[3], split=["val"], rsum=[0.5], schema_version=[1])
    trials, history = R.read_results(tmp_path)
    assert trials["trial_id"].tolist() == ["a", "b"] and (trials["schema_version"] == 1).all()
    assert history["rsum"].tolist() == [0.5] and history["results_dir"].tolist() == [str(tmp_path)]
    with pytest.raises(ValueError, match="trials.parquet is a schema_version=1 table .* allowed is a new"):
        R.write_rows(tmp_path, "trials", [_trial("c")])
    assert not (tmp_path / "trials").exists()
    R.write_rows(tmp_path / "v2", "trials", [_trial("c")])
    # A folder and its sub-folder of the other version read together (a sweep root of both).
    trials, _ = R.read_results(tmp_path, tmp_path / "v2")
    assert sorted(trials["schema_version"]) == [1, 1, 2]


def test_declared_types_and_unified_parts(tmp_path):
    """Columns get their declared types (config columns from the config classes), whatever the values of
    one write; parts with other columns unify, a missing column reading as null."""
    R.write_rows(tmp_path, "trials", [_trial("a", seed=1.0, **{"loss.tau": None, "optim.max_steps": None,
                                                                "data.skip_bad": False, "note": 3})])
    R.write_rows(tmp_path, "trials", [_trial("b", rsum=7, val_rsum=2, method_rank=4, note="x",
                                             **{"mix.m2.n_projections": 64})])
    schemas = [pq.read_schema(tmp_path / "trials" / p) for p in _parts(tmp_path)]
    first, second = ({f.name: str(f.type) for f in s} for s in schemas)
    assert first["seed"] == "int64" and first["loss.tau"] == "double" and first["optim.max_steps"] == "int64"
    assert first["data.skip_bad"] == "bool" and first["note"] == "double" and first["written_at"] == "int64"
    assert second["rsum"] == "double" and second["val_rsum"] == "double" and second["method_rank"] == "int64"
    assert second["mix.m2.n_projections"] == "int64" and second["note"] == "string"
    trials, _ = R.read_results(tmp_path)
    t = trials.set_index("trial_id")
    assert t.loc["a", "seed"] == 1 and pd.isna(t.loc["a", "val_rsum"]) and t.loc["b", "val_rsum"] == 2.0
    assert t.loc["a", "note"] == "3" and t.loc["b", "note"] == "x"  # a number and a string: string
    assert pd.isna(t.loc["b", "data.skip_bad"]) and t.loc["b", "mix.m2.n_projections"] == 64
    # The history table declares its loss_* / lam_* families; written_at orders the rows of a key.
    R.write_rows(tmp_path, "history", [{"trial_id": "a", "step": 1, "split": "train", "loss_m2": 1}])
    assert str(pq.read_schema(next((tmp_path / "history").iterdir())).field("loss_m2").type) == "double"


def _write_as_driver(folder, driver, n):
    import store as s

    for i in range(n):
        row = {"trial_id": f"{driver}-{i}", "step": 1, "split": "val", "rsum": 1.0}
        s.write_rows(folder, "history", [row])
        s.write_rows(folder, "trials", [_trial(f"{driver}-{i}"), _trial("shared", rsum=float(i))])


def test_two_drivers_into_one_folder_lose_nothing(tmp_path):
    """Two processes (and two threads) append to one folder at the same time: every row is there once."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_as_driver, args=(str(tmp_path), f"p{d}", 40)) for d in range(2)]
    threads = [threading.Thread(target=_write_as_driver, args=(tmp_path, f"t{d}", 40)) for d in range(2)]
    for worker in (*procs, *threads):
        worker.start()
    for worker in (*procs, *threads):
        worker.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    trials, history = R.read_results(tmp_path)
    expected = {f"{d}-{i}" for d in ("p0", "p1", "t0", "t1") for i in range(40)}
    assert set(trials["trial_id"]) == expected | {"shared"} and len(trials) == len(expected) + 1
    assert set(history["trial_id"]) == expected and len(history) == len(expected)
    assert trials.set_index("trial_id").loc["shared", "rsum"] == 39.0  # some driver's last write
    assert len(_parts(tmp_path)) == 4 * 40


def test_duckdb_and_polars_one_liners(tmp_path, monkeypatch):
    """The one-line reads of docs/results.md, on a folder with parts of different columns."""
    duckdb = pytest.importorskip("duckdb")
    polars = pytest.importorskip("polars")
    folder = tmp_path / "results" / "ablation"
    R.write_rows(folder, "trials", [_trial("a", rsum=1.0)])
    R.write_rows(folder, "trials", [_trial("b", rsum=2.0, val_rsum=3.0, error=None)])
    R.write_rows(folder, "trials", [_trial("a", status="failed", rsum=None, error="boom")])
    monkeypatch.chdir(tmp_path)
    one_line = "select * from read_parquet('results/ablation/trials/*.parquet', union_by_name=true)"
    raw = duckdb.sql(one_line).df()
    assert sorted(raw["trial_id"]) == ["a", "a", "b"] and raw["val_rsum"].notna().sum() == 1  # every row
    pl = polars.concat([polars.read_parquet(f) for f in glob.glob("results/ablation/trials/*.parquet")],
                       how="diagonal_relaxed")
    assert sorted(pl["trial_id"].to_list()) == ["a", "a", "b"] and pl["val_rsum"].null_count() == 2
    # The last row per key, as store.read_results keeps it, in each.
    last = duckdb.sql(f"{one_line} qualify row_number() over (partition by trial_id order by written_at desc)"
                      " = 1").df()
    kept = pl.sort("written_at").unique(subset="trial_id", keep="last").sort("trial_id")
    trials, _ = R.read_results(folder)
    assert dict(zip(last["trial_id"], last["status"])) == {"a": "failed", "b": "completed"}
    assert kept["status"].to_list() == ["failed", "completed"]
    assert sorted(zip(trials["trial_id"], trials["status"])) == [("a", "failed"), ("b", "completed")]


def test_batched_writes_share_parts(tmp_path):
    """Inside store.batched() the rows of many calls share a part: written per max_rows, after
    max_delay_s by the background thread, before read_results and when the block ends."""
    with R.batched(max_rows=5, max_delay_s=60):
        for i in range(12):
            R.write_rows(tmp_path, "history", [{"trial_id": "a", "step": i, "split": "val", "rsum": 1.0}])
        assert len(_parts(tmp_path, "history")) == 2  # 5 + 5 rows; 2 queued
        with pytest.raises(ValueError, match="seed='x'"):  # a bad row still raises in the caller
            R.write_rows(tmp_path, "trials", [_trial("a", seed="x")])
        R.write_rows(tmp_path, "trials", [_trial("a", rsum=1.0)])
        R.write_rows(tmp_path, "trials", [_trial("a", rsum=2.0)])
        assert not (tmp_path / "trials").exists()
        trials, history = R.read_results(tmp_path)  # reads this process's queued rows too
        assert trials["rsum"].tolist() == [2.0] and history["step"].tolist() == list(range(12))
        assert len(_parts(tmp_path, "history")) == 3 and len(_parts(tmp_path)) == 1
        R.write_rows(tmp_path, "trials", [_trial("b")])
    assert len(_parts(tmp_path)) == 2  # the block's end wrote the last row
    with R.batched(max_rows=1000, max_delay_s=0.05):
        R.write_rows(tmp_path, "trials", [_trial("c")])
        deadline = time.time() + 10
        while len(_parts(tmp_path)) < 3 and time.time() < deadline:
            time.sleep(0.01)
        assert len(_parts(tmp_path)) == 3  # written by the background thread, the block still open
    assert sorted(R.read_results(tmp_path)[0]["trial_id"]) == ["a", "b", "c"]


def test_batched_background_error_is_raised_and_rows_kept(tmp_path, monkeypatch):
    import store.buffer

    real, failing = store.buffer.write_part, [True]

    def flaky(*args):
        if failing[0]:
            raise OSError("bucket unreachable")
        real(*args)

    monkeypatch.setattr(store.buffer, "write_part", flaky)
    with R.batched(max_rows=1000, max_delay_s=0.02):
        R.write_rows(tmp_path, "trials", [_trial("a")])
        time.sleep(0.3)
        with pytest.raises(OSError, match="bucket unreachable"):
            R.write_rows(tmp_path, "trials", [_trial("b")])
        failing[0] = False
    assert R.read_results(tmp_path)[0]["trial_id"].tolist() == ["a"]  # kept and written; b was refused


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
    assert R.load_resolved_config(tmp_path) == saved and R.load_resolved_config(tmp_path / "none") is None


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


def test_object_store_branch_writes_and_reads_parts(tmp_path):
    """Through a pyarrow file system that is not the local one (as S3 and GCS are): parts go through a
    temp object and a move, no temp object stays, and the dataset reads back over that file system."""
    from pyarrow import fs

    from store import parts

    bucket = fs.SubTreeFileSystem(str(tmp_path), fs.LocalFileSystem())
    for rsum in (1.0, 2.0):
        row = {**_trial("a", rsum=rsum), "schema_version": 2, "written_at": int(rsum)}
        parts.write_part(bucket, "bucket/res", "trials", [row])
    names = sorted(p.name for p in (tmp_path / "bucket" / "res" / "trials").iterdir())
    assert len(names) == 2 and all(n.startswith("part-") and n.endswith(".parquet") for n in names)
    frame, where = parts.read_table(bucket, "bucket/res", "trials")
    assert where == "bucket/res/trials/" and frame["rsum"].tolist() == [2.0]


def _damage(path: Path, how: str) -> None:
    """Damage one Parquet file the ways a disk, a copy or a person do."""
    import struct

    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "footer":  # the Thrift metadata overwritten (pyarrow: "Couldn't deserialize thrift")
        data[-30:-10] = b"\xff" * 20
    elif how == "flipped":  # one bit of a stored number: read back silently without page checksums
        at = data.find(struct.pack("<d", 1.5))
        assert at > 0
        data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "footer", "flipped"])
@pytest.mark.parametrize("table", ["trials", "history"])
def test_a_damaged_part_is_named_and_can_be_set_aside(tmp_path, table, how):
    """Reading a folder with a damaged part raises one line naming the file (a ConfigError, so the command
    lines print it as their error); set_aside moves it to damaged/ and the rest of the folder reads."""
    from geomix.checks import ConfigError

    R.write_rows(tmp_path, "trials", [_trial("a", rsum=1.5)])
    R.write_rows(tmp_path, "trials", [_trial("b", rsum=2.0)])
    R.write_rows(tmp_path, "history", [{"trial_id": "a", "step": 1, "split": "val", "rsum": 1.5}])
    R.write_rows(tmp_path, "history", [{"trial_id": "b", "step": 1, "split": "val", "rsum": 2.0}])
    bad = tmp_path / table / _parts(tmp_path, table)[0]
    _damage(bad, how)
    with pytest.raises(R.DamagedFile) as err:
        R.read_results(tmp_path)
    msg = str(err.value)
    assert isinstance(err.value, ConfigError) and "\n" not in msg
    assert msg.startswith(f"{table} file='{bad}' is invalid: allowed a readable Parquet file; this one is "
                          "damaged (") and "re-run the sweep" in msg
    assert err.value.path == str(bad) and err.value.table == table
    moved = Path(R.set_aside(err.value))
    assert not bad.exists() and moved.read_bytes() and moved.parent == tmp_path / R.DAMAGED_DIR
    assert R.damaged_files(tmp_path, table) == [moved.name] and R.damaged_files(tmp_path, "x") == []
    trials, history = R.read_results(tmp_path)  # the folder reads without it; nothing else is lost
    kept = trials if table == "trials" else history
    assert kept["trial_id"].tolist() == ["b"] and len(trials) + len(history) == 3
    # a results folder, not a sweep root: damaged/ is not read as a results folder of its own
    assert set(trials["results_dir"]) == {str(tmp_path)}
    left = [str(tmp_path / table / name) for name in _parts(tmp_path, table)]
    assert glob.glob(str(tmp_path / table / "*.parquet")) == left and len(left) == 1


def test_a_damaged_version_1_file_is_named(tmp_path):
    _legacy(tmp_path / "v1", trial_id=["a"], rsum=[1.5], schema_version=[1])
    _damage(tmp_path / "v1" / "trials.parquet", "footer")
    with pytest.raises(R.DamagedFile, match=r"trials file='.*/v1/trials.parquet' is invalid") as err:
        R.read_results(tmp_path / "v1")
    assert "thrift" in err.value.reason.lower()
    R.set_aside(err.value)
    with pytest.raises(ValueError, match="has no trials table"):  # nothing else left to read
        R.read_results(tmp_path / "v1")


def test_parts_written_without_page_checksums_still_read(tmp_path):
    """Parts are written with page checksums (the "flipped" case above needs them); older parts have none
    and read as before."""
    R.write_rows(tmp_path, "trials", [_trial("a", rsum=1.5)])
    old = tmp_path / "trials" / "part-00000000000000000001-0123456789ab.parquet"
    table = pq.read_table(tmp_path / "trials" / _parts(tmp_path)[-1])
    column = table.schema.get_field_index("trial_id")
    pq.write_table(table.set_column(column, "trial_id", pa.array(["z"])), old)
    assert sorted(R.read_results(tmp_path)[0]["trial_id"]) == ["a", "z"]
