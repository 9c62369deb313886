"""The project's vocabularies, each declared once: mix terms, paper methods, metrics, metric keys.

Everything else reads these: the config (a term's ``loss.w_<term>`` weight and ``mix.<term>`` λ policy), the
loss (a term's kernel), the search space (which terms can be switched on), the results schema (the metric
columns) and the analysis (display names, directions, decimals). This module imports nothing heavy (no
torch), so the analysis can read it without the training stack.

Adding a mix term is one :class:`MixTerm` entry (here, or :func:`register_term` at run time) plus its
kernel (``docs/architecture.md``, *Adding a loss term*). Method ids are open: :data:`PAPER_METHODS` only gives
the paper's rows their display names; any other id a sweep defines is shown as itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MixTerm",
    "TERMS",
    "register_term",
    "unregister_term",
    "term_names",
    "kernel_of",
    "PAPER_METHODS",
    "method_display",
    "Metric",
    "METRICS",
    "METRIC_KEYS",
    "CLASSIFY_METRICS",
    "CLASSIFY_KEYS",
    "SPLITS",
    "metric_key",
    "split_metric_key",
    "EVAL_PREFIX",
    "eval_key",
    "is_split",
    "ARITH_KINDS",
    "ARITH_KEYS",
    "fewshot_key",
    "metric_info",
]


# ----------------------------------------------------------------------------------------------------------
# mix terms


@dataclass(frozen=True)
class MixTerm:
    """One embedding-level mix term of ``L = L_clip + decay·Σ_t w_t·L_t`` (``docs/losses.md``, *Terms*).

    Attributes:
        name: the config key: weight ``loss.w_<name>``, λ policy ``mix.<name>.*``, logged as ``loss_<name>``
            and ``lam_<name>``. Lower-case letters, digits and ``_``.
        symbol: short display name in tables (``m²``, ``V``).
        title: the method name of the term alone (``m²-Mix``).
        kernel: ``"module:function"`` (imported when a loss first uses the term) or the function itself:
            ``kernel(inputs, lam) -> (row share of the term, observation)``; see
            :mod:`geomix.losses.kernels` for the contract.
        lam_alpha: the default λ policy's ``Beta(α, α)`` parameter (the authors' code: 1.0 for m² and VL,
            0.2 for V and L).
        uses_partners: whether the term mixes a row with a partner row (``mix.partner``); partners are drawn
            once per step for all terms that use them.
    """

    name: str
    symbol: str
    title: str
    kernel: str | Callable[..., Any]
    lam_alpha: float = 1.0
    uses_partners: bool = True

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c == "_" for c in self.name) or not self.name.islower():
            raise ValueError(
                f"term name={self.name!r} is invalid: allowed lower-case letters, digits and '_'"
            )


_BUILTIN = (
    MixTerm("m2", "m²", "m²-Mix", "geomix.losses.kernels:m2_term", lam_alpha=1.0, uses_partners=False),
    MixTerm("v", "V", "V-Mix", "geomix.losses.kernels:v_term", lam_alpha=0.2),
    MixTerm("l", "L", "L-Mix", "geomix.losses.kernels:l_term", lam_alpha=0.2),
    MixTerm("vl", "VL", "VL-Mix", "geomix.losses.kernels:vl_term", lam_alpha=1.0),
)

#: The registered terms in their fixed order (the order λ is drawn in each step, so it is part of the
#: seeded stream: append new terms, never reorder).
TERMS: dict[str, MixTerm] = {t.name: t for t in _BUILTIN}


def register_term(term: MixTerm) -> MixTerm:
    """Add ``term`` after the registered ones; configs built afterwards accept ``loss.w_<name>`` and
    ``mix.<name>.*``. A name already registered is an error (no silent replacement)."""
    if term.name in TERMS:
        raise ValueError(f"term name={term.name!r} is invalid: allowed a name not yet registered "
                         f"({', '.join(TERMS)})")
    TERMS[term.name] = term
    return term


def unregister_term(name: str) -> None:
    """Remove a term added by :func:`register_term` (the built-in terms stay)."""
    if name in {t.name for t in _BUILTIN}:
        raise ValueError(f"term name={name!r} is invalid: allowed a term added by register_term")
    TERMS.pop(name, None)


def term_names() -> tuple[str, ...]:
    return tuple(TERMS)


def kernel_of(term: MixTerm) -> Callable[..., Any]:
    """The term's kernel function (importing ``"module:function"`` on first use)."""
    if callable(term.kernel):
        return term.kernel
    module, _, attr = term.kernel.partition(":")
    return getattr(importlib.import_module(module), attr)


# ----------------------------------------------------------------------------------------------------------
# methods: the paper's rows (ids as the sweeps write them in the ``method`` column)

#: Paper method id -> display name, in the paper's order (Table 1, then the V/L/VL ablation rows).
PAPER_METHODS: dict[str, str] = {
    "zs": "ZS",
    "ft": "FT",
    "ft_tau0.05": "FT (τ = 0.05)",
    "ft_tau0.10": "FT (τ = 0.10)",
    "imix": "i-Mix",
    "unmix": "Un-Mix",
    "m2_mix": "m²-Mix",
    "v_mix": "V-Mix",
    "l_mix": "L-Mix",
    "vl_mix": "VL-Mix",
    "m3_mix": "m³-Mix",
    "m3_mix_linear": "m³-Mix (linear)",
    "search": "search",
}


def method_display(method: str) -> str:
    """A known id's paper name; any other id as itself."""
    return PAPER_METHODS.get(method, str(method))


# ----------------------------------------------------------------------------------------------------------
# metrics


@dataclass(frozen=True)
class Metric:
    """One evaluation metric of :func:`geomix.metrics.evaluate_embeddings`.

    ``higher``: True = higher is better, False = lower is better, None = descriptive (never marked best).
    ``decimals``: digits shown in tables (percentages 2, distances and log-potentials 3).
    """

    name: str
    higher: bool | None
    decimals: int = 2


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        *(Metric(k, True) for k in ("r1_i2t", "r5_i2t", "r10_i2t", "r1_t2i", "r5_t2i", "r10_t2i", "rsum")),
        Metric("align", True, 3),
        Metric("unif", True, 3),
        Metric("unif_img", False, 3),  # Wang-Isola value, lower = more uniform
        Metric("unif_txt", False, 3),
        Metric("gap", None, 3),  # descriptive: the paper argues for a smaller gap, but it is not a score
        Metric("cos_pos", None, 3),
        Metric("cos_neg", None, 3),
        Metric("zs_acc", True),
        Metric("ece", False),
    )
}

#: The metric names in order (the keys of ``evaluate_embeddings`` and the metric columns of a trials row).
METRIC_KEYS: tuple[str, ...] = tuple(METRICS)

#: The classification task's metrics (``task='classify'``, P-Mixup; percent on the target domain's test
#: images, ``eval.<domain>.<metric>`` on each source domain): top-1 accuracy and mean per-class accuracy.
#: Not in :data:`METRICS`, whose keys are exactly what ``evaluate_embeddings`` returns.
CLASSIFY_METRICS: dict[str, Metric] = {m.name: m for m in (Metric("acc", True), Metric("macc", True))}
CLASSIFY_KEYS: tuple[str, ...] = tuple(CLASSIFY_METRICS)

#: The splits a metric can be reported for; a reported key is ``<split>_<metric>`` (``val_rsum``).
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: The prefix of an extra evaluation set's metrics: ``eval.<set>.<metric>`` (report keys and columns).
EVAL_PREFIX = "eval."


def metric_key(split: str, metric: str) -> str:
    """``("test", "rsum") -> "test_rsum"``: the one place the split prefix is added."""
    return f"{split}_{metric}"


def eval_key(set_name: str, metric: str) -> str:
    """``("flat", "rsum") -> "eval.flat.rsum"``: a metric of an extra evaluation set (``data.eval_*``)."""
    return f"{EVAL_PREFIX}{set_name}.{metric}"


def split_metric_key(key: str) -> tuple[str, str] | None:
    """``"val_rsum" -> ("val", "rsum")``, ``"eval.flat.rsum" -> ("eval.flat", "rsum")``; None for a key
    without a split prefix (``train_loss`` is a training statistic, not a metric of the train split, so
    only ``val_``, ``test_`` and ``eval.<set>.`` count)."""
    if key.startswith(EVAL_PREFIX):
        set_name, dot, name = key[len(EVAL_PREFIX):].partition(".")
        return (EVAL_PREFIX + set_name, name) if set_name and dot and name else None
    split, _, name = key.partition("_")
    if split in ("val", "test") and name:
        return split, name
    return None


def is_split(name: str) -> bool:
    """A split of the history table: ``train``, ``val``, ``test`` or ``eval.<set>``."""
    if name.startswith(EVAL_PREFIX):
        rest = name[len(EVAL_PREFIX):]
        return bool(rest) and "." not in rest
    return name in SPLITS


# ----------------------------------------------------------------------------------------------------------
# the end-of-run probes: few-shot linear probe and embedding arithmetic (``geomix.evaluation``)

#: The attribute kinds of the embedding-arithmetic queries (``geomix.data.arithmetic``).
ARITH_KINDS: tuple[str, ...] = ("colour", "shape", "size", "position", "count")

#: The arithmetic metrics, overall first: R@1 / R@5 in percent over all queries, then per kind.
ARITH_KEYS: tuple[str, ...] = ("arith_r1", "arith_r5", *(f"arith_r{k}_{kind}" for kind in ARITH_KINDS
                                                        for k in (1, 5)))


def fewshot_key(k: int) -> str:
    """``4 -> "fewshot_k4"``: the linear probe's accuracy (percent) with ``k`` images per class."""
    return f"fewshot_k{int(k)}"


def metric_info(name: str) -> Metric | None:
    """The :class:`Metric` of any metric column name: the evaluation metrics, the classification task's,
    ``fewshot_k<k>`` and the arithmetic keys (all percentages, higher is better); None for a name that is
    not a metric."""
    if name in METRICS or name in CLASSIFY_METRICS:
        return METRICS.get(name) or CLASSIFY_METRICS[name]
    if name in ARITH_KEYS or (name.startswith("fewshot_k") and name[len("fewshot_k"):].isdigit()):
        return Metric(name, True)
    return None
