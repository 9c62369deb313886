"""task='classify' (P-Mixup's FSMDT) through the one trainer: config, data, the mixes and λ in the loop,
folder and CSV data through geomix.train.run, resume, and every bad input refused before training."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geomix import classify, models, train
from geomix.checks import ConfigError
from geomix.config import build_config
from geomix.data import build_transfer, validate_data
from geomix.loop import Trainer
from geomix.losses import crossmix
from geomix.mixing import _DIST_EPS

# The embedded data, a micro ViT from random weights, one source style: a few steps in seconds.
SHAPES = [
    "task=classify",
    "model.name=geomix-micro",
    "model.pretrained=null",
    "data.source_domains=[flat]",
    "data.train_size=128",
    "data.val_size=30",
    "data.test_size=60",
    "data.eval_size=30",
    "optim.batch_size=32",
    "optim.epochs=2",
    "optim.lr=0.002",
    "run.progress=false",
    "run.threads=1",
]
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (220, 220, 30)]


class Recorder:
    """Hooks keeping every report; ``crash_after``: raise after that many checkpoints (a killed worker)."""

    def __init__(self, crash_after: int | None = None):
        self.reports: list[dict] = []
        self.checkpoints: list[str] = []
        self.crash_after = crash_after

    def report(self, metrics, checkpoint_dir):
        self.reports.append(dict(metrics))
        if checkpoint_dir:
            self.checkpoints.append(checkpoint_dir)
            if self.crash_after is not None and len(self.checkpoints) >= self.crash_after:
                raise KeyboardInterrupt("simulated crash after a checkpoint")

    def initial_checkpoint(self):
        return None


def _cfg(*overrides: str):
    return build_config({}, SHAPES + list(overrides))


def write_domains(root: Path, spec: dict[str, dict[str, int]]) -> Path:
    """``root/<domain>/<class>/<i>.png``: ``spec[domain][class]`` images, the class a coloured square, the
    domain a background shade."""
    rng = np.random.default_rng(0)
    for d, (domain, classes) in enumerate(spec.items()):
        (root / domain).mkdir(parents=True, exist_ok=True)
        for name, n in classes.items():
            (root / domain / name).mkdir(exist_ok=True)
            c = int(name[1:]) if name[1:].isdigit() else 0
            for i in range(n):
                img = np.full((32, 32, 3), 60 * d, np.uint8)
                img[8:24, 8:24] = COLOURS[c % len(COLOURS)]
                img = np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / domain / name / f"{i}.png")
    return root


def even(n: int = 6, classes: int = 3) -> dict[str, int]:
    return {f"c{c}": n for c in range(classes)}


def folder_cfg(root: Path, *overrides: str):
    return build_config({}, [
        "task=classify", "data.source=folder", f"data.path={root}", "data.target_domain=photo",
        "data.source_domains=[art,sketch]", "data.shots=2", "model.name=geomix-micro",
        "model.pretrained=null",
        "optim.batch_size=8", "optim.epochs=2", "optim.lr=0.002", "run.progress=false", "run.threads=1",
        *overrides])


# ----------------------------------------------------------------------------------------------------------
# config


def test_classify_config_keys_defaults_and_columns():
    cfg = build_config({}, ["task=classify"])
    assert cfg.task == "classify" and cfg.data.shots == 1 and cfg.transfer.lam.policy == "progressive"
    assert (cfg.transfer.w_clean_src, cfg.transfer.w_clean_tgt, cfg.transfer.w_img, cfg.transfer.w_feat) == (
        1.0, 1.0, 1.0, 1.0)
    assert cfg.transfer.levels == "both" and train.method_name(cfg) == "fsmdt_progressive_both"
    from geomix.config.transfer import task_domains

    assert task_domains(cfg.data) == ("dark", ("flat", "outline", "textured"))  # the embedded defaults
    nomix = build_config({}, ["task=classify", "transfer.w_img=0", "transfer.w_feat=0"])
    assert nomix.transfer.levels == "none" and train.method_name(nomix) == "fsmdt_nomix"
    assert build_config({}, []).task == "retrieval"
    from store.schema import column_type

    assert str(column_type("trials", "transfer.lam.policy")) == "string"
    assert str(column_type("trials", "data.shots")) == "int64"
    assert str(column_type("trials", "transfer.w_img")) == "double"


@pytest.mark.parametrize("overrides, named", [
    (["task=classify", "data.target_domain=flat"], "data.source_domains=['flat', 'outline', 'textured']"),
    (["task=classify", "data.source_domains=[flat, dark]"], "data.source_domains=['flat', 'dark']"),
    (["task=classify", "data.source_domains=[flat, flat]"], "each domain once"),
    (["task=classify", "data.target_domain=sepia"], "data.target_domain='sepia'"),
    (["task=classify", "data.shots=0"], "data.shots=0"),
    (["task=classify", "transfer.w_img=-1"], "transfer.w_img=-1.0"),
    (["task=classify", "transfer.lam.alpha=0"], "transfer.lam.alpha=0.0"),
    (["task=classify", "transfer.pairing=nearest"], "transfer.pairing='nearest'"),
    (["task=classify", "loss.w_m2=0.1"], "loss.w_m2=0.1"),
    (["task=classify", "data.source=json", "data.path=x.json"], "data.source='json'"),
    (["task=classify", "data.source=folder", "data.path=/tmp", "model.pretrained=null"],
     "data.target_domain=None"),
    (["task=classify", "data.source=csv", "data.path=x.csv", "data.target_domain=a",
      "data.source_domains=[b]", "model.pretrained=null"], "data.csv_label_key=None"),
    (["data.target_domain=dark"],
     "data.target_domain='dark' is invalid: allowed None unless task='classify'"),
    (["data.source=folder", "data.path=/tmp"], "data.source='folder'"),
    (["task=regression"], "task='regression'"),
])
def test_bad_classify_config_is_refused_on_construction(overrides, named):
    with pytest.raises(ConfigError) as e:
        build_config({}, overrides)
    assert named in str(e.value) and "is invalid: allowed" in str(e.value)


# ----------------------------------------------------------------------------------------------------------
# data: the k-shot split


def _hash(img) -> str:
    return hashlib.sha256(np.asarray(img).tobytes()).hexdigest()


def test_k_shots_per_class_seeded_nested_and_disjoint_from_the_test_split():
    cfg = _cfg("data.source_domains=[flat, outline]", "data.train_size=384", "data.shots=5").data
    five = build_transfer(cfg, shot_seed=3)
    assert set(Counter(five.shots.labels).values()) == {5} and len(five.shots) == 5 * 30
    assert five.shots.source.split == "train" and five.test.split == "test"  # from the target's train split
    assert {_hash(five.shots.image(i)) for i in range(len(five.shots))}.isdisjoint(
        {_hash(five.test.image(i)) for i in range(len(five.test))})
    again = build_transfer(cfg, shot_seed=3)
    assert again.shots.indices == five.shots.indices  # seeded
    assert build_transfer(cfg, shot_seed=4).shots.indices != five.shots.indices
    one = build_transfer(_cfg("data.source_domains=[flat, outline]", "data.train_size=384").data, shot_seed=3)
    assert set(one.shots.indices) <= set(five.shots.indices)  # 1 shot inside 5 shots of the same seed
    assert list(five.sources) == ["flat", "outline"] and list(five.evals) == ["flat", "outline"]
    assert validate_data(cfg, task="classify") == {"train": 768, "shots": 150, "test": 60, "skipped": 0}


def test_file_data_shots_and_test_partition_the_target(tmp_path):
    root = write_domains(tmp_path / "d", {"art": even(), "photo": even(5), "sketch": even()})
    data = build_transfer(folder_cfg(root).data, shot_seed=0)
    shots, test = set(data.shots.indices), set(data.test.indices)
    assert not shots & test and shots | test == set(range(15))
    assert Counter(data.shots.labels) == {0: 2, 1: 2, 2: 2} and data.val is None
    assert list(data.evals) == ["art", "sketch"] and data.class_names == ["c0", "c1", "c2"]


# ----------------------------------------------------------------------------------------------------------
# the classify path of the loop


def test_both_mix_levels_use_the_step_lambda_and_its_soft_labels(monkeypatch):
    seen: dict[str, list] = {"img": [], "feat": []}

    def spy(level, fn):
        def wrapped(a, b, y_a, y_b, lam, k):
            out, y = fn(a, b, y_a, y_b, lam, k)
            lam_ = float(lam)
            assert torch.allclose(out, lam_ * a + (1 - lam_) * b)  # x̃ = λ·x_s + (1-λ)·x_t (same for g̃)
            assert torch.allclose(y.gather(1, y_a[:, None].long()).squeeze(1)[y_a != y_b], torch.tensor(lam_))
            assert torch.allclose(y.sum(1), torch.ones(len(y)))
            seen[level].append(lam_)
            return out, y
        return wrapped

    monkeypatch.setattr(crossmix, "image_mix", spy("img", crossmix.image_mix))
    monkeypatch.setattr(crossmix, "feature_mix", spy("feat", crossmix.feature_mix))
    rec = Recorder()
    result = train.run(_cfg("transfer.lam.policy=beta", "transfer.lam.alpha=1.0", "run.report_every=1",
                            "run.eval_every=0"), hooks=rec)
    steps = [r for r in rec.reports if not r.get("done")]
    assert result["status"] == "completed" and result["steps"] == 8 == len(seen["img"]) == len(seen["feat"])
    assert seen["img"] == seen["feat"]  # one λ per step at both levels
    assert [r["lam_cross"] for r in steps] == pytest.approx(seen["img"], abs=1e-6)  # ... the one logged
    assert len(set(seen["img"])) == 8  # random λ: a new draw every step
    assert {"loss_ce_src", "loss_ce_tgt", "loss_mix_img", "loss_mix_feat", "train_loss"} <= set(steps[0])
    assert {"test_acc", "test_macc", "eval.flat.acc", "eval.flat.macc"} <= set(result)
    assert all(0 <= result[k] <= 100 for k in ("test_acc", "test_macc", "eval.flat.acc"))


def test_progressive_lambda_sequence_through_the_classification_path():
    rec = Recorder()
    cfg = _cfg("run.report_every=1", "run.eval_every=0", "transfer.lam.sigma=0.1")
    train.run(cfg, hooks=rec)
    steps = [r for r in rec.reports if not r.get("done")]
    total, t, sigma = len(steps), cfg.transfer.lam.temperature, cfg.transfer.lam.sigma
    assert total == 8 and cfg.transfer.lam.policy == "progressive"  # a partial override keeps it
    assert (steps[0]["lam_d_a"], steps[0]["lam_d_b"]) == (1.0, 1.0)  # nothing observed before the first step
    prev = 0.0  # λ_0 = 0: start at the target
    for n, r in enumerate(steps, start=1):
        d_a, d_b = r["lam_d_a"], r["lam_d_b"]
        q = math.exp(-d_a / ((d_a + d_b + _DIST_EPS) * t))
        assert r["lam_q"] == pytest.approx(q, rel=1e-5, abs=1e-7)
        assert r["lam_base"] == pytest.approx(n * (1 - q) / total + q * prev, rel=1e-5, abs=1e-6)
        lam = r["lam_cross"]  # the value used: U(λ_n ± σ), clamped to [0, 1]
        assert max(0.0, r["lam_base"] - sigma) - 1e-6 <= lam <= min(1.0, r["lam_base"] + sigma) + 1e-6
        prev = r["lam_base"]
    assert all(r["lam_d_a"] > 0 and r["lam_d_b"] > 0 for r in steps[1:])  # observed from the features
    assert steps[-1]["lam_base"] > steps[0]["lam_base"]  # moving from the target toward the sources


def test_one_trainer_trains_the_image_tower_and_head_not_the_text_tower():
    cfg = _cfg("optim.epochs=1", "run.eval_every=0")
    model, preprocess, tokenizer = models.create(cfg.model)
    text = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("visual.")}
    visual = {k: v.clone() for k, v in model.visual.state_dict().items()}
    trainer = Trainer(cfg, model, preprocess, tokenizer, device=torch.device("cpu"), rank=0, world=1,
                      hooks=None)
    head = model.classify_head.weight.detach().clone()
    assert head.shape == (30, model.visual.output_dim) and isinstance(trainer.task, classify.ClassifyTask)
    result = trainer.fit()
    assert result["status"] == "completed" and result["steps"] == 4
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in text.items())  # the text tower gets no gradient
    assert any(not torch.equal(model.visual.state_dict()[k], v) for k, v in visual.items())
    assert not torch.equal(model.classify_head.weight, head)  # F trains with G
    assert "classify_head.weight" in after  # ... and travels in the checkpoint next to the model


def test_accuracy_and_mean_per_class_accuracy_by_hand():
    pred, labels = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 0])
    out = classify.accuracy(pred, labels)
    assert out["acc"] == pytest.approx(100 * 4 / 6)
    assert out["macc"] == pytest.approx(100 * (1 / 2 + 1 / 2 + 1) / 3)


def test_resume_of_the_classify_task_is_bit_identical(tmp_path):
    def with_dir(name):
        return _cfg("optim.epochs=3", f"run.out_dir={tmp_path / name}")

    full = train.run(with_dir("full"))
    crashed = Recorder(crash_after=1)  # killed after epoch 1's checkpoint
    with pytest.raises(KeyboardInterrupt):
        train.run(with_dir("resumed"), hooks=crashed)
    assert len(list((tmp_path / "resumed" / "checkpoints").glob("ckpt-*"))) == 1
    resumed = train.run(with_dir("resumed"))
    assert full["status"] == resumed["status"] == "completed" and full["steps"] == resumed["steps"] == 12
    keys = [k for k in full if k.startswith(("test_", "eval."))]
    assert len(keys) == 4 and {k: full[k] for k in keys} == {k: resumed[k] for k in keys}
    from geomix import checkpoints

    a = checkpoints.load(checkpoints.latest(str(tmp_path / "full")))
    b = checkpoints.load(checkpoints.latest(str(tmp_path / "resumed")))
    assert a["model"].keys() == b["model"].keys() and "classify_head.weight" in a["model"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["loss_fn"]["_extra_state"]["policy"] == b["loss_fn"]["_extra_state"]["policy"]


# ----------------------------------------------------------------------------------------------------------
# real data: a folder tree and a CSV, through geomix.train.run


def test_folder_data_through_run(tmp_path):
    root = write_domains(tmp_path / "office", {"art": even(), "photo": even(), "sketch": even()})
    (root / "art" / "notes.txt").write_text("not an image")  # skipped, as every non-image file
    rec = Recorder()
    result = train.run(folder_cfg(root, f"run.out_dir={tmp_path / 'run'}"), hooks=rec)
    assert result["status"] == "completed" and result["steps"] == 2 * (36 // 8)
    assert {"test_acc", "test_macc", "eval.art.acc", "eval.sketch.acc", "eval.sketch.macc"} <= set(result)
    assert "eval.photo.acc" not in result and not any(k.startswith("val_") for r in rec.reports for k in r)
    assert json.loads((tmp_path / "run" / "result.json").read_text())["test_acc"] == result["test_acc"]


def test_csv_data_through_run(tmp_path):
    root = write_domains(tmp_path / "imgs", {"a": even(), "b": even(), "t": even(4)})
    lines = ["path,label,domain"]
    for p in sorted(root.rglob("*.png")):
        lines.append(f"{p.relative_to(tmp_path)},{p.parent.name},{p.parent.parent.name}")
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    cfg = build_config({}, [
        "task=classify", "data.source=csv", f"data.path={tmp_path / 'data.csv'}", "data.csv_separator=,",
        "data.csv_img_key=path", "data.csv_label_key=label", "data.target_domain=t",
        "data.source_domains=[a, b]", "data.shots=1", "model.name=geomix-micro", "model.pretrained=null",
        "optim.batch_size=12", "optim.epochs=1", "run.progress=false", "run.threads=1"])
    assert train.check_trial(cfg) == {"train": 36, "shots": 3, "test": 9, "skipped": 0}
    result = train.run(cfg)
    assert result["status"] == "completed" and result["steps"] == 3
    assert {"test_acc", "eval.a.acc", "eval.b.acc"} <= set(result)


# ----------------------------------------------------------------------------------------------------------
# bad inputs: each refused before training, naming the value


BAD_DATA = [
    ("target not in the data", {"art": even(), "photo": even(), "sketch": even()},
     ["data.target_domain=cartoon"],
     "data.target_domain='cartoon' is invalid: allowed one of 'art', 'photo'"),
    ("a source not in the data", {"art": even(), "photo": even(), "sketch": even()},
     ["data.source_domains=[art, cartoon]"], "'cartoon' is not one"),
    ("shots above the smallest target class", {"art": even(), "photo": {"c0": 6, "c1": 3, "c2": 6},
                                               "sketch": even()},
     ["data.shots=4"], "data.shots=4 is invalid: allowed at most 3: class 'c1' of the target 'photo' has 3"),
    ("a class in a source, not the target", {"art": even(classes=4), "photo": even(), "sketch": even()},
     [], "class 'c3' has images in 'art' but none in 'photo'"),
    ("a class in the target, not a source",
     {"art": even(), "photo": even(classes=4), "sketch": even(classes=4)},
     [], "class 'c3' has images in 'photo' but none in 'art'"),
    ("no target image left to test on", {"art": even(), "photo": even(2), "sketch": even()},
     ["data.shots=2"], "data.shots=2 is invalid: allowed fewer than the images of every class of the target"),
    ("an empty domain folder", {"art": even(), "photo": even(), "sketch": {"c0": 0}}, [],
     "'sketch' has none (folder"),
]


@pytest.mark.parametrize("case, spec, overrides, named", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_data_is_refused_before_training(case, spec, overrides, named, tmp_path, nothing_starts):
    root = write_domains(tmp_path / "d", spec)
    cfg = folder_cfg(root, *overrides)
    with pytest.raises(ValueError) as e:
        train.check_trial(cfg)
    assert named in str(e.value) and "is invalid: allowed" in str(e.value)


def test_bad_inputs_through_the_command_line(tmp_path, capsys, nothing_starts):
    root = write_domains(tmp_path / "d", {"art": even(), "photo": even(), "sketch": even()})
    base = ["task=classify", "data.source=folder", f"data.path={root}", "data.target_domain=photo",
            "model.name=geomix-micro", "model.pretrained=null", "run.progress=false"]
    cases = [
        (["data.source_domains=[art, photo]"], "data.source_domains=['art', 'photo'] is invalid: allowed "
         "domains other than the target 'photo'"),
        (["data.source_domains=[art]", "data.target_domain=clipart"], "data.target_domain='clipart'"),
        (["data.source_domains=[art]", "data.shots=9"], "data.shots=9 is invalid: allowed at most 6"),
        (["data.source_domains=[art]", "optim.batch_size=64"], "optim.batch_size=64 is invalid: allowed at "
         "most the training set size 18"),
    ]
    for overrides, named in cases:
        assert train.main(base + overrides) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and named in err, err
    # the embedded data: more shots than the smallest target class has
    assert train.main(SHAPES[:3] + ["data.train_size=128", "data.shots=3"]) == 2
    assert "data.shots=3 is invalid: allowed at most" in capsys.readouterr().err
