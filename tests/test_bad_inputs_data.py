"""Bad data through the public entry points: the embedded data, CSV and Karpathy-JSON files, and results
folders given to ``analysis/tables.py``.

As in ``test_bad_inputs.py``: each case runs ``main`` in-process and asserts exit status 2, exactly one
``error:`` line naming the file (or field) and what is allowed, and no traceback; nothing trains (an
autouse fixture makes training a test failure). Every check here runs before the model is built.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

import store
from analysis import cli as tables
from geomix import train
from geomix.data.export import export_shapes

SMALL = ["model.name=geomix-micro", "model.pretrained=null", "optim.batch_size=4", "optim.epochs=1",
         "run.progress=false", "run.threads=1"]


pytestmark = pytest.mark.usefixtures("nothing_starts")  # tests/conftest.py: training or Ray = failure


def _run(capsys, main, argv):
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, main, argv: list[str], *named: str, allowed: str = "allowed") -> str:
    code, out, err = _run(capsys, main, argv)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err and "Traceback" not in out
    for needle in (*named, allowed):
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The embedded data exported as files (12 images a split), and bad variants of its CSVs and JSON."""
    d = tmp_path_factory.mktemp("data")
    export_shapes(d, size=12)
    rows = {s: list(csv.reader((d / f"{s}.csv").open(), delimiter="\t")) for s in ("train", "val", "test")}

    def write_csv(name: str, table, delimiter: str = "\t") -> None:
        with (d / name).open("w", newline="") as f:
            csv.writer(f, delimiter=delimiter).writerows(table)

    write_csv("comma_train.csv", rows["train"], ",")
    write_csv("wrong_img_col.csv", [["path", "title"], *rows["train"][1:]])
    write_csv("wrong_cap_col.csv", [["filepath", "caption"], *rows["train"][1:]])
    write_csv("empty_caption.csv", [*rows["train"], ["images/train/000000.png", ""]])
    write_csv("empty_path.csv", [*rows["train"], ["", "a caption"]])
    write_csv("extra_field.csv", [*rows["train"], ["images/train/000000.png", "a", "b", "c"]])
    write_csv("missing_image.csv", [*rows["train"], ["images/train/nope.png", "a caption"]])
    write_csv("header_only.csv", [rows["train"][0]])
    write_csv("overlap_path.csv", [rows["test"][0], *rows["test"][1:], rows["train"][1]])
    write_csv("huge_field.csv", [*rows["train"], ["images/train/000000.png", "x" * 200_000]])
    write_csv("outside.csv", [*rows["train"], [str(Path(__file__).resolve()), "not an image"]])
    shutil.copy(d / "images/train/000003.png", d / "images/test/copy.png")
    write_csv("overlap_bytes.csv", [*rows["test"], ["images/test/copy.png", "a copy"]])
    (d / "images/bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    write_csv("corrupt_image.csv", [*rows["train"], ["images/bad.png", "a caption"]])
    (d / "latin1.csv").write_bytes("filepath\ttitle\nimages/train/000000.png\tcaf\xe9\n".encode("latin-1"))
    (d / "binary.csv").write_bytes((d / "images/train/000000.png").read_bytes())
    (d / "empty.csv").write_text("")
    base = json.loads((d / "dataset_karpathy.json").read_text())

    def write_json(name: str, change) -> None:
        doc = json.loads(json.dumps(base))
        change(doc)
        (d / name).write_text(json.dumps(doc))

    first_test = next(i for i, im in enumerate(base["images"]) if im["split"] == "test")

    def on(i, **fields):
        return lambda doc: doc["images"][i].update(fields)

    write_json("raw_number.json", lambda doc: doc["images"][0]["sentences"].__setitem__(0, {"raw": 5}))
    write_json("raw_missing.json", lambda doc: doc["images"][0]["sentences"].__setitem__(0, {"tokens": []}))
    write_json("sentences_str.json", on(0, sentences="a caption"))
    write_json("sentences_empty.json", on(0, sentences=[]))
    write_json("filepath_number.json", on(0, filepath=7))
    write_json("filename_missing.json", lambda doc: doc["images"][0].pop("filename"))
    write_json("split_bad.json", on(0, split="holdout"))
    write_json("entry_list.json", lambda doc: doc["images"].__setitem__(0, [1, 2]))
    write_json("prompts_str.json", lambda doc: doc.__setitem__("class_prompts", "a photo"))
    write_json("prompts_empty.json", lambda doc: doc.__setitem__("class_prompts", []))
    write_json("prompts_number.json", lambda doc: doc.__setitem__("class_prompts", [1, 2]))
    write_json("label_range.json", on(0, label=99))
    write_json("label_negative.json", on(0, label=-1))
    write_json("label_str.json", on(0, label="3"))
    write_json("label_bool.json", on(0, label=True))
    write_json("label_missing_test.json", lambda doc: doc["images"][first_test].pop("label"))
    write_json("label_no_prompts.json", lambda doc: doc.pop("class_prompts"))
    write_json("overlap_path.json", on(first_test, filepath="images/train", filename="000000.png"))
    write_json("overlap_bytes.json", on(first_test, filepath="images/test", filename="copy.png"))
    write_json("missing_image.json", on(0, filename="nope.png"))
    here = Path(__file__).resolve()
    write_json("outside.json", on(0, filepath=str(here.parent), filename=here.name))
    (d / "top_list.json").write_text("[1, 2]")
    (d / "images_dict.json").write_text('{"images": {"a": 1}}')
    (d / "not_json.json").write_text("{nope")
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "latin1.json").write_bytes('{"images": [], "x": "caf\xe9"}'.encode("latin-1"))
    return d


def _csv(d: Path, train: str = "train.csv", val: str = "val.csv", test: str = "test.csv") -> list[str]:
    return ["data.source=csv", f"data.path={d / train}", f"data.val_path={d / val}",
            f"data.test_path={d / test}"]


def _json(d: Path, name: str = "dataset_karpathy.json") -> list[str]:
    return ["data.source=json", f"data.path={d / name}"]


EMBEDDED = [
    (["data.train_size=16", "optim.batch_size=64"], "optim.batch_size=64", "at most the training set size"),
    (["data.train_size=2", "optim.batch_size=4"], "optim.batch_size=4", "at most the training set size 2"),
    (["data.image_size=300"], "data.image_size=300", "[16, 256]"),
    (["data.image_size=12"], "data.image_size=12", "[16, 256]"),
    (["data.styles=[dark,neon]"], "data.styles[1]='neon'", "one of 'flat'"),
    (["data.base_styles=[outline,outline]"], "data.base_styles=['outline', 'outline']", "distinct styles"),
    (["data.base_styles=[]"], "data.base_styles=[]", "a non-empty list"),
]


@pytest.mark.parametrize(("argv", "named", "allowed"), [
    pytest.param(a, n, w, id=" ".join(a)) for a, n, w in EMBEDDED])
def test_embedded_data_refused(argv, named, allowed, capsys):
    refused(capsys, train.main, SMALL + ["data.train_size=16", "data.val_size=8", "data.test_size=8"] + argv,
            named, allowed=allowed)


CSV = [
    ({"train": "comma_train.csv"}, [], "data.csv_img_key='filepath' is not a column", "allowed columns are"),
    ({}, ["data.csv_separator=comma"], "the header looks tab-separated: set data.csv_separator=tab",
     "allowed columns are"),
    ({"train": "wrong_img_col.csv"}, [], "data.csv_img_key='filepath'", "columns are 'path', 'title'"),
    ({"train": "wrong_cap_col.csv"}, [], "data.csv_caption_key='title'", "allowed columns are"),
    ({}, ["data.csv_img_key=image"], "data.csv_img_key='image'", "allowed columns are 'filepath', 'title'"),
    ({"train": "latin1.csv"}, [], "latin1.csv: not UTF-8 text", "a UTF-8 CSV file"),
    ({"train": "binary.csv"}, [], "binary.csv: not UTF-8 text", "a UTF-8 CSV file"),
    ({"train": "empty.csv"}, [], "empty.csv: the file is empty", "a header row"),
    ({"train": "header_only.csv"}, [], "split 'train' has no usable images", "at least one"),
    ({"train": "empty_caption.csv"}, [], "empty_caption.csv:62: empty caption", "data.skip_bad=true"),
    ({"train": "empty_path.csv"}, [], "empty_path.csv:62: empty image path", "data.skip_bad=true"),
    ({"train": "extra_field.csv"}, [], "extra_field.csv:62: row has more fields", "data.skip_bad=true"),
    ({"train": "missing_image.csv"}, [], "nope.png' does not exist", "data.skip_bad=true"),
    ({"train": "corrupt_image.csv"}, [], "bad.png' is unreadable", "data.skip_bad=true"),
    ({"train": "outside.csv"}, [], "test_bad_inputs_data.py' is unreadable", "data.skip_bad=true"),
    ({"train": "huge_field.csv"}, [], "huge_field.csv: not a readable CSV file", "one row per caption"),
    ({"train": "nope.csv"}, [], "data.path=", "a path to an existing file"),
    ({"val": "."}, [], "it is a folder", "a path to an existing file"),
    ({"test": "nope.csv"}, [], "data.test_path=", "a path to an existing file"),
    ({"test": "train.csv"}, [], "split 'test' shares an image file with split 'train'", "data.allow_overlap"),
    ({"val": "train.csv"}, [], "split 'val' shares an image file with split 'train'", "without a shared"),
    ({"test": "overlap_path.csv"}, [], "shares an image file with split 'train'", "1 shared in all"),
    ({"test": "overlap_bytes.csv"}, [], "shares an image content with split 'train'", "copy.png"),
    ({}, ["data.train_size=2", "optim.batch_size=16"], "optim.batch_size=16", "training set size 12"),
]


@pytest.mark.parametrize(("files", "extra", "named", "allowed"), [
    pytest.param(f, e, n, w, id=f"{'-'.join(f.values()) or 'default'}{' ' + ' '.join(e) if e else ''}")
    for f, e, n, w in CSV])
def test_csv_data_refused(files, extra, named, allowed, data, capsys):
    refused(capsys, train.main, SMALL + _csv(data, **files) + extra, named, allowed=allowed)


def test_csv_without_val_path_names_the_field(data, capsys):
    argv = ["data.source=csv", f"data.path={data / 'train.csv'}"]
    refused(capsys, train.main, SMALL + argv, "data.val_path=None", "a path to an existing file")


JSON = [
    ("raw_number.json", "images[0]: sentences[0].raw=5", "a non-empty caption string"),
    ("raw_missing.json", "images[0]: sentences[0].raw=None", "a non-empty caption string"),
    ("sentences_str.json", "images[0]: sentences='a caption'", "a non-empty list"),
    ("sentences_empty.json", "images[0]: sentences=[]", "a non-empty list"),
    ("filepath_number.json", "images[0]: filepath=7", "a folder name"),
    ("filename_missing.json", "images[0]: filename=None", "a non-empty file name"),
    ("split_bad.json", "images[0]: split='holdout'", "one of restval, test, train, val"),
    ("entry_list.json", "images[0]: entry=[1, 2]", "an object with filename, split and sentences"),
    ("prompts_str.json", "class_prompts='a photo'", "a non-empty list of prompt strings"),
    ("prompts_empty.json", "class_prompts=[]", "a non-empty list of prompt strings"),
    ("prompts_number.json", "class_prompts=[1, 2]", "a non-empty list of prompt strings"),
    ("label_range.json", "images[0]: label=99", "an integer class id in [0, 29]"),
    ("label_negative.json", "images[0]: label=-1", "an integer class id in [0, 29]"),
    ("label_str.json", "images[0]: label='3'", "an integer class id in [0, 29]"),
    ("label_bool.json", "images[0]: label=True", "an integer class id"),
    ("label_missing_test.json", "label=None", "on every image"),
    ("label_no_prompts.json", "label=", "labels together with class_prompts"),
    ("overlap_path.json", "split 'test' shares an image file with split 'train'", "data.allow_overlap"),
    ("overlap_bytes.json", "shares an image content with split 'train'", "data.allow_overlap"),
    ("missing_image.json", "nope.png' does not exist", "data.skip_bad=true"),
    ("outside.json", "test_bad_inputs_data.py' is unreadable", "data.skip_bad=true"),
    ("top_list.json", "top_list.json", "a Karpathy-split JSON object"),
    ("images_dict.json", "images_dict.json", "a Karpathy-split JSON object with an 'images' list"),
    ("not_json.json", "not valid JSON (JSONDecodeError", "a UTF-8 Karpathy-split JSON file"),
    ("deep.json", "not valid JSON (RecursionError", "a UTF-8 Karpathy-split JSON file"),
    ("latin1.json", "not valid JSON (UnicodeDecodeError", "a UTF-8 Karpathy-split JSON file"),
    ("nope.json", "data.path=", "a path to an existing file"),
]


@pytest.mark.parametrize(("name", "named", "allowed"), JSON)
def test_json_data_refused(name, named, allowed, data, capsys):
    line = refused(capsys, train.main, SMALL + _json(data, name), named, allowed=allowed)
    if name != "nope.json":
        assert name in line  # the file is named


@pytest.mark.parametrize(("extra", "named"), [
    (["data.image_root={D}/nope"], "data.image_root="),
    (["data.image_root={D}/train.csv"], "data.image_root="),
])
def test_json_image_root_refused(extra, named, data, capsys):
    argv = _json(data) + [e.replace("{D}", str(data)) for e in extra]
    refused(capsys, train.main, SMALL + argv, named, "an existing folder")


def test_overlap_allowed_on_request_warns_loudly(data, caplog):
    from geomix.config import build_config
    from geomix.data import validate_data

    cfg = build_config({}, _csv(data, test="overlap_bytes.csv") + ["data.allow_overlap=true"]).data
    with caplog.at_level("WARNING"):
        assert validate_data(cfg)["test"] == 13
    assert "shares an image content with split 'train'" in caplog.text


def test_a_caption_longer_than_the_context_is_cut_with_one_warning(data, caplog):
    import open_clip

    from geomix.config import DataConfig
    from geomix.data import build_train_set
    from geomix.models import register_tiny_configs

    register_tiny_configs()
    table = [["filepath", "title"], ["images/train/000000.png", "x" * 10_000],
             ["images/train/000001.png", "a red circle"]]
    with (data / "long.csv").open("w", newline="") as f:
        csv.writer(f, delimiter="\t").writerows(table)
    cfg = DataConfig(source="csv", path=str(data / "long.csv"))
    with caplog.at_level("WARNING"):
        build_train_set(cfg, None, open_clip.get_tokenizer("geomix-micro"))
    warnings = [r for r in caplog.records if "context" in r.getMessage()]
    assert len(warnings) == 1 and "1 of 2 captions" in warnings[0].getMessage()
    assert "10000 characters" in warnings[0].getMessage()


# ----------------------------------------------------------------------------------------------------------
# the results folder (analysis/tables.py)


def _rows(sweep: str, statuses, **metrics):
    return [store.trial_row(sweep=sweep, trial_id=f"t{i}", config={"method": "ft", "run": {"seed": i}},
                            result={f"test_{k}": v for k, v in metrics.items()}, status=status,
                            error=None if status == "completed" else "RuntimeError: boom\n  more text",
                            env={}) for i, status in enumerate(statuses)]


@pytest.fixture
def results(tmp_path):
    ok = _rows("fx", ["completed", "completed"], r1_i2t=10.0, rsum=100.0)
    store.write_rows(tmp_path / "ok", "trials", ok)
    store.write_rows(tmp_path / "other", "trials", _rows("fx", ["completed"], r1_i2t=99.0, rsum=1.0))
    store.write_rows(tmp_path / "failed", "trials", _rows("fx", ["failed", "diverged"]))
    store.write_rows(tmp_path / "corrupt", "trials", ok)
    part = next((tmp_path / "corrupt" / "trials").glob("*.parquet"))
    damaged = bytearray(part.read_bytes())
    damaged[40:400] = bytes(b ^ 0x5A for b in damaged[40:400])
    part.write_bytes(bytes(damaged))
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "trials.parquet").write_bytes(b"PAR1 not really parquet PAR1")
    (tmp_path / "empty").mkdir()
    store.write_rows(tmp_path / "history_only", "history", [{"trial_id": "t0", "step": 1, "split": "val",
                                                              "epoch": 1, "rsum": 1.0}])
    return tmp_path


@pytest.mark.parametrize(("argv", "named", "allowed"), [
    (["failed"], "no completed trial (2 trial(s): failed 1, diverged 1; first error: RuntimeError: boom)",
     "at least one completed trial"),
    (["ok", "other"], "trial_id='t0' of sweep 'fx' is in two results folders", "hold different trials"),
    (["corrupt"], "corrupt", "allowed"),
    (["legacy"], "legacy", "allowed"),
    (["empty"], "empty", "a folder written by store.write_rows"),
    (["history_only"], "history_only", "allowed"),
    (["ok", "nope"], "nope", "a folder written by store.write_rows"),
])
def test_tables_refuses_a_bad_results_folder(argv, named, allowed, results, capsys):
    line = refused(capsys, tables.main, [str(results / a) for a in argv], named, allowed=allowed)
    assert "Traceback" not in line


def test_tables_reads_a_folder_given_twice_once(results, capsys):
    code, out, err = _run(capsys, tables.main, [str(results / "ok"), str(results / "ok")])
    assert code == 0 and "error" not in err and out.strip()
