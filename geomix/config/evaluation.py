"""The evaluation settings: :class:`EvaluationConfig` (the end-of-run probes) and the checks of the data
config's evaluation-set fields; ``docs/results.md`` (*Evaluation sets*) lists the columns they produce.

Evaluation sets: besides the test split, a run evaluates named sets whose metrics land in
``eval.<set>.<metric>`` columns. Embedded data: ``data.eval_styles`` (None = every style, ``[]`` = none),
each ``data.eval_size`` test images (None = ``test_size``) of one style, named by the style. Files:
``data.eval_sets``, a mapping name -> file (a CSV with the training file's columns, or a Karpathy JSON
whose ``test`` split is read, images relative to the JSON's folder).

Labels on CSV data: ``data.csv_label_key`` names a column of class names (one per image);
``data.class_list`` is an optional file of class names, one per line (None = the distinct names of the
split, sorted); ``data.class_templates`` are the zero-shot prompts, ``{}`` standing for the class name,
whose normalised text embeddings are averaged per class (CLIP's prompt ensembling).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from geomix.checks import check_choice, check_range, fail
from geomix.config.sections import SHAPE_STYLES, _Section

#: An evaluation set's name: it becomes part of column names (``eval.<set>.<metric>``), so no dots.
SET_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class EvaluationConfig(_Section):
    """What the end-of-run evaluation computes beyond retrieval, geometry and calibration.

    ``fewshot_shots`` / ``fewshot_draws``: a linear probe on the frozen image embeddings of every labelled
    evaluation set, ``k`` images per class drawn ``fewshot_draws`` times (seeded by ``run.seed``), tested on
    the set's other images; ``[]`` = off. None = those of ``AUTO_SHOTS`` (1, 4, 16) that the set allows
    (``k`` below its smallest class); a list given is used as it is, and a ``k`` some labelled set cannot
    take is refused before training. ``arith_size`` / ``arith_delta``: embedding arithmetic on the
    embedded data (``arith_size`` queries per style, 0 = off; ignored for file data): image(A) +
    δ·(text(B) − text(A)) must retrieve image(B), B differing from A in one attribute.
    ``sets_every_eval``: also evaluate the extra sets (``data.eval_*``) at every validation point, for
    per-set learning curves in ``history`` (one more pass over every set each time); by default they are
    evaluated once, at the end, with the test split.
    """

    section: ClassVar[str] = "evaluation"
    fewshot_shots: tuple[int, ...] | None = None
    fewshot_draws: int = 5
    arith_size: int = 250
    arith_delta: float = 1.0
    sets_every_eval: bool = False

    #: The shot counts of ``fewshot_shots=None`` (CLIP's few-shot protocol uses 1, 2, 4, 8, 16).
    AUTO_SHOTS: ClassVar[tuple[int, ...]] = (1, 4, 16)

    def shots_for(self, smallest_class: int) -> tuple[int, ...]:
        """The shot counts used on a set whose smallest class has ``smallest_class`` images."""
        if self.fewshot_shots is not None:
            return self.fewshot_shots
        return tuple(k for k in self.AUTO_SHOTS if k < smallest_class)

    def _check(self, p: str) -> None:
        for i, k in enumerate(self.fewshot_shots or ()):
            check_range(f"{p}.fewshot_shots[{i}]", k, 1, None)
            if k in self.fewshot_shots[:i]:
                fail(f"{p}.fewshot_shots", list(self.fewshot_shots), "distinct shot counts")
        check_range(f"{p}.fewshot_draws", self.fewshot_draws, 1, 100)
        if self.arith_size != 0:
            check_range(f"{p}.arith_size", self.arith_size, 5, None)
        check_range(f"{p}.arith_delta", self.arith_delta, 0.0, None, lo_open=True)


def check_eval_data(cfg: Any, p: str) -> None:
    """The evaluation-set fields of a ``DataConfig`` (``eval_*``, ``csv_label_key``, ``class_list``,
    ``class_templates``), checked on its construction."""
    shapes = cfg.source == "shapes"
    if cfg.eval_styles is not None:
        if not shapes:
            fail(f"{p}.eval_styles", list(cfg.eval_styles), f"None unless {p}.source is 'shapes' "
                 f"(name file sets in {p}.eval_sets)")
        for i, style in enumerate(cfg.eval_styles):
            check_choice(f"{p}.eval_styles[{i}]", style, SHAPE_STYLES)
            if style in cfg.eval_styles[:i]:
                fail(f"{p}.eval_styles", list(cfg.eval_styles), "a list of distinct styles")
    if cfg.eval_size is not None:
        if not shapes:
            fail(f"{p}.eval_size", cfg.eval_size, f"None unless {p}.source is 'shapes'")
        check_range(f"{p}.eval_size", cfg.eval_size, 2, None)
    if cfg.eval_sets and shapes:
        fail(f"{p}.eval_sets", dict(cfg.eval_sets), f"empty when {p}.source='shapes' (its sets are "
             f"{p}.eval_styles)")
    names = [name for name, _ in cfg.eval_sets]
    for name, path in cfg.eval_sets:
        if not SET_NAME.fullmatch(name) or name in ("val", "test", "train"):
            fail(f"{p}.eval_sets", name, "set names of letters, digits, '_' and '-' (no dots), other "
                 "than train, val and test")
        if names.count(name) > 1:
            fail(f"{p}.eval_sets", name, "distinct set names")
        if not path:
            fail(f"{p}.eval_sets.{name}", path, "a path to a CSV or Karpathy-JSON file")
    for key in ("csv_label_key", "class_list"):
        if getattr(cfg, key) is not None and cfg.source != "csv":
            fail(f"{p}.{key}", getattr(cfg, key), f"None unless {p}.source is 'csv'")
    if cfg.csv_label_key is not None and not cfg.csv_label_key:
        fail(f"{p}.csv_label_key", cfg.csv_label_key, "a column name, or None for data without labels")
    if cfg.class_list is not None and cfg.csv_label_key is None:
        fail(f"{p}.class_list", cfg.class_list, f"None unless {p}.csv_label_key names the label column")
    if not cfg.class_templates:
        fail(f"{p}.class_templates", [], "a non-empty list of prompt templates")
    for i, t in enumerate(cfg.class_templates):
        if t.count("{}") != 1:
            fail(f"{p}.class_templates[{i}]", t, "a template with exactly one {} for the class name")
