"""The embedded image-caption data: small images of coloured shapes in several visual styles.

Each sample is a pure function of ``(seed, split, index)``: a ``numpy.random.Generator`` is seeded from a
BLAKE2 hash of those values (never the global RNG), so the same sample comes out in any process on any
machine. A scene holds one to three shapes (6 colours x 5 shapes, small or large, at one of five grid
positions); the renderer draws it in one *style* (domain):

- ``flat``: filled shapes on a light background;
- ``outline``: shape outlines only, on white;
- ``textured``: filled shapes on a striped, noisy background, with pixel noise over everything;
- ``dark``: dim shapes with a light rim on a dark background (the held-back fine-tune domain).

Class label (for zero-shot accuracy and ECE): ``colour_index * len(SHAPES) + shape_index`` of the scene's
*main* shape, which is its largest (in a scene of two or three shapes the main one is large and the
others small) and the first one every caption names; 30 classes, prompts "a photo of a red circle.".

Scenes do not depend on the style: index ``i`` of a split is the same scene in every style, and a set
with several styles draws index ``i`` in ``styles[i % len(styles)]``. Splits are salted into the hash, so
train, val and test never share a sample.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from geomix.checks import check_choice, check_range
from geomix.config import SHAPE_STYLES
from geomix.data.captions import COLOURS, POSITION_CELLS, POSITIONS, SHAPES, Obj, class_prompt, make_captions

STYLES: tuple[str, ...] = SHAPE_STYLES
# Bumped whenever the pixels or captions for a given (seed, split, index) change, so caches keyed on
# the data (e.g. the embedded base model) can include it.
GENERATOR_VERSION = 2
SPLITS: tuple[str, ...] = ("train", "val", "test")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 256
N_CLASSES = len(COLOURS) * len(SHAPES)

_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 225),
    "yellow": (235, 205, 40),
    "purple": (150, 60, 195),
    "orange": (245, 135, 30),
}
# Radii as a fraction of the image side; grid cells centred at 0.2 / 0.5 / 0.8 of the side.
_RADIUS = {"small": 0.10, "large": 0.17}
_CELL_CENTRE = (0.2, 0.5, 0.8)
# One, two or three shapes; single-shape scenes are rarer because they have few distinct captions.
_COUNT_P = (0.12, 0.44, 0.44)
# Tuned with a small CNN trained on flat/outline/textured (the base styles): with these values it
# scores ~10% on "dark" against ~19% on held-out base styles (chance 3.3%) -- poor but above-chance
# transfer. A lighter textured background or a dimmer dark fill made "dark" transfer at chance; a
# full-brightness dark fill without a rim transferred almost fully.
# "textured" background brightness range (mid-grey to dark, so the base styles vary the background).
_TEXTURE_BASE = (60.0, 200.0)
# "dark" style: shape fill = colour * _DARK_FILL, rim = colour * a + b (None: no rim).
_DARK_FILL = 0.8
_DARK_RIM: tuple[float, float] | None = (0.5, 100.0)


def rng_for(*key: object) -> np.random.Generator:
    """A generator seeded from a stable hash of ``key`` (same stream in every process and machine)."""
    digest = hashlib.blake2b("\x1f".join(map(str, key)).encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


@dataclass(frozen=True)
class Scene:
    """What a sample shows: the shapes (main first) and each one's jitter, independent of the style."""

    objects: tuple[Obj, ...]
    offsets: tuple[tuple[float, float], ...]  # centre jitter as a fraction of the side
    scales: tuple[float, ...]  # radius multipliers
    angles: tuple[float, ...]  # polygon rotation in radians
    tints: tuple[tuple[int, int, int], ...]  # per-object colour jitter

    @property
    def label(self) -> int:
        main = self.objects[0]
        return COLOURS.index(main.colour) * len(SHAPES) + SHAPES.index(main.shape)


def sample_scene(seed: int, split: str, index: int) -> Scene:
    """The scene of sample ``index`` of ``split`` (deterministic from the three values)."""
    rng = rng_for("scene", seed, split, index)
    n = int(rng.choice(3, p=_COUNT_P)) + 1
    positions = rng.permutation(len(POSITIONS))[:n]
    kinds = rng.choice(N_CLASSES, size=n, replace=False)  # distinct (colour, shape) per scene
    if n == 1:
        sizes = ["large" if rng.random() < 0.5 else "small"]
    else:
        sizes = ["large"] + ["small"] * (n - 1)
    objects = tuple(
        Obj(COLOURS[int(k) // len(SHAPES)], SHAPES[int(k) % len(SHAPES)], s, POSITIONS[int(p)])
        for k, s, p in zip(kinds, sizes, positions)
    )
    return Scene(
        objects=objects,
        offsets=tuple((float(x), float(y)) for x, y in rng.uniform(-0.04, 0.04, size=(n, 2))),
        scales=tuple(float(s) for s in rng.uniform(0.9, 1.1, size=n)),
        angles=tuple(float(a) for a in rng.uniform(-0.2, 0.2, size=n)),
        tints=tuple(tuple(int(t) for t in row) for row in rng.integers(-20, 21, size=(n, 3))),
    )


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        r *= 0.85  # same visual area as the circle, roughly
    elif shape == "triangle":
        pts = [(0.0, -1.0), (0.95, 0.75), (-0.95, 0.75)]
    elif shape == "diamond":
        pts = [(0, -1), (0.75, 0), (0, 1), (-0.75, 0)]
    elif shape == "cross":
        t = 0.35
        pts = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t),
               (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t)]
    else:
        raise ValueError(f"shape={shape!r} is invalid: allowed one of {SHAPES}")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _clip(rgb: np.ndarray) -> tuple[int, int, int]:
    r, g, b = np.clip(rgb, 0, 255).astype(int)
    return int(r), int(g), int(b)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size] / size
    return yy, xx


def _background(style: str, size: int, rng: np.random.Generator) -> np.ndarray:
    if style == "flat":
        return np.broadcast_to(rng.uniform(215, 250, size=3), (size, size, 3)).copy()
    if style == "outline":
        return np.broadcast_to(rng.uniform(240, 255, size=3), (size, size, 3)).copy()
    if style == "textured":
        # Stripes of random frequency and orientation: a texture the shapes must be seen through.
        yy, xx = _grid(size)
        theta, freq = rng.uniform(0, math.pi), rng.uniform(3, 8)
        stripes = np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)))
        base = rng.uniform(*_TEXTURE_BASE, size=3)
        return base + 35 * stripes[..., None] + rng.normal(0, 12, size=(size, size, 3))
    if style == "dark":
        base = rng.uniform(5, 30, size=3) + np.array([0.0, 0.0, 15.0])  # a slightly blue night background
        return base + rng.normal(0, 4, size=(size, size, 3))
    raise ValueError(f"style={style!r} is invalid: allowed one of {STYLES}")


def render(scene: Scene, style: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``scene`` in ``style`` as a uint8 array [size, size, 3]; ``rng`` supplies the style's noise."""
    bg = _background(style, size, rng)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    width = max(1, round(size / 16))
    # Draw the main shape last so the others never hide it.
    for i in reversed(range(len(scene.objects))):
        o = scene.objects[i]
        col, row = POSITION_CELLS[o.position]
        cx = (_CELL_CENTRE[col] + scene.offsets[i][0]) * size
        cy = (_CELL_CENTRE[row] + scene.offsets[i][1]) * size
        r = _RADIUS[o.size] * scene.scales[i] * size
        rgb = np.array(_RGB[o.colour], dtype=float) + np.array(scene.tints[i])
        if style == "dark":
            fill = _clip(rgb * _DARK_FILL)
            edge = None if _DARK_RIM is None else _clip(rgb * _DARK_RIM[0] + _DARK_RIM[1])
        elif style == "outline":
            fill, edge = None, _clip(rgb)
        else:
            fill, edge = _clip(rgb), None
        w = width if style == "outline" else 1
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=edge, width=w)
        else:
            draw.polygon(_polygon(o.shape, cx, cy, r, scene.angles[i]), fill=fill, outline=edge, width=w)
    out = np.asarray(img)
    if style == "textured":
        out = np.clip(out + rng.normal(0, 14, size=out.shape), 0, 255).astype(np.uint8)
    return out


def class_names() -> list[str]:
    """Class names, one per class id: ``"red circle"`` (the colour and shape words of the prompts)."""
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]


def class_prompts() -> list[str]:
    """Zero-shot prompts, one per class id (``colour_index * len(SHAPES) + shape_index``)."""
    return [class_prompt(c, s) for c in COLOURS for s in SHAPES]


def check_shapes_args(split: str, size: int, styles: tuple[str, ...], image_size: int, captions: int) -> None:
    """ValueError naming the bad value, for any argument :class:`ShapesData` cannot use."""
    check_choice("split", split, SPLITS)
    check_range("size", size, 1, None)
    if not styles:
        raise ValueError(f"styles={styles!r} is invalid: allowed a non-empty subset of {STYLES}")
    for s in styles:
        check_choice("style", s, STYLES)
    check_range("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    check_range("captions_per_image", captions, 1, None)


class ShapesData:
    """``size`` samples of one split: images rendered lazily and cached, captions, labels.

    Args:
        split: 'train', 'val' or 'test' (salted into every sample's hash).
        size: number of samples.
        styles: styles to draw; sample ``i`` uses ``styles[i % len(styles)]``.
        seed: the data seed.
        image_size: side of the square images in pixels.
        captions_per_image: captions per sample (the first is the canonical one).
    """

    def __init__(
        self,
        split: str,
        size: int,
        styles: tuple[str, ...] | list[str],
        *,
        seed: int = 0,
        image_size: int = 32,
        captions_per_image: int = 5,
    ) -> None:
        styles = tuple(styles)
        check_shapes_args(split, size, styles, image_size, captions_per_image)
        self.split, self.size, self.styles, self.seed = split, int(size), styles, int(seed)
        self.image_size, self.captions_per_image = int(image_size), int(captions_per_image)
        self._scenes: dict[int, Scene] = {}
        self._images: dict[int, np.ndarray] = {}
        self._captions: dict[int, list[str]] = {}

    def __len__(self) -> int:
        return self.size

    def _check(self, i: int) -> int:
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for {self.size} samples")
        return int(i)

    def scene(self, i: int) -> Scene:
        i = self._check(i)
        if i not in self._scenes:
            self._scenes[i] = sample_scene(self.seed, self.split, i)
        return self._scenes[i]

    def style(self, i: int) -> str:
        return self.styles[self._check(i) % len(self.styles)]

    def image(self, i: int) -> np.ndarray:
        """Sample ``i``'s image, uint8 [image_size, image_size, 3] (cached; do not modify)."""
        i = self._check(i)
        if i not in self._images:
            style = self.style(i)
            rng = rng_for("render", self.seed, self.split, i, style)
            img = render(self.scene(i), style, self.image_size, rng)
            img.flags.writeable = False
            self._images[i] = img
        return self._images[i]

    def captions(self, i: int) -> list[str]:
        i = self._check(i)
        if i not in self._captions:
            rng = rng_for("text", self.seed, self.split, i)
            self._captions[i] = make_captions(self.scene(i).objects, self.captions_per_image, rng)
        return list(self._captions[i])

    def label(self, i: int) -> int:
        return self.scene(i).label

    @property
    def labels(self) -> list[int]:
        return [self.label(i) for i in range(self.size)]

    @property
    def class_prompts(self) -> list[str]:
        return class_prompts()

    def describe(self) -> str:
        styles = ",".join(self.styles)
        return f"shapes(split={self.split}, size={self.size}, styles={styles}, seed={self.seed})"
