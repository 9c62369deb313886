"""The choice types of the config and the base class that validates a section on construction.

Choices are ``Literal`` types: the allowed values live in the type and nowhere else (the tuples below are
read off the types for callers that list them, e.g. the search space).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

from geomix.checks import check_choice

LambdaPolicyName = Literal["beta", "fixed", "progressive", "history"]
PartnerPolicyName = Literal["reverse", "random", "history"]
Geometry = Literal["geodesic", "linear"]
Decay = Literal["constant", "inverse_epoch"]
#: The learning rate after the linear warm-up: cosine or linear decay to 0 at the last step, or constant.
Schedule = Literal["cosine", "linear", "constant"]
LossKind = Literal["contrastive", "imix", "unmix"]
Estimator = Literal["sliced", "exact"]
DataSource = Literal["shapes", "csv", "json", "folder"]
#: What a trial learns: image-caption retrieval (CLIP and the mix losses) or FSMDT classification (P-Mixup).
Task = Literal["retrieval", "classify"]
Pairing = Literal["random", "same_class"]
EvalCaptions = Literal["all", "first"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
#: Visual styles (domains) of the embedded shapes data; geomix.data.shapes draws exactly these.
ShapeStyle = Literal["flat", "outline", "textured", "dark"]

#: ``data.csv_separator`` as it may be spelled -> the separator itself.
SEPARATORS: dict[str, str] = {"\t": "\t", "\\t": "\t", "tab": "\t", ",": ",", "comma": ","}

LAMBDA_POLICIES: tuple[str, ...] = typing.get_args(LambdaPolicyName)
PARTNER_POLICIES: tuple[str, ...] = typing.get_args(PartnerPolicyName)
MIX_GEOMETRIES: tuple[str, ...] = typing.get_args(Geometry)
WEIGHT_DECAYS: tuple[str, ...] = typing.get_args(Decay)
LR_SCHEDULES: tuple[str, ...] = typing.get_args(Schedule)
LOSS_KINDS: tuple[str, ...] = typing.get_args(LossKind)
WASSERSTEIN_ESTIMATORS: tuple[str, ...] = typing.get_args(Estimator)
SHAPE_STYLES: tuple[str, ...] = typing.get_args(ShapeStyle)
TASKS: tuple[str, ...] = typing.get_args(Task)


def literal_choices(tp: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` type (also inside ``Optional``), else None."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == 1 and typing.get_origin(args[0]) is Literal:
        return typing.get_args(args[0])
    return None


class _Section:
    """Validation on construction: every ``Literal`` field is checked against its choices, then
    :meth:`_check` (ranges, cross-field rules). ``section`` is the dotted name errors carry."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            choices = literal_choices(hints[f.name])
            value = getattr(self, f.name)
            if choices is not None and value is not None:
                check_choice(f"{self.section}.{f.name}", value, choices)
        self._check(self.section)

    def _check(self, p: str) -> None:  # noqa: B027 - a section without ranges has nothing more to check
        pass

    @classmethod
    def serial_fields(cls) -> dict[str, Any]:
        """Key -> type of this section as files and overrides spell it (the dataclass fields by default)."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    def serial_items(self) -> Iterator[tuple[str, Any]]:
        """(key, value) pairs as files spell them, in order."""
        for f in dataclasses.fields(self):
            yield f.name, getattr(self, f.name)

#: ``model.pretrained`` for the embedded base model (:mod:`geomix.basemodel`), the default starting point.
EMBEDDED_BASE = "embedded-base"

#: Settings that change where and how a trial runs, not what it computes (threads, progress bar, logging
#: cadence, output and cache folders): left out of a trial's identity and of "same config" comparisons.
RUN_ONLY: frozenset[str] = frozenset({
    "run.threads", "run.progress", "run.log_every", "run.out_dir", "run.resume", "model.cache_dir",
    "data.loader_workers", "data.allow_overlap",
})
