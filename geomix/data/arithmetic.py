"""SIMAT-style embedding-arithmetic queries on the embedded shapes data.

A query is a pair of scenes (A, B) that differ in exactly one attribute of one kind (:data:`KINDS`):

- ``colour``, ``shape``, ``size``, ``position``: one object of A gets another value of that attribute;
- ``count``: one object of A gets an identical copy at a free position (one -> two), or, with equal
  probability, a copy is removed (two -> one).

The query ``image(A) + delta * (text(B) - text(A))`` should retrieve ``image(B)`` from the gallery of all
source and target images (:func:`geomix.metrics.arithmetic.arithmetic_retrieval`). Texts are canonical
phrases (:func:`canonical_text`) that name every object with its absolute position, so the two texts of a
query differ only in the edited words::

    colour    a large red circle on the left      -> a large green circle on the left
    shape     a large red circle on the left      -> a large red square on the left
    size      a large red circle on the left      -> a small red circle on the left
    position  a large red circle on the left      -> a large red circle at the top
    count     a large red circle on the left      -> two large red circles on the left and at the top

(with a second object: ``... on the left and a small blue square at the bottom``). For a one-object scene
the phrase is exactly the generator's canonical caption (``make_captions`` caption 0).

Source scenes hold one or two objects with distinct (colour, shape); the edit keeps every other object and
all jitter (offset, scale, rotation, tint) unchanged, and the copy of a count edit has the original's scale,
rotation and tint. Edits keep scenes valid: positions distinct, two objects of one (colour, shape) only as
identical copies, and never two large objects next to each other at the centre (they would overlap). The
gallery holds no two scenes with the same objects (compared as a set, jitter ignored), so R@1 is never
ambiguous. The gallery images are pairwise different too: a query whose two images come out identical (an
edit too small to see, e.g. a small circle vs cross at 16 px) or repeat an earlier image is redrawn.

Determinism: scenes are drawn in order from :func:`~geomix.data.shapes.rng_for` with the salt
``"arithmetic"`` and ``(seed, split)``, so the set for ``n`` queries is the first ``n`` queries of any
larger set, and the scenes do not depend on the style or image size except where such a redraw happened.
A and B of query ``i`` are rendered with two copies of one render generator (salt ``"arithmetic-render"``),
so the style's background and noise are identical too. The generator's own samples
(:class:`~geomix.data.shapes.ShapesData`) are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from geomix.checks import check_choice, check_range, check_seed, fail
from geomix.data.captions import (
    COLOUR_WORDS,
    COLOURS,
    COUNT_WORDS,
    POSITION_CELLS,
    POSITION_WORDS,
    POSITIONS,
    SHAPE_WORDS,
    SHAPES,
    SIZE_WORDS,
    SIZES,
    Obj,
    _article,
    _plural,
)
from geomix.data.shapes import _RADIUS, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, SPLITS, STYLES, Scene, render, rng_for
from geomix.registry import ARITH_KINDS

__all__ = ["KINDS", "MAX_QUERIES", "ArithmeticSet", "build_arithmetic_set", "canonical_text"]

#: The edit kinds (declared once, in :data:`geomix.registry.ARITH_KINDS`); query ``i`` has kind
#: ``KINDS[i % len(KINDS)]``.
KINDS: tuple[str, ...] = ARITH_KINDS
#: Largest ``n``: the gallery of 2n distinct scenes must stay far below the number of valid scenes.
MAX_QUERIES = 4096
_TWO_OBJECTS_P = 0.7  # share of two-object source scenes (one-object scenes number only 300)
_MAX_TRIES = 1000


@dataclass(frozen=True)
class ArithmeticSet:
    """``n`` arithmetic queries and their gallery.

    Attributes:
        images: uint8 [2n, S, S, 3], the gallery: the n source images, then the n target images.
        source_index: int64 [n], gallery row of each query's source image (``arange(n)``).
        target_index: int64 [n], gallery row of each query's target image (``n + arange(n)``).
        source_text: canonical text of each source scene.
        target_text: canonical text of each target scene.
        kinds: the edit kind of each query (``KINDS[i % 5]``).
        source_scenes, target_scenes: the scenes A and B of each query.
        style, seed, split: what the set was built from.
    """

    images: np.ndarray
    source_index: np.ndarray
    target_index: np.ndarray
    source_text: list[str]
    target_text: list[str]
    kinds: list[str]
    source_scenes: tuple[Scene, ...]
    target_scenes: tuple[Scene, ...]
    style: str
    seed: int
    split: str

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def gallery_scenes(self) -> tuple[Scene, ...]:
        """The scene of every gallery row (sources, then targets)."""
        return self.source_scenes + self.target_scenes


def canonical_text(objects: tuple[Obj, ...]) -> str:
    """The canonical phrase of a scene: every object with canonical words and its absolute position.

    Identical copies (same colour, shape and size) are named once with a count, in the place of the first:
    ``"two large red circles on the left and at the top and a small blue square at the bottom"``.
    """
    groups: list[list[Obj]] = []
    for o in objects:
        for g in groups:
            if (g[0].colour, g[0].shape, g[0].size) == (o.colour, o.shape, o.size):
                g.append(o)
                break
        else:
            groups.append([o])
    phrases = []
    for g in groups:
        o = g[0]
        size, colour = SIZE_WORDS[o.size][0], COLOUR_WORDS[o.colour][0]
        shape = SHAPE_WORDS[o.shape][0]
        where = " and ".join(POSITION_WORDS[x.position][0] for x in g)
        if len(g) == 1:
            text = f"{size} {colour} {shape}"
            phrases.append(f"{_article(text)} {text} {where}")
        else:
            phrases.append(f"{COUNT_WORDS[len(g)][0]} {size} {colour} {_plural(shape)} {where}")
    return " and ".join(phrases)


# Distance between two cell centres as a fraction of the side (adjacent cells lie 0.3 apart).
_CELL_DISTANCE: dict[tuple[str, str], float] = {
    (p, q): 0.3 * float(np.hypot(*np.subtract(POSITION_CELLS[p], POSITION_CELLS[q])))
    for p in POSITIONS
    for q in POSITIONS
}


def _valid(objects: tuple[Obj, ...], *, copies: bool = False) -> bool:
    """Distinct positions, no overlap, and distinct (colour, shape) -- except, with ``copies``, a pair of
    identical copies (same colour, shape and size)."""
    if len({o.position for o in objects}) != len(objects):
        return False
    for i, a in enumerate(objects):
        same = [b for b in objects if (b.colour, b.shape) == (a.colour, a.shape)]
        if len(same) > (2 if copies else 1) or any(b.size != a.size for b in same):
            return False
        for b in objects[i + 1:]:
            if _RADIUS[a.size] + _RADIUS[b.size] >= _CELL_DISTANCE[a.position, b.position]:
                return False
    return True


def _identity(scene: Scene) -> frozenset[Obj]:
    return frozenset(scene.objects)


def _pick(rng: np.random.Generator, options: list) -> object:
    return options[int(rng.integers(len(options)))]


def _base_scene(rng: np.random.Generator) -> Scene:
    """A valid source scene of one or two objects with distinct (colour, shape)."""
    k = 2 if rng.random() < _TWO_OBJECTS_P else 1
    while True:
        positions = rng.permutation(len(POSITIONS))[:k]
        classes = rng.choice(len(COLOURS) * len(SHAPES), size=k, replace=False)
        sizes = rng.integers(len(SIZES), size=k)
        objects = tuple(
            Obj(COLOURS[c // len(SHAPES)], SHAPES[c % len(SHAPES)], SIZES[s], POSITIONS[p])
            for c, s, p in zip(classes.tolist(), sizes.tolist(), positions.tolist())
        )
        if _valid(objects):
            break
    return Scene(
        objects=objects,
        offsets=tuple((float(x), float(y)) for x, y in rng.uniform(-0.04, 0.04, size=(k, 2))),
        scales=tuple(float(s) for s in rng.uniform(0.9, 1.1, size=k)),
        angles=tuple(float(a) for a in rng.uniform(-0.2, 0.2, size=k)),
        tints=tuple(tuple(int(t) for t in row) for row in rng.integers(-20, 21, size=(k, 3))),
    )


_VALUES = {"colour": COLOURS, "shape": SHAPES, "size": SIZES, "position": POSITIONS}


def _attribute_edit(scene: Scene, kind: str, rng: np.random.Generator) -> Scene | None:
    """``scene`` with one object's ``kind`` set to another value (drawn uniformly among the valid edits)."""
    edits = []
    for i, o in enumerate(scene.objects):
        for v in _VALUES[kind]:
            if v == getattr(o, kind):
                continue
            objects = scene.objects[:i] + (replace(o, **{kind: v}),) + scene.objects[i + 1:]
            if _valid(objects):
                edits.append(objects)
    if not edits:
        return None
    return replace(scene, objects=_pick(rng, edits))


def _with_copy(scene: Scene, rng: np.random.Generator) -> Scene | None:
    """``scene`` with an identical copy of one object, inserted right after it at a free position."""
    edits = []
    for i, o in enumerate(scene.objects):
        for p in POSITIONS:
            objects = scene.objects[: i + 1] + (replace(o, position=p),) + scene.objects[i + 1:]
            if _valid(objects, copies=True):
                edits.append((i, objects))
    if not edits:
        return None
    i, objects = _pick(rng, edits)
    offset = tuple(float(x) for x in rng.uniform(-0.04, 0.04, size=2))

    def ins(values: tuple, new: object) -> tuple:
        return values[: i + 1] + (new,) + values[i + 1:]

    return Scene(
        objects=objects,
        offsets=ins(scene.offsets, offset),
        scales=ins(scene.scales, scene.scales[i]),
        angles=ins(scene.angles, scene.angles[i]),
        tints=ins(scene.tints, scene.tints[i]),
    )


def _draw_query(kind: str, rng: np.random.Generator) -> tuple[Scene, Scene] | None:
    base = _base_scene(rng)
    if kind != "count":
        edited = _attribute_edit(base, kind, rng)
        return None if edited is None else (base, edited)
    more = _with_copy(base, rng)
    if more is None:
        return None
    return (base, more) if rng.random() < 0.5 else (more, base)


def _check_args(seed: object, style: object, n: object, image_size: object, split: object) -> None:
    check_seed("seed", seed)
    check_choice("style", style, STYLES)
    check_choice("split", split, SPLITS)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not len(KINDS) <= n <= MAX_QUERIES:
        fail("n", n, f"an integer in [{len(KINDS)}, {MAX_QUERIES}] (at least one query per kind)")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        fail("image_size", image_size, f"an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]")
    check_range("image_size", int(image_size), MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)


def build_arithmetic_set(
    *, seed: int, style: str, n: int, image_size: int, split: str = "test"
) -> ArithmeticSet:
    """``n`` arithmetic queries (kinds cycling through :data:`KINDS`) rendered in ``style``.

    Args:
        seed: the data seed (an integer >= 0).
        style: one of :data:`~geomix.data.shapes.STYLES`.
        n: number of queries, in [5, :data:`MAX_QUERIES`].
        image_size: side of the images in pixels, as for :class:`~geomix.data.shapes.ShapesData`.
        split: 'train', 'val' or 'test' (salted into the draw, as in the generator).

    Returns:
        An :class:`ArithmeticSet`; the same arguments always give the same arrays and texts.
    """
    _check_args(seed, style, n, image_size, split)
    n, image_size = int(n), int(image_size)
    rng = rng_for("arithmetic", seed, split)
    seen: set[frozenset[Obj]] = set()
    seen_pixels: set[bytes] = set()
    sources: list[Scene] = []
    targets: list[Scene] = []
    kinds = [KINDS[i % len(KINDS)] for i in range(n)]
    images = np.empty((2 * n, image_size, image_size, 3), dtype=np.uint8)
    for i, kind in enumerate(kinds):
        key = ("arithmetic-render", seed, split, style, i)
        for _ in range(_MAX_TRIES):
            pair = _draw_query(kind, rng)
            if pair is None:
                continue
            ids = _identity(pair[0]), _identity(pair[1])
            if ids[0] == ids[1] or ids[0] in seen or ids[1] in seen:
                continue
            a, b = (render(scene, style, image_size, rng_for(*key)) for scene in pair)
            pixels = a.tobytes(), b.tobytes()
            # an edit too small to see at this image_size (a small circle vs cross at 16 px) is redrawn
            if pixels[0] != pixels[1] and not (pixels[0] in seen_pixels or pixels[1] in seen_pixels):
                break
        else:  # pragma: no cover - the valid scenes far outnumber 2 * MAX_QUERIES
            raise RuntimeError(f"no new {kind!r} query after {_MAX_TRIES} draws (query {i})")
        seen.update(ids)
        seen_pixels.update(pixels)
        sources.append(pair[0])
        targets.append(pair[1])
        images[i], images[n + i] = a, b
    return ArithmeticSet(
        images=images,
        source_index=np.arange(n, dtype=np.int64),
        target_index=np.arange(n, 2 * n, dtype=np.int64),
        source_text=[canonical_text(s.objects) for s in sources],
        target_text=[canonical_text(s.objects) for s in targets],
        kinds=kinds,
        source_scenes=tuple(sources),
        target_scenes=tuple(targets),
        style=style,
        seed=int(seed),
        split=split,
    )
