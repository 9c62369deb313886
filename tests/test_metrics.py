"""Tests for geomix.metrics: known answers, independent loop references, blocking, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

import geomix.metrics as M
from geomix import registry
from geomix.metrics import inputs


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _multi_caption_set(n: int, per_image: int, d: int, noise: float, seed: int):
    """n images, ``per_image`` noisy captions each, captions shuffled so txt_to_img is not sorted."""
    g = torch.Generator().manual_seed(seed)
    img = _unit(torch.randn(n, d, generator=g, dtype=torch.float64))
    t2i = torch.arange(n).repeat_interleave(per_image)
    t2i = t2i[torch.randperm(t2i.numel(), generator=g)]
    txt = _unit(img[t2i] + noise * torch.randn(t2i.numel(), d, generator=g, dtype=torch.float64))
    return img, txt, t2i


# ----------------------------------------------------------------------------------------------------------
# independent references (loops over the definitions)


def _ref_recall(img, txt, t2i, ks):
    img, txt = _unit(img.double()), _unit(txt.double())
    s = (img @ txt.T).tolist()
    n, m = len(s), len(s[0])
    t2i = t2i.tolist()
    out = {}
    i2t_ranks = []
    for i in range(n):
        own = [j for j in range(m) if t2i[j] == i]
        best = max(s[i][j] for j in own)
        i2t_ranks.append(sum(1 for j in range(m) if t2i[j] != i and s[i][j] >= best))
    t2i_ranks = []
    for j in range(m):
        g = t2i[j]
        t2i_ranks.append(sum(1 for k in range(n) if k != g and s[k][j] >= s[g][j]))
    for k in ks:
        out[f"r{k}_i2t"] = 100.0 * sum(r < k for r in i2t_ranks) / n
        out[f"r{k}_t2i"] = 100.0 * sum(r < k for r in t2i_ranks) / m
    return out


def _sqd(a, b):
    return float(((a - b) ** 2).sum())


def _ref_align(img, txt):
    img, txt = _unit(img.double()), _unit(txt.double())
    n = img.shape[0]
    terms = [_sqd(img[i], txt[i]) - min(_sqd(img[i], txt[k]) for k in range(n) if k != i) for i in range(n)]
    return -sum(terms) / n


def _ref_unif(img, txt):
    img, txt = _unit(img.double()), _unit(txt.double())
    vals = [math.exp(-2 * _sqd(a, b)) for a in img for b in txt]
    return -math.log(sum(vals) / len(vals))


def _ref_within(x, t=2.0):
    x = _unit(x.double())
    n = x.shape[0]
    vals = [math.exp(-t * _sqd(x[i], x[j])) for i in range(n) for j in range(n) if i != j]
    return math.log(sum(vals) / len(vals))


def _ref_ece_conf(conf, correct, n_bins):
    n = len(conf)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        idx = [i for i in range(n) if (lo < conf[i] <= hi) or (b == 0 and conf[i] == 0)]
        if idx:
            acc = sum(float(correct[i]) for i in idx) / len(idx)
            cf = sum(float(conf[i]) for i in idx) / len(idx)
            total += len(idx) / n * abs(acc - cf)
    return 100.0 * total


def _ref_ece(probs, labels, n_bins):
    conf, pred = probs.double().max(dim=1)
    return _ref_ece_conf(conf, pred == labels, n_bins)


# ----------------------------------------------------------------------------------------------------------
# retrieval


def test_perfect_retrieval_one_caption_per_image():
    img = _unit(_randn(50, 32, seed=0))
    out = M.retrieval_recall(img, img.clone())
    assert set(out) == {f"r{k}_{d}" for k in (1, 5, 10) for d in ("i2t", "t2i")}
    assert all(v == 100.0 for v in out.values())


def test_perfect_retrieval_five_captions_per_image():
    img, txt, t2i = _multi_caption_set(40, 5, 64, noise=0.01, seed=1)
    out = M.retrieval_recall(img, txt, ks=(1, 5, 10), txt_to_img=t2i)
    assert all(v == 100.0 for v in out.values()), out


def test_random_embeddings_recall_is_chance():
    # Each query's rank is ~uniform on {0..n-1}, so hits ~ Binomial(n, K/n) per seed and direction. The mean
    # over S seeds x 2 directions has sd 100*sqrt(p(1-p)/(2nS)); allow 5 sd (a false failure is ~1e-6).
    n, d, seeds, ks = 500, 64, 6, (1, 10, 50, 250)
    acc = {k: 0.0 for k in ks}
    for seed in range(seeds):
        out = M.retrieval_recall(_randn(n, d, seed=2 * seed), _randn(n, d, seed=2 * seed + 1), ks=ks)
        for k in ks:
            acc[k] += (out[f"r{k}_i2t"] + out[f"r{k}_t2i"]) / (2 * seeds)
    for k in ks:
        p = k / n
        sd = 100 * math.sqrt(p * (1 - p) / (2 * n * seeds))
        assert abs(acc[k] - 100 * p) < 5 * sd + 1e-9, (k, acc[k], 100 * p, sd)


def test_image_to_text_counts_any_caption_and_ties_are_pessimistic():
    # Hand-built: image 0's FIRST caption loses to a wrong one but its second caption is exact.
    img = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    txt = torch.tensor(
        [
            [0.6, 0.8, 0],  # img0, closer to img1
            [1.0, 0, 0],  # img0, exact
            [0, 0.6, 0.8],  # img1, closer to img2
            [0.8, 0, 0.6],  # img1, cosine 0 to img1
            [0, 0, 1.0],  # img2, exact
            [0, 1.0, 0],  # img2, cosine 0 to img2, ties with img0 at 0 and loses to img1
        ]
    )
    t2i = torch.tensor([0, 0, 1, 1, 2, 2])
    out = M.retrieval_recall(img, txt, ks=(1, 2, 3), txt_to_img=t2i)
    # i2t ranks: img0 -> 0 (caption 1), img1 -> 2 (captions 0 and 5 beat its best 0.6), img2 -> 0
    assert out["r1_i2t"] == pytest.approx(200 / 3)
    assert out["r2_i2t"] == pytest.approx(200 / 3)
    assert out["r3_i2t"] == 100.0
    # t2i ranks: 1, 0, 1, 2, 0, 2 (caption 5: img1 wins and img0 TIES -> rank 2, pessimistic)
    assert out["r1_t2i"] == pytest.approx(100 * 2 / 6)
    assert out["r2_t2i"] == pytest.approx(100 * 4 / 6)
    assert out["r3_t2i"] == 100.0
    assert out == pytest.approx(_ref_recall(img, txt, t2i, (1, 2, 3)))
    # a first-caption-only rule would rank caption 0 of image 0 behind caption 3 (0.8 > 0.6) and miss; the
    # any-caption result must also not depend on where the good caption sits in txt
    order = torch.tensor([1, 0, 3, 2, 5, 4])
    assert M.retrieval_recall(img, txt[order], ks=(1, 2, 3), txt_to_img=t2i[order]) == out


def test_perfect_tie_does_not_inflate_recall_and_large_k_is_clamped():
    n = 20
    img = torch.zeros(n, 4)
    img[:, 0] = 1.0  # every image and caption identical: every score ties exactly
    out = M.retrieval_recall(img, img.clone(), ks=(1, 5, 10, 19, 20, 50))
    for k in (1, 5, 10, 19):
        assert out[f"r{k}_i2t"] == 0.0 and out[f"r{k}_t2i"] == 0.0
    for k in (20, 50):  # K >= number of candidates: every query hits
        assert out[f"r{k}_i2t"] == 100.0 and out[f"r{k}_t2i"] == 100.0


def test_retrieval_matches_loop_reference_with_ties_and_small_blocks(monkeypatch):
    img, txt, t2i = _multi_caption_set(30, 3, 8, noise=0.8, seed=3)
    # quantise so that many scores tie exactly, and duplicate a caption across two images
    img, txt = torch.round(img * 2) / 2, torch.round(txt * 2) / 2
    img[img.norm(dim=1) == 0, 0] = 1.0
    txt[txt.norm(dim=1) == 0, 0] = 1.0
    txt[t2i == 1] = txt[t2i == 0][0]
    ks = (1, 3, 5, 10, 100)
    ref = _ref_recall(img, txt, t2i, ks)
    assert M.retrieval_recall(img, txt, ks=ks, txt_to_img=t2i) == pytest.approx(ref)
    monkeypatch.setattr(inputs, "_BLOCK_ELEMS", 7)  # 1-row blocks for i2t and t2i
    assert inputs._block(len(txt)) == 1 and inputs._block(len(img)) == 1
    assert M.retrieval_recall(img, txt, ks=ks, txt_to_img=t2i) == pytest.approx(ref)


# ----------------------------------------------------------------------------------------------------------
# alignment, uniformity, modality gap


def test_alignment_hand_computed():
    img = torch.tensor([[1.0, 0], [0, 1.0], [-1.0, 0]], dtype=torch.float64)
    txt = torch.tensor([[1.0, 0], [0.6, 0.8], [0, -1.0]], dtype=torch.float64)
    # terms ||I_i-T_i||^2 - min_k ||I_i-T_k||^2: 0-0.8, 0.4-2, 2-3.2 -> mean -1.2
    assert M.alignment(img, txt) == pytest.approx(1.2, abs=1e-12)
    assert M.alignment(img, txt) == pytest.approx(_ref_align(img, txt), abs=1e-12)


def test_uniformity_hand_computed_and_reference():
    e = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    # squared distances 0, 4, 4, 0
    assert M.uniformity(e, e) == pytest.approx(-math.log((2 + 2 * math.exp(-8)) / 4), abs=1e-12)
    assert M.within_uniformity(e) == pytest.approx(-8.0, abs=1e-12)  # only the antipodal pair
    same = torch.ones(5, 3, dtype=torch.float64)
    assert M.uniformity(same, same) == pytest.approx(0.0, abs=1e-12)
    assert M.within_uniformity(same) == pytest.approx(0.0, abs=1e-12)
    img, txt = _randn(12, 5, seed=4), _randn(9, 5, seed=5)
    assert M.uniformity(img, txt) == pytest.approx(_ref_unif(img, txt), abs=1e-10)
    assert M.within_uniformity(img) == pytest.approx(_ref_within(img), abs=1e-10)
    assert M.within_uniformity(img, t=0.5) == pytest.approx(_ref_within(img, 0.5), abs=1e-10)


def test_modality_gap_hand_computed_and_reference():
    a = torch.tensor([[1.0, 0], [0, 1.0]])
    swapped = M.modality_gap(a, a.flip(0))
    assert swapped == pytest.approx({"gap": 0.0, "cos_pos": 0.0, "cos_neg": 1.0}, abs=1e-7)
    apart = M.modality_gap(torch.tensor([[1.0, 0], [1.0, 0]]), torch.tensor([[0, 1.0], [0, 1.0]]))
    assert apart == pytest.approx({"gap": math.sqrt(2), "cos_pos": 0.0, "cos_neg": 0.0}, abs=1e-7)
    img, txt = _randn(15, 6, seed=6), _randn(15, 6, seed=7)
    cos = _unit(img) @ _unit(txt).T
    off = ~torch.eye(15, dtype=torch.bool)
    ref = {
        "gap": float((_unit(img).mean(0) - _unit(txt).mean(0)).norm()),
        "cos_pos": float(cos.diag().mean()),
        "cos_neg": float(cos[off].mean()),
    }
    assert M.modality_gap(img, txt) == pytest.approx(ref, abs=1e-12)


def test_pair_metrics_are_blocking_invariant(monkeypatch):
    img, txt = _randn(23, 7, seed=8), _randn(23, 7, seed=9)

    def run():
        return (M.alignment(img, txt), M.uniformity(img, txt), M.within_uniformity(txt))

    full = run()
    monkeypatch.setattr(inputs, "_BLOCK_ELEMS", 50)  # blocks of 2 rows, last one partial
    assert inputs._block(23) == 2
    assert run() == pytest.approx(full, abs=1e-12)


def test_half_precision_input_is_upcast():
    img, txt = _randn(40, 16, seed=10, dtype=torch.float32), _randn(40, 16, seed=11, dtype=torch.float32)
    ref = M.evaluate_embeddings(img, txt)
    half = M.evaluate_embeddings(img.half(), txt.half())
    for k in ("align", "unif", "unif_img", "unif_txt", "gap", "cos_pos", "cos_neg"):
        assert half[k] == pytest.approx(ref[k], abs=5e-3), k


# ----------------------------------------------------------------------------------------------------------
# calibration and zero-shot


def _binary_probs(conf: list[float], correct: list[bool]):
    probs = torch.tensor([[c, 1 - c] for c in conf])
    labels = torch.tensor([0 if ok else 1 for ok in correct])
    return probs, labels


def test_ece_known_value_single_bin():
    probs = torch.tensor([[0.8, 0.1, 0.1]] * 10)
    labels = torch.tensor([0] * 6 + [1] * 4)  # confidence 0.8, accuracy 0.6
    assert M.expected_calibration_error(probs, labels) == pytest.approx(20.0, abs=1e-4)


def test_ece_known_value_two_bins():
    # 10 at 0.9 with 5 right (gap 0.4) and 20 at 0.6 with 16 right (gap 0.2): (10*0.4 + 20*0.2)/30
    probs, labels = _binary_probs(
        [0.9] * 10 + [0.6] * 20, [True] * 5 + [False] * 5 + [True] * 16 + [False] * 4
    )
    assert M.expected_calibration_error(probs, labels) == pytest.approx(800 / 30, abs=1e-4)
    # one bin pools both groups: |acc 21/30 - conf 0.7| = 0
    assert M.expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(0.0, abs=1e-4)


def test_ece_perfectly_calibrated_is_zero():
    conf, correct = [], []
    for c, right in ((0.55, 11), (0.7, 14), (0.9, 18), (1.0, 20)):
        conf += [c] * 20
        correct += [True] * right + [False] * (20 - right)
    probs, labels = _binary_probs(conf, correct)
    assert M.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-4)


def test_ece_random_calibrated_small_and_overconfident_large():
    g = torch.Generator().manual_seed(12)
    conf = 0.5 + 0.5 * torch.rand(20000, generator=g, dtype=torch.float64)
    right = torch.rand(20000, generator=g, dtype=torch.float64) < conf
    probs = torch.stack([conf, 1 - conf], dim=1)
    # per-bin sampling noise is ~sqrt(0.25/2700) ~ 1 %, so the ECE of a calibrated model is ~1 %
    assert M.expected_calibration_error(probs, (~right).long()) < 2.0
    right_less = torch.rand(20000, generator=g, dtype=torch.float64) < conf - 0.2
    assert M.expected_calibration_error(probs, (~right_less).long()) == pytest.approx(20.0, abs=2.0)


def test_ece_matches_loop_reference():
    g = torch.Generator().manual_seed(13)
    probs = torch.softmax(3 * torch.randn(300, 5, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 5, (300,), generator=g)
    for n_bins in (1, 7, 15):
        ref = _ref_ece(probs, labels, n_bins)
        assert M.expected_calibration_error(probs, labels, n_bins=n_bins) == pytest.approx(ref, abs=1e-9)


def test_zero_shot_known_accuracy_and_ece():
    class_txt = torch.eye(4)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    img = torch.eye(4)[[0, 1, 2, 3, 0, 1, 3, 2]]  # the last two are misclassified
    out = M.zero_shot(img, class_txt, labels)
    assert out["zs_acc"] == pytest.approx(75.0)
    # scale 100, cosines 1 vs 0: confidence e^100/(e^100+3) = 1 - 3e-43 -> ECE = |0.75 - 1| = 25 %
    assert out["ece"] == pytest.approx(25.0, abs=1e-4)
    # at scale 1 the confidence is e/(e+3) for every image
    conf = math.e / (math.e + 3)
    assert M.zero_shot(img, class_txt, labels, scale=1.0)["ece"] == pytest.approx(
        100 * abs(0.75 - conf), abs=1e-4
    )


# ----------------------------------------------------------------------------------------------------------
# evaluate_embeddings


def test_metric_names_and_directions_come_from_the_registry():
    assert M.METRIC_KEYS == registry.METRIC_KEYS == tuple(registry.METRICS)
    assert M.HIGHER_IS_BETTER == {k: registry.METRICS[k].higher for k in registry.METRIC_KEYS}
    assert tuple(M.HIGHER_IS_BETTER) == M.METRIC_KEYS
    # the directions the module doc states
    assert M.HIGHER_IS_BETTER["rsum"] is True and M.HIGHER_IS_BETTER["unif"] is True
    assert M.HIGHER_IS_BETTER["unif_img"] is False and M.HIGHER_IS_BETTER["ece"] is False
    assert M.HIGHER_IS_BETTER["gap"] is None


@pytest.mark.parametrize("five_captions", [False, True])
@pytest.mark.parametrize("with_classes", [False, True])
def test_evaluate_embeddings_returns_every_metric_key_in_registry_order(five_captions, with_classes):
    img, txt, t2i = _multi_caption_set(12, 5 if five_captions else 1, 8, noise=0.5, seed=28)
    kwargs = {}
    if with_classes:
        kwargs = {"class_txt": _randn(3, 8, seed=29), "labels": torch.arange(12) % 3}
    out = M.evaluate_embeddings(img, txt, t2i if five_captions else None, **kwargs)
    assert list(out) == list(registry.METRIC_KEYS)
    assert math.isnan(out["zs_acc"]) != with_classes


def test_evaluate_embeddings_keys_and_consistency_one_caption():
    img, txt = _randn(60, 16, seed=14), _randn(60, 16, seed=15)
    txt = _unit(_unit(img) + 1.5 * _unit(txt))
    out = M.evaluate_embeddings(img, txt)
    assert tuple(out) == M.METRIC_KEYS
    assert all(isinstance(v, float) for v in out.values())
    rec = M.retrieval_recall(img, txt)
    assert {k: out[k] for k in rec} == rec
    assert out["rsum"] == pytest.approx(sum(rec.values()))
    assert 0 < out["r1_i2t"] < 100  # a non-trivial case
    assert out["align"] == M.alignment(img, txt)
    assert out["unif"] == M.uniformity(img, txt)
    assert out["unif_img"] == M.within_uniformity(img)
    assert out["unif_txt"] == M.within_uniformity(txt)
    assert {k: out[k] for k in ("gap", "cos_pos", "cos_neg")} == M.modality_gap(img, txt)
    assert math.isnan(out["zs_acc"])
    # one caption per image: confidence = max softmax over captions at scale 100, correct = R@1 hit
    sim = 100 * (_unit(img) @ _unit(txt).T)
    conf, pred = torch.softmax(sim, dim=1).max(dim=1)
    correct = pred == torch.arange(60)  # no exact ties in continuous random data
    assert correct.double().mean().item() * 100 == pytest.approx(out["r1_i2t"])
    assert out["ece"] == pytest.approx(_ref_ece_conf(conf, correct, 15), abs=1e-9)


def test_evaluate_embeddings_five_captions_uses_first_caption_for_pairs():
    img, txt, t2i = _multi_caption_set(25, 5, 16, noise=0.3, seed=16)
    out = M.evaluate_embeddings(img, txt, t2i)
    first = torch.tensor([min(j for j in range(len(t2i)) if t2i[j] == i) for i in range(25)])
    pair = txt[first]
    rec = M.retrieval_recall(img, txt, txt_to_img=t2i)
    assert {k: out[k] for k in rec} == rec
    assert out["align"] == pytest.approx(M.alignment(img, pair), abs=1e-12)
    assert out["unif"] == pytest.approx(M.uniformity(img, pair), abs=1e-12)
    assert out["unif_txt"] == pytest.approx(M.within_uniformity(pair), abs=1e-12)
    assert out["gap"] == pytest.approx(M.modality_gap(img, pair)["gap"], abs=1e-12)


def test_retrieval_ece_sums_probability_over_an_images_captions():
    # five exact copies of each image: each caption gets ~1/5 of the softmax, the image gets ~all of it
    img = _unit(_randn(20, 32, seed=21))
    t2i = torch.arange(20).repeat(5)
    assert M.evaluate_embeddings(img, img[t2i], t2i)["ece"] == pytest.approx(0.0, abs=1e-6)
    # independent reference on noisy sets with equal and with uneven caption counts (1 to 6 per image)
    equal = _multi_caption_set(15, 3, 8, noise=1.0, seed=22)
    uneven = torch.tensor([0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5])
    uneven = uneven[torch.randperm(21, generator=torch.Generator().manual_seed(23))]
    img_u = _unit(_randn(6, 8, seed=24))
    txt_u = _unit(img_u[uneven] + _randn(21, 8, seed=25))
    for img, txt, t2i in (equal, (img_u, txt_u, uneven)):
        n = img.shape[0]
        p = torch.softmax(10.0 * (_unit(img) @ _unit(txt).T), dim=1)
        mass = torch.stack([p[:, t2i == g].sum(dim=1) for g in range(n)], dim=1)
        conf, pred = mass.max(dim=1)
        correct = pred == torch.arange(n)
        assert 0 < correct.sum() < n  # non-trivial
        ref = _ref_ece_conf(conf, correct, 15)
        assert M.evaluate_embeddings(img, txt, t2i, scale=10.0)["ece"] == pytest.approx(ref, abs=1e-9)


def test_evaluate_embeddings_collapsed_ece_and_class_metrics():
    n = 10
    img = torch.zeros(n, 3)
    img[:, 0] = 1.0
    out = M.evaluate_embeddings(img, img.clone())
    # all captions tie: no R@1 hit (pessimistic) and confidence 1/n -> ECE = |0 - 0.1| = 10 %
    assert out["r1_i2t"] == 0.0 and out["ece"] == pytest.approx(100.0 / n, abs=1e-4)
    # same with 5 captions per image: the per-image masses tie exactly, so no image counts as correct
    t2i = torch.arange(n).repeat(5)
    multi = M.evaluate_embeddings(img, img[t2i], t2i)
    assert multi["r10_i2t"] == 0.0 and multi["ece"] == pytest.approx(100.0 / n, abs=1e-4)
    img2, txt2 = _randn(8, 4, seed=17), _randn(8, 4, seed=18)
    class_txt, labels = torch.eye(4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    with_cls = M.evaluate_embeddings(img2, txt2, scale=20.0, class_txt=class_txt, labels=labels)
    zs = M.zero_shot(img2, class_txt, labels, scale=20.0)
    assert with_cls["zs_acc"] == zs["zs_acc"] and with_cls["ece"] == zs["ece"]


def test_inputs_that_require_grad_are_fine():
    img = _randn(10, 4, seed=26).requires_grad_()
    txt = _randn(10, 4, seed=27).requires_grad_()
    out = M.evaluate_embeddings(img, txt)
    assert out == M.evaluate_embeddings(img.detach(), txt.detach()) | {"zs_acc": out["zs_acc"]}
    assert img.grad is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    img, txt, t2i = _multi_caption_set(50, 5, 32, noise=0.5, seed=19)
    cpu = M.evaluate_embeddings(img, txt, t2i)
    gpu = M.evaluate_embeddings(img.cuda(), txt.cuda(), t2i.cuda())
    assert gpu == pytest.approx(cpu, abs=1e-6, nan_ok=True)


# ----------------------------------------------------------------------------------------------------------
# bad input


def _bad_cases():
    x = _unit(_randn(4, 3, seed=20))
    nan = x.clone()
    nan[2, 1] = float("nan")
    inf = x.clone()
    inf[0, 0] = float("inf")
    zero = x.clone()
    zero[1] = 0.0
    p = torch.full((4, 2), 0.5)
    y = torch.tensor([0, 1, 0, 1])
    neg = torch.tensor([[1.2, -0.2]] * 4)
    return [
        (lambda: M.retrieval_recall(x[0], x), r"img\.shape"),
        (lambda: M.retrieval_recall(x[:1], x[:1]), r"img\.shape\[0\]=1 .*>= 2 rows"),
        (lambda: M.retrieval_recall(x, x[:, :2]), r"txt\.shape\[1\]=2 .*allowed 3"),
        (lambda: M.retrieval_recall(x, x[:3]), r"txt\.shape\[0\]=3 .*one caption per image"),
        (lambda: M.retrieval_recall(nan, x), r"img rows \[2\]=non-finite"),
        (lambda: M.retrieval_recall(x, inf), r"txt rows \[0\]=non-finite"),
        (lambda: M.retrieval_recall(zero, x), r"img rows \[1\]=zero vectors"),
        (lambda: M.retrieval_recall(x.long(), x), r"img\.dtype"),
        (lambda: M.retrieval_recall(x, x, ks=(0,)), r"ks=\(0,\).*positive integers"),
        (lambda: M.retrieval_recall(x, x, ks=(5, -1)), r"ks="),
        (lambda: M.retrieval_recall(x, x, ks=()), r"ks="),
        (lambda: M.retrieval_recall(x, x, ks=5), r"ks=5"),
        (lambda: M.retrieval_recall(x, x, ks=(1.5,)), r"ks="),
        (
            lambda: M.retrieval_recall(x, x, txt_to_img=torch.tensor([0, 1, 2, 4])),
            r"txt_to_img value=4 .*\[0, 3\]",
        ),
        (lambda: M.retrieval_recall(x, x, txt_to_img=torch.tensor([0, 1, -1, 3])), r"txt_to_img value=-1"),
        (lambda: M.retrieval_recall(x, x, txt_to_img=torch.zeros(4)), r"txt_to_img\.dtype"),
        (lambda: M.retrieval_recall(x, x, txt_to_img=torch.tensor([0, 1, 2])), r"txt_to_img\.shape"),
        (
            lambda: M.retrieval_recall(x, x, txt_to_img=torch.tensor([0, 1, 1, 3])),
            r"no caption for images \[2\]",
        ),
        (lambda: M.alignment(x, x[:3]), r"txt\.shape\[0\]=3 .*paired"),
        (lambda: M.alignment(x[:1], x[:1]), r"img\.shape\[0\]"),
        (lambda: M.uniformity(x, nan), r"txt rows"),
        (lambda: M.within_uniformity(x[:1]), r"x\.shape\[0\]"),
        (lambda: M.within_uniformity(x, t=0.0), r"t=0.0 .*allowed"),
        (lambda: M.modality_gap(x, x[:2]), r"txt\.shape\[0\]"),
        (lambda: M.expected_calibration_error(p, y, n_bins=0), r"n_bins=0 .*integer >= 1"),
        (lambda: M.expected_calibration_error(p, y, n_bins=2.5), r"n_bins=2.5"),
        (lambda: M.expected_calibration_error(neg, y), r"probs=.*allowed probabilities in \[0, 1\]"),
        (lambda: M.expected_calibration_error(p * 0.9, y), r"probs row 0 sum=0.9 .*allowed 1"),
        (lambda: M.expected_calibration_error(p, torch.tensor([0, 1, 2, 1])), r"labels value=2 .*\[0, 1\]"),
        (lambda: M.expected_calibration_error(p, y.float()), r"labels\.dtype"),
        (lambda: M.expected_calibration_error(p, y[:3]), r"labels\.shape=\(3,\) .*\(4,\)"),
        (lambda: M.expected_calibration_error(p[:, 0], y), r"probs\.shape"),
        (lambda: M.expected_calibration_error(p.masked_fill(p > 0, float("nan")), y), r"probs=.*non-finite"),
        (lambda: M.zero_shot(x, x[:2], y, scale=0.0), r"scale=0.0 .*allowed"),
        (lambda: M.zero_shot(x, x[:2], y, scale=float("nan")), r"scale=nan"),
        (lambda: M.zero_shot(x, x[:2], torch.tensor([0, 1, 2, 0])), r"labels value=2"),
        (lambda: M.evaluate_embeddings(x, x, class_txt=x[:2]), r"class_txt=<given alone>"),
        (lambda: M.evaluate_embeddings(x, x, labels=y), r"labels=<given alone>"),
        (lambda: M.evaluate_embeddings(x, x, scale=-1.0), r"scale=-1.0"),
        (lambda: M.evaluate_embeddings(x, x, class_txt=x[:2, :2], labels=y), r"class_txt\.shape\[1\]"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input_raises_value_error_naming_value_and_allowed(case):
    call, pattern = _bad_cases()[case]
    with pytest.raises(ValueError, match=pattern) as err:
        call()
    assert "allowed" in str(err.value)
