"""Configuration: one frozen dataclass per concern, YAML loading, dotted overrides, validation.

Layering (as DINOv2 does it): dataclass defaults -> an experiment YAML file -> ``key=value`` overrides on the
command line. Unknown keys are an error, never ignored, and every bad value raises a ``ValueError`` that
names the dotted field, the value and what is allowed. The resolved config is a plain dict
(:func:`to_dict`) that round-trips through :func:`from_dict`, so it can be saved beside results and
reloaded.

Example::

    cfg = load_config("exp.yaml", ["loss.w_m2=0.1", "optim.epochs=3"])
    flat = flatten(to_dict(cfg))        # {"loss.w_m2": 0.1, ...} -> Parquet columns
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")

# ----------------------------------------------------------------------------------------------------------
# validation helpers


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name}={value!r} is invalid: allowed {allowed}")


def check_choice(name: str, value: Any, choices: typing.Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        _fail(name, value, "one of " + ", ".join(repr(c) for c in choices))


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
        _fail(name, value, allowed)
    if lo is not None and (value < lo or (lo_open and value == lo)):
        _fail(name, value, allowed)
    if hi is not None and (value > hi or (hi_open and value == hi)):
        _fail(name, value, allowed)


# ----------------------------------------------------------------------------------------------------------
# the concerns


LAMBDA_POLICIES = ("beta", "fixed", "progressive", "history")
PARTNER_POLICIES = ("reverse", "random", "history")
MIX_GEOMETRIES = ("geodesic", "linear")
WEIGHT_DECAYS = ("constant", "inverse_epoch")
LOSS_KINDS = ("contrastive", "imix", "unmix")
WASSERSTEIN_ESTIMATORS = ("sliced", "exact")
# Visual styles (domains) of the embedded shapes data; geomix.data.shapes draws exactly these.
SHAPE_STYLES = ("flat", "outline", "textured", "dark")


@dataclass(frozen=True)
class LambdaConfig:
    """How one mix term draws its λ each step (``losses.md``, *λ policies*).

    ``beta``: λ ~ Beta(alpha, beta) with ``beta=None`` meaning symmetric Beta(alpha, alpha).
    ``fixed``: λ = value. ``progressive``: P-Mixup's rule with ``temperature`` (T) and ``sigma``, distances
    estimated by ``estimator`` ('sliced' with ``n_projections`` fixed random directions, or 'exact' OT,
    which needs POT). ``history``: see ``geomix.mixing``.
    """

    policy: str = "beta"
    alpha: float = 0.5
    beta: float | None = None
    value: float = 0.5
    temperature: float = 0.05
    sigma: float = 0.2
    estimator: str = "sliced"
    n_projections: int = 64
    momentum: float = 0.9

    def validate(self, prefix: str = "lambda") -> None:
        check_choice(f"{prefix}.policy", self.policy, LAMBDA_POLICIES)
        check_range(f"{prefix}.alpha", self.alpha, 0.0, None, lo_open=True)
        if self.beta is not None:
            check_range(f"{prefix}.beta", self.beta, 0.0, None, lo_open=True)
        check_range(f"{prefix}.value", self.value, 0.0, 1.0)
        check_range(f"{prefix}.temperature", self.temperature, 0.0, None, lo_open=True)
        check_range(f"{prefix}.sigma", self.sigma, 0.0, 1.0)
        check_choice(f"{prefix}.estimator", self.estimator, WASSERSTEIN_ESTIMATORS)
        check_range(f"{prefix}.n_projections", self.n_projections, 1, None)
        check_range(f"{prefix}.momentum", self.momentum, 0.0, 1.0, hi_open=True)


@dataclass(frozen=True)
class MixConfig:
    """Where and how embeddings are mixed: geometry, partners, and one λ policy per term."""

    geometry: str = "geodesic"
    partner: str = "reverse"
    m2: LambdaConfig = field(default_factory=lambda: LambdaConfig(alpha=1.0))
    v: LambdaConfig = field(default_factory=lambda: LambdaConfig(alpha=0.2))
    l: LambdaConfig = field(default_factory=lambda: LambdaConfig(alpha=0.2))
    vl: LambdaConfig = field(default_factory=lambda: LambdaConfig(alpha=1.0))

    def validate(self, prefix: str = "mix") -> None:
        check_choice(f"{prefix}.geometry", self.geometry, MIX_GEOMETRIES)
        check_choice(f"{prefix}.partner", self.partner, PARTNER_POLICIES)
        for name in ("m2", "v", "l", "vl"):
            getattr(self, name).validate(f"{prefix}.{name}")


@dataclass(frozen=True)
class LossConfig:
    """Which loss terms run and how much each weighs (``losses.md``, *Terms*).

    ``kind='contrastive'``: ``L = L_clip + decay(epoch)·(w_m2·L_m2 + w_v·L_V + w_l·L_L + w_vl·L_VL)``; each
    weight multiplies its own term, so the paper's ``w_uni·½(L_V + L_L)`` is ``w_v = w_l = w_uni/2``.
    ``kind='imix'`` / ``'unmix'``: the input-level baselines (mix pixels; ``input_alpha`` is i-Mix's
    Beta(α, α), Un-Mix's λ ~ Beta(input_alpha, input_alpha) with default 1).
    ``tau``: None = learnable temperature (open_clip's ``logit_scale``); a number = fixed τ.
    ``m2_tau``: None = the m² term uses the same scale as CLIP; a number = its own fixed τ (authors: 0.07).
    ``local_loss``: under DDP compute each rank's rows against gathered columns with rank label offsets
    instead of the full gathered matrix (same value, less memory).
    """

    kind: str = "contrastive"
    w_m2: float = 0.0
    w_v: float = 0.0
    w_l: float = 0.0
    w_vl: float = 0.0
    decay: str = "constant"
    tau: float | None = None
    m2_tau: float | None = None
    input_alpha: float = 1.0
    local_loss: bool = False

    def validate(self, prefix: str = "loss") -> None:
        check_choice(f"{prefix}.kind", self.kind, LOSS_KINDS)
        for name in ("w_m2", "w_v", "w_l", "w_vl"):
            check_range(f"{prefix}.{name}", getattr(self, name), 0.0, None)
        check_choice(f"{prefix}.decay", self.decay, WEIGHT_DECAYS)
        if self.tau is not None:
            check_range(f"{prefix}.tau", self.tau, 0.0, None, lo_open=True)
        if self.m2_tau is not None:
            check_range(f"{prefix}.m2_tau", self.m2_tau, 0.0, None, lo_open=True)
        check_range(f"{prefix}.input_alpha", self.input_alpha, 0.0, None, lo_open=True)
        if self.kind != "contrastive" and any(getattr(self, w) > 0 for w in ("w_m2", "w_v", "w_l", "w_vl")):
            _fail(f"{prefix}.kind", self.kind, "'contrastive' when any of w_m2, w_v, w_l, w_vl is > 0")


@dataclass(frozen=True)
class DataConfig:
    """Which image-caption data to train and evaluate on.

    ``source='shapes'``: the embedded generator (``geomix.data``), deterministic from ``seed``; the base
    model is pre-trained on ``base_styles`` and the fine-tune uses ``styles`` (held back from the base).
    ``source='csv'``: open_clip-style CSV at ``path`` (``csv_img_key``, ``csv_caption_key``,
    ``csv_separator``), with ``val_path``/``test_path`` for the evaluation splits.
    ``source='json'``: Karpathy-split JSON at ``path`` with images under ``image_root``.
    """

    source: str = "shapes"
    path: str | None = None
    val_path: str | None = None
    test_path: str | None = None
    image_root: str | None = None
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_separator: str = "\t"
    skip_bad: bool = False
    seed: int = 0
    image_size: int = 32
    styles: tuple[str, ...] = ("dark",)
    base_styles: tuple[str, ...] = ("flat", "outline", "textured")
    train_size: int = 2048
    val_size: int = 256
    test_size: int = 512
    captions_per_image: int = 5
    eval_captions: str = "all"
    loader_workers: int = 0

    def validate(self, prefix: str = "data") -> None:
        check_choice(f"{prefix}.source", self.source, ("shapes", "csv", "json"))
        if self.source != "shapes" and not self.path:
            _fail(f"{prefix}.path", self.path, f"a file path when {prefix}.source={self.source!r}")
        check_range(f"{prefix}.image_size", self.image_size, 8, 512)
        for name in ("train_size", "val_size", "test_size"):
            check_range(f"{prefix}.{name}", getattr(self, name), 2, None)
        check_range(f"{prefix}.captions_per_image", self.captions_per_image, 1, None)
        check_choice(f"{prefix}.eval_captions", self.eval_captions, ("all", "first"))
        check_range(f"{prefix}.loader_workers", self.loader_workers, 0, 64)
        if not self.styles:
            _fail(f"{prefix}.styles", self.styles, "at least one style")
        if self.source == "shapes":
            for name in ("styles", "base_styles"):
                for i, style in enumerate(getattr(self, name)):
                    check_choice(f"{prefix}.{name}[{i}]", style, SHAPE_STYLES)
            check_range(f"{prefix}.image_size", self.image_size, 16, 256)


@dataclass(frozen=True)
class ModelConfig:
    """Which open_clip model and weights.

    ``name``: any open_clip model name, or one of geomix's registered tiny configs. ``pretrained``: None
    (random init), an open_clip pretrained tag, a local checkpoint path, or ``'embedded-base'`` (the
    model pre-trained on the embedded data's base styles, built once and cached by config hash under
    ``cache_dir``). ``base_epochs`` / ``base_lr`` / ``base_train_size``: how that base model is made.
    """

    name: str = "geomix-tiny"
    pretrained: str | None = "embedded-base"
    cache_dir: str = ".cache/geomix"
    base_epochs: int = 8
    base_lr: float = 1e-3
    base_train_size: int = 4096
    base_batch_size: int = 128
    init_tau: float = 0.07
    max_logit_scale: float = 100.0

    def validate(self, prefix: str = "model") -> None:
        if not self.name:
            _fail(f"{prefix}.name", self.name, "a non-empty open_clip model name")
        check_range(f"{prefix}.base_epochs", self.base_epochs, 1, None)
        check_range(f"{prefix}.base_lr", self.base_lr, 0.0, None, lo_open=True)
        check_range(f"{prefix}.base_train_size", self.base_train_size, 2, None)
        check_range(f"{prefix}.base_batch_size", self.base_batch_size, 2, None)
        check_range(f"{prefix}.init_tau", self.init_tau, 0.0, None, lo_open=True)
        check_range(f"{prefix}.max_logit_scale", self.max_logit_scale, 1.0, None)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, per step."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.2
    warmup_frac: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float | None = 1.0
    max_steps: int | None = None

    def validate(self, prefix: str = "optim") -> None:
        check_range(f"{prefix}.epochs", self.epochs, 1, None)
        check_range(f"{prefix}.batch_size", self.batch_size, 2, None)
        check_range(f"{prefix}.lr", self.lr, 0.0, None, lo_open=True)
        check_range(f"{prefix}.weight_decay", self.weight_decay, 0.0, None)
        check_range(f"{prefix}.warmup_frac", self.warmup_frac, 0.0, 1.0, hi_open=True)
        for i, b in enumerate(self.betas):
            check_range(f"{prefix}.betas[{i}]", b, 0.0, 1.0, hi_open=True)
        check_range(f"{prefix}.eps", self.eps, 0.0, None, lo_open=True)
        if self.grad_clip is not None:
            check_range(f"{prefix}.grad_clip", self.grad_clip, 0.0, None, lo_open=True)
        if self.max_steps is not None:
            check_range(f"{prefix}.max_steps", self.max_steps, 1, None)


@dataclass(frozen=True)
class RunConfig:
    """Everything about one run that is not the experiment: seed, device, evaluation, checkpoints.

    ``eval_every``: evaluate on the validation split every N epochs (0 = only at the end); the test split
    is always evaluated at the end. ``out_dir``: checkpoints, metrics and saved embeddings (None = no
    files). ``resume``: continue from the last checkpoint in ``out_dir`` if there is one.
    ``eval_start``: also evaluate the starting model on the test split (result keys ``start_test_*``; the
    command line turns it on to print base -> fine-tuned). ``report_every``: also report training
    progress (loss, λ) to the hooks every N steps (0 = only at evaluation points).
    """

    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    eval_every: int = 1
    log_every: int = 10
    out_dir: str | None = None
    checkpoint_every: int = 1
    resume: bool = True
    save_embeddings: bool = False
    threads: int | None = None
    progress: bool = True
    eval_start: bool = False
    report_every: int = 0

    def validate(self, prefix: str = "run") -> None:
        check_choice(f"{prefix}.device", self.device, ("auto", "cpu", "cuda"))
        check_choice(f"{prefix}.precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        check_range(f"{prefix}.eval_every", self.eval_every, 0, None)
        check_range(f"{prefix}.log_every", self.log_every, 1, None)
        check_range(f"{prefix}.checkpoint_every", self.checkpoint_every, 0, None)
        if self.threads is not None:
            check_range(f"{prefix}.threads", self.threads, 1, None)
        check_range(f"{prefix}.report_every", self.report_every, 0, None)


@dataclass(frozen=True)
class TrainConfig:
    """One trial: everything ``geomix.train`` needs, and what a sweep stores per trial."""

    method: str = "ft"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> TrainConfig:
        if not self.method:
            _fail("method", self.method, "a non-empty method id")
        self.data.validate("data")
        self.model.validate("model")
        self.loss.validate("loss")
        self.mix.validate("mix")
        self.optim.validate("optim")
        self.run.validate("run")
        return self


# ----------------------------------------------------------------------------------------------------------
# dict <-> dataclass


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
        _fail(name, value, f"a value of type {getattr(tp, '__name__', tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            _fail(name, value, f"a mapping of {tp.__name__} fields")
        return from_dict(tp, value, prefix=name)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            _fail(name, value, "a list")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{name}[{i}]", args[0], v) for i, v in enumerate(value))
        if len(args) != len(value):
            _fail(name, value, f"a list of exactly {len(args)} values")
        return tuple(_coerce(f"{name}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        _fail(name, value, "true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            _fail(name, value, "an integer")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(name, value, "a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(name, value, "a string")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys and wrong types raise ``ValueError``."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ValueError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}: allowed keys under "
            f"{prefix or 'the top level'} are {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _coerce(name, hints[key], value)
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a nested dict of plain values (tuples become lists), ready for YAML or JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    return plain(obj)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"w_m2": 0.1}}`` -> ``{"loss.w_m2": 0.1}``; lists become JSON strings for Parquet."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(list(v))
        else:
            out[key] = v
    return out


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(overrides: typing.Iterable[str]) -> dict[str, Any]:
    """``["loss.w_m2=0.1", "data.styles=[dark]"]`` -> nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is invalid: allowed form is dotted.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ValueError(f"override {item!r} is invalid: allowed form is dotted.key=value")
        value = yaml.safe_load(raw) if raw.strip() else None
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            # YAML 1.1 reads "2e-3" (no dot) as a string; a researcher typing lr=2e-3 means a number
            value = float(value)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist: allowed is a path to a YAML file")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} holds {type(data).__name__}: allowed is a YAML mapping")
    return data


def build_config(data: dict[str, Any] | None = None, overrides: typing.Iterable[str] = ()) -> TrainConfig:
    """Defaults <- ``data`` <- ``overrides``, then validated."""
    merged = merge(data or {}, parse_overrides(overrides))
    return from_dict(TrainConfig, merged).validate()


def load_config(path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> TrainConfig:
    """Defaults <- YAML file <- ``key=value`` overrides, validated. The command-line entry point's loader."""
    return build_config(load_yaml(path) if path else {}, overrides)


def config_hash(obj: Any, length: int = 12) -> str:
    """A stable short hash of a config (dataclass or dict), e.g. to cache a base model by its recipe."""
    payload = json.dumps(to_dict(obj) if dataclasses.is_dataclass(obj) else obj, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg, sort_keys=False))
    tmp.replace(path)
