"""Argument checks with one error format: ``X=v is invalid: allowed …`` (a ``ValueError``).

The config dataclasses raise :class:`ConfigError` from their ``__post_init__``; the config loader puts the
dotted section in front of the field (``mix.v.alpha``), so the message always names the exact key.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "ConfigError", "fail", "check_choice", "check_range", "check_seed", "check_writable_dir", "MAX_SEED",
]

#: The largest seed: torch's generators take a signed 64-bit integer.
MAX_SEED = 2**63 - 1


class ConfigError(ValueError):
    """A bad value: ``name`` (dotted), the value, and what is allowed."""

    def __init__(self, name: str, value: Any, allowed: str) -> None:
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"{name}={value!r} is invalid: allowed {allowed}")

    def relocated(self, section: str, prefix: str) -> ConfigError:
        """The same error with the leading ``section`` of its name replaced by ``prefix`` (``lambda.alpha``
        -> ``mix.v.alpha`` for the λ policy of the V term)."""
        name = self.name
        if name == section or name.startswith(section + "."):
            name = prefix + name[len(section):]
        return ConfigError(name, self.value, self.allowed)


def fail(name: str, value: Any, allowed: str) -> NoReturn:
    raise ConfigError(name, value, allowed)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        fail(name, value, "one of " + ", ".join(repr(c) for c in choices))


def check_range(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Check ``lo <= value <= hi`` (or strict where ``*_open``); NaN and non-numbers always fail."""
    lo_s = "-inf" if lo is None else f"{lo:g}"
    hi_s = "inf" if hi is None else f"{hi:g}"
    allowed = f"a finite number in {'(' if lo_open else '['}{lo_s}, {hi_s}{')' if hi_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        fail(name, value, allowed)
    if lo is not None and (value < lo or (lo_open and value == lo)):
        fail(name, value, allowed)
    if hi is not None and (value > hi or (hi_open and value == hi)):
        fail(name, value, allowed)


def check_seed(name: str, value: Any) -> None:
    """A seed: an integer in ``[0, MAX_SEED]`` (what ``torch.manual_seed`` takes without overflow)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        fail(name, value, "an integer in [0, 2**63 - 1]")


def check_writable_dir(name: str, path: str | os.PathLike[str]) -> None:
    """Check that ``path`` is a folder this process can create or write, without creating it: the folder
    itself, or its nearest existing parent, must be a writable folder. URIs (``s3://``) are not checked."""
    text = os.fspath(path)
    if "://" in text:
        return
    p = Path(text).expanduser().absolute()
    existing = next(q for q in (p, *p.parents) if q.exists() or q == q.parent)
    if not existing.is_dir():
        fail(name, text, f"a folder path ({str(existing)!r} is a file, not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(name, text, f"a folder this user can write ({str(existing)!r} is not writable)")
