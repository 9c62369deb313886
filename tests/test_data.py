"""Data: the embedded generator's determinism and variety, the pinned build_* API, loaders and export."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from geomix.config import DataConfig
from geomix.data import STYLES, EvalSet, build_eval_set, build_train_set, validate_data
from geomix.data.captions import COLOURS, SHAPES
from geomix.data.shapes import ShapesData, render, rng_for, sample_scene


def _tok(texts: list[str]) -> torch.Tensor:
    """A cheap, exact stand-in for open_clip's tokenizer: word hashes, padded to 24 tokens."""
    out = torch.zeros(len(texts), 24, dtype=torch.long)
    for r, t in enumerate(texts):
        ids = [sum(map(ord, w)) % 997 + 1 for w in t.split()][:24]
        out[r, : len(ids)] = torch.tensor(ids)
    return out


@pytest.fixture(scope="module")
def clip_tok():
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")


def test_same_seed_index_gives_same_sample_in_two_objects():
    a = ShapesData("train", 16, ("flat", "dark"), seed=3)
    b = ShapesData("train", 16, ("flat", "dark"), seed=3)
    for i in (0, 5, 15):
        assert np.array_equal(a.image(i), b.image(i))
        assert a.captions(i) == b.captions(i)
        assert a.label(i) == b.label(i)
    c = ShapesData("train", 16, ("flat", "dark"), seed=4)
    assert not all(np.array_equal(a.image(i), c.image(i)) for i in range(16))


def test_same_sample_in_a_subprocess():
    d = ShapesData("test", 8, ("textured",), seed=7)
    code = (
        "import hashlib, json; from geomix.data.shapes import ShapesData\n"
        "d = ShapesData('test', 8, ('textured',), seed=7)\n"
        "h = [[hashlib.sha256(d.image(i).tobytes()).hexdigest(), d.captions(i)] for i in range(8)]\n"
        "print(json.dumps(h))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import hashlib

    expected = [[hashlib.sha256(d.image(i).tobytes()).hexdigest(), d.captions(i)] for i in range(8)]
    assert json.loads(out) == expected


def test_captions_count_content_and_ambiguity():
    d = ShapesData("test", 512, ("dark",), captions_per_image=5)
    firsts = []
    for i in range(len(d)):
        caps = d.captions(i)
        assert len(caps) == 5 and len(set(caps)) >= 4
        main = d.scene(i).objects[0]
        # The canonical caption names the main shape's colour and shape with canonical words, first.
        assert caps[0].startswith(f"a {main.size} {main.colour} {main.shape}")
        firsts.append(caps[0])
    dup = sum(n for n in Counter(firsts).values() if n > 1) / len(firsts)
    assert dup < 0.10, dup  # distinct images rarely share their first caption (measured ~5%)
    words = " ".join(c for i in range(64) for c in d.captions(i))
    for synonym in ("crimson", "box", "a pair of", "left of", "shapes"):
        assert synonym in words or synonym.replace("crimson", "scarlet") in words
    # Captions must carry attributes: many images share a colour+shape class, so the class alone is vague.
    assert len(Counter(d.labels)) == len(COLOURS) * len(SHAPES)
    assert ShapesData("test", 3, ("dark",), captions_per_image=9).captions(0).__len__() == 9


def test_four_styles_differ_on_the_same_scene():
    assert set(STYLES) >= {"flat", "outline", "textured", "dark"}
    scene = sample_scene(0, "test", 1)
    imgs = {s: render(scene, s, 32, rng_for("r", s)).astype(float) for s in STYLES}
    for s in STYLES:
        assert imgs[s].shape == (32, 32, 3)
    for i, s in enumerate(STYLES):
        for t in STYLES[i + 1 :]:
            assert np.abs(imgs[s] - imgs[t]).mean() > 10, (s, t)
    assert imgs["dark"].mean() < 80 < imgs["flat"].mean()  # a dark background really is dark
    assert ShapesData("val", 2, ("flat",), image_size=64).image(0).shape == (64, 64, 3)


def test_splits_are_disjoint():
    splits = ("train", "val", "test")
    pix = {s: {ShapesData(s, 64, ("flat",)).image(i).tobytes() for i in range(64)} for s in splits}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not pix[a] & pix[b], (a, b)
    caps = {s: [ShapesData(s, 64, ("flat",)).captions(i) for i in range(64)] for s in splits}
    assert caps["train"] != caps["val"] != caps["test"]


def test_build_train_set_items_and_epoch_choice(clip_tok):
    cfg = DataConfig(train_size=32, seed=1)
    ds = build_train_set(cfg, None, clip_tok)
    img, tok = ds[3]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert tok.shape == (77,) and tok.dtype == torch.long
    assert ds.tokens.shape == (32 * 5, 77)
    caps0 = [ds.captions_text[ds.caption_index(i)] for i in range(32)]
    ds.set_epoch(1)
    caps1 = [ds.captions_text[ds.caption_index(i)] for i in range(32)]
    assert caps0 != caps1  # a new epoch picks other captions...
    again = build_train_set(cfg, None, clip_tok)
    again.set_epoch(1)
    assert [again.captions_text[again.caption_index(i)] for i in range(32)] == caps1  # ...deterministically
    assert torch.equal(again[3][1], ds[3][1]) and torch.equal(ds[3][1], clip_tok([caps1[3]])[0])
    other = build_train_set(cfg, None, clip_tok, seed=2)
    other.set_epoch(1)
    assert [other.captions_text[other.caption_index(i)] for i in range(32)] != caps1
    assert torch.equal(other[3][0], ds[3][0])  # the seed argument changes captions, not images
    base = build_train_set(cfg, None, _tok, styles=("flat", "outline"), size=10)
    assert len(base) == 10 and base.source.styles == ("flat", "outline")


def test_build_eval_set(clip_tok):
    cfg = DataConfig(val_size=12, test_size=20)
    ev = build_eval_set(cfg, "test", None, clip_tok)
    assert isinstance(ev, EvalSet) and len(ev.images) == 20
    assert ev.captions.shape == (100, 77) and ev.txt_to_img.tolist() == [i // 5 for i in range(100)]
    assert ev.labels.shape == (20,) and ev.labels.max() < len(ev.class_prompts) == 30
    assert ev.class_prompts[0] == "a photo of a red circle."
    assert ev.images[0].shape == (3, 32, 32)
    assert len(build_eval_set(cfg, "val", None, _tok).images) == 12
    first = build_eval_set(dataclasses.replace(cfg, eval_captions="first"), "val", None, _tok)
    assert first.captions.shape[0] == 12 and first.txt_to_img.tolist() == list(range(12))


def test_open_clip_preprocess_matches_fast_transform(clip_tok):
    """The open_clip path (PIL -> preprocess) agrees with the fast path when no resizing is involved."""
    import open_clip

    pre = open_clip.image_transform(32, is_train=False)
    cfg = DataConfig(test_size=4)
    slow = build_eval_set(cfg, "test", pre, clip_tok).images[2]
    fast = build_eval_set(cfg, "test", None, clip_tok).images[2]
    assert torch.allclose(slow, fast, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"styles": ("sepia",)}, "data.styles"),
        ({"base_styles": ("flat", "neon")}, "data.base_styles"),
        ({"image_size": 8}, "data.image_size"),
    ],
)
def test_bad_shapes_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        validate_data(DataConfig(**kwargs))


def test_bad_build_arguments():
    with pytest.raises(ValueError, match="split='train'"):
        build_eval_set(DataConfig(), "train", None, _tok)
    with pytest.raises(ValueError, match="styles='neon'"):
        build_train_set(DataConfig(), None, _tok, styles=("neon",))
    assert validate_data(DataConfig())["test"] == 1024


# ---------------------------------------------------------------------------------------------------------
# export, CSV and Karpathy-JSON loaders


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from geomix.data.export import main

    out = tmp_path_factory.mktemp("export")
    assert main(["--out", str(out), "--size", "6", "--styles", "dark", "flat", "--seed", "5"]) == 0
    return out


def _csv_cfg(out, **kw) -> DataConfig:
    return DataConfig(source="csv", path=str(out / "train.csv"), val_path=str(out / "val.csv"),
                      test_path=str(out / "test.csv"), **kw)


def _json_cfg(out, **kw) -> DataConfig:
    return DataConfig(source="json", path=str(out / "dataset_karpathy.json"), **kw)


@pytest.mark.parametrize("make_cfg", [_csv_cfg, _json_cfg], ids=["csv", "json"])
def test_export_round_trip(exported, make_cfg):
    cfg = make_cfg(exported)
    assert validate_data(cfg) == {"train": 6, "val": 6, "test": 6, "skipped": 0}
    ref_cfg = DataConfig(seed=5, styles=("dark", "flat"), val_size=6, test_size=6, train_size=6)
    for split in ("val", "test"):
        got = build_eval_set(cfg, split, None, _tok)
        ref = build_eval_set(ref_cfg, split, None, _tok)
        assert got.captions_text == ref.captions_text and len(got.captions_text) == 30
        assert torch.equal(got.captions, ref.captions) and torch.equal(got.txt_to_img, ref.txt_to_img)
        for i in range(6):
            assert torch.equal(got.images[i], ref.images[i])  # PNG is lossless: identical pixels
    src = ShapesData("test", 6, ("dark", "flat"), seed=5)
    raw = build_eval_set(cfg, "test", None, _tok).images.source.image(4)
    assert np.array_equal(np.asarray(raw), src.image(4))
    train = build_train_set(cfg, None, _tok, seed=5)  # the caption choice follows the seed
    ref_train = build_train_set(ref_cfg, None, _tok)
    for e in (0, 3):
        train.set_epoch(e)
        ref_train.set_epoch(e)
        assert torch.equal(train[2][1], ref_train[2][1]) and torch.equal(train[2][0], ref_train[2][0])


def test_json_carries_labels_csv_does_not(exported):
    ev = build_eval_set(_json_cfg(exported), "test", None, _tok)
    assert ev.labels.tolist() == ShapesData("test", 6, ("dark", "flat"), seed=5).labels
    assert ev.class_prompts[0] == "a photo of a red circle."
    assert build_eval_set(_csv_cfg(exported), "test", None, _tok).labels is None


def test_fast_transform_resizes_other_sizes(exported):
    cfg = _csv_cfg(exported, image_size=16)
    img = build_eval_set(cfg, "val", None, _tok).images[0]
    assert img.shape == (3, 16, 16)


def _copy_export(exported, tmp_path):
    import shutil

    shutil.copytree(exported, tmp_path / "d")
    return tmp_path / "d"


def test_missing_file_names_file_and_row(exported, tmp_path):
    d = _copy_export(exported, tmp_path)
    (d / "images" / "val" / "000002.png").unlink()
    # Image 2's first caption is on line 2 + 2 * 5 = 12 of val.csv (line 1 is the header).
    with pytest.raises(ValueError, match=r"val\.csv:12: image file .*000002\.png.* does not exist"):
        validate_data(_csv_cfg(d))
    with pytest.raises(ValueError, match=r"dataset_karpathy\.json:images\[8\]: image file .*000002\.png"):
        validate_data(_json_cfg(d))


def test_unreadable_image_names_file_and_row(exported, tmp_path):
    d = _copy_export(exported, tmp_path)
    (d / "images" / "test" / "000001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match=r"test\.csv:7: image file .*000001\.png.* is unreadable"):
        build_eval_set(_csv_cfg(d), "test", None, _tok)
    with pytest.raises(ValueError, match=r"images\[13\]: image file .*000001\.png.* is unreadable"):
        validate_data(_json_cfg(d))


def test_empty_split_and_unknown_column(exported, tmp_path):
    d = _copy_export(exported, tmp_path)
    (d / "val.csv").write_text("filepath\ttitle\n")
    with pytest.raises(ValueError, match=r"val\.csv: split 'val' has no usable images"):
        validate_data(_csv_cfg(d))
    meta = json.loads((d / "dataset_karpathy.json").read_text())
    meta["images"] = [m for m in meta["images"] if m["split"] != "test"]
    (d / "dataset_karpathy.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"dataset_karpathy\.json: split 'test' has no usable images"):
        validate_data(_json_cfg(d))
    unknown = r"train\.csv: data\.csv_caption_key='caption' is not a column.*'title'"
    with pytest.raises(ValueError, match=unknown):
        validate_data(_csv_cfg(exported, csv_caption_key="caption"))
    with pytest.raises(ValueError, match=r"data\.val_path=None"):
        validate_data(dataclasses.replace(_csv_cfg(exported), val_path=None))


def test_bad_rows_name_the_row(exported, tmp_path):
    d = _copy_export(exported, tmp_path)
    lines = (d / "train.csv").read_text().splitlines()
    lines[3] = lines[3].split("\t")[0] + "\t"  # empty caption on line 4
    (d / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"train\.csv:4: empty caption in column 'title'"):
        validate_data(_csv_cfg(d))
    meta = json.loads((d / "dataset_karpathy.json").read_text())
    meta["images"][1]["split"] = "holdout"
    del meta["images"][2]["sentences"]
    (d / "dataset_karpathy.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"images\[1\]: split='holdout' is invalid"):
        validate_data(_json_cfg(d))
    src = build_train_set(_json_cfg(d, skip_bad=True), None, _tok)
    assert len(src) == 4 and src.n_skipped == 2


def test_skip_bad_skips_and_counts(exported, tmp_path, caplog):
    d = _copy_export(exported, tmp_path)
    (d / "images" / "train" / "000000.png").unlink()
    (d / "images" / "train" / "000003.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="000000.png"):
        build_train_set(_csv_cfg(d), None, _tok)
    cfg = _csv_cfg(d, skip_bad=True)
    with caplog.at_level("WARNING"):
        assert validate_data(cfg) == {"train": 4, "val": 6, "test": 6, "skipped": 2}
    assert "skipped 2 bad rows/images" in caplog.text
    ds = build_train_set(cfg, None, _tok)
    assert len(ds) == 4 and ds.n_skipped == 2 and ds.tokens.shape[0] == 20
    ref = ShapesData("train", 6, ("dark", "flat"), seed=5)
    assert ds.captions_text[:5] == ref.captions(1)  # image 0 was skipped, image 1 comes first
    ev = build_eval_set(_json_cfg(d, skip_bad=True), "test", None, _tok)
    assert ev.n_skipped == 0 and len(ev.images) == 6


def test_export_cli_single_split(tmp_path, capsys):
    from geomix.data.export import main

    assert main(["--out", str(tmp_path), "--size", "3", "--split", "test", "--styles", "outline",
                 "--image-size", "48", "--captions-per-image", "6"]) == 0
    assert "test.csv" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset_karpathy.json", "images", "test.csv"]
    meta = json.loads((tmp_path / "dataset_karpathy.json").read_text())
    assert [m["split"] for m in meta["images"]] == ["test"] * 3
    assert all(len(m["sentences"]) == 6 and m["style"] == "outline" for m in meta["images"])
    rows = (tmp_path / "test.csv").read_text().splitlines()
    assert rows[0] == "filepath\ttitle\tlabel" and len(rows) == 1 + 3 * 6
    from PIL import Image

    assert Image.open(tmp_path / "images" / "test" / "000002.png").size == (48, 48)
    with pytest.raises(ValueError, match="image_size=8"):
        main(["--out", str(tmp_path / "x"), "--image-size", "8"])
    assert not (tmp_path / "x").exists()  # arguments are checked before anything is written
    with pytest.raises(IndexError):
        ShapesData("test", 3, ("flat",)).image(3)


def test_overlap_check_compares_splits_not_rows_and_warns_about_outside_images(tmp_path, caplog):
    """A repeated image inside one split is that split's business; the same bytes in two splits are
    refused; an image outside the data folder is allowed with a warning (the split checks still hold)."""
    from geomix.data.overlap import check_overlap

    for name, data in (("a.png", b"same bytes"), ("b.png", b"same bytes"), ("c.png", b"other bytes!")):
        (tmp_path / name).write_bytes(data)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    outside.write_bytes(b"elsewhere")
    roots = {"train": tmp_path, "test": tmp_path}
    a, b, c = (tmp_path / n for n in ("a.png", "b.png", "c.png"))
    with caplog.at_level("WARNING"):
        check_overlap({"train": [(a, "t:1"), (b, "t:2")], "test": [(c, "s:1"), (outside, "s:2")]}, roots)
    assert "1 of 2 images of split 'test' lie outside the data folder" in caplog.text
    with pytest.raises(ValueError, match=r"split 'test' shares an image content with split 'train' \(s:1 "):
        check_overlap({"train": [(a, "t:1")], "test": [(b, "s:1")]}, roots)
    with pytest.raises(ValueError, match=r"split 'test' shares an image file with split 'train'.*2 shared"):
        check_overlap({"train": [(a, "t:1"), (c, "t:2")], "test": [(tmp_path / "." / "a.png", "s:1"),
                                                                (c, "s:2")]}, roots)
