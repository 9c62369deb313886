"""Row-share kernels of the CLIP loss and the embedding-level mix terms (``docs/losses.md``, *Terms*).

Inputs are already float32, validated and (under DDP) gathered; ``rows`` selects this worker's rows
(``None`` = all). A mix term's kernel is what its :class:`geomix.registry.MixTerm` entry names: ::

    kernel(x: TermInputs, lam) -> (row share of the term [0-d], (mixed, a_side, b_side))

where the triple is what a progressive λ policy observes (the detached mixed embeddings and the two sets
they were mixed from). A new term is one such function plus its registry entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from geomix.config import LossConfig
from geomix.losses._common import (
    Lam,
    MixFn,
    Scale,
    _idx,
    _inverse,
    _lam_rows,
    _nll2,
    _nll_w,
    _pair_targets,
    _rows,
    _share,
)

Observation = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

def _clip_share(i: torch.Tensor, t: torch.Tensor, s: Scale, rows: tuple[int, int] | None) -> torch.Tensor:
    n = i.shape[0]
    r = _rows(rows, n)
    labels = _idx(r, i.device)
    logits_i = s * i[r[0] : r[1]] @ t.T
    # One matmul for the full batch: the text->image logits are the transpose.
    logits_t = logits_i.T if rows is None else s * t[r[0] : r[1]] @ i.T
    return 0.5 * (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) * _share(r, n)


def _m2_share(
    i: torch.Tensor, t: torch.Tensor, lam: Lam, s: Scale, rows: tuple[int, int] | None, mix: MixFn
) -> tuple[torch.Tensor, torch.Tensor]:
    """m²-Mix: ``M_j = mix(I_j, T_j, λ)``; ``A = s·I·Mᵀ`` and ``B = s·T·Mᵀ`` with diagonals ``s·I_i·T_i``."""
    n = i.shape[0]
    r = _rows(rows, n)
    idx = _idx(r, i.device)
    m = mix(i, t, lam, check=False).float()
    i_r, t_r = i[r[0] : r[1]], t[r[0] : r[1]]
    pos = s * (i_r * t_r).sum(-1)
    local = torch.arange(r[1] - r[0], device=i.device)
    # Out-of-place index_put writes the positive logit at (row, its global column): no n×n mask.
    a = (s * i_r @ m.T).index_put((local, idx), pos)
    b = (s * t_r @ m.T).index_put((local, idx), pos)
    return 0.5 * (F.cross_entropy(a, idx) + F.cross_entropy(b, idx)) * _share(r, n), m


@dataclass
class _Partners:
    """Where each row's mixing partner comes from: a permutation of the batch, or the previous step.

    ``perm``/``inv``: ``[n]`` partner indices and their inverse; ``hist``: the previous step's detached
    ``(img, txt)`` embeddings ``[n, d]`` each, row ``i`` being row ``i``'s partner.
    """

    perm: torch.Tensor | None = None
    inv: torch.Tensor | None = None
    hist: tuple[torch.Tensor, torch.Tensor] | None = None

    def of(self, x: torch.Tensor, side: int) -> torch.Tensor:
        return x[self.perm] if self.hist is None else self.hist[side]


def _soft_pair_share(
    im: torch.Tensor,
    t: torch.Tensor,
    lam: Lam,
    s: Scale,
    rows: tuple[int, int] | None,
    perm: torch.Tensor,
    inv: torch.Tensor,
) -> torch.Tensor:
    """``½ [CE(s·Ĩ·Tᵀ, Y) + CE(s·T·Ĩᵀ, Ỹ)]`` for mixed rows ``Ĩ_i`` holding pair ``i`` with weight ``λ_i``
    and pair ``π(i)`` with ``1-λ_i``: ``Y = diag(λ)·Id + diag(1-λ)·P_π`` and ``Ỹ`` = ``Yᵀ`` with its rows
    (the columns of ``Y``) renormalised to sum to one. For a scalar ``λ`` they already do and ``Ỹ = Yᵀ``.
    """
    n = im.shape[0]
    r = _rows(rows, n)
    to_mixed, to_clean = _pair_targets(lam, perm, inv, _idx(r, im.device), r)
    logits = s * im[r[0] : r[1]] @ t.T
    to_t = _nll2(logits, *to_mixed)
    logits_t = logits.T if rows is None else s * t[r[0] : r[1]] @ im.T
    to_i = _nll2(logits_t, *to_clean)
    return 0.5 * (to_t + to_i) * _share(r, n)


def _perm_partners(perm: torch.Tensor, device: torch.device) -> _Partners:
    perm = perm.to(device)
    return _Partners(perm=perm, inv=_inverse(perm))


def _uni_share(
    a: torch.Tensor,
    b: torch.Tensor,
    lam: Lam,
    s: Scale,
    rows: tuple[int, int] | None,
    mix: MixFn,
    part: _Partners,
    side: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """V-Mix (``a`` = images, ``side=0``) or, with the modalities swapped, L-Mix (``side=1``).

    ``Ã_i = mix(a_i, a_π(i), λ)`` has target ``λ`` at pair ``i`` and ``1-λ`` at pair ``π(i)``:
    ``½ [CE(s·Ã·bᵀ, Y) + CE(s·b·Ãᵀ, Yᵀ)]``, ``Y = λ·Id + (1-λ)·P_π`` (see :func:`_soft_pair_share`).
    With history partners the partner pairs are the previous step's, appended as extra columns/rows.

    Returns:
        (share of the loss, mixed ``Ã`` ``[n, d]``, partner rows ``[n, d]``).
    """
    n = a.shape[0]
    r = _rows(rows, n)
    idx = _idx(r, a.device)
    partner = part.of(a, side)
    am = mix(a, partner, lam, check=False).float()
    if part.hist is None:
        return _soft_pair_share(am, b, lam, s, rows, part.perm, part.inv), am, partner
    lam_r = _lam_rows(lam, r)
    b_hist = part.hist[1 - side]
    logits = s * am[r[0] : r[1]] @ torch.cat([b, b_hist]).T
    to_b = _nll2(logits, idx, idx + n, lam_r)
    # Rows: current pairs (mass λ on their own mix) and previous-step pairs (mass 1-λ on the mix they
    # entered); the weights of one target column sum to one, as with a permutation.
    to_a = _nll_w(s * b[r[0] : r[1]] @ am.T, idx, lam_r) + _nll_w(
        s * b_hist[r[0] : r[1]] @ am.T, idx, 1.0 - lam_r
    )
    return 0.5 * (to_b + to_a) * _share(r, n), am, partner


def _vl_share(
    i: torch.Tensor,
    t: torch.Tensor,
    lam: Lam,
    s: Scale,
    rows: tuple[int, int] | None,
    mix: MixFn,
    part: _Partners,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VL-Mix: both modalities mixed with the same λ and partners; mixed pair ``i`` is the positive."""
    n = i.shape[0]
    r = _rows(rows, n)
    idx = _idx(r, i.device)
    ip, tp = part.of(i, 0), part.of(t, 1)
    im = mix(i, ip, lam, check=False).float()
    tm = mix(t, tp, lam, check=False).float()
    logits = s * im[r[0] : r[1]] @ tm.T
    logits_t = logits.T if rows is None else s * tm[r[0] : r[1]] @ im.T
    loss = 0.5 * (F.cross_entropy(logits, idx) + F.cross_entropy(logits_t, idx)) * _share(r, n)
    return loss, torch.cat([im, tm]), torch.cat([ip, tp])



@dataclass
class TermInputs:
    """What every term kernel sees in one step.

    Attributes:
        img, txt: ``[n, d]`` float32 normalised features of the (gathered) batch.
        scale: the CLIP logit scale ``s`` (float or 0-d tensor).
        rows: this worker's rows of the gathered batch (``local_loss``), or None for all rows.
        mix: the mixing function of ``mix.geometry`` (geodesic or linear).
        partners: this step's partners (None when no active term uses them).
        loss: the loss config (term-specific settings such as ``m2_tau``).
    """

    img: torch.Tensor
    txt: torch.Tensor
    scale: Scale
    rows: tuple[int, int] | None
    mix: MixFn
    partners: _Partners | None
    loss: LossConfig


def m2_term(x: TermInputs, lam: Lam) -> tuple[torch.Tensor, Observation]:
    """m²-Mix with its own fixed scale ``1/loss.m2_tau`` when set; observes (mixed, images, texts)."""
    s_m = x.scale if x.loss.m2_tau is None else 1.0 / x.loss.m2_tau
    share, mixed = _m2_share(x.img, x.txt, lam, s_m, x.rows, x.mix)
    return share, (mixed, x.img, x.txt)


def v_term(x: TermInputs, lam: Lam) -> tuple[torch.Tensor, Observation]:
    """V-Mix; observes (mixed images, images, partner images)."""
    share, mixed, partner = _uni_share(x.img, x.txt, lam, x.scale, x.rows, x.mix, x.partners, 0)
    return share, (mixed, x.img, partner)


def l_term(x: TermInputs, lam: Lam) -> tuple[torch.Tensor, Observation]:
    """L-Mix; observes (mixed texts, texts, partner texts)."""
    share, mixed, partner = _uni_share(x.txt, x.img, lam, x.scale, x.rows, x.mix, x.partners, 1)
    return share, (mixed, x.txt, partner)


def vl_term(x: TermInputs, lam: Lam) -> tuple[torch.Tensor, Observation]:
    """VL-Mix; observes (both mixed sets, both clean sets, both partner sets)."""
    share, mixed, partner = _vl_share(x.img, x.txt, lam, x.scale, x.rows, x.mix, x.partners)
    return share, (mixed, torch.cat([x.img, x.txt]), partner)
