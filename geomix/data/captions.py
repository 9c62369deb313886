"""Captions for the embedded shapes data: vocabulary, synonyms and templates.

Every scene gets one *canonical* caption (caption 0: first synonym of every word, the most complete
template) and further captions drawn from varied templates with synonyms ("crimson" for red, "box" for
square, "a pair of" for two, ...). Captions name colours, shapes, sizes, counts, positions and relations,
so retrieval needs the attributes: a caption naming only "a red circle" matches many images.

Everything here is a pure function of the scene and a ``numpy.random.Generator`` the caller seeds, so
captions are deterministic from (seed, split, index).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")

# Grid cell (column, row) of each position; relations between two objects are read off these cells.
POSITION_CELLS: dict[str, tuple[int, int]] = {
    "left": (0, 1),
    "right": (2, 1),
    "top": (1, 0),
    "bottom": (1, 2),
    "center": (1, 1),
}

# The first entry of every tuple is the canonical word (used by caption 0 and the class prompts).
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald", "lime"),
    "blue": ("blue", "cobalt", "sapphire"),
    "yellow": ("yellow", "golden", "lemon"),
    "purple": ("purple", "violet", "plum"),
    "orange": ("orange", "tangerine", "amber"),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangular shape", "wedge"),
    "cross": ("cross", "plus sign", "plus"),
    "diamond": ("diamond", "rhombus", "lozenge"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big", "huge"),
}
POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left", "on the left side"),
    "right": ("on the right", "at the right", "on the right side"),
    "top": ("at the top", "near the top", "in the upper part"),
    "bottom": ("at the bottom", "near the bottom", "in the lower part"),
    "center": ("in the center", "in the middle", "at the centre"),
}
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("left of", "to the left of"),
    "right": ("right of", "to the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
COUNT_WORDS: dict[int, tuple[str, ...]] = {
    1: ("one", "a single"),
    2: ("two", "a pair of"),
    3: ("three", "a trio of", "3"),
}
PREFIXES: tuple[str, ...] = ("a picture of", "an image of", "a drawing of", "a photo of")


@dataclass(frozen=True)
class Obj:
    """One shape in a scene, described by words only (pixels are the renderer's business)."""

    colour: str
    shape: str
    size: str
    position: str


def relation(a: Obj, b: Obj) -> str:
    """Where ``a`` lies relative to ``b``: 'left', 'right', 'above' or 'below' (horizontal first)."""
    (xa, ya), (xb, yb) = POSITION_CELLS[a.position], POSITION_CELLS[b.position]
    if xa != xb:
        return "left" if xa < xb else "right"
    return "above" if ya < yb else "below"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x")) else "s")


class _Words:
    """Draws a synonym per slot: canonical (first) words when ``rng`` is None, random ones otherwise."""

    def __init__(self, rng: np.random.Generator | None) -> None:
        self.rng = rng

    def pick(self, options: tuple[str, ...]) -> str:
        return options[0] if self.rng is None else options[int(self.rng.integers(len(options)))]

    def noun(self, o: Obj, *, size: bool = False, article: bool = True) -> str:
        words = [self.pick(SIZE_WORDS[o.size])] if size else []
        words += [self.pick(COLOUR_WORDS[o.colour]), self.pick(SHAPE_WORDS[o.shape])]
        text = " ".join(words)
        return f"{_article(text)} {text}" if article else text

    def pos(self, o: Obj) -> str:
        return self.pick(POSITION_WORDS[o.position])

    def rel(self, a: Obj, b: Obj) -> str:
        return self.pick(RELATION_WORDS[relation(a, b)])

    def count(self, n: int) -> str:
        return self.pick(COUNT_WORDS[n])


_Template = Callable[[_Words], str]


def _templates(objs: tuple[Obj, ...]) -> list[_Template]:
    """The caption templates of a scene (functions of the word picker); element 0 is the canonical one."""
    n = len(objs)
    a = objs[0]
    if n == 1:
        return [
            lambda w: f"{w.noun(a, size=True)} {w.pos(a)}",
            lambda w: f"{w.count(1)} {w.noun(a, article=False)} {w.pos(a)}",
            lambda w: f"{w.pick(PREFIXES)} {w.noun(a, size=True)}",
            lambda w: f"{w.pos(a)}, there is {w.noun(a)}",
            lambda w: f"{w.noun(a, size=True)} by itself",
            lambda w: f"the only shape is {w.noun(a)}, {w.pick(SIZE_WORDS[a.size])} and {w.pos(a)}",
        ]
    b = objs[1]
    if n == 2:
        out: list[_Template] = [
            lambda w: f"{w.noun(a, size=True)} {w.rel(a, b)} {w.noun(b, size=True)}",
            lambda w: f"{w.noun(b)} {w.rel(b, a)} {w.noun(a)}",
            lambda w: f"{w.count(2)} shapes: {w.noun(a, size=True)} and {w.noun(b, size=True)}",
            lambda w: f"{w.noun(a)} {w.pos(a)} and {w.noun(b)} {w.pos(b)}",
            lambda w: f"{w.pick(PREFIXES)} {w.noun(a, size=True)} next to {w.noun(b)}",
            lambda w: f"the {w.noun(b, article=False)} is {w.rel(b, a)} the {w.noun(a, article=False)}",
        ]
        if a.shape == b.shape:
            out.append(
                lambda w: f"{w.count(2)} {_plural(w.pick(SHAPE_WORDS[a.shape]))}, one "
                f"{w.pick(COLOUR_WORDS[a.colour])} and one {w.pick(COLOUR_WORDS[b.colour])}"
            )
        return out
    c = objs[2]
    return [
        lambda w: f"{w.noun(a, size=True)} {w.rel(a, b)} {w.noun(b, size=True)}, and {w.noun(c, size=True)} "
        f"{w.pos(c)}",
        lambda w: f"{w.count(3)} shapes: {w.noun(a)}, {w.noun(b)} and {w.noun(c)}",
        lambda w: f"{w.noun(a)} {w.pos(a)}, {w.noun(b)} {w.pos(b)} and {w.noun(c)} {w.pos(c)}",
        lambda w: f"{w.noun(c)} {w.rel(c, a)} {w.noun(a, size=True)}, with {w.noun(b)} {w.pos(b)}",
        lambda w: f"{w.pick(PREFIXES)} {w.noun(a, size=True)} with {w.noun(b)} and {w.noun(c)}",
        lambda w: f"the {w.noun(b, article=False)} is {w.rel(b, c)} the {w.noun(c, article=False)}",
    ]


def make_captions(objs: tuple[Obj, ...], k: int, rng: np.random.Generator) -> list[str]:
    """``k`` captions of a scene: the canonical one first, then varied templates with random synonyms.

    Args:
        objs: the scene's shapes, the main (largest) one first.
        k: how many captions (>= 1).
        rng: the scene's caption generator (consumed).

    Returns:
        ``k`` captions, distinct where the templates allow it.
    """
    templates = _templates(objs)
    captions = [templates[0](_Words(None))]
    order = [int(t) for t in rng.permutation(np.arange(1, len(templates)))]
    words = _Words(rng)
    j = 0
    while len(captions) < k:
        template = templates[order[j % len(order)]]
        j += 1
        # A few redraws make repeats rare; after that a repeat is accepted rather than looping forever.
        for _ in range(4):
            text = template(words)
            if text not in captions:
                break
        captions.append(text)
    return captions


def class_prompt(colour: str, shape: str) -> str:
    """The zero-shot prompt of class (colour, shape), e.g. 'a photo of a red circle.'."""
    return f"a photo of {_article(colour)} {colour} {shape}."
