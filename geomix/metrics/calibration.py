"""Calibration and zero-shot classification: expected calibration error (ECE) and nearest-prompt accuracy.

``ece`` is in percent with equal-width confidence bins (15 unless given).
"""

from __future__ import annotations

import torch

from geomix.metrics.inputs import (
    _bad,
    _block,
    _check_embeddings,
    _check_labels,
    _check_n_bins,
    _check_same,
    _check_scale,
)

DEFAULT_SCALE = 100.0
"""Logit scale (1/τ with τ = 0.01, as the authors' code) for retrieval ECE and zero-shot softmax."""

# Probability rows may sum to 1 only up to float32 softmax round-off over many classes.
_PROB_SUM_ATOL = 1e-3


def _ece(conf: torch.Tensor, correct: torch.Tensor, n_bins: int) -> float:
    """ECE in percent; bin b holds confidences in (b/n_bins, (b+1)/n_bins], with 0 in the first bin."""
    conf = conf.double()
    bins = (conf * n_bins).ceil().long().clamp(1, n_bins) - 1
    conf_sum = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).index_add_(0, bins, conf)
    acc_sum = torch.zeros_like(conf_sum).index_add_(0, bins, correct.double())
    # sum_b |B_b|/n * |acc_b - conf_b| = sum_b |acc_sum_b - conf_sum_b| / n
    return (100.0 * (acc_sum - conf_sum).abs().sum() / conf.shape[0]).item()


def _zero_shot(
    img: torch.Tensor, class_txt: torch.Tensor, labels: torch.Tensor, scale: float, n_bins: int = 15
) -> dict[str, float]:
    n = img.shape[0]
    conf = torch.empty(n, dtype=img.dtype, device=img.device)
    pred = torch.empty(n, dtype=torch.long, device=img.device)
    step = _block(class_txt.shape[0])
    for s in range(0, n, step):
        e = min(n, s + step)
        logits = scale * (img[s:e] @ class_txt.T)
        top, pred[s:e] = logits.max(dim=1)
        conf[s:e] = torch.exp(top - torch.logsumexp(logits, dim=1))
    correct = pred == labels
    return {"zs_acc": 100.0 * correct.double().mean().item(), "ece": _ece(conf, correct, n_bins)}


@torch.no_grad()
def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error in percent: ``100 * sum_b |B_b|/n * |acc_b - conf_b|``.

    Confidence is the max probability of a row and the prediction its argmax (the first index on ties).
    Bins are ``n_bins`` equal-width intervals ``(b/n_bins, (b+1)/n_bins]`` (a confidence of exactly 0 goes to
    the first bin).

    Args:
        probs: [n, C] probabilities in [0, 1], rows summing to 1 (within 1e-3).
        labels: [n] integer class indices in [0, C).
        n_bins: number of bins, >= 1.
    """
    n_bins = _check_n_bins(n_bins)
    if not isinstance(probs, torch.Tensor):
        _bad("probs", type(probs).__name__, "a torch.Tensor")
    if probs.dim() != 2 or probs.shape[0] < 1 or probs.shape[1] < 1:
        _bad("probs.shape", tuple(probs.shape), "a 2-D tensor [n >= 1, classes >= 1]")
    if not probs.dtype.is_floating_point:
        _bad("probs.dtype", probs.dtype, "a floating-point tensor")
    probs = probs.to(torch.promote_types(probs.dtype, torch.float32))
    if not bool(torch.isfinite(probs).all()):
        _bad("probs", "<non-finite values>", "finite probabilities in [0, 1]")
    lo, hi = probs.min().item(), probs.max().item()
    if lo < 0.0 or hi > 1.0:
        _bad("probs", f"<values in [{lo:g}, {hi:g}]>", "probabilities in [0, 1]")
    sums = probs.sum(dim=1, dtype=torch.float64)
    worst = int((sums - 1.0).abs().argmax())
    if abs(sums[worst].item() - 1.0) > _PROB_SUM_ATOL:
        _bad(f"probs row {worst} sum", f"{sums[worst].item():g}", f"1 (within {_PROB_SUM_ATOL:g})")
    labels = _check_labels("labels", labels, probs.shape[0], probs.shape[1], probs.device)
    conf, pred = probs.max(dim=1)
    return _ece(conf, pred == labels, n_bins)


@torch.no_grad()
def zero_shot(
    img: torch.Tensor, class_txt: torch.Tensor, labels: torch.Tensor, scale: float = DEFAULT_SCALE
) -> dict[str, float]:
    """Zero-shot classification by nearest class prompt: accuracy and ECE (15 bins), both in percent.

    The prediction is the argmax of ``scale * cos(img, class_txt)`` (first class on ties) and the confidence
    its softmax probability.

    Args:
        img: [n, d] image embeddings (L2-normalised here).
        class_txt: [C, d] class-prompt embeddings (L2-normalised here).
        labels: [n] integer class indices in [0, C).
        scale: positive logit scale (1/τ).
    """
    scale = _check_scale(scale)
    img = _check_embeddings("img", img, min_rows=1)
    class_txt = _check_embeddings("class_txt", class_txt, min_rows=1)
    img, class_txt = _check_same(img, class_txt, "img", "class_txt")
    labels = _check_labels("labels", labels, img.shape[0], class_txt.shape[0], img.device)
    return _zero_shot(img, class_txt, labels, scale)
