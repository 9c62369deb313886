"""Embedding arithmetic (issue 10): the counterfactual query set and the arithmetic retrieval metric."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import geomix.data.arithmetic as DA
import geomix.metrics.arithmetic as MA
from geomix.data.arithmetic import KINDS, build_arithmetic_set, canonical_text
from geomix.data.captions import COLOURS, POSITIONS, SHAPES, SIZES, Obj, make_captions
from geomix.data.shapes import STYLES, Scene, rng_for
from geomix.metrics.arithmetic import ARITH_KEYS, arithmetic_keys, arithmetic_retrieval

_FIELDS = ("colour", "shape", "size", "position")


@pytest.fixture(scope="module")
def aset():
    return build_arithmetic_set(seed=3, style="textured", n=60, image_size=32)


def _jitter(s: Scene, i: int) -> tuple:
    return s.offsets[i], s.scales[i], s.angles[i], s.tints[i]


def _removed(big: Scene, small: Scene) -> int:
    """Index j such that ``big`` without object j is ``small`` (objects and jitter); asserts one exists."""
    for j in range(len(big.objects)):
        keep = [i for i in range(len(big.objects)) if i != j]
        if tuple(big.objects[i] for i in keep) == small.objects and all(
            _jitter(big, i) == _jitter(small, r) for r, i in enumerate(keep)
        ):
            return j
    raise AssertionError(f"{small.objects} is not {big.objects} less one object")


# ----------------------------------------------------------------------------------------------------------
# the data layer


def test_kinds_defined_identically_in_both_layers():
    assert DA.KINDS == MA.KINDS == ("colour", "shape", "size", "position", "count")
    assert ARITH_KEYS[:2] == ("arith_r1", "arith_r5")
    assert ARITH_KEYS == arithmetic_keys((1, 5), KINDS) and len(ARITH_KEYS) == 2 + 2 * len(KINDS)
    assert ARITH_KEYS[2:4] == ("arith_r1_colour", "arith_r5_colour") and ARITH_KEYS[-1] == "arith_r5_count"


def test_layout_shapes_and_kinds(aset):
    n = 60
    assert len(aset) == n and aset.images.shape == (2 * n, 32, 32, 3) and aset.images.dtype == np.uint8
    assert aset.source_index.tolist() == list(range(n))
    assert aset.target_index.tolist() == list(range(n, 2 * n))
    assert aset.kinds == [KINDS[i % 5] for i in range(n)]
    assert len(aset.source_text) == len(aset.target_text) == len(aset.source_scenes) == n
    assert aset.gallery_scenes == aset.source_scenes + aset.target_scenes


def test_deterministic_prefix_stable_and_seeded(aset):
    again = build_arithmetic_set(seed=3, style="textured", n=60, image_size=32)
    assert np.array_equal(aset.images, again.images)
    assert (aset.source_text, aset.target_text) == (again.source_text, again.target_text)
    # the first queries of a larger set are the same queries
    big = build_arithmetic_set(seed=3, style="textured", n=75, image_size=32)
    assert big.source_text[:60] == aset.source_text and big.target_scenes[:60] == aset.target_scenes
    assert np.array_equal(big.images[:60], aset.images[:60])
    assert np.array_equal(big.images[75:135], aset.images[60:])
    # scenes do not depend on the style, the pixels do
    flat = build_arithmetic_set(seed=3, style="flat", n=60, image_size=32)
    assert flat.source_scenes == aset.source_scenes and flat.target_text == aset.target_text
    assert not np.array_equal(flat.images, aset.images)
    other = build_arithmetic_set(seed=4, style="textured", n=60, image_size=32)
    assert other.source_text != aset.source_text and not np.array_equal(other.images, aset.images)
    other_split = build_arithmetic_set(seed=3, style="textured", n=60, image_size=32, split="val")
    assert other_split.source_text != aset.source_text


def test_does_not_touch_the_generator_streams():
    before = rng_for("scene", 0, "test", 0).random()
    build_arithmetic_set(seed=0, style="flat", n=5, image_size=16)
    assert rng_for("scene", 0, "test", 0).random() == before


@pytest.mark.parametrize("style", STYLES)
def test_exactly_one_attribute_changes(style):
    s = build_arithmetic_set(seed=11, style=style, n=100, image_size=32)
    directions = set()
    for i, kind in enumerate(s.kinds):
        a, b = s.source_scenes[i], s.target_scenes[i]
        assert 1 <= len(a.objects) <= 3 and 1 <= len(b.objects) <= 3
        if kind == "count":
            assert abs(len(a.objects) - len(b.objects)) == 1
            big, small = (a, b) if len(a.objects) > len(b.objects) else (b, a)
            directions.add(big is b)
            j = _removed(big, small)
            copy = big.objects[j]
            twins = [o for o in small.objects if dataclasses.replace(o, position=copy.position) == copy]
            assert len(twins) == 1, (copy, small.objects)  # the removed object was an identical copy
        else:
            assert len(a.objects) == len(b.objects) <= 2
            changed = [j for j in range(len(a.objects)) if a.objects[j] != b.objects[j]]
            assert len(changed) == 1
            oa, ob = a.objects[changed[0]], b.objects[changed[0]]
            assert [f for f in _FIELDS if getattr(oa, f) != getattr(ob, f)] == [kind]
            assert all(_jitter(a, j) == _jitter(b, j) for j in range(len(a.objects)))
            # the texts differ in the edited words only: one word for colour, shape and size
            wa, wb = s.source_text[i].split(), s.target_text[i].split()
            if kind != "position":
                assert len(wa) == len(wb) and sum(x != y for x, y in zip(wa, wb)) == 1, (wa, wb)
        assert s.source_text[i] != s.target_text[i]
        assert s.source_text[i] == canonical_text(a.objects) and s.target_text[i] == canonical_text(b.objects)
        assert not np.array_equal(s.images[i], s.images[len(s) + i])
        for scene in (a, b):  # distinct positions in every scene
            assert len({o.position for o in scene.objects}) == len(scene.objects)
    assert directions == {True, False}  # counts go up and down


def test_gallery_has_no_duplicate_scene_or_image():
    # at 16 px a small circle and a small cross can render alike (seed 0 has such a query: it is redrawn)
    s = build_arithmetic_set(seed=0, style="flat", n=400, image_size=16)
    ids = [frozenset(sc.objects) for sc in s.gallery_scenes]
    assert len(set(ids)) == 800
    assert len({im.tobytes() for im in s.images}) == 800


def test_canonical_text():
    a = Obj("red", "circle", "large", "left")
    assert canonical_text((a,)) == "a large red circle on the left"
    # a one-object scene reads exactly like the generator's canonical caption
    for c, sh, sz, p in [("orange", "cross", "small", "center"), ("blue", "square", "large", "top")]:
        o = (Obj(c, sh, sz, p),)
        assert canonical_text(o) == make_captions(o, 1, np.random.default_rng(0))[0]
    b = Obj("blue", "square", "small", "bottom")
    two = (a, dataclasses.replace(a, position="top"), b)
    assert canonical_text((a, b)) == "a large red circle on the left and a small blue square at the bottom"
    assert canonical_text(two) == (
        "two large red circles on the left and at the top and a small blue square at the bottom"
    )
    assert canonical_text((Obj("red", "cross", "small", "left"), Obj("red", "cross", "small", "right"))) == (
        "two small red crosses on the left and on the right"
    )


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"style": "neon"}, "style='neon'"),
        ({"n": 4}, "n=4"),
        ({"n": 10**6}, "n=1000000"),
        ({"n": 7.0}, "n=7.0"),
        ({"n": True}, "n=True"),
        ({"image_size": 8}, "image_size=8"),
        ({"image_size": 512}, "image_size=512"),
        ({"image_size": 32.5}, "image_size=32.5"),
        ({"split": "dev"}, "split='dev'"),
        ({"seed": -1}, "seed=-1"),
    ],
)
def test_bad_set_arguments(kwargs, needle):
    args = {"seed": 0, "style": "flat", "n": 10, "image_size": 32, **kwargs}
    with pytest.raises(ValueError, match="is invalid: allowed") as e:
        build_arithmetic_set(**args)
    assert needle in str(e.value)


# ----------------------------------------------------------------------------------------------------------
# the metric


def _attribute_vector(scene: Scene) -> torch.Tensor:
    """Additive oracle: per object one-hot colour + shape + size + position, plus the object count.

    The joint one-hot of (colour, shape, size, position) per object binds the attributes to their object;
    with the separate one-hots alone, swapping an attribute between two objects would give the same vector.
    """
    dims = [len(COLOURS), len(SHAPES), len(SIZES), len(POSITIONS)]
    v = torch.zeros(sum(dims) + int(np.prod(dims)) + 1, dtype=torch.float64)
    for o in scene.objects:
        idx = [COLOURS.index(o.colour), SHAPES.index(o.shape), SIZES.index(o.size)]
        idx.append(POSITIONS.index(o.position))
        for i, start in zip(idx, np.cumsum([0, *dims[:-1]])):
            v[int(start) + i] += 1.0
        v[sum(dims) + int(np.ravel_multi_index(idx, dims))] += 1.0
    v[-1] = len(scene.objects)
    return v


def _set_tensors(s):
    gallery = torch.stack([_attribute_vector(sc) for sc in s.gallery_scenes])
    src_txt = torch.stack([_attribute_vector(sc) for sc in s.source_scenes])
    tgt_txt = torch.stack([_attribute_vector(sc) for sc in s.target_scenes])
    return gallery, torch.from_numpy(s.source_index), torch.from_numpy(s.target_index), src_txt, tgt_txt


def test_oracle_embeddings_score_100_for_every_kind():
    s = build_arithmetic_set(seed=5, style="flat", n=250, image_size=16)
    out = arithmetic_retrieval(*_set_tensors(s), s.kinds, delta=1.0)
    assert tuple(out) == ARITH_KEYS
    assert all(v == 100.0 for v in out.values()), out
    # float32 inputs give the same answer
    g, si, ti, st, tt = _set_tensors(s)
    out32 = arithmetic_retrieval(g.float(), si, ti, st.float(), tt.float(), s.kinds)
    assert all(v == 100.0 for v in out32.values()), out32


def test_random_embeddings_are_near_chance():
    g = torch.Generator().manual_seed(0)
    n, d = 250, 64
    kinds = [KINDS[i % 5] for i in range(n)]
    out = arithmetic_retrieval(
        torch.randn(2 * n, d, generator=g), torch.arange(n), torch.arange(n, 2 * n),
        torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), kinds,
    )
    # chance is 1/499 = 0.2% at R@1 and 1% at R@5 (2.5 expected hits in 250)
    assert out["arith_r1"] < 3.0 and out["arith_r5"] < 6.0, out


def test_hand_checked_ties_and_source_exclusion():
    gallery = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0], [0.0, 1.0]])
    src, tgt = torch.tensor([0, 3]), torch.tensor([1, 2])
    src_txt = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    tgt_txt = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # query 0 ~ (0.8, 0.2): cos 0.970 with its own source (excluded), 0.922 with the target -> rank 0.
    # query 1 ~ (-0.8, 0.2): the target (row 2) ties with its duplicate row 4 -> rank 1 (pessimistic).
    out = arithmetic_retrieval(gallery, src, tgt, src_txt, tgt_txt, ["colour", "shape"], delta=0.2, ks=(1, 2))
    assert out == {
        "arith_r1": 50.0, "arith_r2": 100.0,
        "arith_r1_colour": 100.0, "arith_r2_colour": 100.0,
        "arith_r1_shape": 0.0, "arith_r2_shape": 100.0,
    }
    # K beyond the G - 1 = 4 candidates is clamped: every query hits
    assert arithmetic_retrieval(gallery, src, tgt, src_txt, tgt_txt, ["count", "count"], ks=(9,)) == {
        "arith_r9": 100.0, "arith_r9_count": 100.0,
    }
    # a query that cancels to the zero vector scores 0 against everything: a miss, no NaN
    cancel = torch.tensor([[2.0, 0.0]]), torch.tensor([[-1.0, 0.0]])
    zero = arithmetic_retrieval(gallery, src[:1], tgt[:1], *cancel, ["size"], ks=(1,))
    assert zero == {"arith_r1": 0.0, "arith_r1_size": 0.0}


def test_matches_a_loop_reference_with_ties():
    g = torch.Generator().manual_seed(1)
    n, G, d = 40, 30, 3
    # coarse integer embeddings: many exact ties
    gallery = torch.randint(-1, 2, (G, d), generator=g).double()
    gallery[gallery.norm(dim=1) == 0] = 1.0
    src = torch.randint(0, G, (n,), generator=g)
    tgt = (src + torch.randint(1, G, (n,), generator=g)) % G
    src_txt, tgt_txt = torch.randn(n, d, generator=g).double(), torch.randn(n, d, generator=g).double()
    kinds = [KINDS[i % 3] for i in range(n)]
    out = arithmetic_retrieval(gallery, src, tgt, src_txt, tgt_txt, kinds, delta=0.5, ks=(1, 3))

    def unit(x):
        return x / x.norm(dim=-1, keepdim=True)

    gu, su, tu = unit(gallery), unit(src_txt), unit(tgt_txt)
    ranks = []
    for i in range(n):
        q = unit(gu[src[i]] + 0.5 * (tu[i] - su[i]))
        scores = [float(q @ gu[j]) for j in range(G)]
        own = scores[tgt[i]]
        ranks.append(sum(1 for j in range(G) if j not in (src[i], tgt[i]) and scores[j] >= own))
    for k in (1, 3):
        assert out[f"arith_r{k}"] == pytest.approx(100.0 * np.mean([r < k for r in ranks]))
        for kind in KINDS[:3]:
            sel = [r for r, kk in zip(ranks, kinds) if kk == kind]
            assert out[f"arith_r{k}_{kind}"] == pytest.approx(100.0 * np.mean([r < k for r in sel]))
    assert "arith_r1_position" not in out and "arith_r1_count" not in out


def _good():
    return (
        torch.randn(6, 4), torch.tensor([0, 1]), torch.tensor([2, 3]), torch.randn(2, 4), torch.randn(2, 4),
        ["colour", "count"],
    )


@pytest.mark.parametrize(
    ("change", "kw", "needle"),
    [
        ({}, {"delta": 0.0}, "delta=0.0"),
        ({}, {"delta": -1.0}, "delta=-1.0"),
        ({}, {"delta": float("nan")}, "delta=nan"),
        ({}, {"ks": (0,)}, "ks="),
        ({0: torch.randn(6)}, {}, "gallery_img.shape=(6,)"),
        ({0: torch.randint(0, 3, (6, 4))}, {}, "gallery_img.dtype=torch.int64"),
        ({1: torch.tensor([0, 1, 2])}, {}, "src_index.shape=(3,)"),
        ({1: torch.tensor([0.0, 1.0])}, {}, "src_index.dtype=torch.float32"),
        ({2: torch.tensor([2, 6])}, {}, "tgt_index value=6"),
        ({2: torch.tensor([0, 3])}, {}, "tgt_index=<the source's row for queries [0]>"),
        ({3: torch.randn(2, 5)}, {}, "src_txt.shape[1]=5"),
        ({4: torch.randn(3, 4)}, {}, "tgt_txt.shape[0]=3"),
        ({4: torch.full((2, 4), float("inf"))}, {}, "tgt_txt rows [0, 1]=non-finite"),
        ({5: ["colour"]}, {}, "len(kinds)=1"),
        ({5: ["colour", "hue"]}, {}, "kinds='hue'"),
        ({5: "cc"}, {}, "kinds=str"),
    ],
)
def test_bad_metric_inputs(change, kw, needle):
    args = list(_good())
    for i, v in change.items():
        args[i] = v
    with pytest.raises(ValueError, match="is invalid: allowed") as e:
        arithmetic_retrieval(*args, **kw)
    assert needle in str(e.value), str(e.value)
