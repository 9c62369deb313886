"""The FSMDT split of labelled domains (P-Mixup; ``docs/pmixup.md``): k shots per class of the target,
its evaluation images, the sources, and :func:`check_fsmdt`, which checks a target / sources / shots choice
against the data before any training. The domains themselves come from :mod:`geomix.data.domains`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from geomix.checks import check_choice, check_range, fail
from geomix.data.domains import DomainSource, shapes_domain
from geomix.data.sets import FastTransform, _apply
from geomix.data.shapes import STYLES, class_names, rng_for

__all__ = [
    "DomainSubset",
    "FSMDTData",
    "LabelledSet",
    "few_shot_indices",
    "split_target",
    "shapes_fsmdt",
    "prompts_for",
    "check_fsmdt",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# The FSMDT split


class DomainSubset:
    """The images ``indices`` of a domain source, as a domain source (the target's shots, its test rest)."""

    def __init__(self, source: DomainSource, indices: Sequence[int]) -> None:
        n = len(source)
        for i in indices:
            if not 0 <= int(i) < n:
                fail("indices", int(i), f"an index into the {n} images of domain {source.domain!r}")
        self.source, self.indices = source, [int(i) for i in indices]
        self.domain = source.domain

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, i: int) -> np.ndarray | Image.Image:
        return self.source.image(self.indices[i])

    @property
    def labels(self) -> list[int]:
        labels = self.source.labels
        return [labels[i] for i in self.indices]

    @property
    def class_names(self) -> list[str]:
        return self.source.class_names


def few_shot_indices(labels: Sequence[int], k: int, *, seed: int, classes: Iterable[int] | None = None
                     ) -> list[int]:
    """Exactly ``k`` indices per class, drawn without replacement, sorted.

    Each class ``c`` draws from its own stream ``rng_for("few-shot", seed, c)`` (a stable hash, so the
    same in any process) and keeps the first ``k`` of a permutation of its indices: the draw of one class
    does not depend on the others, and the 1-shot set is inside the 5-shot set of the same seed.

    Args:
        labels: the class id of each image.
        k: shots per class (>= 1).
        seed: the shot seed.
        classes: the classes to draw (default: every class in ``labels``); a class with fewer than ``k``
            images, or none, fails naming the class and its count.
    """
    if isinstance(k, bool) or not isinstance(k, int):
        fail("k", k, "an integer >= 1")
    check_range("k", k, 1, None)
    labels = [int(y) for y in labels]
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    wanted = sorted(by_class) if classes is None else sorted({int(c) for c in classes})
    out: list[int] = []
    for c in wanted:
        pool = by_class.get(c, [])
        if len(pool) < k:
            fail("k", k, f"at most {len(pool)}: class {c} has {len(pool)} images")
        perm = rng_for("few-shot", seed, c).permutation(len(pool))[:k]
        out.extend(pool[int(j)] for j in perm)
    return sorted(out)


def split_target(pool: DomainSource, k: int, *, seed: int, test: DomainSource | None = None
                 ) -> tuple[DomainSubset, DomainSource]:
    """The target's ``k`` shots per class from ``pool``, and its evaluation images.

    ``test=None`` (file data): evaluation is the rest of ``pool``, every image that is not a shot.
    Otherwise ``test`` is returned as is (the embedded data's test split, disjoint by construction).
    Every class of ``pool.class_names`` must have ``k`` images.
    """
    idx = few_shot_indices(pool.labels, k, seed=seed, classes=range(len(pool.class_names)))
    shots = DomainSubset(pool, idx)
    if test is None:
        chosen = set(idx)
        test = DomainSubset(pool, [i for i in range(len(pool)) if i not in chosen])
    return shots, test


@dataclass(frozen=True)
class FSMDTData:
    """One FSMDT task: the labelled source domains, the target's shots, the target's evaluation images."""

    sources: dict[str, DomainSource]
    target_shots: DomainSource
    target_test: DomainSource
    class_names: list[str]


def shapes_fsmdt(
    target: str,
    sources: Sequence[str],
    *,
    shots: int,
    seed: int = 0,
    source_size: int = 600,
    pool_size: int = 600,
    test_size: int = 300,
    image_size: int = 32,
    shot_seed: int | None = None,
) -> FSMDTData:
    """The embedded data as an FSMDT task: each source style's *train* split (``source_size`` images),
    ``shots`` per class from ``pool_size`` images of the target style's *train* split, evaluation on
    ``test_size`` images of its *test* split. Checked with :func:`check_fsmdt` first.

    ``seed`` is the data seed (the images); ``shot_seed`` (default ``seed``) picks the shots.
    """
    if isinstance(sources, str):
        fail("data.source_domains", sources, f"a list of styles, e.g. [{sources!r}]")
    styles = list(dict.fromkeys([*sources, target]))
    for s in styles:
        check_choice("data.source_domains" if s != target else "data.target_domain", s, STYLES)
    train = {s: shapes_domain(s, "train", source_size if s != target else pool_size, seed=seed,
                              image_size=image_size) for s in styles}
    check_fsmdt(train, target, list(sources), shots)
    test = shapes_domain(target, "test", test_size, seed=seed, image_size=image_size)
    shot_set, test_set = split_target(train[target], shots, seed=seed if shot_seed is None else shot_seed,
                                      test=test)
    return FSMDTData({s: train[s] for s in sources}, shot_set, test_set, class_names())


def prompts_for(source: DomainSource, template: str = "a photo of a {}.") -> list[str]:
    """One text prompt per class, for the classifier head
    (:func:`geomix.losses.crossmix.init_head_from_text`): the source's own ``class_prompts`` if it has
    them (the embedded data), else ``template`` (CLIP's plain one by default) over the class names, lower
    case, with ``_`` and ``-`` read as spaces (Office-Home's ``Alarm_Clock`` -> "a photo of a alarm clock.").
    """
    own = getattr(source, "class_prompts", None)
    if own:
        return list(own)
    return [template.format(name.replace("_", " ").replace("-", " ").lower()) for name in source.class_names]


class LabelledSet(Dataset):
    """A domain source as a torch Dataset: ``__getitem__(i) -> (FloatTensor [3, H, W], int label)``.

    ``transform``: open_clip's preprocess (PIL -> tensor), or an int image size for the fast built-in
    transform (:class:`~geomix.data.sets.FastTransform`).
    """

    def __init__(self, source: DomainSource, transform: Callable[[Any], torch.Tensor] | int) -> None:
        self.source = source
        self.transform = FastTransform(transform) if isinstance(transform, int) else transform
        self.labels = source.labels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return _apply(self.transform, self.source.image(i)), self.labels[i]


# ----------------------------------------------------------------------------------------------------------
# Checks


def _where(src: DomainSource) -> str:
    return getattr(src, "origin", None) or f"domain {src.domain!r}"


def check_fsmdt(domains: Mapping[str, DomainSource], target: str, sources: Sequence[str], shots: int,
                where: str = "data") -> None:
    """Check an FSMDT task against its data before any training: one ``ConfigError`` (a ``ValueError``,
    ``X=v is invalid: allowed …``) naming the key and the value.

    Refused, in this order: a target that is not a domain of the data (``<where>.target_domain``); an
    empty source list, a source that is the target, given twice, or not in the data
    (``<where>.source_domains``); a domain of the task without images (its folder named); domains whose
    class lists differ; a class with images in a source but none in the target, or the reverse (the class
    and both domains named); ``shots`` not a positive integer or larger than the smallest target class (the
    class and its count named, ``<where>.shots``).
    """
    kt, ks, kk = f"{where}.target_domain", f"{where}.source_domains", f"{where}.shots"
    names = sorted(domains)
    check_choice(kt, target, names)
    sources = list(sources) if isinstance(sources, (list, tuple)) else sources
    if not isinstance(sources, list) or not sources:
        fail(ks, sources, f"a non-empty list of domains other than the target {target!r}, from {names}")
    for s in sources:
        if s == target:
            fail(ks, sources, f"domains other than the target {target!r} (the target is not a source)")
        if s not in domains:
            fail(ks, sources, f"domains of the data, one of {names}: {s!r} is not one")
        if sources.count(s) > 1:
            fail(ks, sources, f"each domain once: {s!r} is given {sources.count(s)} times")
    for key, name in [(kt, target)] + [(ks, s) for s in sources]:
        if len(domains[name]) == 0:
            value = target if key == kt else sources
            fail(key, value, f"domains with images: {name!r} has none ({_where(domains[name])} is empty)")
    t = domains[target]
    classes = t.class_names
    for s in sources:
        if domains[s].class_names != classes:
            fail(ks, sources, f"domains with the class list of the target {target!r}: {s!r} has "
                              f"{len(domains[s].class_names)} classes, the target {len(classes)}, or "
                              "another order")
    t_counts = Counter(t.labels)
    for s in sources:
        s_counts = Counter(domains[s].labels)
        for c in range(len(classes)):
            if (s_counts[c] > 0) != (t_counts[c] > 0):
                has, lacks = (s, target) if s_counts[c] else (target, s)
                fail(ks, sources, f"domains with the same classes: class {classes[c]!r} has images in "
                                  f"{has!r} but none in {lacks!r}")
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        fail(kk, shots, "an integer >= 1 (labelled target images per class)")
    # Over the whole class list: a class with no images anywhere would still be a class of the head.
    smallest = min(range(len(classes)), key=lambda c: (t_counts[c], c))
    if shots > t_counts[smallest]:
        fail(kk, shots, f"at most {t_counts[smallest]}: class {classes[smallest]!r} of the target "
                        f"{target!r} has {t_counts[smallest]} images")
