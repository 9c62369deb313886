"""Rows -> a typed Arrow table, by the declared schema (:mod:`store.schema`), and the union of part schemas.

A declared column takes only values of its type (an int64 column takes ints and integral floats, a float64
column any real number, a string column strings, a bool column bools; None, NaN and ``pd.NA`` are null);
anything else is a ``ValueError`` naming the row, the column and the value, raised by :func:`coerce` before
a byte is written. A column declared nowhere is float64 when all its values are numbers, bool when all are
bools, string otherwise (each value as ``str``), and float64 when it holds only nulls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from store.schema import column_type

__all__ = ["coerce", "to_arrow", "unify_schemas"]

_STR, _INT, _FLOAT, _BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()
_BOOLS = (bool, np.bool_)
_INTS = (int, np.integer)
_REALS = (int, float, np.integer, np.floating)


class _Misfit(Exception):
    pass


def _is_null(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and v != v)


def _as_float(v: Any) -> float:
    if isinstance(v, _REALS) and not isinstance(v, _BOOLS):
        return float(v)
    raise _Misfit


def _as_int(v: Any) -> int:
    if isinstance(v, _INTS) and not isinstance(v, _BOOLS):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    raise _Misfit


def _as_str(v: Any) -> str:
    if isinstance(v, str):
        return str(v)
    raise _Misfit


def _as_bool(v: Any) -> bool:
    if isinstance(v, _BOOLS):
        return bool(v)
    raise _Misfit


_FIT: dict[pa.DataType, tuple[Callable[[Any], Any], str]] = {
    _FLOAT: (_as_float, "a number (float64)"),
    _INT: (_as_int, "an integer (int64)"),
    _STR: (_as_str, "a string"),
    _BOOL: (_as_bool, "true or false (bool)"),
}


def _plain(v: Any) -> Any:
    """A numpy scalar as its Python value (Arrow infers those), anything else as it is."""
    return v.item() if isinstance(v, np.generic) else v


def coerce(table: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with nulls as None and every declared column's value converted to its type.

    Raises:
        ValueError: a value that does not fit its column's declared type (one line: row, column, value).
    """
    out = []
    kinds: dict[str, pa.DataType | None] = {}
    for i, row in enumerate(rows):
        typed: dict[str, Any] = {}
        for name, v in row.items():
            if _is_null(v):
                typed[name] = None
                continue
            if name not in kinds:
                kinds[name] = column_type(table, name)
            declared = kinds[name]
            if declared is None:
                typed[name] = _plain(v)
                continue
            fit, allowed = _FIT[declared]
            try:
                typed[name] = fit(v)
            except _Misfit:
                shown = repr(v) if len(repr(v)) <= 80 else repr(v)[:77] + "..."
                raise ValueError(
                    f"{table} row {i} {name}={shown} ({type(v).__name__}) is invalid: allowed {allowed}, "
                    f"the declared type of {name} (store.schema)"
                ) from None
        out.append(typed)
    return out


def _undeclared(values: list[Any]) -> pa.DataType:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return _BOOL
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return _FLOAT
    return _STR


def to_arrow(table: str, rows: Sequence[Mapping[str, Any]], last: Sequence[str] = ()) -> pa.Table:
    """Rows from :func:`coerce` as an Arrow table typed by the declared schema of ``table``.

    Columns come in order of first appearance, those in ``last`` (bookkeeping columns) at the end; a row
    without a column has null there.
    """
    names = list(dict.fromkeys(k for row in rows for k in row if k not in last))
    names += [k for k in last if any(k in row for row in rows)]
    fields, as_str = [], []
    for name in names:
        kind = column_type(table, name)
        if kind is None:
            kind = _undeclared([row.get(name) for row in rows])
            if kind == _STR:
                as_str.append(name)
        fields.append(pa.field(name, kind))
    if as_str:  # a column declared nowhere that is not all numbers or all bools: every value as its str
        rows = [{**row, **{n: str(row[n]) for n in as_str if row.get(n) is not None}} for row in rows]
    return pa.Table.from_pylist(list(rows), schema=pa.schema(fields))


def unify_schemas(schemas: Sequence[pa.Schema]) -> pa.Schema:
    """The union of part schemas, in order of first appearance. A column missing in a part reads as null;
    a column typed differently by different parts (a null part, int64 and float64, or a number and a
    string for a column declared nowhere) gets the wider type: the non-null one, float64, else string."""
    kinds: dict[str, pa.DataType] = {}
    for schema in schemas:
        for field in schema:
            seen = kinds.get(field.name)
            if seen is None or pa.types.is_null(seen):
                kinds[field.name] = field.type
            elif seen == field.type or pa.types.is_null(field.type):
                continue
            elif {seen, field.type} <= {_INT, _FLOAT}:
                kinds[field.name] = _FLOAT
            else:
                kinds[field.name] = _STR
    return pa.schema(list(kinds.items()))
