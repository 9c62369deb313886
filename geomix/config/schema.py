"""The config dataclasses: one frozen dataclass per concern, each validated once, on construction.

Choices are ``Literal`` types (the allowed values live in the type, nowhere else); ranges and cross-field
rules are checked in ``__post_init__``, so no object of these classes is ever invalid and no module
re-validates one it is handed (``dataclasses.replace`` constructs, hence validates, too). A bad value
raises :class:`~geomix.checks.ConfigError` naming the dotted key (``loss.w_m2=-0.1 is invalid: allowed …``).

The per-term parts are open: :class:`LossConfig` holds one weight and :class:`MixConfig` one
:class:`LambdaConfig` per term of :data:`geomix.registry.TERMS`, spelled ``loss.w_<term>`` and
``mix.<term>.*`` in files, overrides and result columns.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from geomix import registry
from geomix.checks import ConfigError, check_choice, check_range, check_seed, fail
from geomix.config.evaluation import EvaluationConfig, check_eval_data
from geomix.config.lambdas import LambdaConfig
from geomix.config.run import OptimConfig, RunConfig
from geomix.config.sections import (
    EMBEDDED_BASE,
    SEPARATORS,
    SHAPE_STYLES,
    DataSource,
    Decay,
    EvalCaptions,
    Geometry,
    LossKind,
    PartnerPolicyName,
    Task,
    _Section,
)
from geomix.config.transfer import TransferConfig, check_domain_fields, check_task


def _term_values(given: Mapping[str, Any], default: Any, what: str) -> tuple[tuple[str, Any], ...]:
    """One value per registered term, in registry order; a name that is not a registered term fails."""
    unknown = [k for k in given if k not in registry.TERMS]
    if unknown:
        allowed = "a registered mix term: " + ", ".join(registry.TERMS)
        fail(what.format(unknown[0]), given[unknown[0]], allowed)
    return tuple((t, given[t] if t in given else default(t)) for t in registry.TERMS)


def _split_term_kwargs(kwargs: dict[str, Any], prefix: str, cls: str) -> dict[str, Any]:
    out = {}
    for key, value in kwargs.items():
        if not key.startswith(prefix):
            raise TypeError(f"{cls}() got an unexpected keyword argument {key!r}")
        out[key[len(prefix):]] = value
    return out


@dataclass(frozen=True, init=False)
class MixConfig(_Section):
    """Where and how embeddings are mixed: geometry, partners, and one λ policy per mix term.

    ``MixConfig(v=LambdaConfig(alpha=0.5))`` or ``MixConfig(lambdas={"v": ...})``; ``cfg.v`` reads one term's
    policy. A term not given gets ``LambdaConfig(alpha=<the term's lam_alpha>)``.
    """

    section: ClassVar[str] = "mix"
    geometry: Geometry = "geodesic"
    partner: PartnerPolicyName = "reverse"
    lambdas: tuple[tuple[str, LambdaConfig], ...] = ()

    def __init__(
        self,
        geometry: Geometry = "geodesic",
        partner: PartnerPolicyName = "reverse",
        lambdas: Mapping[str, LambdaConfig] | tuple[tuple[str, LambdaConfig], ...] | None = None,
        **terms: LambdaConfig,
    ) -> None:
        given = {**dict(lambdas or {}), **_split_term_kwargs(terms, "", "MixConfig")}
        for name, lam in given.items():
            if not isinstance(lam, LambdaConfig):
                fail(f"mix.{name}", lam, "a LambdaConfig")
        object.__setattr__(self, "geometry", geometry)
        object.__setattr__(self, "partner", partner)
        object.__setattr__(self, "lambdas", _term_values(
            given, lambda t: LambdaConfig(alpha=registry.TERMS[t].lam_alpha), "mix.{}"))
        self.__post_init__()

    def __getattr__(self, name: str) -> LambdaConfig:
        if not name.startswith("_"):
            for term, lam in self.__dict__.get("lambdas", ()):
                if term == name:
                    return lam
        raise AttributeError(f"MixConfig has no attribute or mix term {name!r}")

    def lam(self, term: str) -> LambdaConfig:
        """The λ policy of ``term`` (a term registered after this config was built gets its default)."""
        for name, lam in self.lambdas:
            if name == term:
                return lam
        return LambdaConfig(alpha=registry.TERMS[term].lam_alpha)

    @classmethod
    def serial_fields(cls) -> dict[str, Any]:
        terms = dict.fromkeys(registry.TERMS, LambdaConfig)
        return {"geometry": Geometry, "partner": PartnerPolicyName, **terms}

    def serial_items(self) -> Iterator[tuple[str, Any]]:
        yield "geometry", self.geometry
        yield "partner", self.partner
        yield from self.lambdas


@dataclass(frozen=True, init=False)
class LossConfig(_Section):
    """Which loss terms run and how much each weighs (``docs/losses.md``, *Terms*).

    ``kind='contrastive'``: ``L = L_clip + decay(epoch)·Σ_t w_t·L_t`` over the mix terms (``w_m2``, ``w_v``,
    ``w_l``, ``w_vl``, ...: one weight per registered term, its own term each, so the paper's
    ``w_uni·½(L_V + L_L)`` is ``w_v = w_l = w_uni/2``). ``kind='imix'`` / ``'unmix'``: the input-level
    baselines (mix pixels; ``input_alpha`` is their Beta(α, α)).
    ``tau``: None = learnable temperature (open_clip's ``logit_scale``); a number = fixed τ.
    ``m2_tau``: None = the m² term uses the same scale as CLIP; a number = its own fixed τ (authors: 0.07).
    ``local_loss``: under DDP compute each rank's rows against gathered columns with rank label offsets
    instead of the full gathered matrix (same value, less memory).

    ``LossConfig(w_m2=0.1)`` or ``LossConfig(weights={"m2": 0.1})``; ``cfg.w_m2`` / ``cfg.weight("m2")`` read.
    """

    section: ClassVar[str] = "loss"
    kind: LossKind = "contrastive"
    weights: tuple[tuple[str, float], ...] = ()
    decay: Decay = "constant"
    tau: float | None = None
    m2_tau: float | None = None
    input_alpha: float = 1.0
    local_loss: bool = False

    def __init__(
        self,
        kind: LossKind = "contrastive",
        weights: Mapping[str, float] | tuple[tuple[str, float], ...] | None = None,
        decay: Decay = "constant",
        tau: float | None = None,
        m2_tau: float | None = None,
        input_alpha: float = 1.0,
        local_loss: bool = False,
        **term_weights: float,
    ) -> None:
        given = {**dict(weights or {}), **_split_term_kwargs(term_weights, "w_", "LossConfig")}
        values = dict(kind=kind, decay=decay, tau=tau, m2_tau=m2_tau, input_alpha=input_alpha,
                      local_loss=local_loss, weights=_term_values(given, lambda t: 0.0, "loss.w_{}"))
        for key, value in values.items():
            object.__setattr__(self, key, value)
        self.__post_init__()

    def __getattr__(self, name: str) -> float:
        if name.startswith("w_"):
            for term, w in self.__dict__.get("weights", ()):
                if term == name[2:]:
                    return w
        raise AttributeError(f"LossConfig has no attribute or term weight {name!r}")

    def weight(self, term: str) -> float:
        """The weight of ``term`` (0 for a term registered after this config was built)."""
        return dict(self.weights).get(term, 0.0)

    @property
    def active_terms(self) -> tuple[str, ...]:
        """The mix terms with a weight > 0, in registry order."""
        return tuple(t for t, w in self.weights if w > 0)

    @classmethod
    def serial_fields(cls) -> dict[str, Any]:
        fields = super().serial_fields()
        del fields["weights"]
        out: dict[str, Any] = {"kind": fields.pop("kind")}
        out.update({f"w_{t}": float for t in registry.TERMS})
        return {**out, **fields}

    def serial_items(self) -> Iterator[tuple[str, Any]]:
        yield "kind", self.kind
        for term, w in self.weights:
            yield f"w_{term}", w
        for key in ("decay", "tau", "m2_tau", "input_alpha", "local_loss"):
            yield key, getattr(self, key)

    def _check(self, p: str) -> None:
        for term, w in self.weights:
            check_range(f"{p}.w_{term}", w, 0.0, None)
        if self.tau is not None:
            check_range(f"{p}.tau", self.tau, 0.0, None, lo_open=True)
        if self.m2_tau is not None:
            check_range(f"{p}.m2_tau", self.m2_tau, 0.0, None, lo_open=True)
        check_range(f"{p}.input_alpha", self.input_alpha, 0.0, None, lo_open=True)
        if self.kind != "contrastive" and self.active_terms:
            names = ", ".join(f"w_{t}" for t in registry.TERMS)
            fail(f"{p}.kind", self.kind, f"'contrastive' when any of {names} is > 0")


@dataclass(frozen=True)
class DataConfig(_Section):
    """Which image-caption data to train and evaluate on.

    ``source='shapes'``: the embedded generator (``geomix.data``), deterministic from ``seed``; the base
    model is pre-trained on ``base_styles`` and the fine-tune uses ``styles`` (held back from the base).
    ``source='csv'``: open_clip-style CSV at ``path`` (``csv_img_key``, ``csv_caption_key``, and
    ``csv_separator``, tab or comma), with ``val_path``/``test_path`` for the evaluation splits.
    ``source='json'``: Karpathy-split JSON at ``path`` with images under ``image_root``. A file the source
    does not read stays None. An image in two splits (path or content) is refused unless ``allow_overlap``.

    Evaluation sets (``eval_styles``, ``eval_sets``, ``eval_size``), CSV labels (``csv_label_key``,
    ``class_list``, ``class_templates``): :mod:`geomix.config.evaluation`; FSMDT: :mod:`.transfer`.
    """

    section: ClassVar[str] = "data"
    source: DataSource = "shapes"
    path: str | None = None
    val_path: str | None = None
    test_path: str | None = None
    image_root: str | None = None
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_separator: str = "\t"
    skip_bad: bool = False
    allow_overlap: bool = False
    seed: int = 0
    image_size: int = 32
    styles: tuple[str, ...] = ("dark",)
    base_styles: tuple[str, ...] = ("flat", "outline", "textured")
    train_size: int = 2048
    val_size: int = 256
    test_size: int = 1024
    captions_per_image: int = 5
    eval_captions: EvalCaptions = "all"
    loader_workers: int = 0
    eval_styles: tuple[str, ...] | None = None
    eval_size: int | None = None
    eval_sets: tuple[tuple[str, str], ...] = ()
    csv_label_key: str | None = None
    class_list: str | None = None
    class_templates: tuple[str, ...] = ("a photo of a {}.",)
    target_domain: str | None = None
    source_domains: tuple[str, ...] = ()
    shots: int = 1
    shot_seed: int | None = None
    csv_domain_key: str = "domain"

    def _check(self, p: str) -> None:
        if self.source != "shapes" and not self.path:
            fail(f"{p}.path", self.path, f"a file path when {p}.source={self.source!r}")
        for key, users in (("path", "'csv' or 'json'"), ("val_path", "'csv'"), ("test_path", "'csv'"),
                           ("image_root", "'json'")):
            read = f"'{self.source}'" in users or (key, self.source) == ("path", "folder")  # task=classify
            if getattr(self, key) is not None and not read:  # not read: say so
                fail(f"{p}.{key}", getattr(self, key), f"None unless {p}.source is {users}")
        if self.csv_separator not in SEPARATORS:
            fail(f"{p}.csv_separator", self.csv_separator, "a tab ('\\t', 'tab') or a comma (',', 'comma')")
        object.__setattr__(self, "csv_separator", SEPARATORS[self.csv_separator])
        check_seed(f"{p}.seed", self.seed)
        check_range(f"{p}.image_size", self.image_size, 8, 512)
        for name in ("train_size", "val_size", "test_size"):
            check_range(f"{p}.{name}", getattr(self, name), 2, None)
        check_range(f"{p}.captions_per_image", self.captions_per_image, 1, None)
        check_range(f"{p}.loader_workers", self.loader_workers, 0, 64)
        if self.source == "shapes":
            for name in ("styles", "base_styles"):
                styles = getattr(self, name)
                if not styles:  # the embedded base model is pre-trained on the base styles
                    fail(f"{p}.{name}", list(styles), f"a non-empty list of {', '.join(SHAPE_STYLES)}")
                for i, style in enumerate(styles):
                    check_choice(f"{p}.{name}[{i}]", style, SHAPE_STYLES)
                    if style in styles[:i]:
                        fail(f"{p}.{name}", list(styles), "a list of distinct styles")
            check_range(f"{p}.image_size", self.image_size, 16, 256)
        check_eval_data(self, p)
        check_domain_fields(self, p)

    def eval_set_names(self) -> tuple[str, ...]:
        """The names of the extra evaluation sets, in order (the styles, or the ``eval_sets`` keys)."""
        if self.source == "shapes":
            return tuple(SHAPE_STYLES if self.eval_styles is None else self.eval_styles)
        return tuple(name for name, _ in self.eval_sets)


@dataclass(frozen=True)
class ModelConfig(_Section):
    """Which open_clip model and weights.

    ``name``: any open_clip model name, or one of geomix's registered tiny configs. ``pretrained``: None
    (random init), an open_clip pretrained tag, a local checkpoint path, or ``'embedded-base'`` (the
    model pre-trained on the embedded data's base styles, built once and cached by config hash under
    ``cache_dir``). ``base_epochs`` / ``base_lr`` / ``base_train_size``: how that base model is made.
    ``freeze_bn_stats``: every BatchNorm layer (the embedded ResNet tower has them) stays in eval mode
    during the fine-tune: it normalises with the starting model's running statistics, which never change
    (open_clip's ``freeze_bn_stats``); the affine weights still train.
    """

    section: ClassVar[str] = "model"
    name: str = "geomix-tiny"
    pretrained: str | None = EMBEDDED_BASE
    cache_dir: str = ".cache/geomix"
    base_epochs: int = 8
    base_lr: float = 1e-3
    base_train_size: int = 4096
    base_batch_size: int = 128
    init_tau: float = 0.07
    max_logit_scale: float = 100.0
    freeze_bn_stats: bool = False

    def _check(self, p: str) -> None:
        if not self.name:
            fail(f"{p}.name", self.name, "a non-empty open_clip model name")
        check_range(f"{p}.base_epochs", self.base_epochs, 1, None)
        check_range(f"{p}.base_lr", self.base_lr, 0.0, None, lo_open=True)
        check_range(f"{p}.base_train_size", self.base_train_size, 2, None)
        check_range(f"{p}.base_batch_size", self.base_batch_size, 2, None)
        check_range(f"{p}.init_tau", self.init_tau, 0.0, None, lo_open=True)
        check_range(f"{p}.max_logit_scale", self.max_logit_scale, 1.0, None)


@dataclass(frozen=True)
class TrainConfig(_Section):
    """One trial: everything ``geomix.train`` needs, and what a sweep stores per trial."""

    section: ClassVar[str] = ""
    method: str = "ft"
    task: Task = "retrieval"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)

    def _check(self, p: str) -> None:
        if not self.method:
            fail("method", self.method, "a non-empty method id")
        check_task(self)


#: The top-level sections of a :class:`TrainConfig`, by key.
SECTIONS: dict[str, type[_Section]] = {
    "data": DataConfig, "model": ModelConfig, "loss": LossConfig, "mix": MixConfig, "optim": OptimConfig,
    "run": RunConfig, "evaluation": EvaluationConfig, "transfer": TransferConfig,
}

__all__ = [
    "ConfigError", "EvaluationConfig", "LambdaConfig", "MixConfig", "LossConfig", "DataConfig",
    "ModelConfig", "OptimConfig", "RunConfig", "TrainConfig", "TransferConfig", "SECTIONS",
]
