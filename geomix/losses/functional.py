"""The loss terms as functions of one process's whole batch (tensors in, 0-d float32 tensor out).

Each validates its inputs before any ``n×n`` work (``check=False`` skips the host-syncing checks on a hot
path), casts to float32 and runs with autocast disabled, so a bf16/fp16 step still mixes and takes the
log-softmax in float32 (``docs/losses.md``, *Notation*).
"""

from __future__ import annotations

import torch

from geomix.losses._common import (
    Lam,
    Scale,
    _check_batch,
    _check_perm,
    _check_scale,
    _f32,
    _fp32_context,
    _mixer,
)
from geomix.losses.kernels import _clip_share, _m2_share, _perm_partners, _uni_share, _vl_share
from geomix.sphere import check_lam


def _prepare(
    img: torch.Tensor,
    txt: torch.Tensor,
    scale: Scale,
    check: bool,
    lam: Lam | None = None,
    perm: torch.Tensor | None = None,
    names: tuple[str, str] = ("img", "txt"),
) -> tuple[int, torch.Tensor, torch.Tensor, Scale, Lam | None]:
    """Validate a functional call's inputs (before any n×n work) and cast them to float32."""
    n = _check_batch(img, txt, check, names)
    _check_scale(scale, check)
    if lam is not None:
        check_lam(lam, n, check=check)
    if perm is not None:
        _check_perm(perm, n, check)
    dev = img.device
    return n, img.float(), txt.float(), _f32(scale, dev), None if lam is None else _f32(lam, dev)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: Scale, *, check: bool = True) -> torch.Tensor:
    """``L_clip = ½ [CE(s·I·Tᵀ, Id) + CE(s·T·Iᵀ, Id)]`` (paper eqs. 1-2); equals open_clip's ``ClipLoss``.

    Args:
        img: ``[n, d]`` normalised image embeddings.
        txt: ``[n, d]`` normalised text embeddings; row ``i`` is the caption of image ``i``.
        scale: the logit scale ``s = 1/τ``, a positive float or 0-d tensor (may require grad).
        check: validate finiteness (a host sync); shapes are always checked.

    Returns:
        0-d float32 tensor.
    """
    _, i, t, s, _ = _prepare(img, txt, scale, check)
    with _fp32_context(img.device):
        return _clip_share(i, t, s, None)


def m2_mix_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    lam: Lam,
    scale: Scale,
    *,
    geometry: str = "geodesic",
    check: bool = True,
) -> torch.Tensor:
    """m²-Mix (paper eqs. 4-5): hard negatives ``M_j = mix(I_j, T_j, λ)`` replace the off-diagonal columns.

    ``A[i, j] = s·I_i·M_j`` (``j ≠ i``), ``A[i, i] = s·I_i·T_i``; ``B`` the same with ``T_i`` as the row;
    ``L = ½ [CE(A, Id) + CE(B, Id)]``.

    Args:
        img, txt: ``[n, d]`` normalised embeddings.
        lam: ``λ`` (weight on the image), a float in ``[0, 1]``, a 0-d or an ``[n]`` tensor.
        scale: ``s_m`` (the CLIP scale, or ``1/m2_tau``).
        geometry: ``'geodesic'`` or ``'linear'`` mixing.
        check: validate finiteness and the range of a tensor ``lam`` (host syncs).

    Returns:
        0-d float32 tensor.
    """
    mix = _mixer(geometry)
    _, i, t, s, lam = _prepare(img, txt, scale, check, lam=lam)
    with _fp32_context(img.device):
        return _m2_share(i, t, lam, s, None, mix)[0]


def v_mix_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    lam: Lam,
    perm: torch.Tensor,
    scale: Scale,
    *,
    geometry: str = "geodesic",
    check: bool = True,
) -> torch.Tensor:
    """V-Mix (section 4.2.1): ``Ĩ_i = mix(I_i, I_π(i), λ)``, ``L = ½ [CE(s·Ĩ·Tᵀ, Y) + CE(s·T·Ĩᵀ, Yᵀ)]``.

    ``Y = λ·Id + (1-λ)·P_π`` (``P_π[i, π(i)] = 1``), evaluated as two gathers (no ``n×n`` target).

    Args:
        img, txt: ``[n, d]`` normalised embeddings.
        lam: ``λ`` in ``[0, 1]`` (weight on ``I_i``); a float, a 0-d or an ``[n]`` tensor.
        perm: ``[n]`` int64 permutation ``π`` (partner of row ``i``).
        scale: the logit scale ``s``.
        geometry: ``'geodesic'`` or ``'linear'``.
        check: validate finiteness, ``lam``'s range and that ``perm`` is a permutation (host syncs).

    Returns:
        0-d float32 tensor. With ``λ = 1`` it equals :func:`clip_loss`.
    """
    mix = _mixer(geometry)
    _, i, t, s, lam = _prepare(img, txt, scale, check, lam=lam, perm=perm)
    with _fp32_context(img.device):
        return _uni_share(i, t, lam, s, None, mix, _perm_partners(perm, i.device), 0)[0]


def l_mix_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    lam: Lam,
    perm: torch.Tensor,
    scale: Scale,
    *,
    geometry: str = "geodesic",
    check: bool = True,
) -> torch.Tensor:
    """L-Mix: V-Mix with the text mixed, ``T̃_i = mix(T_i, T_π(i), λ)``; exactly ``v_mix_loss(txt, img, ...)``.

    ``L = ½ [CE(s·T̃·Iᵀ, Y) + CE(s·I·T̃ᵀ, Yᵀ)]``: the mixed side's rows carry ``Y`` (``T̃_i`` holds
    ``T_i`` with weight ``λ`` and ``T_π(i)`` with ``1-λ``). An earlier form put ``Y`` on ``I·T̃ᵀ``; they
    agree only when ``π`` is an involution (``reverse``, the authors' choice), and this form is the one
    that stays correct for a random derangement (``docs/losses.md``, *L-Mix*). Args and Returns as
    :func:`v_mix_loss`.
    """
    mix = _mixer(geometry)
    _, i, t, s, lam = _prepare(img, txt, scale, check, lam=lam, perm=perm)
    with _fp32_context(img.device):
        return _uni_share(t, i, lam, s, None, mix, _perm_partners(perm, i.device), 1)[0]


def vl_mix_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    lam: Lam,
    perm: torch.Tensor,
    scale: Scale,
    *,
    geometry: str = "geodesic",
    check: bool = True,
) -> torch.Tensor:
    """VL-Mix (section 4.2.2): ``Ĩ``, ``T̃`` mixed with the same ``λ`` and ``π``; ``(Ĩ_i, T̃_i)`` is positive.

    ``L = ½ [CE(s·Ĩ·T̃ᵀ, Id) + CE(s·T̃·Ĩᵀ, Id)]``. Args and Returns as :func:`v_mix_loss`.
    """
    mix = _mixer(geometry)
    _, i, t, s, lam = _prepare(img, txt, scale, check, lam=lam, perm=perm)
    with _fp32_context(img.device):
        return _vl_share(i, t, lam, s, None, mix, _perm_partners(perm, i.device))[0]

