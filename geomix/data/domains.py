"""Labelled multi-domain image data for few-shot supervised multi-source domain transfer (FSMDT, P-Mixup).

A *domain source* is one domain's labelled images (:class:`DomainSource`): ``len()``, ``image(i)`` (uint8
array [H, W, 3] or a PIL image), ``labels`` (class ids), ``class_names`` (the class list, the same list
and order in every domain of one data set, so class ``c`` means the same thing everywhere) and ``domain``.

Where the domains come from:

- the embedded shapes data: one style is one domain (:func:`shapes_domain`); 30 classes, ``colour × shape``
  of the main object (:mod:`geomix.data.shapes`);
- a folder tree ``ROOT/<domain>/<class>/<image>`` (Office-Home, PACS, DomainNet): :func:`folder_domains`,
  classes sorted by name, the union over all domains;
- a CSV with one row per image, columns (path, label, domain): :func:`csv_domains`.

Every file is checked up front like the caption loaders (:mod:`geomix.data.loaders`): a missing or
unreadable image, an empty field, a duplicated path raise one ``ValueError`` naming the file (and row).

The FSMDT split: every source domain is fully labelled; the target gives ``k`` labelled images per class
(:func:`few_shot_indices`, seeded by a stable hash, so the same in any process) and is evaluated on images
that are not among the shots. For the embedded data the shots come from the target style's *train* split
and evaluation uses its *test* split, disjoint by construction (:func:`shapes_fsmdt`); for file data the
evaluation images are the rest of the target domain (:func:`split_target`). :func:`check_fsmdt` checks a
target/sources/shots choice against the data before any training. The split and the checks live in
:mod:`geomix.data.fsmdt`.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from geomix.checks import check_choice, fail
from geomix.config import SEPARATORS
from geomix.data.loaders import _Collector, _image_problem
from geomix.data.shapes import STYLES, ShapesData, class_names, class_prompts

__all__ = [
    "IMAGE_SUFFIXES",
    "DomainSource",
    "ShapesDomain",
    "FolderDomain",
    "shapes_domain",
    "folder_domains",
    "csv_domains",
]

log = logging.getLogger(__name__)

#: File suffixes :func:`folder_domains` reads as images (case-insensitive); other files are skipped.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DomainSource(Protocol):
    """One domain's labelled images (the labelled sibling of :class:`geomix.data.sets.Source`)."""

    domain: str

    def __len__(self) -> int: ...
    def image(self, i: int) -> np.ndarray | Image.Image: ...
    @property
    def labels(self) -> list[int]: ...
    @property
    def class_names(self) -> list[str]: ...


# ----------------------------------------------------------------------------------------------------------
# The embedded data


class ShapesDomain:
    """The embedded shapes images of one style (one domain), with the main object's class as the label.

    Attributes:
        data: the underlying :class:`~geomix.data.shapes.ShapesData` (one style, one split).
        domain: the style; ``split`` the split.
    """

    def __init__(self, data: ShapesData) -> None:
        if len(data.styles) != 1:
            fail("styles", data.styles, "exactly one style per domain")
        self.data, self.domain, self.split = data, data.styles[0], data.split

    def __len__(self) -> int:
        return len(self.data)

    def image(self, i: int) -> np.ndarray:
        return self.data.image(i)

    @property
    def labels(self) -> list[int]:
        return self.data.labels

    @property
    def class_names(self) -> list[str]:
        return class_names()

    @property
    def class_prompts(self) -> list[str]:
        """The embedded data's own zero-shot prompts ("a photo of a red circle."), one per class."""
        return class_prompts()

    def describe(self) -> str:
        return f"shapes domain {self.domain!r} ({self.data.describe()})"


def shapes_domain(style: str, split: str, size: int, *, seed: int = 0, image_size: int = 32) -> ShapesDomain:
    """``size`` embedded images of one ``style`` and ``split``, labelled with their 30 classes.

    Index ``i`` is the same scene in every style (``geomix.data.shapes``): two domains of one split show the
    same scenes in different styles, as the paper's domains show the same classes.
    """
    check_choice("style", style, STYLES)
    return ShapesDomain(ShapesData(split, size, (style,), seed=seed, image_size=image_size,
                                   captions_per_image=1))


# ----------------------------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True)
class _Item:
    path: Path
    label: int
    where: str  # "file" or "file:row", for error messages


class FolderDomain:
    """One domain's images on disk (from a folder tree or a CSV), with class ids into ``class_names``.

    Attributes:
        domain: the domain's name; ``origin`` where it was read from (its folder, or the CSV file), named
            by errors; ``n_skipped`` bad images skipped (``skip_bad``).
    """

    def __init__(self, domain: str, items: Sequence[_Item], class_names: Sequence[str], *, origin: str,
                 n_skipped: int = 0) -> None:
        self.domain, self.items, self.origin, self.n_skipped = domain, list(items), origin, n_skipped
        self._class_names = list(class_names)

    def __len__(self) -> int:
        return len(self.items)

    def image(self, i: int) -> Image.Image:
        item = self.items[i]
        try:
            with Image.open(item.path) as img:
                return img.convert("RGB")
        except (OSError, ValueError) as e:
            raise ValueError(f"{item.where}: image {str(item.path)!r} is unreadable ({e})") from e

    def path(self, i: int) -> Path:
        return self.items[i].path

    @property
    def labels(self) -> list[int]:
        return [it.label for it in self.items]

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def describe(self) -> str:
        return f"domain {self.domain!r} from {self.origin} ({len(self)} images, {self.n_skipped} skipped)"


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_domains(root: str | Path, *, skip_bad: bool = False) -> dict[str, FolderDomain]:
    """Read ``ROOT/<domain>/<class>/<image>``: one :class:`FolderDomain` per domain folder.

    The class list is the union of the class folder names of all domains, sorted by name, so class ``c`` has
    the same index in every domain (a class missing from a domain has no images there: :func:`check_fsmdt`
    says so). Files whose suffix is not in :data:`IMAGE_SUFFIXES`, and hidden files and folders, are
    skipped. An image directly in a domain folder, or one that is missing or unreadable (PIL ``verify``),
    raises a ``ValueError`` naming the file (``skip_bad``: skipped, counted and logged instead). A domain
    folder without images is returned empty; :func:`check_fsmdt` refuses it if the task uses it.
    """
    base = Path(root).expanduser()
    layout = "a folder of domain folders ROOT/<domain>/<class>/<image>"
    if not base.is_dir():
        fail("root", str(root), f"{layout} (it is {'a file' if base.exists() else 'missing'})")
    domain_dirs = _subdirs(base)
    if not domain_dirs:
        fail("root", str(root), f"{layout} (it has no domain folders)")
    classes = sorted({c.name for d in domain_dirs for c in _subdirs(d)})
    index = {name: k for k, name in enumerate(classes)}
    out: dict[str, FolderDomain] = {}
    for d in domain_dirs:
        bad = _Collector(skip_bad)
        loose = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if loose:
            raise ValueError(f"{loose[0]}: an image directly in the domain folder {str(d)!r}: allowed images "
                             f"inside class folders, {layout}")
        items = []
        for c in _subdirs(d):
            for f in sorted(c.iterdir()):
                if f.name.startswith(".") or not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                problem = _image_problem(f)
                if problem is None:
                    items.append(_Item(f, index[c.name], str(f)))
                else:
                    bad.bad(str(f), problem)
        out[d.name] = FolderDomain(d.name, items, classes, origin=f"folder {str(d)!r}",
                                   n_skipped=bad.n_skipped)
    return out


def csv_domains(
    path: str | Path,
    *,
    img_key: str = "path",
    label_key: str = "label",
    domain_key: str = "domain",
    separator: str = ",",
    skip_bad: bool = False,
) -> dict[str, FolderDomain]:
    """Read a CSV with one row per image: image path (relative to the CSV's folder unless absolute), class
    label, domain.

    Labels are class names; the class list is every label of the file, sorted by name, or numerically when
    every label is an integer (so labels ``0..K-1`` keep their own value as the class id). ``separator`` is
    ``','`` / ``'comma'`` or ``'\\t'`` / ``'tab'``. A missing column, a short or long row, an empty field, an
    image given twice, a missing or unreadable image raise a ``ValueError`` naming the file and row
    (``skip_bad``: bad rows skipped, counted and logged; an empty file is always an error).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        fail("path", str(path), "a path to an existing CSV file")
    if separator not in SEPARATORS:
        fail("separator", separator, "a tab ('\\t', 'tab') or a comma (',', 'comma')")
    sep = SEPARATORS[separator]
    bad = _Collector(skip_bad)
    rows: list[tuple[Path, str, str, str]] = []  # (image, label, domain, where)
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=sep)
            columns = reader.fieldnames or []
            for key, value in (("img_key", img_key), ("label_key", label_key), ("domain_key", domain_key)):
                if value not in columns:
                    raise ValueError(f"{p}: {key}={value!r} is not a column of the file: allowed columns are "
                                     f"{', '.join(repr(c) for c in columns) or 'none (empty file)'} "
                                     f"(separator {sep!r})")
            seen: dict[str, str] = {}
            for row in reader:
                where = f"{p}:{reader.line_num}"
                values = [(row.get(k) or "").strip() for k in (img_key, label_key, domain_key)]
                empty = [k for k, v in zip((img_key, label_key, domain_key), values) if not v]
                if None in row or any(v is None for v in row.values()):
                    bad.bad(where, f"row has not the {len(columns)} fields of the header")
                elif empty:
                    bad.bad(where, f"empty field in column {empty[0]!r}")
                elif values[0] in seen:
                    bad.bad(where, f"image {values[0]!r} is also on {seen[values[0]]}: allowed each image "
                                   "once")
                else:
                    seen[values[0]] = where
                    rows.append((p.parent / values[0], values[1], values[2], where))
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}): allowed a UTF-8 CSV "
                         "file") from None
    except csv.Error as e:
        raise ValueError(f"{p}: not a readable CSV file ({e})") from None
    good = []
    for row in rows:
        problem = _image_problem(row[0])
        if problem is None:
            good.append(row)
        else:
            bad.bad(row[3], problem)
    if not good:
        raise ValueError(f"{p}: no usable rows: allowed at least one (path, label, domain) row")
    labels = {r[1] for r in good}
    numeric = all(lab.isdigit() for lab in labels)
    classes = sorted(labels, key=(lambda s: (int(s), s)) if numeric else None)
    index = {name: k for k, name in enumerate(classes)}
    by_domain: dict[str, list[_Item]] = {}
    for img, lab, dom, where in good:
        by_domain.setdefault(dom, []).append(_Item(img, index[lab], where))
    return {dom: FolderDomain(dom, items, classes, origin=f"CSV {str(p)!r}", n_skipped=bad.n_skipped)
            for dom, items in sorted(by_domain.items())}
