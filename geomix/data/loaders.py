"""Real image-caption data: open_clip-style CSV files and Karpathy-split JSON (Flickr30k / COCO).

CSV (``data.source='csv'``): one row per caption, columns ``data.csv_img_key`` (image path, relative to
the CSV's folder unless absolute) and ``data.csv_caption_key``, separated by ``data.csv_separator``;
several rows with the same image are that image's captions. ``data.path`` is the training file,
``data.val_path`` / ``data.test_path`` the evaluation ones.

Karpathy JSON (``data.source='json'``)::

    {"images": [{"filepath": "train2014"?, "filename": "x.jpg", "split": "train|val|test|restval",
                 "sentences": [{"raw": "a caption"}, ...], "label": 3?}, ...], "class_prompts": [...]?}

Images live under ``data.image_root`` (default: the JSON's folder) / ``filepath`` / ``filename``;
``restval`` counts as train. If every image of a split has an integer ``label`` and the file has
``class_prompts`` (as :mod:`geomix.data.export` writes), the split carries class labels.

Every problem (missing, unreadable or non-UTF-8 file, unknown column, malformed row, empty caption, a
label outside ``class_prompts``, empty split) raises a ``ValueError`` naming the file and row; with
``data.skip_bad`` bad rows and images are skipped,
counted (``n_skipped``) and logged instead, but an empty split is always an error. Images are checked
with PIL's ``verify`` (header and, for PNG, chunk checksums), which is cheap; an image that still fails
to decode later raises an error naming the file.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from geomix.config import SEPARATORS, DataConfig, check_choice

log = logging.getLogger(__name__)

KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}


@dataclass(frozen=True)
class _Record:
    path: Path
    captions: tuple[str, ...]
    where: str  # "file:row" or "file:images[i]", for error messages
    label: int | None = None


class FileSource:
    """Images on disk with their captions: the source behind CSV and JSON data sets.

    Attributes:
        n_skipped: bad rows and images skipped (``skip_bad``).
        labels: class ids per image, or None; ``class_prompts`` likewise.
        root: the data folder relative image paths start from (the CSV's folder, or the image root).
    """

    def __init__(self, records: list[_Record], *, name: str, n_skipped: int = 0,
                 class_prompts: list[str] | None = None, root: Path | None = None,
                 prompt_groups: int = 1) -> None:
        self.records, self.name, self.n_skipped, self.root = records, name, n_skipped, root
        has_labels = class_prompts is not None and all(r.label is not None for r in records)
        self.labels: list[int] | None = [int(r.label) for r in records] if has_labels else None
        self.class_prompts = class_prompts if has_labels else None
        self.prompt_groups = int(prompt_groups)  # prompts per class, class-major (prompt ensembling)

    def __len__(self) -> int:
        return len(self.records)

    def image(self, i: int) -> Image.Image:
        r = self.records[i]
        try:
            with Image.open(r.path) as img:
                return img.convert("RGB")
        except (OSError, ValueError) as e:
            raise ValueError(f"{r.where}: image {str(r.path)!r} is unreadable ({e})") from e

    def captions(self, i: int) -> list[str]:
        return list(self.records[i].captions)

    def describe(self) -> str:
        return f"{self.name} ({len(self)} images, {self.n_skipped} skipped)"


def _image_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"image file {str(path)!r} does not exist"
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as e:  # PIL raises many types for corrupt files; all mean "unreadable"
        return f"image file {str(path)!r} is unreadable ({type(e).__name__}: {e})"
    return None


class _Collector:
    """Raises on the first problem, or (skip_bad) counts and logs them."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad, self.n_skipped = skip_bad, 0

    def bad(self, where: str, problem: str) -> None:
        msg = f"{where}: {problem}"
        if not self.skip_bad:
            raise ValueError(msg + " (set data.skip_bad=true to skip bad rows)")
        self.n_skipped += 1
        log.warning("skipping %s", msg)


def _require_file(path: str | None, what: str) -> Path:
    if not path:
        raise ValueError(f"{what}={path!r} is invalid: allowed a path to an existing file")
    p = Path(path).expanduser()
    if not p.is_file():
        problem = "it is a folder" if p.is_dir() else "the file does not exist"
        raise ValueError(f"{what}={path!r} is invalid: {problem}; allowed a path to an existing file")
    return p


def _read_csv(path: Path, cfg: DataConfig, bad: _Collector) -> list[_Record]:
    try:  # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name
        with path.open(newline="", encoding="utf-8-sig") as f:
            return _csv_records(path, csv.DictReader(f, delimiter=cfg.csv_separator), cfg, bad)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}): allowed a UTF-8 CSV file "
                         "(re-save it as UTF-8)") from None
    except csv.Error as e:
        raise ValueError(f"{path}: not a readable CSV file ({e}): allowed one row per caption, separated "
                         f"by data.csv_separator={cfg.csv_separator!r}") from None


def _csv_records(path: Path, reader: csv.DictReader, cfg: DataConfig, bad: _Collector) -> list[_Record]:
    columns = reader.fieldnames
    if not columns:
        raise ValueError(f"{path}: the file is empty: allowed a header row naming the columns")
    keys = [("csv_img_key", cfg.csv_img_key), ("csv_caption_key", cfg.csv_caption_key)]
    if cfg.csv_label_key is not None:
        keys.append(("csv_label_key", cfg.csv_label_key))
    for key, value in keys:
        if value not in columns:
            other = "comma" if cfg.csv_separator == "\t" else "tab"
            hint = (f"; the header looks {other}-separated: set data.csv_separator={other}"
                    if len(columns) == 1 and SEPARATORS[other] in columns[0] else "")
            raise ValueError(
                f"{path}: data.{key}={value!r} is not a column of the file: allowed columns are "
                f"{', '.join(repr(c) for c in columns)} (separator {cfg.csv_separator!r}{hint})"
            )
    grouped: dict[str, tuple[list[str], str, str | None]] = {}
    label_key = cfg.csv_label_key
    for row in reader:
        where = f"{path}:{reader.line_num}"
        img, cap = (row.get(cfg.csv_img_key) or "").strip(), (row.get(cfg.csv_caption_key) or "").strip()
        label = (row.get(label_key) or "").strip() if label_key is not None else None
        if None in row:
            bad.bad(where, f"row has more fields than the {len(columns)} columns of the header")
        elif not img:
            bad.bad(where, f"empty image path in column {cfg.csv_img_key!r}")
        elif not cap:
            bad.bad(where, f"empty caption in column {cfg.csv_caption_key!r}")
        elif label is not None and not label:
            bad.bad(where, f"empty class name in column {label_key!r} (data.csv_label_key)")
        elif img in grouped and grouped[img][2] != label:
            bad.bad(where, f"image {img!r} has class {label!r} here but {grouped[img][2]!r} at "
                    f"{grouped[img][1]}: allowed one class per image")
        else:
            grouped.setdefault(img, ([], where, label))[0].append(cap)
    return [_Record(path.parent / img, tuple(caps), where, label)
            for img, (caps, where, label) in grouped.items()]


def read_class_list(path_text: str) -> list[str]:
    """``data.class_list``: class names, one per line (blank lines and ``#`` comments skipped), distinct."""
    path = _require_file(path_text, "data.class_list")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}): allowed a UTF-8 file of "
                         "class names, one per line") from None
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise ValueError(f"data.class_list={path_text!r} is invalid: the file names no class; allowed a file "
                         "of class names, one per line")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"data.class_list={path_text!r} is invalid: class {name!r} is listed twice; "
                             "allowed distinct class names")
        seen.add(name)
    return names


def _csv_classes(cfg: DataConfig, records: list[_Record], path: Path) -> tuple[list[_Record], list[str]]:
    """Class names -> ids (the order of ``data.class_list``, or the split's distinct names sorted)."""
    names = read_class_list(cfg.class_list) if cfg.class_list else sorted({str(r.label) for r in records})
    index = {name: i for i, name in enumerate(names)}
    out = []
    for r in records:
        if r.label not in index:
            raise ValueError(f"{r.where}: class {r.label!r} (column data.csv_label_key="
                             f"{cfg.csv_label_key!r}) is invalid: allowed a class of "
                             f"data.class_list={cfg.class_list!r} ({len(names)} classes: {_short(names)})")
        out.append(_Record(r.path, r.captions, r.where, index[r.label]))
    return out, names


def _read_karpathy(
    path: Path, split: str, root: Path, bad: _Collector
) -> tuple[list[_Record], list[str] | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({type(e).__name__}: {e}): allowed a UTF-8 Karpathy-split "
                         "JSON file") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: allowed a Karpathy-split JSON object with an 'images' list")
    prompts = data.get("class_prompts")
    if prompts is not None and (not isinstance(prompts, list) or not prompts
                                or not all(isinstance(p, str) and p.strip() for p in prompts)):
        raise ValueError(f"{path}: class_prompts={_short(prompts)} is invalid: allowed a non-empty list of "
                         "prompt strings, one per class id")
    records: list[_Record] = []
    allowed = sorted({s for v in KARPATHY_SPLITS.values() for s in v})
    for i, entry in enumerate(data["images"]):
        where = f"{path}:images[{i}]"
        if not isinstance(entry, dict):
            bad.bad(where, f"entry={_short(entry)} is invalid: allowed an object with filename, split and "
                    "sentences")
            continue
        if entry.get("split") not in allowed:
            split_value = _short(entry.get("split"))
            bad.bad(where, f"split={split_value} is invalid: allowed one of {', '.join(allowed)}")
            continue
        if entry["split"] not in KARPATHY_SPLITS[split]:
            continue
        if prompts is None and entry.get("label") is not None:  # the file lacks something, not this image
            raise ValueError(f"{where}: label={_short(entry['label'])} without a top-level class_prompts "
                             "list: allowed labels together with class_prompts (zero-shot accuracy needs "
                             "both), or neither")
        problem, caps = _entry_problem(entry, prompts)
        if problem:
            bad.bad(where, problem)
            continue
        records.append(_Record(root / entry.get("filepath", "") / entry["filename"], caps, where,
                               entry.get("label")))
    return records, prompts


def _entry_problem(entry: dict, prompts: list[str] | None) -> tuple[str | None, tuple[str, ...]]:
    """What is wrong with one Karpathy image entry (None if nothing), and its captions."""
    for key, what in (("filepath", "a folder name (a string)"), ("filename", "a non-empty file name")):
        value = entry.get(key, "" if key == "filepath" else None)
        if not isinstance(value, str) or (key == "filename" and not value):
            return f"{key}={_short(value)} is invalid: allowed {what}", ()
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        return f"sentences={_short(sentences)} is invalid: allowed a non-empty list of {{'raw': caption}}", ()
    caps = []
    for k, sentence in enumerate(sentences):
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if not isinstance(raw, str) or not raw.strip():
            return f"sentences[{k}].raw={_short(raw)} is invalid: allowed a non-empty caption string", ()
        caps.append(raw.strip())
    label = entry.get("label")
    n = len(prompts) if prompts is not None else 0
    if prompts is not None and (isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n):
        return (f"label={_short(label)} is invalid: allowed an integer class id in [0, {n - 1}] on every "
                f"image (the file has {n} class_prompts)"), ()
    return None, tuple(caps)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def file_source(cfg: DataConfig, split: str, *, size: int | None = None) -> FileSource:
    """Read and check one split of a CSV or Karpathy-JSON data set.

    Args:
        cfg: the data config (``source`` 'csv' or 'json').
        split: 'train', 'val' or 'test'.
        size: keep only the first ``size`` images (checked before any image is opened).

    Returns:
        A :class:`FileSource`; ``n_skipped`` counts what ``cfg.skip_bad`` skipped.
    """
    check_choice("split", split, tuple(KARPATHY_SPLITS))
    check_choice("data.source", cfg.source, ("csv", "json"))
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size={size!r} is invalid: allowed a positive integer or None")
    bad = _Collector(cfg.skip_bad)
    prompts, groups = None, 1
    if cfg.source == "csv":
        key = {"train": "path", "val": "val_path", "test": "test_path"}[split]
        path = _require_file(getattr(cfg, key), f"data.{key}")
        root = path.parent
        records = _read_csv(path, cfg, bad)
    else:
        path = _require_file(cfg.path, "data.path")
        root = Path(cfg.image_root).expanduser() if cfg.image_root else path.parent
        if not root.is_dir():
            raise ValueError(f"data.image_root={str(root)!r} is invalid: allowed an existing folder")
        records, prompts = _read_karpathy(path, split, root, bad)
    if size is not None:
        records = records[:size]
    good = []
    for r in records:
        problem = _image_problem(r.path)
        if problem is None:
            good.append(r)
        else:
            bad.bad(r.where, problem)
    if not good:
        raise ValueError(f"{path}: split {split!r} has no usable images: allowed a split with at least one")
    if bad.n_skipped:
        log.warning("%s split %r: skipped %d bad rows/images (data.skip_bad)", path, split, bad.n_skipped)
    if cfg.source == "csv" and cfg.csv_label_key is not None:
        good, names = _csv_classes(cfg, good, path)
        prompts = [t.format(name) for name in names for t in cfg.class_templates]
        groups = len(cfg.class_templates)
    return FileSource(good, name=f"{path}[{split}]", n_skipped=bad.n_skipped, class_prompts=prompts,
                      root=root, prompt_groups=groups)


def set_config(cfg: DataConfig, name: str) -> tuple[DataConfig, str]:
    """``(config, split)`` that reads extra evaluation set ``name`` of ``cfg.eval_sets`` with
    :func:`file_source`: a CSV as the test file, or a Karpathy JSON's ``test`` split (images under the
    JSON's folder)."""
    path = dict(cfg.eval_sets)[name]
    if cfg.source == "csv":
        return dataclasses.replace(cfg, test_path=path), "test"
    return dataclasses.replace(cfg, path=path, image_root=None), "test"


def eval_set_source(cfg: DataConfig, name: str, *, size: int | None = None) -> FileSource:
    """Extra evaluation set ``name`` of ``cfg.eval_sets`` (a missing file is named
    ``data.eval_sets.<name>``)."""
    path = dict(cfg.eval_sets).get(name)
    if path is None:
        raise ValueError(f"evaluation set {name!r} is invalid: allowed one of data.eval_sets "
                         f"{[n for n, _ in cfg.eval_sets]}")
    _require_file(path, f"data.eval_sets.{name}")
    set_cfg, split = set_config(cfg, name)
    src = file_source(set_cfg, split, size=size)
    src.name = f"{name}={src.name}"
    return src


def validate_files(cfg: DataConfig) -> dict[str, int]:
    """Check every split of a file data set, and that no image is in two splits (:mod:`.overlap`); returns
    image counts per split and the total ``skipped``."""
    from geomix.data.overlap import check_overlap

    counts: dict[str, int] = {"skipped": 0}
    sources = {}
    for split in KARPATHY_SPLITS:
        sources[split] = src = file_source(cfg, split)
        counts[split] = len(src)
        counts["skipped"] += src.n_skipped
    for name, _ in cfg.eval_sets:
        key = f"eval.{name}"
        sources[key] = src = eval_set_source(cfg, name)
        counts[key] = len(src)
        counts["skipped"] += src.n_skipped
    main = [split for split in sources if split in KARPATHY_SPLITS]
    check_overlap({split: [(r.path, r.where) for r in sources[split].records] for split in main},
                  {split: sources[split].root for split in main}, allow=cfg.allow_overlap)
    for key in sources:  # an extra set may repeat the test split, but must not hold a training image
        if key not in KARPATHY_SPLITS:
            check_overlap({s: [(r.path, r.where) for r in sources[s].records] for s in ("train", key)},
                          {s: sources[s].root for s in ("train", key)}, allow=cfg.allow_overlap)
    return counts
