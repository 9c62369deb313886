"""The catalog of tables: every module of this package declares its tables with :func:`table`.

:func:`analysis.build.build_tables` makes every registered table, in ``order``: a new table is one new
module here (a function ``trials -> Table | list[Table] | None`` decorated with ``@table(order=...)``) and
its test; nothing else lists it. The paper's tables sit at orders 10-80, in the paper's order.

A builder may take ``metric`` (the objective of the hyper-parameter tables), ``k`` (rows of a best-of
table) and ``holm`` (Holm-adjust comparisons with FT, default on) as keyword arguments; :func:`call` passes
what the function's signature names.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import Any

__all__ = ["table", "builders", "call"]

Builder = Callable[..., Any]
_REGISTERED: dict[str, tuple[float, Builder]] = {}


def table(order: float) -> Callable[[Builder], Builder]:
    """Register a table builder at position ``order`` (returns the function unchanged)."""

    def register(fn: Builder) -> Builder:
        _REGISTERED[f"{fn.__module__}.{fn.__qualname__}"] = (order, fn)
        return fn

    return register


def builders() -> list[Builder]:
    """Every registered builder of the catalog's modules, in ``order`` (importing the modules first)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return [fn for _, fn in sorted(_REGISTERED.values(), key=lambda item: item[0])]


def call(fn: Builder, trials: Any, **options: Any) -> list[Any]:
    """``fn(trials, **the options its signature names)`` as a list of tables (None dropped)."""
    params = inspect.signature(fn).parameters
    out = fn(trials, **{k: v for k, v in options.items() if k in params})
    return [t for t in (out if isinstance(out, list) else [out]) if t is not None]
