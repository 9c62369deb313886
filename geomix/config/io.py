"""Config files and overrides: dict <-> dataclass, YAML, dotted ``key=value`` overrides, hashing.

Layering (as DINOv2 does it): dataclass defaults -> an experiment YAML file -> ``key=value`` overrides on the
command line. Unknown keys are an error, never ignored; a value of the wrong type is named with its dotted
key. The resolved config is a plain dict (:func:`to_dict`) that round-trips through :func:`from_dict`, so it
is saved beside results and reloaded.

Why hand-written rather than OmegaConf or pydantic: the schema is a handful of frozen dataclasses whose
validation lives in their ``__post_init__`` (so every construction path validates, pickling to Ray workers
is plain dataclass pickling), errors keep the project's one-line ``X=v is invalid: allowed …`` format, and
the per-term keys (``loss.w_<term>``, ``mix.<term>``) come from the open term registry, which neither
library's structured configs express without the same amount of glue.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from geomix import atomic, registry
from geomix.checks import ConfigError, fail
from geomix.config.schema import TrainConfig
from geomix.config.sections import _Section, literal_choices
from geomix.dotted import merge, unflatten

T = TypeVar("T")
_INT64 = (-(2**63), 2**63 - 1)

__all__ = [
    "from_dict", "to_dict", "parse_overrides", "load_yaml", "build_config", "load_config", "config_hash",
    "save_config",
    "admits_none",
]


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(name: str, tp: Any, value: Any) -> Any:
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        fail(name, value, f"a value of type {getattr(tp, '__name__', tp)}")
    if isinstance(tp, type) and issubclass(tp, _Section):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            fail(name, value, f"a mapping of {tp.__name__} fields")
        return from_dict(tp, value, prefix=name)
    choices = literal_choices(tp)
    if choices is not None:
        if value not in choices:
            fail(name, value, "one of " + ", ".join(repr(c) for c in choices))
        return value
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, Mapping) and len(args) == 2 and typing.get_origin(args[0]) is tuple:
            value = [list(item) for item in value.items()]  # name -> value pairs may be written as a mapping
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            fail(name, value, "a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{name}[{i}]", args[0], v) for i, v in enumerate(value))
        if len(args) != len(value):
            fail(name, value, f"a list of exactly {len(args)} values")
        return tuple(_coerce(f"{name}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail(name, value, "true or false")
    if tp is int:
        if isinstance(value, float) and value.is_integer():  # 3.0: a YAML float, or a Parquet column
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            fail(name, value, "an integer")
        if not _INT64[0] <= value <= _INT64[1]:
            fail(name, value, "an integer in [-2**63, 2**63 - 1]")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(name, value, "a number")
        try:
            return float(value)
        except OverflowError:  # an int of hundreds of digits
            fail(name, value, "a finite number")
    if tp is str:
        if not isinstance(value, str):
            fail(name, value, "a string")
        return value
    return value


def admits_none(key: str, cls: type | None = None) -> bool | None:
    """Whether the config field at dotted ``key`` may be null (``None``: no such field).

    Cached on the key, the class and the registered terms (the per-term keys come from the open registry,
    so a term registered or removed later is seen).
    """
    return _admits_none(key, cls or TrainConfig, tuple(registry.TERMS))


@functools.cache
def _admits_none(key: str, cls: type, terms: tuple[str, ...]) -> bool | None:
    *path, last = key.split(".")
    for part in path:
        tp, _ = _strip_optional(cls.serial_fields().get(part))  # type: ignore[attr-defined]
        if not (isinstance(tp, type) and issubclass(tp, _Section)):
            return None
        cls = tp
    fields = cls.serial_fields()  # type: ignore[attr-defined]
    return _strip_optional(fields[last])[1] if last in fields else None


def from_dict(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build config class ``cls`` from a (nested) mapping, validated by its construction.

    Raises:
        ConfigError (a ``ValueError``): an unknown key, a wrong type or a bad value, named by its dotted key
            under ``prefix``.
    """
    data = dict(data or {})
    fields = cls.serial_fields()  # type: ignore[attr-defined]
    unknown = sorted(str(k) for k in data if k not in fields)  # str: a YAML key may be a number
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ValueError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}: allowed keys under "
            f"{prefix or 'the top level'} are {', '.join(sorted(fields))}"
        )
    for key, default in _section_defaults(cls).items():  # a partial mapping completes the field's default
        if isinstance(data.get(key), Mapping):
            data[key] = merge(to_dict(default), data[key])
    kwargs = {key: _coerce(f"{prefix}.{key}" if prefix else key, fields[key], value)
              for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:  # the section's own name -> where it sits in this mapping
        section = cls.section  # type: ignore[attr-defined]
        raise (e.relocated(section, prefix) if section and prefix else e) from None


def _section_defaults(cls: type) -> dict[str, Any]:
    """Fields of ``cls`` whose default is a section object other than its class's defaults (e.g.
    ``transfer.lam``, progressive by default): a partial mapping given for one (``transfer.lam.sigma=0.1``)
    changes that default, it does not start over from the class's."""
    out = {}
    for f in dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ():
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if isinstance(default, _Section) and default != type(default)():
                out[f.name] = default
    return out


def to_dict(obj: Any) -> dict[str, Any]:
    """A config object as a nested dict of plain values (tuples become lists), ready for YAML or JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, _Section):
            return {k: plain(x) for k, x in v.serial_items()}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    return plain(obj)


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["loss.w_m2=0.1", "data.styles=[dark]"]`` -> nested dict; values are parsed as YAML (1.2 numbers:
    ``2e-3`` is a float). A value that is not valid YAML is taken as the string it is (``csv_separator=,``)
    unless it opens a list, mapping or quote (``[1``), which is an error.
    """
    flat: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is invalid: allowed form is dotted.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ValueError(f"override {item!r} is invalid: allowed form is dotted.key=value")
        flat[key] = _override_value(item, raw)  # a key given twice: the last wins, as on any command line
    try:
        return unflatten(flat)
    except ValueError as e:  # optim=1 and optim.lr=1
        raise ValueError(f"{e}: allowed is a section's keys (section.key=value) or the section itself, not "
                         "both") from None


def _override_value(item: str, raw: str) -> Any:
    if not raw:
        return None  # key= clears an optional value (null)
    if not raw.strip() or raw.lstrip()[:1] in ("|", ">"):  # a tab (separator); YAML's block-scalar marks
        return raw
    try:
        return yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as e:
        if raw.lstrip()[:1] in ("[", "{", "'", '"'):
            allowed = "each key once" if isinstance(e, _DuplicateKey) else (
                "a YAML value, e.g. [a, b] for a list or 'text' for a string")
            raise ValueError(f"override {item!r} {_yaml_problem(e)}: allowed {allowed}") from None
        return raw  # not YAML: the text itself (a separator ",", a name "@x"); the field's type checks it


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's numbers (``1e-3`` is a float, not the string YAML 1.1 makes of
    it), no timestamps (``2024-01-01`` stays a string), and duplicate keys refused instead of last-wins."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key == "<<" or not isinstance(key, typing.Hashable):
                continue  # a merge key overrides on purpose; an unhashable key fails in PyYAML itself
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"has the key {key!r} twice (lines {first} and {second})")


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (
        "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
                   |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line for a YAML error: what and where (PyYAML's own message spans several lines)."""
    if isinstance(e, _DuplicateKey):
        return str(e)
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"is not valid YAML ({problem}{where})"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` (:class:`_Loader`: YAML 1.2 numbers, duplicate keys refused).

    Raises:
        ValueError: a missing, unreadable or non-UTF-8 file, invalid YAML, a duplicate key, or a document
            that is not a mapping, naming the file (and the line).
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ValueError(f"config file {name!r} {what}: allowed is a path to a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {name!r} is not UTF-8 text (byte {e.start}): allowed is a UTF-8 "
                         "YAML file") from None
    except OSError as e:
        raise ValueError(f"config file {name!r} cannot be read ({e.strerror}): allowed is a readable YAML "
                         "file") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        allowed = "each key once" if isinstance(e, _DuplicateKey) else "a YAML mapping of config keys"
        raise ValueError(f"config file {name!r} {_yaml_problem(e)}: allowed is {allowed}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"config file {name!r} holds {type(data).__name__}: allowed is a YAML mapping")
    return data


def build_config(data: Mapping[str, Any] | None = None, overrides: Iterable[str] = ()) -> TrainConfig:
    """Defaults <- ``data`` <- ``overrides``, validated on construction."""
    return from_dict(TrainConfig, merge(data or {}, parse_overrides(overrides)))


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> TrainConfig:
    """Defaults <- YAML file <- ``key=value`` overrides, validated. The command-line entry point's loader."""
    return build_config(load_yaml(path) if path else {}, overrides)


def config_hash(obj: Any, length: int = 12) -> str:
    """A stable short hash of a config (config object or dict), e.g. to cache a base model by its recipe."""
    payload = json.dumps(to_dict(obj) if isinstance(obj, _Section) else obj, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: temp file + rename)."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    atomic.write_text(path, yaml.safe_dump(data, sort_keys=False))
