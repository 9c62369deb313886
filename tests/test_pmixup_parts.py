"""P-Mixup's FSMDT building blocks: the cross-domain mixes and their loss, labelled domains, k-shot splits."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from geomix.checks import ConfigError
from geomix.config import LambdaConfig
from geomix.data.domains import csv_domains, folder_domains, shapes_domain
from geomix.data.fsmdt import (
    DomainSubset,
    LabelledSet,
    check_fsmdt,
    few_shot_indices,
    prompts_for,
    shapes_fsmdt,
    split_target,
)
from geomix.losses.crossmix import (
    FSMDTLoss,
    feature_mix,
    image_mix,
    init_head_from_text,
    pair_batches,
    soft_cross_entropy,
)
from geomix.mixing import build_lambda_policy

K = 3  # classes of the hand-made batches


# ----------------------------------------------------------------------------------------------------------
# The mixes, by hand


def test_image_mix_and_soft_labels_by_hand():
    x_s = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    x_t = torch.tensor([5.0, -2.0]).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    x, y = image_mix(x_s, x_t, torch.tensor([0, 2]), torch.tensor([1, 2]), 0.25, K)
    # 0.25·1 + 0.75·5 = 4, 0.25·2 + 0.75·(-2) = -1
    assert torch.equal(x, torch.tensor([4.0, -1.0]).view(2, 1, 1, 1).expand(2, 3, 2, 2))
    assert torch.equal(y, torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.0, 1.0]]))


def test_feature_mix_by_hand_and_the_two_ends():
    g_s, g_t = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 4.0], [2.0, 2.0]])
    y_s, y_t = torch.tensor([1, 0]), torch.tensor([2, 0])
    g, y = feature_mix(g_s, g_t, y_s, y_t, torch.tensor(0.5), K)
    assert torch.equal(g, torch.tensor([[0.5, 2.0], [1.0, 2.0]]))
    assert torch.equal(y, torch.tensor([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]]))
    assert torch.equal(feature_mix(g_s, g_t, y_s, y_t, 1.0, K)[0], g_s)  # λ = 1: the source
    assert torch.equal(feature_mix(g_s, g_t, y_s, y_t, 0.0, K)[1], F.one_hot(y_t, K).float())  # λ = 0: target


def test_soft_cross_entropy_by_hand_and_against_hard_ce():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax (1/4, 3/4)
    got = soft_cross_entropy(logits, torch.tensor([[0.5, 0.5]]))
    assert got.item() == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)))
    z, y = torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 3, 1, 1, 2])
    assert torch.allclose(soft_cross_entropy(z, F.one_hot(y, 4).float()), F.cross_entropy(z, y))


@pytest.mark.parametrize("lam", [1.5, -0.1, float("nan"), torch.tensor([0.2, 0.3])])
def test_mix_refuses_a_bad_lambda(lam):
    with pytest.raises(ValueError, match="lam"):
        feature_mix(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([0, 1]), torch.tensor([0, 1]), lam, K)


def test_mix_refuses_unpaired_rows():
    with pytest.raises(ValueError, match=r"g_t.shape=\(3, 2\)"):
        feature_mix(torch.zeros(2, 2), torch.zeros(3, 2), torch.tensor([0, 1]), torch.tensor([0, 1]), 0.5, K)


# ----------------------------------------------------------------------------------------------------------
# Pairing


def test_same_class_pairing_pairs_same_classes_and_falls_back():
    y_s = torch.tensor([0, 1, 2, 1, 0, 3, 2, 0])
    y_t = torch.tensor([2, 0, 1, 0, 2, 1])  # no class 3
    g = torch.Generator().manual_seed(0)
    src, tgt = pair_batches(y_s, y_t, how="same_class", generator=g)
    assert torch.equal(src, torch.arange(8))
    has = y_s != 3
    assert torch.equal(y_t[tgt][has], y_s[has])
    assert 0 <= int(tgt[5]) < len(y_t)  # the fallback: any target row
    # Both pairings draw the same n_s uniforms, so the generator's stream does not depend on the choice.
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    pair_batches(y_s, y_t, how="random", generator=g1)
    pair_batches(y_s, y_t, how="same_class", generator=g2)
    assert torch.equal(g1.get_state(), g2.get_state())
    again = pair_batches(y_s, y_t, how="same_class", generator=torch.Generator().manual_seed(0))[1]
    assert torch.equal(again, tgt)


def test_random_pairing_covers_the_target_batch():
    g = torch.Generator().manual_seed(0)
    _, tgt = pair_batches(torch.zeros(400, dtype=torch.long), torch.arange(4), how="random", generator=g)
    assert set(tgt.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="pairing='nearest'"):
        pair_batches(torch.zeros(2), torch.zeros(2), how="nearest", generator=g)


# ----------------------------------------------------------------------------------------------------------
# FSMDTLoss


class _Spy(nn.Module):
    """A fixed linear encoder that records its inputs."""

    def __init__(self, d_in: int, d: int = 4) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(d, d_in, generator=torch.Generator().manual_seed(3)))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.lin(x.flatten(1))


def _batch(step: int, n_s: int = 6):
    """Source rows of classes 0..K-1, a target batch with exactly one row per class (so 'same_class'
    pairing is deterministic: source row i pairs with target row y_s[i])."""
    g = torch.Generator().manual_seed(100 + step)
    x_s, x_t = torch.randn(n_s, 3, 2, 2, generator=g), torch.randn(K, 3, 2, 2, generator=g)
    y_s = torch.arange(n_s) % K
    return x_s, y_s, x_t, torch.arange(K)


def _head() -> nn.Linear:
    head = nn.Linear(4, K)
    with torch.no_grad():
        head.weight.copy_(torch.randn(K, 4, generator=torch.Generator().manual_seed(4)))
        head.bias.zero_()
    return head


def test_one_lambda_at_both_levels_and_the_total_by_hand():
    enc, head = _Spy(12), _head()
    heard: list[torch.Tensor] = []
    head.register_forward_hook(lambda m, inp, out: heard.append(inp[0].detach().clone()))
    loss = FSMDTLoss(LambdaConfig(policy="beta", alpha=1.0), num_classes=K, pairing="same_class",
                     w_clean_src=1.0, w_clean_tgt=0.5, w_img=2.0, w_feat=0.25, generator_seed=7)
    x_s, y_s, x_t, y_t = _batch(0)
    total, parts = loss(enc, head, x_s, y_s, x_t, y_t, step=0, total_steps=10)
    lam = float(parts["lam"])
    assert 0.0 < lam < 1.0
    tgt = y_s  # one target row per class
    # Image level: the encoder saw [x_s, x_t, λ·x_s + (1-λ)·x_t[π]].
    x_mix = lam * x_s + (1 - lam) * x_t[tgt]
    assert torch.allclose(enc.seen[0][-len(x_s):], x_mix, atol=1e-6)
    # Feature level: the head saw λ·G(x_s) + (1-λ)·G(x_t)[π], with the same λ.
    with torch.no_grad():
        g_s, g_t, g_img = enc.lin(x_s.flatten(1)), enc.lin(x_t.flatten(1)), enc.lin(x_mix.flatten(1))
    g_mix = lam * g_s + (1 - lam) * g_t[tgt]
    assert torch.allclose(heard[-1], g_mix, atol=1e-5)
    y_soft = lam * F.one_hot(y_s, K) + (1 - lam) * F.one_hot(y_t[tgt], K)  # here both are y_s
    with torch.no_grad():
        expect = {
            "ce_src": F.cross_entropy(head(g_s), y_s),
            "ce_tgt": F.cross_entropy(head(g_t), y_t),
            "mix_img": soft_cross_entropy(head(g_img), y_soft.float()),
            "mix_feat": soft_cross_entropy(head(g_mix), y_soft.float()),
        }
    for k, v in expect.items():
        assert float(parts[k]) == pytest.approx(float(v), rel=1e-5), k
    want = expect["ce_src"] + 0.5 * expect["ce_tgt"] + 2.0 * expect["mix_img"] + 0.25 * expect["mix_feat"]
    assert float(total.detach()) == pytest.approx(float(want), rel=1e-5)
    assert float(loss.pair_same) == 1.0
    total.backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()


def test_a_level_with_weight_zero_is_not_computed():
    enc = _Spy(12)
    loss = FSMDTLoss(LambdaConfig(policy="fixed", value=0.3), num_classes=K, w_img=0.0)
    x_s, y_s, x_t, y_t = _batch(0)
    _, parts = loss(enc, _head(), x_s, y_s, x_t, y_t, step=0, total_steps=1)
    assert "mix_img" not in parts and "mix_feat" in parts
    assert enc.seen[0].shape[0] == len(x_s) + len(x_t)  # no mixed images were encoded
    assert float(parts["lam"]) == pytest.approx(0.3)


def test_progressive_lambda_through_the_classification_path_matches_the_policy_driven_directly():
    cfg, seed, steps = LambdaConfig(policy="progressive", temperature=0.5, sigma=0.1), 11, 8
    enc, head = _Spy(12), _head()
    loss = FSMDTLoss(cfg, num_classes=K, pairing="same_class", generator_seed=seed)
    twin, gen = build_lambda_policy(cfg, seed=seed + 1), torch.Generator().manual_seed(seed)
    got, want = [], []
    for step in range(steps):
        x_s, y_s, x_t, y_t = _batch(step)
        _, parts = loss(enc, head, x_s, y_s, x_t, y_t, step=step, total_steps=steps)
        # The documented draw order: the pairs' n_s uniforms, then λ.
        torch.rand(len(y_s), generator=gen, dtype=torch.float64)
        lam = twin.sample(gen, step=step, total_steps=steps)
        got.append({k: float(parts["lam" if k == "lam" else "lam_" + k.removeprefix("lam_")])
                    for k in ("lam", "lam_base", "q", "d_a", "d_b")})
        want.append(twin.stats())
        # The observation: G of the mixed images against the source and paired target features.
        with torch.no_grad():
            x_mix = lam * x_s + (1 - lam) * x_t[y_s]
            twin.observe(enc.lin(x_mix.flatten(1)), enc.lin(x_s.flatten(1)), enc.lin(x_t.flatten(1))[y_s])
    for g, w in zip(got, want):
        assert g == pytest.approx(w, rel=1e-5, abs=1e-6)
    base = [g["lam_base"] for g in got]
    assert base[0] < base[-1]  # from the target (λ_0 = 0) toward the source
    assert len({round(b, 6) for b in base}) == steps  # it moves every step
    assert got[0]["d_a"] == got[0]["d_b"] == 1.0  # no observation before the first step


def test_resume_gives_the_same_next_lambda():
    cfg = LambdaConfig(policy="progressive")
    a, enc, head = FSMDTLoss(cfg, num_classes=K, generator_seed=2), _Spy(12), _head()
    for step in range(3):
        a(enc, head, *_batch(step), step=step, total_steps=6)
    b = FSMDTLoss(cfg, num_classes=K, generator_seed=99)
    b.load_state_dict(a.state_dict())
    pa = a(enc, head, *_batch(3), step=3, total_steps=6)[1]
    pb = b(enc, head, *_batch(3), step=3, total_steps=6)[1]
    assert float(pa["lam"]) == float(pb["lam"]) and float(pa["lam_q"]) == float(pb["lam_q"])


def test_loss_refuses_bad_settings():
    with pytest.raises(ValueError, match="w_img=-1"):
        FSMDTLoss(LambdaConfig(), num_classes=K, w_img=-1.0)
    with pytest.raises(ValueError, match="pairing='class'"):
        FSMDTLoss(LambdaConfig(), num_classes=K, pairing="class")


def test_head_from_text_is_the_zero_shot_classifier():
    t = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    head = init_head_from_text(t, torch.tensor(100.0))
    assert torch.allclose(head.weight, torch.tensor([[60.0, 80.0], [0.0, -100.0]]))
    assert torch.equal(head.bias, torch.zeros(2))
    g = F.normalize(torch.tensor([[1.0, 1.0]]), dim=-1)
    assert torch.allclose(head(g), 100.0 * g @ F.normalize(t, dim=-1).T)
    with pytest.raises(ValueError, match="logit_scale=0"):
        init_head_from_text(t, 0.0)


# ----------------------------------------------------------------------------------------------------------
# k-shot sampling and the embedded FSMDT split


def test_few_shot_indices_per_class_seeded_and_nested():
    labels = [i % 4 for i in range(40)]
    five = few_shot_indices(labels, 5, seed=0)
    assert Counter(labels[i] for i in five) == {0: 5, 1: 5, 2: 5, 3: 5}
    assert few_shot_indices(labels, 5, seed=0) == five
    assert few_shot_indices(labels, 5, seed=1) != five
    assert set(few_shot_indices(labels, 1, seed=0)) <= set(five)
    with pytest.raises(ValueError, match=r"k=11 is invalid: allowed at most 10: class 0 has 10 images"):
        few_shot_indices(labels, 11, seed=0)
    with pytest.raises(ValueError, match="class 7 has 0 images"):
        few_shot_indices(labels, 1, seed=0, classes=[0, 7])


def _digest(img) -> str:
    return hashlib.blake2b(np.asarray(img).tobytes(), digest_size=16).hexdigest()


def test_shapes_fsmdt_shots_from_train_evaluation_on_test_disjoint():
    data = shapes_fsmdt("dark", ["flat", "outline"], shots=2, seed=0, source_size=300, pool_size=300,
                        test_size=60, image_size=16)
    assert sorted(data.sources) == ["flat", "outline"] and len(data.class_names) == 30
    assert Counter(data.target_shots.labels) == dict.fromkeys(range(30), 2)
    assert data.target_shots.source.split == "train" and data.target_test.split == "test"
    assert data.target_shots.domain == data.target_test.domain == "dark"
    shots = {_digest(data.target_shots.image(i)) for i in range(len(data.target_shots))}
    test = {_digest(data.target_test.image(i)) for i in range(len(data.target_test))}
    assert len(shots) == 60 and not shots & test
    again = shapes_fsmdt("dark", ["flat", "outline"], shots=2, seed=0, source_size=300, pool_size=300,
                         test_size=60, image_size=16)
    assert again.target_shots.indices == data.target_shots.indices
    assert prompts_for(data.target_shots)[0] == "a photo of a red circle."
    x, y = LabelledSet(data.target_shots, 16)[0]
    assert x.shape == (3, 16, 16) and y == data.target_shots.labels[0]


def test_split_target_for_file_data_evaluates_on_the_rest():
    class Fake:
        domain, class_names = "t", ["a", "b"]
        labels = [0, 1, 0, 1, 0, 1]

        def __len__(self):
            return 6

        def image(self, i):
            return np.zeros((2, 2, 3), np.uint8)

    shots, rest = split_target(Fake(), 2, seed=0)
    assert isinstance(rest, DomainSubset) and len(shots) == 4 and len(rest) == 2
    assert not set(shots.indices) & set(rest.indices)


# ----------------------------------------------------------------------------------------------------------
# Files


def _png(path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(path)


def _tree(root, spec: dict[str, dict[str, int]]) -> None:
    for dom, classes in spec.items():
        (root / dom).mkdir(parents=True, exist_ok=True)
        for cls, n in classes.items():
            (root / dom / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _png(root / dom / cls / f"{i}.png", 10 * i)


def test_folder_domains_sorted_classes_same_index_everywhere(tmp_path):
    _tree(tmp_path, {"art": {"dog": 2, "cat": 3}, "photo": {"cat": 1, "dog": 2, "Zebra": 1}})
    (tmp_path / "photo" / "dog" / "notes.txt").write_text("not an image")
    doms = folder_domains(tmp_path)
    assert sorted(doms) == ["art", "photo"]
    assert doms["art"].class_names == doms["photo"].class_names == ["Zebra", "cat", "dog"]
    assert Counter(doms["art"].labels) == {1: 3, 2: 2}
    assert Counter(doms["photo"].labels) == {0: 1, 1: 1, 2: 2}
    assert doms["photo"].image(0).size == (4, 4)
    with pytest.raises(ValueError, match=r"data.source_domains=\['photo'\] is invalid: .*class 'Zebra' has "
                                         r"images in 'photo' but none in 'art'"):
        check_fsmdt(doms, "art", ["photo"], 1)


def test_folder_domains_name_a_bad_file(tmp_path):
    _tree(tmp_path, {"art": {"cat": 1}})
    (tmp_path / "art" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        folder_domains(tmp_path)
    assert len(folder_domains(tmp_path, skip_bad=True)["art"]) == 1
    _png(tmp_path / "art" / "loose.png")
    with pytest.raises(ValueError, match="loose.png: an image directly in the domain folder"):
        folder_domains(tmp_path, skip_bad=True)
    with pytest.raises(ValueError, match="root=.* is invalid"):
        folder_domains(tmp_path / "missing")


def test_empty_domain_folder_is_named(tmp_path):
    _tree(tmp_path, {"art": {"cat": 2}, "photo": {"cat": 2}})
    (tmp_path / "sketch").mkdir()
    doms = folder_domains(tmp_path)
    check_fsmdt(doms, "art", ["photo"], 2)  # the empty domain is not part of this task
    with pytest.raises(ValueError, match=r"data.source_domains=\['photo', 'sketch'\] is invalid: .*'sketch' "
                                         r"has none \(folder '.*sketch' is empty\)"):
        check_fsmdt(doms, "art", ["photo", "sketch"], 1)
    with pytest.raises(ValueError, match="data.target_domain='sketch' is invalid: .*sketch' is empty"):
        check_fsmdt(doms, "sketch", ["art"], 1)


def test_csv_domains_custom_columns_and_separator(tmp_path):
    for name in ("a.png", "b.png", "c.png", "d.png"):
        _png(tmp_path / "img" / name)
    rows = ["file\tcls\tsite", "img/a.png\t10\treal", "img/b.png\t2\treal", "img/c.png\t10\tclipart",
            "img/d.png\t2\tclipart"]
    (tmp_path / "d.tsv").write_text("\n".join(rows) + "\n")
    doms = csv_domains(tmp_path / "d.tsv", img_key="file", label_key="cls", domain_key="site",
                       separator="tab")
    assert sorted(doms) == ["clipart", "real"]
    assert doms["real"].class_names == ["2", "10"]  # numeric labels sort numerically
    assert doms["real"].labels == [1, 0] and doms["clipart"].labels == [1, 0]
    check_fsmdt(doms, "real", ["clipart"], 1)
    with pytest.raises(ValueError, match="label_key='label' is not a column"):
        csv_domains(tmp_path / "d.tsv", img_key="file", domain_key="site", separator="tab")
    (tmp_path / "bad.csv").write_text("path,label,domain\nimg/a.png,x,real\nimg/zz.png,y,real\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: image file .*zz.png' does not exist"):
        csv_domains(tmp_path / "bad.csv")
    (tmp_path / "dup.csv").write_text("path,label,domain\nimg/a.png,x,real\nimg/a.png,y,clipart\n")
    with pytest.raises(ValueError, match=r"dup.csv:3: image 'img/a.png' is also on .*dup.csv:2"):
        csv_domains(tmp_path / "dup.csv")


# ----------------------------------------------------------------------------------------------------------
# check_fsmdt: every bad input named


class _Dom:
    def __init__(self, name, labels, classes=("a", "b", "c")):
        self.domain, self._labels, self._classes = name, list(labels), list(classes)

    def __len__(self):
        return len(self._labels)

    def image(self, i):
        return np.zeros((2, 2, 3), np.uint8)

    @property
    def labels(self):
        return self._labels

    @property
    def class_names(self):
        return self._classes


def _doms():
    return {"src1": _Dom("src1", [0, 1, 2] * 4), "src2": _Dom("src2", [0, 1, 2] * 2),
            "tgt": _Dom("tgt", [0, 0, 0, 1, 1, 2, 2, 2]), "odd": _Dom("odd", [0, 1]),
            "other": _Dom("other", [0, 1, 2], classes=("a", "b", "z"))}


@pytest.mark.parametrize(
    ("target", "sources", "shots", "match"),
    [
        ("nope", ["src1"], 1, r"data.target_domain='nope' is invalid: allowed one of 'odd', 'other'"),
        ("tgt", [], 1, r"data.source_domains=\[\] is invalid: allowed a non-empty list"),
        ("tgt", "src1", 1, r"data.source_domains='src1' is invalid: allowed a non-empty list"),
        ("tgt", ["src1", "tgt"], 1, r"data.source_domains=\['src1', 'tgt'\] is invalid: allowed domains "
                                    r"other than the target 'tgt'"),
        ("tgt", ["src1", "nope"], 1, r"data.source_domains=\['src1', 'nope'\] is invalid: .*'nope' is not "
                                     r"one"),
        ("tgt", ["src1", "src1"], 1, r"'src1' is given 2 times"),
        ("tgt", ["other"], 1, r"data.source_domains=\['other'\] is invalid: allowed domains with the class "
                              r"list"),
        ("tgt", ["src1", "odd"], 1, r"data.source_domains=\['src1', 'odd'\] is invalid: .*class 'c' has "
                                    r"images in 'tgt' but none in 'odd'"),
        ("tgt", ["src1"], 3, r"data.shots=3 is invalid: allowed at most 2: class 'b' of the target 'tgt' has "
                             r"2 images"),
        ("tgt", ["src1"], 0, r"data.shots=0 is invalid: allowed an integer >= 1"),
        ("tgt", ["src1"], 1.5, r"data.shots=1.5 is invalid"),
    ],
)
def test_check_fsmdt_names_every_bad_input(target, sources, shots, match):
    with pytest.raises(ConfigError, match=match):
        check_fsmdt(_doms(), target, sources, shots)


def test_check_fsmdt_accepts_a_good_task_and_takes_the_key_prefix():
    check_fsmdt(_doms(), "tgt", ["src1", "src2"], 2)
    with pytest.raises(ValueError, match=r"task.shots=5"):
        check_fsmdt(_doms(), "tgt", ["src1"], 5, where="task")


def test_shapes_domain_is_one_style_with_30_classes():
    d = shapes_domain("flat", "val", 5, seed=0, image_size=16)
    assert d.domain == "flat" and len(d) == 5 and len(d.class_names) == 30
    assert d.class_names[0] == "red circle" and all(0 <= y < 30 for y in d.labels)
    with pytest.raises(ValueError, match="style='night'"):
        shapes_domain("night", "train", 5)
