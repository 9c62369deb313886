"""Names, statuses, versions and the declared column types of the results schema (``docs/results.md``).

The metric columns are :data:`geomix.registry.METRIC_KEYS`; the key columns of each table, the allowed
statuses and splits, the schema version every row carries and the Arrow type of every known column are
declared here, once. A config column (``data.*`` ... ``run.*``) gets its type from the config classes
(:meth:`serial_fields` of each :class:`geomix.config.TrainConfig` section, so every registered term's
columns are declared too); a column declared nowhere is float64 when its values are numbers, bool when they
are bools, and string otherwise.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from geomix import registry
from geomix.registry import METRIC_KEYS
from geomix.registry import SPLITS as _SPLITS

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

#: 2: each write is its own Parquet part (``<table>/part-*.parquet``), typed by the declared schema.
#: 1: one ``<table>.parquet`` per table, rewritten on every write (read, never appended to).
SCHEMA_VERSION = 2
#: The version of the single-file layout (``trials.parquet`` / ``history.parquet``), which is still read.
LEGACY_VERSION = 1

#: Final metrics, as :func:`geomix.metrics.evaluate_embeddings` names them (trials hold the test split's).
METRIC_COLUMNS: tuple[str, ...] = METRIC_KEYS

STATUSES: tuple[str, ...] = ("completed", "early_stopped", "failed", "diverged")

#: Table name -> its key columns (a row per key; the last write of a key wins).
TABLES: dict[str, tuple[str, ...]] = {"trials": ("trial_id",), "history": ("trial_id", "step", "split")}
SPLITS: tuple[str, ...] = _SPLITS
CONFIG_FILE = "config.yaml"
#: Where a sweep puts each trial's evaluation embeddings, relative to the results folder.
EMBEDDINGS_DIR = "embeddings"
#: The column holding when a row was written (Unix ns, increasing within a process): the reader keeps,
#: per key, the row with the largest ``written_at``.
WRITTEN_AT = "written_at"

_STR, _INT, _FLOAT, _BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()


def _names(kind: pa.DataType, *names: str) -> dict[str, pa.DataType]:
    return dict.fromkeys(names, kind)


_METRICS = _names(_FLOAT, *METRIC_COLUMNS)
_COMMON = _names(_INT, "schema_version", WRITTEN_AT)

#: Declared columns of each table (config columns come from the config classes, see :func:`column_type`).
COLUMNS: dict[str, dict[str, pa.DataType]] = {
    "trials": {
        **_names(_STR, "sweep", "trial_id", "trial_key", "method", "status", "error", "device", "node_ids",
                 "embeddings_path", "overrides", "git_commit"),
        **_names(_INT, "method_rank", "seed", "epoch", "steps", "samples_seen", "num_workers"),
        **_METRICS,
        **_names(_FLOAT, "wall_s", "samples_per_s", "started_at", "finished_at", "trial_wall_s"),
        **_COMMON,
    },
    "history": {
        **_names(_STR, "trial_id", "split"),
        **_names(_INT, "step", "epoch", "samples_seen"),
        **_METRICS,
        **_names(_FLOAT, "train_loss", "reported_at"),
        **_COMMON,
    },
}
#: Declared column families, by prefix (the config sections are declared by :func:`config_types`).
PREFIXES: dict[str, dict[str, pa.DataType]] = {
    "trials": {"version.": _STR},
    "history": {"loss_": _FLOAT, "lam_": _FLOAT},
}


def _arrow_type(tp: Any) -> pa.DataType:
    """The column type of a config field's annotation: bool, int, float, str (and ``Literal`` of str),
    ``Optional`` of those; tuples, lists and anything else are JSON strings (``geomix.dotted.flatten``)."""
    if typing.get_origin(tp) is Literal:
        kinds = {type(a) for a in typing.get_args(tp)}
        return _arrow_type(kinds.pop()) if len(kinds) == 1 else _STR
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        kinds = {_arrow_type(a) for a in args}
        if kinds == {_INT, _FLOAT}:
            return _FLOAT
        return kinds.pop() if len(kinds) == 1 else _STR
    return {bool: _BOOL, int: _INT, float: _FLOAT, str: _STR}.get(tp, _STR)


def _section_types(cls: Any, prefix: str) -> dict[str, pa.DataType]:
    out: dict[str, pa.DataType] = {}
    for key, tp in cls.serial_fields().items():
        if isinstance(tp, type) and dataclasses.is_dataclass(tp) and hasattr(tp, "serial_fields"):
            out.update(_section_types(tp, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = _arrow_type(tp)
    return out


_CONFIG_CACHE: dict[tuple[str, ...], dict[str, pa.DataType]] = {}


def config_types() -> dict[str, pa.DataType]:
    """Dotted config column -> Arrow type, from :class:`geomix.config.TrainConfig` (every registered term's
    ``loss.w_<term>`` and ``mix.<term>.*`` included; recomputed when a term is registered)."""
    terms = tuple(registry.TERMS)
    if terms not in _CONFIG_CACHE:
        from geomix.config import SECTIONS

        _CONFIG_CACHE[terms] = {k: v for name, cls in SECTIONS.items()
                                for k, v in _section_types(cls, f"{name}.").items()}
    return _CONFIG_CACHE[terms]


def column_type(table: str, name: str) -> pa.DataType | None:
    """The declared Arrow type of column ``name`` of ``table``, or None when no declaration covers it."""
    declared = COLUMNS[table].get(name)
    if declared is not None:
        return declared
    for prefix, kind in PREFIXES[table].items():
        if name.startswith(prefix):
            return kind
    return config_types().get(name) if table == "trials" else None


_READS = f"schema_version={SCHEMA_VERSION} (and {LEGACY_VERSION}, the single-file layout)"


def check_version(df: pd.DataFrame, where: str, allowed: int = SCHEMA_VERSION) -> None:
    """Raise ``ValueError`` unless every row of ``df`` has schema_version ``allowed`` (this code's
    :data:`SCHEMA_VERSION` for a dataset of parts, :data:`LEGACY_VERSION` for a single-file table)."""
    if "schema_version" not in df.columns:
        raise ValueError(
            f"{where} has no schema_version column: it is too old (written before results schema "
            f"versioning); allowed is schema_version={allowed}. Re-run the sweep with this geomix."
        )
    versions = df["schema_version"].dropna().unique().tolist()
    for v in versions:
        try:
            iv = int(v)
        except (TypeError, ValueError):
            raise ValueError(
                f"{where} has schema_version={v!r}, which is unknown: allowed is {allowed}"
            ) from None
        if iv > SCHEMA_VERSION:
            raise ValueError(
                f"{where} has schema_version={iv}, which is too new: this geomix reads {_READS}; "
                "upgrade geomix to read it"
            )
        if iv < allowed:
            raise ValueError(
                f"{where} has schema_version={iv}, which is too old: this geomix reads {_READS}; "
                "re-run the sweep or use an older geomix"
            )
        if iv != allowed:
            raise ValueError(f"{where} has schema_version={iv}, which is unknown here: allowed is {allowed}")
    if df["schema_version"].isna().any():
        raise ValueError(f"{where} has rows without a schema_version: allowed is {allowed}")
