"""The sweep YAML as typed, frozen configs: :class:`SweepFile` and :class:`SearchSettings`.

A sweep file (``sweeps/configs/*.yaml``) holds ``name``, ``seeds``, ``base`` (a diff over
``geomix.config.TrainConfig``'s defaults), ``methods`` (method id -> dotted diff over ``base``; any id is
valid, in the order the file gives), ``search`` (the search settings) and ``smoke_test`` (a diff of all of
these that ``--smoke-test`` applies). Both classes check their fields on construction, so an object of
either is always valid; :func:`load_sweep` reads a file into a :class:`SweepFile`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomix import registry
from geomix.checks import MAX_SEED, check_choice, check_range, fail
from geomix.config import (
    LAMBDA_POLICIES,
    MIX_GEOMETRIES,
    PARTNER_POLICIES,
    WEIGHT_DECAYS,
    ModelConfig,
    load_yaml,
    merge,
    parse_overrides,
)

SWEEP_KEYS = ("name", "seeds", "base", "methods", "smoke_test", "search")
_PATH_FIELDS = (("data", "path"), ("data", "val_path"), ("data", "test_path"), ("data", "image_root"),
                ("model", "cache_dir"))


def _terms() -> tuple[str, ...]:
    return tuple(registry.TERMS)


@dataclass(frozen=True)
class SearchSettings:
    """The ``search`` block: how many trials, the samplers' seeds, ASHA, and the space's ranges and choices.

    ``terms`` are the mix terms the search may switch on (a registered term not listed stays off);
    ``*_range`` are ``[lo, hi]`` of log-uniform draws; ``policies`` / ``partners`` / ``geometries`` /
    ``decays`` the choices offered (``sweeps/space.py`` spells the space out).
    """

    num_samples: int = 16
    seed: int = 0  # TPE sampler seed
    trial_seed: int = 0  # run.seed of every trial: the search compares configs, not seeds
    grace_period: int = 1  # ASHA: epochs before the first cut
    reduction_factor: float = 2
    terms: tuple[str, ...] = field(default_factory=_terms)
    weight_range: tuple[float, float] = (0.005, 0.5)
    alpha_range: tuple[float, float] = (0.1, 4.0)
    tau_range: tuple[float, float] = (0.01, 0.2)
    policies: tuple[str, ...] = LAMBDA_POLICIES
    partners: tuple[str, ...] = PARTNER_POLICIES
    geometries: tuple[str, ...] = MIX_GEOMETRIES
    decays: tuple[str, ...] = WEIGHT_DECAYS

    def __post_init__(self) -> None:
        for key, lo in (("num_samples", 1), ("seed", 0), ("trial_seed", 0), ("grace_period", 1)):
            _check_int(f"search.{key}", getattr(self, key), lo)
        check_range("search.reduction_factor", self.reduction_factor, 1, None, lo_open=True)
        for key in ("weight_range", "alpha_range", "tau_range"):
            r = getattr(self, key)
            if (not isinstance(r, (list, tuple)) or len(r) != 2
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in r)
                    or not 0 < r[0] <= r[1]):
                fail(f"search.{key}", r, "[lo, hi] with 0 < lo <= hi")
            object.__setattr__(self, key, tuple(r))
        for key, allowed in (("terms", tuple(registry.TERMS)), ("policies", LAMBDA_POLICIES),
                             ("partners", PARTNER_POLICIES), ("geometries", MIX_GEOMETRIES),
                             ("decays", WEIGHT_DECAYS)):
            values = getattr(self, key)
            if isinstance(values, str) or not isinstance(values, (list, tuple)) or not values:
                fail(f"search.{key}", values, "a non-empty list")
            for i, v in enumerate(values):
                check_choice(f"search.{key}[{i}]", v, allowed)
            object.__setattr__(self, key, tuple(values))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> SearchSettings:
        """Defaults <- a YAML ``search`` block.

        Raises:
            ValueError: an unknown key or a bad value, named (``search.policies[1]``).
        """
        data = dict(data or {})
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"unknown search key(s) {', '.join(unknown)}: allowed are {', '.join(allowed)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for the tuples), as ``config.yaml`` beside the results records them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _check_int(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        fail(name, value, f"an integer >= {lo}")


@dataclass(frozen=True)
class SweepFile:
    """A sweep YAML, checked: its ``name``, ``seeds``, ``base``, ``methods``, ``search``, ``smoke_test``.

    ``base`` and the ``methods`` rows are diffs, checked as mappings here; they become TrainConfigs (and
    are validated as such) when the sweep resolves its trials (``sweeps.spec.resolve_trial``).
    """

    name: str
    seeds: tuple[int, ...] = (0,)
    base: Mapping[str, Any] = field(default_factory=dict)
    methods: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    search: SearchSettings | None = None
    smoke_test: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            fail("name", self.name, "a non-empty string")
        seeds = self.seeds
        if (isinstance(seeds, str) or not isinstance(seeds, (list, tuple)) or not seeds
                or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED
                           for s in seeds) or len(set(seeds)) < len(seeds)):
            fail("seeds", seeds, "a non-empty list of distinct integers in [0, 2**63 - 1]")
        object.__setattr__(self, "seeds", tuple(seeds))
        for key in ("base", "methods"):
            if not isinstance(getattr(self, key), Mapping):
                fail(key, getattr(self, key), "a mapping")
        for method, row in self.methods.items():
            if not isinstance(method, str) or not method:
                fail("methods", method, "method ids that are non-empty strings")
            if not isinstance(row, Mapping):
                fail(f"methods.{method}", row, "a mapping of dotted TrainConfig keys to values")
        if self.search is not None and not isinstance(self.search, SearchSettings):
            fail("search", self.search, "SearchSettings")
        if self.smoke_test is not None:
            if not isinstance(self.smoke_test, Mapping):
                fail("smoke_test", self.smoke_test, "a mapping")
            bad = sorted(set(self.smoke_test) - (set(SWEEP_KEYS) - {"smoke_test"}))
            if bad:
                raise ValueError(f"unknown smoke_test key(s) {', '.join(bad)}: allowed are seeds, base, "
                                 "methods, search, name")

    def smoke(self) -> SweepFile:
        """This sweep with its ``smoke_test`` diff applied: ``methods`` as a list picks rows by id, mappings
        merge, anything else replaces."""
        changes: dict[str, Any] = {}
        for key, value in (self.smoke_test or {}).items():
            if key == "methods" and isinstance(value, list):
                missing = [m for m in value if m not in self.methods]
                if missing:
                    raise ValueError(f"smoke_test.methods {missing} are not in methods: allowed "
                                     f"{', '.join(self.methods)}")
                changes[key] = {m: self.methods[m] for m in value}
            elif key == "search":
                current = self.search.to_dict() if self.search else {}
                changes[key] = SearchSettings.from_mapping(merge(current, _mapping(key, value)))
            elif isinstance(value, Mapping) and isinstance(getattr(self, key), Mapping):
                changes[key] = merge(getattr(self, key), value)
            else:
                changes[key] = value
        return dataclasses.replace(self, smoke_test=None, **changes)


def _mapping(key: str, value: Any) -> dict[str, Any]:
    if value is not None and not isinstance(value, Mapping):
        fail(key, value, "a mapping")
    return dict(value or {})


def load_sweep(path: str | Path, overrides: Iterable[str] = (), *, smoke_test: bool = False) -> SweepFile:
    """Read a sweep YAML; ``smoke_test`` applies its ``smoke_test`` block, then the ``key=value``
    ``overrides`` apply to ``base``. Relative paths in ``base`` become absolute (trials run in their own
    working directories).

    Raises:
        ValueError: unknown top-level keys, or malformed blocks, naming them.
    """
    raw = load_yaml(path)
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise ValueError(f"unknown sweep key(s) {', '.join(unknown)} in {path}: allowed are "
                         f"{', '.join(sorted(SWEEP_KEYS))}")
    search = raw.get("search")
    sweep = SweepFile(
        name=raw.get("name") or Path(path).stem,
        seeds=raw["seeds"] if raw.get("seeds") is not None else (0,),
        base=_mapping("base", raw.get("base")),
        methods=_mapping("methods", raw.get("methods")),
        search=SearchSettings.from_mapping(_mapping("search", search)) if search is not None else None,
        smoke_test=raw.get("smoke_test") or None,
    )
    if smoke_test:
        sweep = sweep.smoke()
    base = merge(sweep.base, parse_overrides(overrides))
    return dataclasses.replace(sweep, base=_absolute_paths(base))


def _absolute_paths(base: Mapping[str, Any]) -> dict[str, Any]:
    base = dict(base)
    for section, key in _PATH_FIELDS:
        block = base.get(section)
        if block is not None and not isinstance(block, Mapping):
            continue  # not a section: resolving the trial names it
        value = (block or {}).get(key)
        if key == "cache_dir" and value is None:
            value = ModelConfig().cache_dir
        if isinstance(value, str) and "://" not in value:
            base[section] = {**(block or {}), key: str(Path(value).expanduser().resolve())}
    return base
