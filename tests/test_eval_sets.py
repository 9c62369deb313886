"""Several named evaluation sets per run (issue 10): columns, known answers, labels on CSV data, the probes.

The known-answer tests use a fixed "oracle" model on CSV data the test writes: solid-colour images whose
embedding is one-hot(colour) + one-hot(brightness level), captions naming both words, a tokenizer and text
tower that embed the same words the same way. So every image's caption is exactly its image (R@K = 100)
unless the test swaps captions, and the class prompts name the colour (zero-shot accuracy 100).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from geomix import metrics, registry
from geomix.config import DataConfig, EvaluationConfig, OptimConfig, RunConfig, TrainConfig, build_config
from geomix.loop import Trainer
from store import history_rows, trial_row

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
LEVELS = {"l1": 1.0, "l2": 0.66, "l3": 0.33}
WORDS = [*COLOURS, *LEVELS]  # the 6 words the oracle embeds; every other word is ignored
VOCAB = {w: i + 1 for i, w in enumerate(WORDS)}


def oracle_tokenize(texts: list[str]) -> torch.Tensor:
    out = torch.zeros(len(texts), 8, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [VOCAB.get(w.strip(".,"), 7) for w in t.split()][:7]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


class Oracle(nn.Module):
    """encode_image: one-hot(brightest channel) + one-hot(brightness level); encode_text: the words."""

    def __init__(self) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))
        self.dummy = nn.Parameter(torch.zeros(1))

    def encode_image(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        mean = x.mean(dim=(2, 3))  # [B, 3] in [0, 1]
        colour = mean.argmax(1)
        top = mean.max(1).values
        level = torch.tensor([min(range(3), key=lambda j: abs(list(LEVELS.values())[j] - float(v)))
                              for v in top])
        e = torch.zeros(len(x), 6)
        e[torch.arange(len(x)), colour] = 1.0
        e[torch.arange(len(x)), 3 + level] = 1.0
        return nn.functional.normalize(e, dim=-1) + 0 * self.dummy

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        e = torch.zeros(len(tokens), 6)
        for w in range(1, 7):
            e[:, w - 1] = (tokens == w).any(1).float()
        return nn.functional.normalize(e + 1e-6, dim=-1) + 0 * self.dummy


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def write_csv(folder: Path, name: str, *, swap: bool = False, label: bool = True) -> Path:
    """9 images (3 colours x 3 levels), one caption each ("a red l2 square"); ``swap``: each caption
    names the next image's level instead (so no image's caption describes it)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    keys = [(c, lv) for c in COLOURS for lv in LEVELS]
    for i, (c, lv) in enumerate(keys):
        rgb = tuple(int(v * LEVELS[lv]) for v in COLOURS[c])
        path = folder / f"{name}_{i}.png"
        Image.new("RGB", (8, 8), rgb).save(path)
        cap_level = keys[(i + 1) % 3 + 3 * (i // 3)][1] if swap else lv
        caption = f"a {c} {cap_level} square"
        rows.append([path.name, caption, c] if label else [path.name, caption])
    out = folder / f"{name}.csv"
    with out.open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["filepath", "title", "label"] if label else ["filepath", "title"])
        w.writerows(rows)
    return out


def oracle_trial(tmp_path: Path, **data) -> dict:
    train = write_csv(tmp_path / "train", "train")
    test = write_csv(tmp_path / "test", "test")
    cfg = TrainConfig(
        method="zs",
        data=DataConfig(source="csv", path=str(train), val_path=str(test), test_path=str(test),
                        csv_label_key="label", **data),
        optim=OptimConfig(batch_size=4),
        run=RunConfig(device="cpu", progress=False, eval_every=0),
    )
    trainer = Trainer(cfg, Oracle(), to_tensor, oracle_tokenize, device=torch.device("cpu"), rank=0, world=1,
                      hooks=None)
    return trainer.fit()


def test_oracle_known_answers_per_set(tmp_path):
    clean = write_csv(tmp_path / "sets", "clean")
    swapped = write_csv(tmp_path / "sets", "swapped", swap=True)
    res = oracle_trial(tmp_path, eval_sets=(("clean", str(clean)), ("swapped", str(swapped))))
    # the primary test split and the clean set: every caption is its image's, classes by colour
    for prefix in ("test_", "eval.clean."):
        assert res[f"{prefix}rsum"] == pytest.approx(600.0)
        assert res[f"{prefix}zs_acc"] == pytest.approx(100.0)
        assert f"{prefix}fewshot_k1" in res and f"{prefix}fewshot_k4" not in res  # 3 per class: k=1 fits
    # the probe saw the set's own image embeddings and labels, seeded by run.seed
    from geomix.metrics.probe import few_shot_probe

    img = Oracle().encode_image(torch.stack([to_tensor(Image.open(tmp_path / "sets" / f"clean_{i}.png"))
                                             for i in range(9)]))
    want = few_shot_probe(img, torch.tensor([0, 0, 0, 2, 2, 2, 1, 1, 1]), (1,), draws=5, seed=0)[1]
    assert res["eval.clean.fewshot_k1"] == pytest.approx(want)
    # swapped captions: each caption names a sibling's level, so no image retrieves its own caption first
    assert res["eval.swapped.r1_i2t"] == 0.0 and res["eval.swapped.r1_t2i"] == 0.0
    assert res["eval.swapped.zs_acc"] == pytest.approx(100.0)  # the images and classes did not change
    # no arithmetic on file data
    assert not any("arith" in k for k in res)


def test_eval_columns_in_trials_and_history(tmp_path):
    clean = write_csv(tmp_path / "sets", "clean")
    res = oracle_trial(tmp_path, eval_sets=(("clean", str(clean)),))
    cfg = {"method": "zs", "run": {"seed": 0}}
    row = trial_row(sweep="s", trial_id="t", config=cfg, result=res, env={})
    assert row["rsum"] == pytest.approx(600.0)  # the primary test split keeps its plain names
    assert row["eval.clean.rsum"] == pytest.approx(600.0) and row["fewshot_k1"] == res["test_fewshot_k1"]
    report = {k: v for k, v in res.items() if k.startswith(("test_", "eval."))}
    hist = history_rows("t", {"step": 3, **report})
    by_split = {h["split"]: h for h in hist}
    assert set(by_split) == {"test", "eval.clean"}
    assert by_split["eval.clean"]["rsum"] == pytest.approx(600.0)
    assert "eval.clean.rsum" not in by_split["test"] and "rsum" in by_split["test"]


def test_prompt_ensembling_averages_templates(tmp_path):
    # a template without the colour word still averages with the one that has it: the class text is the
    # normalised mean of both, which still points at the colour, so zero-shot stays 100
    res = oracle_trial(tmp_path, class_templates=("a photo of a {}.", "a {} thing"))
    assert res["test_zs_acc"] == pytest.approx(100.0)


def test_no_labels_no_zero_shot_columns(tmp_path):
    train = write_csv(tmp_path / "train", "train", label=False)
    test = write_csv(tmp_path / "test", "test", label=False)
    cfg = TrainConfig(method="zs", data=DataConfig(source="csv", path=str(train), val_path=str(test),
                                                   test_path=str(test)),
                      optim=OptimConfig(batch_size=4),
                      run=RunConfig(device="cpu", progress=False, eval_every=0))
    res = Trainer(cfg, Oracle(), to_tensor, oracle_tokenize, device=torch.device("cpu"), rank=0, world=1,
                  hooks=None).fit()
    assert math.isnan(res["test_zs_acc"]) and not any(k.startswith("test_fewshot") for k in res)


def test_class_list_orders_classes_and_must_cover_labels(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("blue\ngreen\nred\nyellow\n")
    res = oracle_trial(tmp_path, class_list=str(classes))  # a class without images is allowed
    assert res["test_zs_acc"] == pytest.approx(100.0)
    classes.write_text("blue\ngreen\n")
    with pytest.raises(ValueError, match=r"class 'red'.*data.class_list="):
        oracle_trial(tmp_path, class_list=str(classes))


def test_metrics_of_each_set_equal_evaluate_embeddings(tmp_path):
    """The eval.<set> numbers are evaluate_embeddings on that set's own embeddings (not the test split's)."""
    from geomix.evaluation import Evaluator

    clean = write_csv(tmp_path / "sets", "clean")
    swapped = write_csv(tmp_path / "sets", "swapped", swap=True)
    data = DataConfig(source="csv", path=str(clean), val_path=str(clean), test_path=str(clean),
                      csv_label_key="label", eval_sets=(("swapped", str(swapped)),))
    ev = Evaluator(data, to_tensor, oracle_tokenize, torch.device("cpu"), None, EvaluationConfig())
    got, emb, d = ev.evaluate(Oracle(), "swapped", 100.0)
    want = metrics.evaluate_embeddings(emb["img"], emb["txt"], d.txt_to_img, scale=100.0,
                                       class_txt=emb["class_txt"], labels=d.labels)
    assert got == pytest.approx(want, nan_ok=True)
    assert got["rsum"] < 600.0


# ---- the embedded data: every style is a set ------------------------------------------------------------


def test_embedded_sets_are_the_styles_and_the_target_is_the_test_split(tiny_base):
    from geomix import train

    cfg = build_config(tiny_base, overrides=["method=zs", "evaluation.arith_size=10",
                                                  "run.eval_every=0"])
    res = train.run(cfg)
    for style in ("flat", "outline", "textured", "dark"):
        assert math.isfinite(res[registry.eval_key(style, "rsum")])
        for key in registry.ARITH_KEYS:
            assert 0.0 <= res[registry.eval_key(style, key)] <= 100.0
    # the fine-tune style at the test size is the test split itself: the same numbers
    for k in registry.METRIC_KEYS:
        a, b = res[f"test_{k}"], res[f"eval.dark.{k}"]
        assert (math.isnan(a) and math.isnan(b)) or a == b
    assert res["eval.flat.rsum"] != res["eval.dark.rsum"]  # another style, other images


def test_sets_every_eval_adds_history_points(tiny_base):
    from geomix import train

    reports = []

    class Hooks:
        def report(self, m, ckpt):
            reports.append(dict(m))

        def initial_checkpoint(self):
            return None

    base = build_config(tiny_base, overrides=["data.eval_styles=[flat]", "evaluation.arith_size=0",
                                                   "optim.epochs=2"])
    train.run(base, hooks=Hooks())
    assert [("eval.flat.rsum" in r) for r in reports] == [False, False, True]  # start, epoch 1, final
    reports.clear()
    every = build_config(tiny_base, overrides=["data.eval_styles=[flat]", "evaluation.arith_size=0",
                                                    "optim.epochs=2", "evaluation.sets_every_eval=true"])
    train.run(every, hooks=Hooks())
    assert [("eval.flat.rsum" in r) for r in reports] == [True, True, True]


# ---- real data end to end: the embedded data exported as a CSV with a label column --------------------


def test_csv_with_labels_end_to_end_through_the_cli(tmp_path, tiny_cache):
    from geomix.data.export import export_shapes

    files = export_shapes(tmp_path / "data", splits=("train", "val", "test"), size=300, styles=("dark",))
    flat = export_shapes(tmp_path / "flat", splits=("test",), size=300, styles=("flat",))
    out = tmp_path / "run"
    argv = ["data.source=csv", f"data.path={files['train']}", f"data.val_path={files['val']}",
            f"data.test_path={files['test']}", "data.csv_label_key=label",
            f"data.eval_sets.flat={flat['test']}",
            "model.pretrained=null", "model.name=geomix-micro", "optim.epochs=1", "optim.batch_size=32",
            "evaluation.fewshot_shots=[1, 2]", f"run.out_dir={out}", "run.progress=false", "run.threads=1"]
    done = subprocess.run([sys.executable, "-m", "geomix.train", *argv], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((out / "result.json").read_text())
    for prefix in ("test_", "eval.flat."):
        assert 0.0 <= res[prefix + "zs_acc"] <= 100.0 and 0.0 <= res[prefix + "ece"] <= 100.0
        assert 0.0 <= res[prefix + "fewshot_k1"] <= 100.0 and 0.0 <= res[prefix + "fewshot_k2"] <= 100.0
    assert not any("arith" in k for k in res)


# ---- bad input: one clear line before training -----------------------------------------------------------


@pytest.mark.parametrize("case,match", [
    ("missing_set", r"data.eval_sets.gone='.*nope.csv' is invalid: the file does not exist"),
    ("missing_label", r"data.csv_label_key='klass' is not a column of the file"),
    ("class_list", r"class 'red' .*is invalid: allowed a class of data.class_list="),
    ("shots", r"evaluation.fewshot_shots \(on the test split\)=4 is invalid: allowed at most 2"),
])
def test_bad_eval_inputs_refused_before_training(tmp_path, case, match):
    from geomix.train import check_trial

    train = write_csv(tmp_path / "train", "train")
    val = write_csv(tmp_path / "val", "val")
    test = write_csv(tmp_path / "test", "test")
    data = dict(source="csv", path=str(train), val_path=str(val), test_path=str(test), csv_label_key="label")
    ev = EvaluationConfig()
    if case == "missing_set":
        data["eval_sets"] = (("gone", str(tmp_path / "nope.csv")),)
    elif case == "missing_label":
        data["csv_label_key"] = "klass"
    elif case == "class_list":
        (tmp_path / "c.txt").write_text("green\nblue\n")
        data["class_list"] = str(tmp_path / "c.txt")
    else:
        ev = EvaluationConfig(fewshot_shots=(1, 4))
        data["allow_overlap"] = True  # the test's splits share pixels; the shots are the point here
    cfg = TrainConfig(data=DataConfig(**data), evaluation=ev, model=TrainConfig().model.__class__(
        name="geomix-micro", pretrained=None), optim=OptimConfig(batch_size=4))
    with pytest.raises(ValueError, match=match):
        check_trial(cfg)


@pytest.mark.parametrize("override,match", [
    ("data.eval_styles=[neon]", r"data.eval_styles\[0\]='neon' is invalid"),
    ("data.eval_sets.coco=x.csv", r"data.eval_sets=.* is invalid: allowed empty when data.source='shapes'"),
    ("data.csv_label_key=label", r"data.csv_label_key='label' is invalid: allowed None unless"),
    ("data.class_templates=['no slot']", r"data.class_templates\[0\]='no slot' is invalid"),
    ("evaluation.fewshot_shots=[0]", r"evaluation.fewshot_shots\[0\]=0 is invalid"),
    ("evaluation.arith_size=3", r"evaluation.arith_size=3 is invalid"),
])
def test_bad_eval_config_values(override, match):
    with pytest.raises(ValueError, match=match):
        build_config(overrides=[override])


# ---- BatchNorm statistics: the embedded ResNet tower forgets the source styles through them ------------


@pytest.mark.parametrize("freeze", [False, True])
def test_freeze_bn_stats_keeps_the_starting_statistics(tmp_path, freeze):
    from geomix import models

    cfg = build_config(overrides=["model.name=geomix-tiny", "model.pretrained=null", "data.train_size=32",
                                  "data.val_size=8", "data.test_size=8", "optim.batch_size=16",
                                  "optim.max_steps=2", "run.eval_every=0", "run.progress=false",
                                  f"model.freeze_bn_stats={str(freeze).lower()}"])
    model, pre, tok = models.create(cfg.model, device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    assert before, "geomix-tiny's image tower has BatchNorm layers"
    Trainer(cfg, model, pre, tok, device=torch.device("cpu"), rank=0, world=1, hooks=None,
            evaluate=False).fit()
    after = model.state_dict()
    same = all(torch.equal(before[k], after[k]) for k in before)
    assert same is freeze
