"""No image in two splits: a test image that is also a training image makes the test numbers a lie.

Two splits share an image when they name the same file (after resolving ``..`` and symbolic links) or two
files with the same bytes (a copy under another name). Content is compared by BLAKE2 hash, and only for
files whose size another split's file shares, so a data set whose splits are apart costs one ``stat`` per
image. Image paths outside the data folder (an absolute path, ``../``) are allowed, with a warning: the
split checks hold wherever the files lie.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["check_overlap"]

_CHUNK = 1 << 20


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=20)
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _shared(
    keyed: Mapping[str, Sequence[tuple[object, str]]],
) -> list[tuple[str, str, str, str]]:
    """(split a, where a, split b, where b) for every key that two splits share, first occurrence each."""
    first: dict[object, tuple[str, str]] = {}
    out = []
    for split, items in keyed.items():
        for key, where in items:
            seen = first.setdefault(key, (split, where))
            if seen[0] != split:
                out.append((seen[0], seen[1], split, where))
    return out


def check_overlap(
    splits: Mapping[str, Sequence[tuple[Path, str]]],
    roots: Mapping[str, Path | None],
    *,
    allow: bool = False,
) -> None:
    """Refuse (or, with ``allow``, warn about) image files that are in two splits, by path or by content.

    Args:
        splits: split -> ``(image path, where)`` per image, ``where`` naming the file and row.
        roots: split -> its data folder (relative paths start there), for the outside-the-folder warning.
        allow: ``data.allow_overlap``: warn instead of raising.

    Raises:
        ValueError: naming the first shared image in both splits and how many there are.
    """
    resolved = {s: [(p.resolve(), f"{w} {str(p)!r}") for p, w in items] for s, items in splits.items()}
    for split, items in resolved.items():
        root = roots.get(split)
        inside = root.resolve() if root is not None else None
        outside = [w for p, w in items if inside is not None and not p.is_relative_to(inside)]
        if outside:
            log.warning("%d of %d images of split %r lie outside the data folder %s (e.g. %s)",
                        len(outside), len(items), split, root, outside[0])
    same_file = _shared(resolved)
    size = {p: p.stat().st_size for items in resolved.values() for p, _ in items}
    splits_of_size: dict[int, set[str]] = defaultdict(set)
    for split, items in resolved.items():
        for p, _ in items:
            splits_of_size[size[p]].add(split)
    reported = {w for _, wa, _, wb in same_file for w in (wa, wb)}  # by path already: not again by content
    same_bytes = _shared({s: [(_digest(p), w) for p, w in items
                              if len(splits_of_size[size[p]]) > 1 and w not in reported]
                          for s, items in resolved.items()})
    for kind, found in (("file", same_file), ("content", same_bytes)):
        if not found:
            continue
        a, wa, b, wb = found[0]
        msg = (f"split {b!r} shares an image {kind} with split {a!r} ({wb}; {wa}), {len(found)} shared in "
               "all: allowed splits without a shared image (set data.allow_overlap=true to allow it, with a "
               "warning)")
        if not allow:
            raise ValueError(msg)
        log.warning("%s", msg)
