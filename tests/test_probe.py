"""Tests for geomix.metrics.probe: the few-shot linear probe, its draws, and its argument checks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from geomix.metrics import probe
from geomix.metrics.probe import check_shots, draw_shots, few_shot_probe


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny fits: one intra-op thread (several threads on a busy shared CPU are ~10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _separable(n_per: int, classes: list[int], d: int, noise: float, seed: int):
    """Class c along its own axis (orthogonal directions) plus small noise; rows shuffled."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(classes).repeat_interleave(n_per)
    y = y[torch.randperm(y.numel(), generator=g)]
    axis = {c: i for i, c in enumerate(classes)}
    x = torch.zeros(y.numel(), d, dtype=torch.float64)
    x[torch.arange(y.numel()), torch.tensor([axis[int(c)] for c in y])] = 1.0
    return x + noise * torch.randn(x.shape, generator=g, dtype=torch.float64), y


def test_separable_features_score_100_at_every_k():
    x, y = _separable(30, [0, 1, 2, 3, 4], d=16, noise=0.05, seed=0)
    assert few_shot_probe(x, y, (1, 4, 16)) == {1: 100.0, 4: 100.0, 16: 100.0}
    assert few_shot_probe(x.float(), y, [2], draws=2, l2=1e-3) == {2: 100.0}


def test_only_classes_present_count_and_rows_are_normalised():
    x, y = _separable(12, [0, 3, 7], d=8, noise=0.05, seed=1)  # labels 1, 2, 4..6 never occur
    assert few_shot_probe(x, y, [1, 5], draws=3) == {1: 100.0, 5: 100.0}
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(90, 8, generator=g), torch.arange(90) % 3
    assert few_shot_probe(5.0 * x, y, [4], draws=2) == few_shot_probe(x, y, [4], draws=2)


def test_random_labels_are_near_chance():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(800, 32, generator=g)
    y = torch.randint(0, 4, (800,), generator=g)
    for k, acc in few_shot_probe(x, y, (1, 4, 16)).items():
        assert 10.0 < acc < 40.0, (k, acc)  # chance is 25


def test_same_call_is_identical_and_the_seed_changes_the_draws():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(120, 12, generator=g), torch.arange(120) % 4
    first = few_shot_probe(x, y, (1, 3), draws=3, seed=7)
    assert few_shot_probe(x, y, (1, 3), draws=3, seed=7) == first
    assert list(first) == [1, 3]
    base = draw_shots(y, 3, seed=7, draw=0)
    assert torch.equal(draw_shots(y, 3, seed=7, draw=0), base)
    assert not torch.equal(draw_shots(y, 3, seed=8, draw=0), base)
    assert not torch.equal(draw_shots(y, 3, seed=7, draw=1), base)
    assert not torch.equal(draw_shots(y, 4, seed=7, draw=0)[:12], base)  # k is part of the seed too


def test_draws_are_the_same_in_another_process():
    code = (
        "import torch; from geomix.metrics.probe import draw_shots; "
        "print(draw_shots(torch.arange(60) % 5, 3, seed=11, draw=2).tolist())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == str(draw_shots(torch.arange(60) % 5, 3, seed=11, draw=2).tolist())


def test_draw_shots_takes_k_per_class_and_the_test_set_is_the_rest():
    y = torch.tensor([0] * 5 + [2] * 9 + [5] * 4)
    y = y[torch.randperm(18, generator=torch.Generator().manual_seed(5))]
    for k in (1, 2, 3):
        for draw in range(4):
            idx = draw_shots(y.tolist(), k, seed=1, draw=draw)  # a list of labels works too
            assert idx.dtype == torch.long and torch.equal(idx, idx.sort().values)
            assert idx.unique().numel() == idx.numel()
            assert torch.bincount(y[idx], minlength=6).tolist() == [k, 0, k, 0, 0, k]
            train, test = probe._split(y, k, 1, draw)
            assert torch.equal(train, idx)
            assert not set(train.tolist()) & set(test.tolist())
            assert sorted(train.tolist() + test.tolist()) == list(range(18))


def test_check_shots_accepts_counts_and_returns_each_k_once():
    assert check_shots({"dog": 5, "cat": 9, "gone": 0}, [4, 1, 4], "evaluation.fewshot_shots") == (4, 1)
    assert check_shots(torch.arange(40) % 4, (1, 9), "x") == (1, 9)


_X = torch.randn(40, 6, generator=torch.Generator().manual_seed(6))
_Y = torch.cat([torch.full((12,), 7), torch.arange(28) % 3])  # class 7 has 12 images, the others 9 or 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shots=[]), r"^shots=\[\] is invalid: allowed a non-empty sequence"),
        (dict(shots=4), r"^shots=4 is invalid: allowed a non-empty sequence"),
        (dict(shots=[1, 0]), r"^shots=\(1, 0\) is invalid: allowed a non-empty sequence of integers >= 1"),
        (dict(shots=[True]), r"^shots=\(True,\) is invalid"),
        (dict(shots=[9]), r"^shots=9 is invalid: allowed at most 8 \(the smallest class, 'class 1', has 9 "
                          r"images and at least one per class must stay out for testing\)"),
        (dict(shots=[1], draws=0), r"^draws=0 is invalid: allowed an integer >= 1"),
        (dict(shots=[1], l2=0.0), r"^l2=0.0 is invalid: allowed a finite number in \(0, inf\]"),
        (dict(shots=[1], seed=-1), r"^seed=-1 is invalid"),
        (dict(shots=[1], labels=_Y[:39]), r"^labels.shape=\(39,\) is invalid: allowed \(40,\)"),
        (dict(shots=[1], labels=_Y.float()), r"^labels.dtype=torch.float32 is invalid"),
        (dict(shots=[1], labels=_Y - 1), r"^labels value=-1 is invalid: allowed integers >= 0"),
        (dict(shots=[1], labels=torch.zeros(40, dtype=torch.long)), r"^labels=<1 class\(es\)> is invalid"),
        (dict(shots=[1], features=_X[:, :0]), r"^features.shape=\(40, 0\) is invalid"),
    ],
)
def test_bad_input_raises_naming_the_value(kwargs, match):
    args = {"features": _X, "labels": _Y, **kwargs}
    with pytest.raises(ValueError, match=match):
        few_shot_probe(args.pop("features"), args.pop("labels"), args.pop("shots"), **args)


def test_check_shots_names_where_and_the_smallest_class():
    labels = [0] * 20 + [7] * 12 + [3] * 30
    with pytest.raises(ValueError, match=r"^evaluation.fewshot_shots=16 is invalid: allowed at most 11 \(the "
                       r"smallest class, 'class 7', has 12 images and at least one per class"):
        check_shots(labels, (1, 4, 16), "evaluation.fewshot_shots")
    with pytest.raises(ValueError, match=r"^evaluation.fewshot_shots=\[\] is invalid"):
        check_shots(labels, [], "evaluation.fewshot_shots")
    with pytest.raises(ValueError, match=r"^cfg.k=1 is invalid: allowed no value \(the smallest class, "
                       r"'dog', has 1 image and"):
        check_shots({"dog": 1, "cat": 5}, [1], "cfg.k")
    with pytest.raises(ValueError, match=r"^k=5 is invalid: allowed at most 4"):
        draw_shots(torch.arange(10) % 2, 5)
