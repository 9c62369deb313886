"""The classification task (P-Mixup's few-shot supervised multi-source domain transfer, ``docs/pmixup.md``):
:class:`TransferConfig` (``transfer.*``: the objective and its λ), and the checks of the FSMDT data fields
of a ``DataConfig`` (``data.target_domain``, ``data.source_domains``, ``data.shots``, ``data.shot_seed``,
``data.csv_domain_key``) and of a whole ``TrainConfig`` with ``task='classify'``.

The data of the task: the embedded data (one style = one domain; by default the target is ``data.styles[0]``
and the sources ``data.base_styles``), ``data.source='folder'`` (``data.path/<domain>/<class>/<image>``) or
``'csv'`` (one row per image: ``data.csv_img_key``, ``data.csv_label_key``, ``data.csv_domain_key``).
``data.shots`` images per class of the target are labelled, drawn with ``data.shot_seed`` (None: the run's
seed).

What needs the data (a target that is not a domain of it, shots above the smallest target class, a class
in a source but not the target, an empty domain folder) is checked before training by
``geomix.data.validate_data`` (``geomix.data.fsmdt.check_fsmdt``); what needs only the config is checked
here, on construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from geomix.checks import check_choice, check_range, check_seed, fail
from geomix.config.lambdas import LambdaConfig
from geomix.config.sections import SHAPE_STYLES, Pairing, _Section

__all__ = ["TransferConfig", "task_domains", "check_domain_fields", "check_task"]


def _progressive() -> LambdaConfig:
    return LambdaConfig(policy="progressive")


@dataclass(frozen=True)
class TransferConfig(_Section):
    """P-Mixup's objective for ``task='classify'`` (``docs/pmixup.md``, *The equations as implemented*):

    ``L = w_clean_src·CE(src) + w_clean_tgt·CE(tgt) + w_img·SCE(image-level mix) + w_feat·SCE(feature-level
    mix)``, both mixes with the same λ per step from ``lam`` (a :class:`LambdaConfig`: ``beta`` = the
    paper's random λ, ``progressive`` = P-Mixup, ``fixed`` for controls). ``pairing``: each source row's
    target partner, ``random`` or ``same_class``. A mix weight of 0 switches that level off (both 0 = the
    "no mix" row).
    """

    section: ClassVar[str] = "transfer"
    pairing: Pairing = "random"
    w_clean_src: float = 1.0
    w_clean_tgt: float = 1.0
    w_img: float = 1.0
    w_feat: float = 1.0
    lam: LambdaConfig = field(default_factory=_progressive)

    def _check(self, p: str) -> None:
        for key in ("w_clean_src", "w_clean_tgt", "w_img", "w_feat"):
            check_range(f"{p}.{key}", getattr(self, key), 0.0, None)
        if not isinstance(self.lam, LambdaConfig):
            fail(f"{p}.lam", self.lam, "a LambdaConfig")
        if self.lam.policy == "history":
            fail(f"{p}.lam.policy", "history", "'beta', 'fixed' or 'progressive' (history needs a "
                 "contrastive term's batches)")
        if self.w_clean_src + self.w_clean_tgt + self.w_img + self.w_feat == 0:
            fail(f"{p}.w_clean_src", self.w_clean_src, "a positive weight on at least one of the four terms")

    @property
    def levels(self) -> str:
        """``none``, ``feat``, ``img`` or ``both``: the mix levels that are on."""
        on = (self.w_img > 0, self.w_feat > 0)
        return {(False, False): "none", (False, True): "feat", (True, False): "img", (True, True): "both"}[on]


def task_domains(data: Any) -> tuple[str | None, tuple[str, ...]]:
    """``(target, sources)`` of a ``DataConfig``: its ``target_domain`` / ``source_domains``, on the
    embedded data by default ``styles[0]`` (the held-back style) and ``base_styles`` (the base model's)."""
    target, sources = data.target_domain, tuple(data.source_domains)
    if data.source == "shapes":
        target = target if target is not None else data.styles[0]
        sources = sources or tuple(data.base_styles)
    return target, sources


def check_domain_fields(data: Any, p: str) -> None:
    """The FSMDT fields of a ``DataConfig``, on its construction (with the task: :func:`check_task`)."""
    check_range(f"{p}.shots", data.shots, 1, None)
    if data.shot_seed is not None:
        check_seed(f"{p}.shot_seed", data.shot_seed)
    if not data.csv_domain_key:
        fail(f"{p}.csv_domain_key", data.csv_domain_key, "a column name")
    sources = list(data.source_domains)
    for i, s in enumerate(sources):
        if not s:
            fail(f"{p}.source_domains", sources, "non-empty domain names")
        if s in sources[:i]:
            fail(f"{p}.source_domains", sources, f"each domain once: {s!r} is given {sources.count(s)} times")
    if data.target_domain is not None and not data.target_domain:
        fail(f"{p}.target_domain", data.target_domain, "a domain name, or None")
    if data.source == "shapes":
        if data.target_domain is not None:
            check_choice(f"{p}.target_domain", data.target_domain, SHAPE_STYLES)
        for i, s in enumerate(sources):
            check_choice(f"{p}.source_domains[{i}]", s, SHAPE_STYLES)


def check_task(cfg: Any) -> None:
    """The rules between ``task`` and the other sections of a ``TrainConfig``, on its construction."""
    d = cfg.data
    if cfg.task == "retrieval":
        if d.source == "folder":
            fail("data.source", d.source, "'shapes', 'csv' or 'json' unless task='classify' (a folder of "
                 "domain folders holds labelled images, not captions)")
        for key in ("target_domain", "shot_seed"):
            if getattr(d, key) is not None:
                fail(f"data.{key}", getattr(d, key), "None unless task='classify'")
        if d.source_domains:
            fail("data.source_domains", list(d.source_domains), "[] unless task='classify'")
        return
    if d.source == "json":
        fail("data.source", d.source, "'shapes', 'folder' or 'csv' with task='classify'")
    if d.source != "shapes":
        if d.target_domain is None:
            fail("data.target_domain", None, f"a domain of the data with task='classify' and "
                 f"data.source={d.source!r}")
        if not d.source_domains:
            fail("data.source_domains", [], f"a non-empty list of domains with task='classify' and "
                 f"data.source={d.source!r}")
        for key in ("val_path", "test_path"):
            if getattr(d, key) is not None:
                fail(f"data.{key}", getattr(d, key), "None with task='classify' (the target's images "
                     "that are not shots are its test images)")
        if d.eval_sets:
            fail("data.eval_sets", dict(d.eval_sets), "empty with task='classify' (the source domains are "
                 "the evaluation sets)")
    if d.source == "csv":
        if d.csv_label_key is None:
            fail("data.csv_label_key", None, "the name of the CSV's label column with task='classify'")
        if d.class_list is not None:
            fail("data.class_list", d.class_list, "None with task='classify' (the classes are the labels of "
                 "the file)")
    if cfg.run.save_embeddings:
        fail("run.save_embeddings", True, "false with task='classify' (it saves retrieval embeddings)")
    target, sources = task_domains(d)
    if target in sources:
        fail("data.source_domains", list(sources), f"domains other than the target {target!r} (the target "
             "is not a source)")
    if cfg.loss.kind != "contrastive" or cfg.loss.active_terms:
        fail("loss.kind" if cfg.loss.kind != "contrastive" else f"loss.w_{cfg.loss.active_terms[0]}",
             cfg.loss.kind if cfg.loss.kind != "contrastive" else cfg.loss.weight(cfg.loss.active_terms[0]),
             "the default (contrastive, every mix term weight 0) with task='classify': its objective is "
             "transfer.*")
