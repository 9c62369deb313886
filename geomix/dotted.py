"""Nested mappings and dotted keys: ``{"loss": {"w_m2": 0.1}} <-> {"loss.w_m2": 0.1}``, and deep merge.

The one implementation of each, for config overrides, Parquet columns and sweep rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["flatten", "unflatten", "merge"]


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"w_m2": 0.1}}`` -> ``{"loss.w_m2": 0.1}``; lists and tuples become JSON strings (one
    Parquet column each)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(list(v))
        else:
            out[key] = v
    return out


def unflatten(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """``{"loss.w_m2": 0.1}`` -> ``{"loss": {"w_m2": 0.1}}`` (values kept as they are).

    Raises:
        ValueError: a key that is both a value and a section (``a=1`` and ``a.b=2``).
    """
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        parts = str(key).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {key!r} conflicts with another override of {part!r}")
        if isinstance(node.get(parts[-1]), dict):
            raise ValueError(f"override {key!r} conflicts with another override of {parts[-1]!r}")
        node[parts[-1]] = value
    return out


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out
