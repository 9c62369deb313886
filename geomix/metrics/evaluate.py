"""Every evaluation metric of a test set in one call: :func:`evaluate_embeddings`."""

from __future__ import annotations

import math

import torch

from geomix.metrics.calibration import DEFAULT_SCALE, _ece, _zero_shot
from geomix.metrics.geometry import _alignment, _log_mean_exp_sqdist, _modality_gap
from geomix.metrics.inputs import (
    _bad,
    _check_embeddings,
    _check_labels,
    _check_same,
    _check_scale,
    _check_txt_to_img,
)
from geomix.metrics.retrieval import RETRIEVAL_KS, _first_caption, _i2t_scan, _recall, _t2i_ranks
from geomix.registry import METRIC_KEYS


@torch.no_grad()
def evaluate_embeddings(
    img: torch.Tensor,
    txt: torch.Tensor,
    txt_to_img: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    class_txt: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, float]:
    """Every evaluation metric of a test set, with exactly the keys of :data:`geomix.metrics.METRIC_KEYS`.

    - ``r{1,5,10}_{i2t,t2i}``, ``rsum`` (sum of the six): see :func:`~geomix.metrics.retrieval_recall`, over
      all captions.
    - Pair metrics ``align``, ``unif``, ``unif_img``, ``unif_txt``, ``gap``, ``cos_pos``, ``cos_neg`` use the
      n pairs (image i, FIRST caption of image i in txt order), i.e. the one-caption-per-image protocol of the
      authors' code; with ``txt_to_img=None`` that is simply row i of txt.
    - With ``class_txt`` and ``labels``: ``zs_acc`` and ``ece`` from :func:`~geomix.metrics.zero_shot`.
      Without them: ``zs_acc`` is NaN and ``ece`` is that of image->text retrieval seen as classification
      of image i among the n images through its captions: ``p = softmax(scale * cos(img_i, txt))`` over ALL
      m captions, the mass of image g is the sum of ``p`` over g's captions ("any caption of the image" is
      the correct class), confidence = the largest mass, correct = image i's own mass is strictly the
      largest (ties pessimistic, as in retrieval). With one caption per image the accuracy behind it equals
      ``r1_i2t``.

    Args:
        img: [n, d] image embeddings, n >= 2.
        txt: [m, d] caption embeddings.
        txt_to_img: LongTensor [m] caption -> image index, or None for one caption per image (m == n).
        scale: positive logit scale for the ECE / zero-shot softmax; None = 100 (τ = 0.01).
        class_txt: [C, d] class-prompt embeddings, given together with ``labels``.
        labels: [n] integer class of each image in [0, C).
    """
    scale = DEFAULT_SCALE if scale is None else _check_scale(scale)
    if (class_txt is None) != (labels is None):
        given = "class_txt" if labels is None else "labels"
        _bad(given, "<given alone>", "class_txt and labels together, or neither")
    img = _check_embeddings("img", img)
    txt = _check_embeddings("txt", txt, min_rows=1)
    img, txt = _check_same(img, txt, "img", "txt")
    n, m = img.shape[0], txt.shape[0]
    t2i = _check_txt_to_img(txt_to_img, n, m, img.device)
    if class_txt is not None:
        class_txt = _check_embeddings("class_txt", class_txt, min_rows=1)
        img, class_txt = _check_same(img, class_txt, "img", "class_txt")
        txt = txt.to(img.dtype)
        labels = _check_labels("labels", labels, n, class_txt.shape[0], img.device)

    i2t_ranks, conf, hit = _i2t_scan(img, txt, t2i, scale)
    t2i_ranks = _t2i_ranks(img, txt, t2i)
    out: dict[str, float] = {}
    for k in RETRIEVAL_KS:
        out[f"r{k}_i2t"] = _recall(i2t_ranks, k, m)
        out[f"r{k}_t2i"] = _recall(t2i_ranks, k, n)
    out["rsum"] = sum(out[f"r{k}_{d}"] for d in ("i2t", "t2i") for k in RETRIEVAL_KS)

    pair_txt = txt[_first_caption(t2i, n)]
    out["align"] = _alignment(img, pair_txt)
    out["unif"] = -_log_mean_exp_sqdist(img, pair_txt, 2.0, skip_diagonal=False)
    out["unif_img"] = _log_mean_exp_sqdist(img, img, 2.0, skip_diagonal=True)
    out["unif_txt"] = _log_mean_exp_sqdist(pair_txt, pair_txt, 2.0, skip_diagonal=True)
    out.update(_modality_gap(img, pair_txt))

    if class_txt is None:
        out["zs_acc"] = math.nan
        out["ece"] = _ece(conf, hit, 15)
    else:
        out.update(_zero_shot(img, class_txt, labels, scale))
    return {k: out[k] for k in METRIC_KEYS}
