"""The extra evaluation sets of a trials frame (``eval.<set>.<metric>`` columns), their roles and the derived
per-trial columns the robustness, few-shot and claims tables share.

**Roles.** On the embedded data (``data.source = "shapes"``, or no ``data.source``) a set named like a
style of ``data.styles`` is the fine-tune **target**, one named like a style of ``data.base_styles`` a
**source** (the base model's styles); any other set, and every set of file data, is **other**.

**Shifted sets** are the sets a robustness mean is taken over: the source sets when there are any, else every
set that is not a target. Their per-trial mean is the column ``eval.(shifted).<metric>`` (NaN for a trial
that lacks one of them), so that :func:`analysis.frame.direction` and ``decimals`` read the metric's own.

**Few-shot.** ``fewshot_k<k>`` (primary test split) and ``eval.<set>.fewshot_k<k>``; the per-trial
``fewshot_mean`` is the mean over the shot counts that every trial with a few-shot value has.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.frame import OK, metrics_present
from geomix.registry import ARITH_KINDS

EVAL_PREFIX = "eval."
TARGET, SOURCE, OTHER = "target", "source", "other"
SHIFTED = "(shifted)"  # the pseudo set name of the per-trial mean over the shifted sets
FEWSHOT_MEAN = "fewshot_mean"
_EVAL_RE = re.compile(r"^eval\.([^.]+)\.(.+)$")
_FEWSHOT_RE = re.compile(r"^fewshot_k(\d+)$")


def eval_col(set_name: str, metric: str) -> str:
    """``("flat", "rsum") -> "eval.flat.rsum"``."""
    return f"{EVAL_PREFIX}{set_name}.{metric}"


def shifted_col(metric: str) -> str:
    return eval_col(SHIFTED, metric)


def _styles(values: pd.Series) -> list[str]:
    """The styles named by a column of JSON list strings (or lists), in order of first appearance."""
    out: list[str] = []
    seen: set[str] = set()
    for v in values.dropna():
        key = repr(v)
        if key in seen:
            continue
        seen.add(key)
        try:
            names = json.loads(v) if isinstance(v, str) else list(v)
        except (TypeError, ValueError):
            names = [v] if isinstance(v, str) and v else []
        if isinstance(names, str):
            names = [names]
        for n in map(str, names):
            if n not in out:
                out.append(n)
    return out


@dataclass(frozen=True)
class EvalSets:
    """The evaluation sets of one data set's trials that have a metric, in table order, with roles."""

    sets: list[str]
    roles: dict[str, str]

    @property
    def shifted(self) -> list[str]:
        sources = [s for s in self.sets if self.roles[s] == SOURCE]
        return sources or [s for s in self.sets if self.roles[s] != TARGET]

    @property
    def shifted_label(self) -> str:
        """``"source mean"`` or ``"mean of other sets"``."""
        return "source mean" if any(self.roles[s] == SOURCE for s in self.sets) else "mean of other sets"

    def header(self, s: str) -> str:
        """``"dark (target)"``, ``"flat (source)"``, ``"coco"``."""
        return s if self.roles[s] == OTHER else f"{s} ({self.roles[s]})"

    def note(self) -> str:
        """One sentence naming the target, source and other sets."""
        parts = []
        for role, what in ((TARGET, "fine-tune target (data.styles)"),
                           (SOURCE, "the base model's source styles (data.base_styles)"),
                           (OTHER, "other sets")):
            names = [s for s in self.sets if self.roles[s] == role]
            if names:
                parts.append(f"{', '.join(names)} = {what}")
        return "Evaluation sets: " + "; ".join(parts) + "."


def set_names(df: pd.DataFrame, metrics: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Names of the sets with an ``eval.<set>.<metric>`` column holding a number (for any of ``metrics``,
    or any metric), in column order."""
    out: list[str] = []
    for c in df.columns:
        m = _EVAL_RE.match(str(c))
        if not m or m.group(1) == SHIFTED or m.group(1) in out:
            continue
        if metrics is not None and m.group(2) not in metrics:
            continue
        if metrics_present(df, [c]):
            out.append(m.group(1))
    return out


def eval_sets(df: pd.DataFrame, metrics: list[str] | tuple[str, ...] | None = None) -> EvalSets:
    """The sets of ``df`` (one data set's trials) with a value for any of ``metrics``: targets first (in
    ``data.styles`` order), then sources (``data.base_styles`` order), then the others by name."""
    names = set_names(df, metrics)
    targets: list[str] = []
    sources: list[str] = []
    source = df["data.source"] if "data.source" in df.columns else pd.Series([None] * len(df), dtype=object)
    shapes = bool((source.isna() | (source.astype(str) == "shapes")).any())  # null: not said, the default
    if shapes:
        if "data.styles" in df.columns:
            targets = _styles(df["data.styles"])
        if "data.base_styles" in df.columns:
            sources = [s for s in _styles(df["data.base_styles"]) if s not in targets]
    roles = {s: TARGET if s in targets else SOURCE if s in sources else OTHER for s in names}
    rank = {s: i for i, s in enumerate([*targets, *sources])}
    ordered = sorted(names, key=lambda s: (rank.get(s, len(rank)), s))
    return EvalSets(ordered, roles)


def add_shifted_mean(df: pd.DataFrame, metric: str) -> dict[str, EvalSets]:
    """Add ``eval.(shifted).<metric>`` to ``df`` (prepared, modified in place) per data set: each trial's
    mean over its data set's shifted sets (NaN when it lacks one). Returns the sets per data set that has
    at least one shifted set."""
    col = shifted_col(metric)
    df[col] = np.nan
    found = {}
    for ds, idx in df.groupby("dataset").groups.items():
        info = eval_sets(df.loc[idx], [metric])
        if not info.shifted:
            continue
        cols = [eval_col(s, metric) for s in info.shifted]
        vals = df.loc[idx, cols].apply(pd.to_numeric, errors="coerce")
        df.loc[idx, col] = vals.mean(axis=1, skipna=False)
        found[str(ds)] = info
    return found


def fewshot_ks(df: pd.DataFrame, set_name: str | None = None) -> list[int]:
    """The shot counts ``k`` with a ``fewshot_k<k>`` column (of the primary split, or of ``set_name``)
    holding a number, ascending."""
    prefix = "" if set_name is None else eval_col(set_name, "")
    ks = []
    for c in df.columns:
        c = str(c)
        if not c.startswith(prefix):
            continue
        m = _FEWSHOT_RE.match(c[len(prefix):])
        if m and metrics_present(df, [c]):
            ks.append(int(m.group(1)))
    return sorted(set(ks))


def add_fewshot_mean(df: pd.DataFrame) -> list[int]:
    """Add ``fewshot_mean`` (primary split) to ``df`` (modified in place): each trial's mean over the shot
    counts that every completed trial with a few-shot value has. Returns those ``k`` ([] = no column)."""
    df[FEWSHOT_MEAN] = np.nan
    ks = fewshot_ks(df)
    if not ks:
        return []
    cols = [f"fewshot_k{k}" for k in ks]
    vals = df[cols].apply(pd.to_numeric, errors="coerce")
    has = vals.notna().any(axis=1) & (df["status"] == OK)
    common = [k for k, c in zip(ks, cols) if vals.loc[has, c].notna().all()]
    if not common:
        return []
    df[FEWSHOT_MEAN] = vals[[f"fewshot_k{k}" for k in common]].mean(axis=1, skipna=False)
    return common


def arith_kinds(df: pd.DataFrame) -> list[str]:
    """The arithmetic kinds with an ``arith_r1_<kind>`` value: the registry's kinds in its order, then any
    other by name."""
    found = [str(c)[len("arith_r1_"):] for c in df.columns if str(c).startswith("arith_r1_")]
    found = [k for k in found if metrics_present(df, [f"arith_r1_{k}"])]
    known = [k for k in ARITH_KINDS if k in found]
    return known + sorted(k for k in found if k not in known)
