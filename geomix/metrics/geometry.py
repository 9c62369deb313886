"""Embedding geometry on the unit sphere: alignment, uniformity (cross- and within-modality), modality gap.

``align`` and ``unif`` follow the paper's (seed) definitions and are higher-is-better; the within-modality
:func:`within_uniformity` is the standard Wang-Isola value (negative, LOWER = more uniform).
"""

from __future__ import annotations

import math

import torch

from geomix.checks import check_range
from geomix.metrics.inputs import _block, _check_embeddings, _check_paired, _check_same


def _sqdist_from_cos(cos: torch.Tensor) -> torch.Tensor:
    # ||a - b||^2 = 2 - 2 a.b on the unit sphere; clamp the round-off below 0
    return (2.0 - 2.0 * cos).clamp_min(0.0)


def _alignment(img: torch.Tensor, txt: torch.Tensor) -> float:
    n = img.shape[0]
    total = torch.zeros((), dtype=torch.float64, device=img.device)
    step = _block(n)
    for s in range(0, n, step):
        e = min(n, s + step)
        sim = img[s:e] @ txt.T
        rows, cols = torch.arange(e - s, device=img.device), torch.arange(s, e, device=img.device)
        pos = sim[rows, cols]  # advanced indexing copies, so masking sim below keeps pos intact
        sim[rows, cols] = -math.inf
        hardest_neg = sim.amax(dim=1)
        total += (_sqdist_from_cos(pos) - _sqdist_from_cos(hardest_neg)).double().sum()
    return -(total / n).item()


def _log_mean_exp_sqdist(a: torch.Tensor, b: torch.Tensor, t: float, skip_diagonal: bool) -> float:
    """log mean_{i,j} exp(-t ||a_i - b_j||^2), over i != j when ``skip_diagonal`` (a is b)."""
    n, m = a.shape[0], b.shape[0]
    parts = []
    step = _block(m)
    for s in range(0, n, step):
        e = min(n, s + step)
        v = -t * _sqdist_from_cos(a[s:e] @ b.T)
        if skip_diagonal:
            v[torch.arange(e - s, device=a.device), torch.arange(s, e, device=a.device)] = -math.inf
        parts.append(torch.logsumexp(v.flatten(), dim=0))
    count = n * (n - 1) if skip_diagonal else n * m
    return (torch.logsumexp(torch.stack(parts), dim=0).double() - math.log(count)).item()


def _modality_gap(img: torch.Tensor, txt: torch.Tensor) -> dict[str, float]:
    n = img.shape[0]
    img64, txt64 = img.double(), txt.double()
    pos = (img64 * txt64).sum(dim=1)
    # sum_{i != j} <I_i, T_j> = <sum_i I_i, sum_j T_j> - sum_i <I_i, T_i>: no n x n matrix needed
    neg_sum = img64.sum(dim=0) @ txt64.sum(dim=0) - pos.sum()
    return {
        "gap": (img64.mean(dim=0) - txt64.mean(dim=0)).norm().item(),
        "cos_pos": pos.mean().item(),
        "cos_neg": (neg_sum / (n * (n - 1))).item(),
    }


@torch.no_grad()
def alignment(img: torch.Tensor, txt: torch.Tensor) -> float:
    """Seed alignment ``-E_i[ ||I_i - T_i||^2 - min_{k != i} ||I_i - T_k||^2 ]``; higher is better.

    Positive when every image is closer to its own caption than to the hardest other caption.

    Args:
        img: [n, d] image embeddings, n >= 2 (L2-normalised here).
        txt: [n, d] caption embeddings, row i is the positive of image i.
    """
    img, txt = _check_paired(img, txt)
    return _alignment(img, txt)


@torch.no_grad()
def uniformity(img: torch.Tensor, txt: torch.Tensor) -> float:
    """Seed cross-modal uniformity ``-log E_{i,j} exp(-2 ||I_i - T_j||^2)`` over all image-text pairs.

    Higher is better; the range on the unit sphere is [0, 8]. Computed with logsumexp, so it is stable.

    Args:
        img: [n, d] image embeddings, n >= 2 (L2-normalised here).
        txt: [m, d] caption embeddings, m >= 2.
    """
    img = _check_embeddings("img", img)
    txt = _check_embeddings("txt", txt)
    img, txt = _check_same(img, txt, "img", "txt")
    return -_log_mean_exp_sqdist(img, txt, 2.0, skip_diagonal=False)


@torch.no_grad()
def within_uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """Wang-Isola uniformity of one modality, ``log E_{i != j} exp(-t ||x_i - x_j||^2)``.

    The standard (not negated) value: it is <= 0 and LOWER means more uniform (the opposite direction from
    :func:`uniformity`; see :data:`geomix.metrics.HIGHER_IS_BETTER`). Identical rows give 0.

    Args:
        x: [n, d] embeddings, n >= 2 (L2-normalised here).
        t: positive temperature of the Gaussian potential.
    """
    check_range("t", t, 0.0, lo_open=True)
    x = _check_embeddings("x", x)
    return _log_mean_exp_sqdist(x, x, float(t), skip_diagonal=True)


@torch.no_grad()
def modality_gap(img: torch.Tensor, txt: torch.Tensor) -> dict[str, float]:
    """Modality gap and mean positive / negative cosine, in O(n d) (no n x n matrix).

    Args:
        img: [n, d] image embeddings, n >= 2 (L2-normalised here).
        txt: [n, d] caption embeddings, row i is the positive of image i.

    Returns:
        ``gap`` = ||mean(I) - mean(T)||, ``cos_pos`` = mean_i cos(I_i, T_i),
        ``cos_neg`` = mean_{i != j} cos(I_i, T_j).
    """
    img, txt = _check_paired(img, txt)
    return _modality_gap(img, txt)
