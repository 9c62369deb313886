"""The data of a ``task='classify'`` trial (FSMDT, ``docs/pmixup.md``) from its ``DataConfig``.

:func:`validate_transfer` checks the task against its data before training (every image of a file data set
read, :func:`geomix.data.fsmdt.check_fsmdt`); :func:`build_transfer` gives the sets the loop trains and
evaluates on (:class:`TransferData`). Where the domains come from:

- ``source='shapes'``: one style is one domain. The sources are ``train_size`` images of each source
  style's *train* split, the shots come from ``train_size`` images of the target style's train split, the
  evaluation is ``test_size`` images of its *test* split (``val_size`` of its *val* split for the curves),
  and each source style's test split (``eval_size`` or ``test_size`` images) is an extra set (the split
  of :func:`geomix.data.fsmdt.shapes_fsmdt`).
- ``source='folder'`` (``path/<domain>/<class>/<image>``) or ``'csv'`` (columns ``csv_img_key``,
  ``csv_label_key``, ``csv_domain_key``): the sources are their whole domains, the test images are the
  target's images that are not shots, there is no validation split, and each source domain (all of its
  images, the training images) is an extra set: its accuracy after transfer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from geomix.checks import fail
from geomix.config import DataConfig
from geomix.config.transfer import task_domains
from geomix.data.domains import DomainSource, csv_domains, folder_domains, shapes_domain
from geomix.data.fsmdt import check_fsmdt, split_target
from geomix.data.shapes import class_names

__all__ = ["TransferData", "read_domains", "validate_transfer", "build_transfer", "set_name"]

# The file domains read last (folder or CSV: every image verified once per process, not per check and build).
_READ: dict[tuple, dict[str, DomainSource]] = {}
_SHAPES: dict[tuple, dict[str, dict[str, DomainSource]]] = {}


@dataclass(frozen=True)
class TransferData:
    """One FSMDT trial's sets: the labelled ``sources`` (by domain), the target's ``shots`` and ``test``
    images, its ``val`` images (None: no validation split), the extra evaluation sets ``evals`` (name ->
    set; the source domains), the class names and one text prompt per class (the head's start)."""

    target: str
    sources: dict[str, DomainSource]
    shots: DomainSource
    test: DomainSource
    val: DomainSource | None
    evals: dict[str, DomainSource]
    class_names: list[str]


def set_name(domain: str) -> str:
    """A domain's name as an evaluation set (a column ``eval.<set>.acc``): letters, digits, ``_``, ``-``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", domain) or "_"


def read_domains(cfg: DataConfig) -> dict[str, DomainSource]:
    """The domains of file data (``source='folder'`` or ``'csv'``), read and checked once per process."""
    key = (cfg.source, cfg.path, cfg.csv_img_key, cfg.csv_label_key, cfg.csv_domain_key, cfg.csv_separator,
           cfg.skip_bad)
    if key not in _READ:
        if cfg.source == "folder":
            domains = folder_domains(cfg.path, skip_bad=cfg.skip_bad)
        else:
            domains = csv_domains(cfg.path, img_key=cfg.csv_img_key, label_key=cfg.csv_label_key or "label",
                                  domain_key=cfg.csv_domain_key, separator=cfg.csv_separator,
                                  skip_bad=cfg.skip_bad)
        _READ.clear()
        _READ[key] = domains
    return _READ[key]


def _shapes(cfg: DataConfig) -> dict[str, dict[str, DomainSource]]:
    """The embedded data's domains of ``cfg``'s task by split: ``train`` (every source and the target,
    ``train_size`` each), ``test`` (the target), ``val`` (the target), ``evals`` (the extra sets). Kept per
    process: a sweep's trials that differ in shots, seed or objective share the rendered images."""
    target, sources = task_domains(cfg)
    names = tuple(cfg.eval_styles if cfg.eval_styles is not None else sources)
    key = (cfg.seed, cfg.image_size, cfg.train_size, cfg.val_size, cfg.test_size, cfg.eval_size, target,
           sources, names)
    if key not in _SHAPES:
        one = {"seed": cfg.seed, "image_size": cfg.image_size}
        size = cfg.eval_size or cfg.test_size
        _SHAPES.clear()
        _SHAPES[key] = {
            "train": {s: shapes_domain(s, "train", cfg.train_size, **one) for s in (*sources, target)},
            "test": {target: shapes_domain(target, "test", cfg.test_size, **one)},
            "val": {target: shapes_domain(target, "val", cfg.val_size, **one)},
            "evals": {s: shapes_domain(s, "test", size, **one) for s in names},
        }
    return _SHAPES[key]


def validate_transfer(cfg: DataConfig) -> dict[str, int]:
    """Check the FSMDT task of ``cfg`` against its data (:func:`~geomix.data.fsmdt.check_fsmdt`: the target
    and sources are domains of it, with images and the same classes, and every target class has ``shots``
    images). Returns image counts: ``train`` (all source images), ``shots``, ``test``, ``skipped``.

    Raises:
        ValueError: naming the key (``data.target_domain``, ``data.source_domains``, ``data.shots``) or
            the file.
    """
    target, sources = task_domains(cfg)
    if cfg.source == "shapes":
        split = _shapes(cfg)
        check_fsmdt(split["train"], target, list(sources), cfg.shots)
        return {"train": cfg.train_size * len(sources), "shots": cfg.shots * len(class_names()),
                "test": cfg.test_size, "skipped": 0}
    domains = read_domains(cfg)
    check_fsmdt(domains, target, list(sources), cfg.shots)
    shots = cfg.shots * len(domains[target].class_names)
    if len(domains[target]) <= shots:
        fail("data.shots", cfg.shots, f"fewer than the images of every class of the target {target!r}: with "
             f"{cfg.shots} per class, none of its {len(domains[target])} images is left to test on")
    return {"train": sum(len(domains[s]) for s in sources), "shots": shots,
            "test": len(domains[target]) - shots,
            "skipped": max((getattr(d, "n_skipped", 0) for d in domains.values()), default=0)}


def build_transfer(cfg: DataConfig, *, shot_seed: int) -> TransferData:
    """The sets of the FSMDT task of ``cfg`` (checked first), the shots drawn with ``shot_seed``
    (``data.shot_seed``, else the run's seed)."""
    target, sources = task_domains(cfg)
    if cfg.source == "shapes":
        split = _shapes(cfg)
        train = split["train"]
        check_fsmdt(train, target, list(sources), cfg.shots)
        # shots from the target's train split, evaluation on its test split: disjoint by construction
        shots, test = split_target(train[target], cfg.shots, seed=shot_seed, test=split["test"][target])
        return TransferData(target, {s: train[s] for s in sources}, shots, test, split["val"][target],
                            dict(split["evals"]), class_names())
    domains = read_domains(cfg)
    check_fsmdt(domains, target, list(sources), cfg.shots)
    shots, test = split_target(domains[target], cfg.shots, seed=shot_seed)
    src = {s: domains[s] for s in sources}
    return TransferData(target, src, shots, test, None, {set_name(s): d for s, d in src.items()},
                        domains[target].class_names)
