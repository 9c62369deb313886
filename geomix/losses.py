"""Contrastive losses with geodesic multi-modal mixup (``docs/losses.md``).

A functional core (tensors in, 0-d tensor out; shapes in the docstrings) and two thin modules:
:class:`MixLoss` (CLIP + m²/V/L/VL-Mix, λ and partners from its own seeded generator, distributed
gathering) and :class:`InputMixLoss` (the i-Mix / Un-Mix input-level baselines, with :func:`mix_inputs`).

Soft targets, the timm way, without ever materialising an ``n×n`` target: every target row used here has
at most two non-zero entries, ``w`` at column ``a_i`` and ``1 - w`` at column ``b_i``, so

    CE(Z, λ·Id + (1-λ)·P_π) = mean_i -[λ·log_softmax(Z_i)[i] + (1-λ)·log_softmax(Z_i)[π(i)]]

is one ``log_softmax`` and one ``gather`` (exact, not an approximation). Hard targets use
``F.cross_entropy`` with ``arange`` labels. Everything after the encoders runs in float32 with autocast
disabled, so a bf16/fp16 training step still mixes and takes the log-softmax in float32.

Row shares: each term is written as a mean over *rows* of a logit matrix. Computing only the rows
``r0:r1`` of the gathered batch and multiplying by ``(r1 - r0) / n`` gives that worker's share; the shares of
all workers sum to the full-batch loss. This is ``loss.local_loss`` (open_clip's label offsets by rank).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geomix.config import LOSS_KINDS, MIX_GEOMETRIES, LossConfig, MixConfig, check_choice, check_range
from geomix.mixing import HistoryPartner, build_lambda_policy, build_partner_policy
from geomix.sphere import check_features, check_lam, geodesic_mix, linear_mix

log = logging.getLogger(__name__)

__all__ = [
    "NonFiniteLossError",
    "clip_loss",
    "m2_mix_loss",
    "v_mix_loss",
    "l_mix_loss",
    "vl_mix_loss",
    "imix_loss",
    "unmix_loss",
    "mix_inputs",
    "InputMixBatch",
    "MixLoss",
    "InputMixLoss",
]

Scale = float | torch.Tensor
Lam = float | torch.Tensor
MixFn = Callable[..., torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN/Inf. The train loop catches it to mark the run ``diverged``.

    Attributes:
        term: the name of the first non-finite term (``clip``, ``m2``, ``v``, ``l``, ``vl``, ...).
        step: the optimisation step at which it happened.
    """

    def __init__(self, term: str, step: int, detail: str = "") -> None:
        self.term = term
        self.step = step
        msg = f"loss term {term!r} is non-finite at step {step}"
        super().__init__(msg + (f": {detail}" if detail else ""))


# ----------------------------------------------------------------------------------------------------------
# helpers


def _mixer(geometry: str) -> MixFn:
    check_choice("geometry", geometry, MIX_GEOMETRIES)
    return geodesic_mix if geometry == "geodesic" else linear_mix


def _fp32_context(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast so matmuls and log-softmax of the loss run in float32 (``losses.md``, *Notation*)."""
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _check_scale(scale: Scale, check: bool, name: str = "scale") -> None:
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"{name}.shape={tuple(scale.shape)} is invalid: allowed a scalar (0-d) tensor")
        if check:
            v = float(scale.detach())
            check_range(name, v, 0.0, None, lo_open=True)
    else:
        check_range(name, scale, 0.0, None, lo_open=True)


def _check_batch(
    img: torch.Tensor, txt: torch.Tensor, check: bool, names: tuple[str, str] = ("img", "txt")
) -> int:
    check_features(names[0], img, finite=check)
    check_features(names[1], txt, finite=check)
    if img.shape != txt.shape:
        raise ValueError(
            f"{names[1]}.shape={tuple(txt.shape)} is invalid: allowed the shape of {names[0]}, "
            f"{tuple(img.shape)}"
        )
    n = img.shape[0]
    if n < 2:
        raise ValueError(f"batch size n={n} is invalid: allowed n >= 2 (a contrastive loss needs negatives)")
    return n


def _check_perm(perm: torch.Tensor, n: int, check: bool, name: str = "perm") -> None:
    if not isinstance(perm, torch.Tensor) or perm.dtype != torch.int64 or perm.shape != (n,):
        shape = tuple(perm.shape) if isinstance(perm, torch.Tensor) else type(perm).__name__
        raise ValueError(f"{name}={shape} is invalid: allowed an int64 tensor of shape [{n}]")
    if check:
        if not torch.equal(perm.sort().values.cpu(), torch.arange(n, dtype=perm.dtype)):
            raise ValueError(f"{name}={perm.tolist()} is invalid: allowed a permutation of 0..{n - 1}")


def _f32(x: Scale | Lam, device: torch.device) -> Scale | Lam:
    return x.to(device=device, dtype=torch.float32) if isinstance(x, torch.Tensor) else float(x)


def _rows(rows: tuple[int, int] | None, n: int) -> tuple[int, int]:
    return (0, n) if rows is None else rows


def _idx(r: tuple[int, int], device: torch.device) -> torch.Tensor:
    return torch.arange(r[0], r[1], device=device)


def _share(r: tuple[int, int], n: int) -> float:
    return (r[1] - r[0]) / n


def _lam_rows(lam: Lam, r: tuple[int, int]) -> Lam:
    """λ for the rows ``r``: a scalar stays a scalar, a per-sample ``[n]`` tensor is sliced."""
    if isinstance(lam, torch.Tensor) and lam.ndim == 1:
        return lam[r[0] : r[1]]
    return lam


def _nll2(logits: torch.Tensor, la: torch.Tensor, lb: torch.Tensor, wa: Lam) -> torch.Tensor:
    """Mean over rows of ``-(wa·log_softmax(Z_i)[la_i] + (1-wa)·log_softmax(Z_i)[lb_i])``.

    The soft-target cross-entropy for a target row with mass ``wa`` at ``la`` and ``1-wa`` at ``lb``
    (``la == lb`` gives mass 1 there). One log-softmax, one gather; ``wa`` a scalar or ``[m]``.
    """
    logp = F.log_softmax(logits, dim=-1)
    picked = logp.gather(1, torch.stack([la, lb], dim=1))
    return -(wa * picked[:, 0] + (1.0 - wa) * picked[:, 1]).mean()


def _nll_w(logits: torch.Tensor, labels: torch.Tensor, w: Lam) -> torch.Tensor:
    """Mean over rows of ``-w_i·log_softmax(Z_i)[labels_i]`` (``w`` a scalar or ``[m]``)."""
    if isinstance(w, torch.Tensor) and w.ndim == 1:
        return (w * F.cross_entropy(logits, labels, reduction="none")).mean()
    return w * F.cross_entropy(logits, labels)


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device, dtype=perm.dtype)
    return inv


# ----------------------------------------------------------------------------------------------------------
# row-share kernels (inputs already float32 and validated; ``rows`` selects this worker's rows)


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
    idx = _idx(r, im.device)
    lam_r = _lam_rows(lam, r)
    logits = s * im[r[0] : r[1]] @ t.T
    to_t = _nll2(logits, idx, perm[idx], lam_r)
    logits_t = logits.T if rows is None else s * t[r[0] : r[1]] @ im.T
    inv_r = inv[idx]
    if isinstance(lam, torch.Tensor) and lam.ndim == 1:
        # Column k of Y holds λ_k (row k) and 1-λ_{π⁻¹(k)} (row π⁻¹(k)).
        own, other = lam_r, 1.0 - lam[inv_r]
        wa = own / (own + other)
    else:
        wa = lam_r
    to_i = _nll2(logits_t, idx, inv_r, wa)
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


# ----------------------------------------------------------------------------------------------------------
# public functional terms (one process, whole batch)


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
    ``T_i`` with weight ``λ`` and ``T_π(i)`` with ``1-λ``). ``losses.md`` writes ``Y`` on ``I·T̃ᵀ``; the two
    agree whenever ``π`` is an involution (``reverse``, the authors' choice) and this form is the one
    that stays correct for a random derangement. Args and Returns as :func:`v_mix_loss`.
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


# ----------------------------------------------------------------------------------------------------------
# input-level baselines: i-Mix and Un-Mix


@dataclass
class InputMixBatch:
    """What :func:`mix_inputs` returns: the mixed pixels and what the loss needs to build soft targets.

    Attributes:
        pixels: ``[n, ...]`` mixed inputs ``x̃_i = λ_i·x_i + (1-λ_i)·x_π(i)`` (input dtype).
        lam: ``[n]`` float32 ``λ_i`` (i-Mix: one per sample, ``max(λ, 1-λ)``; Un-Mix: one value repeated).
        perm: ``[n]`` int64 partner permutation ``π``.
    """

    pixels: torch.Tensor
    lam: torch.Tensor
    perm: torch.Tensor


def _beta(generator: torch.Generator, a: float, b: float, size: int) -> np.ndarray:
    """``size`` draws from ``Beta(a, b)``. torch's Beta sampler takes no generator, so numpy draws from a
    seed that the injected torch generator supplies: the stream stays a function of that generator only."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return np.random.default_rng(seed).beta(a, b, size=size)


def mix_inputs(
    pixels: torch.Tensor, generator: torch.Generator, *, kind: str, alpha: float = 1.0
) -> InputMixBatch:
    """Mix a pixel batch for the input-level baselines (``losses.md``, *i-Mix*, *Un-Mix*).

    Args:
        pixels: ``[n, ...]`` floating input batch, ``n >= 2``.
        generator: seeded CPU ``torch.Generator``; the only source of randomness.
        kind: ``'imix'`` (``λ_i ~ Beta(α, α)`` per sample, ``λ_i ← max(λ_i, 1-λ_i)``, ``π`` a random
            permutation) or ``'unmix'`` (one ``λ ~ Beta(α, α)`` per batch, ``π`` the reversed order).
        alpha: the Beta parameter ``α > 0`` (``loss.input_alpha``).

    Returns:
        :class:`InputMixBatch` on ``pixels``' device.
    """
    check_choice("kind", kind, ("imix", "unmix"))
    check_range("alpha", alpha, 0.0, None, lo_open=True)
    if not isinstance(pixels, torch.Tensor) or not pixels.is_floating_point() or pixels.ndim < 1:
        raise ValueError(f"pixels={type(pixels).__name__} is invalid: allowed a floating tensor [n, ...]")
    n = pixels.shape[0]
    if n < 2:
        raise ValueError(f"batch size n={n} is invalid: allowed n >= 2")
    if kind == "imix":
        lam = _beta(generator, alpha, alpha, n)
        lam = np.maximum(lam, 1.0 - lam)
        perm = torch.randperm(n, generator=generator)
    else:
        lam = np.full(n, _beta(generator, alpha, alpha, 1)[0])
        perm = torch.arange(n - 1, -1, -1)
    lam_t = torch.as_tensor(lam, dtype=torch.float32).to(pixels.device)
    perm = perm.to(pixels.device)
    w = lam_t.view(n, *([1] * (pixels.ndim - 1)))
    mixed = (w * pixels.float() + (1.0 - w) * pixels.float()[perm]).to(pixels.dtype)
    return InputMixBatch(mixed, lam_t, perm)


def _unmix_share(
    i: torch.Tensor,
    im: torch.Tensor,
    t: torch.Tensor,
    lam: Lam,
    s: Scale,
    rows: tuple[int, int] | None,
    perm: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-Mix's (clean CLIP share, mixed image->text share)."""
    n = i.shape[0]
    r = _rows(rows, n)
    idx = _idx(r, i.device)
    mixed = _nll2(s * im[r[0] : r[1]] @ t.T, idx, perm[idx], _lam_rows(lam, r)) * _share(r, n)
    return _clip_share(i, t, s, rows), mixed


def imix_loss(
    mixed_img: torch.Tensor,
    txt: torch.Tensor,
    lam: Lam,
    perm: torch.Tensor,
    scale: Scale,
    *,
    check: bool = True,
) -> torch.Tensor:
    """i-Mix: ``½ [CE(s·Ĩ·Tᵀ, Y) + CE(s·T·Ĩᵀ, Ỹ)]``, ``Y = diag(λ)·Id + diag(1-λ)·P_π``.

    ``Ỹ`` is ``Yᵀ`` with each row (a column of ``Y``) renormalised to sum to one. The two directions are
    averaged (not summed) so the loss sits on the same scale as the CLIP loss it replaces.

    Args:
        mixed_img: ``[n, d]`` normalised embeddings of the mixed images ``enc(x̃)``.
        txt: ``[n, d]`` normalised text embeddings.
        lam: ``[n]`` per-sample ``λ_i`` (or a scalar); perm: ``[n]`` ``π``; as from :func:`mix_inputs`.
        scale: the logit scale ``s``.
        check: validate finiteness, ``lam``'s range, ``perm`` (host syncs).

    Returns:
        0-d float32 tensor.
    """
    _, im, t, s, lam = _prepare(mixed_img, txt, scale, check, lam=lam, perm=perm, names=("mixed_img", "txt"))
    with _fp32_context(mixed_img.device):
        return _soft_pair_share(im, t, lam, s, None, perm.to(im.device), _inverse(perm.to(im.device)))


def unmix_loss(
    img: torch.Tensor,
    mixed_img: torch.Tensor,
    txt: torch.Tensor,
    lam: Lam,
    perm: torch.Tensor,
    scale: Scale,
    *,
    check: bool = True,
) -> torch.Tensor:
    """Un-Mix: ``L_clip(I, T) + λ·CE(s·Ĩ·Tᵀ, Id) + (1-λ)·CE(s·Ĩ·Tᵀ, P_π)``.

    Args:
        img: ``[n, d]`` clean image embeddings; mixed_img: ``[n, d]`` embeddings of the mixed images.
        txt: ``[n, d]`` text embeddings. lam: the batch ``λ`` (a scalar, or ``[n]`` as from
            :func:`mix_inputs`). perm: ``[n]`` ``π``. scale: ``s``. check: as :func:`imix_loss`.

    Returns:
        0-d float32 tensor.
    """
    _, i, t, s, lam = _prepare(img, txt, scale, check, lam=lam, perm=perm)
    _check_batch(mixed_img, txt, check, ("mixed_img", "txt"))
    with _fp32_context(img.device):
        clean, mixed = _unmix_share(i, mixed_img.float(), t, lam, s, None, perm.to(i.device))
        return clean + mixed


# ----------------------------------------------------------------------------------------------------------
# distributed helpers


def _dist_ready(world_size: int) -> bool:
    if world_size <= 1:
        return False
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError(
            f"world_size={world_size} but torch.distributed is not initialised: call "
            "torch.distributed.init_process_group first, or pass world_size=1"
        )
    return True


def _gather(x: torch.Tensor, rank: int, world_size: int, *, differentiable: bool) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (every rank must pass the same shape).

    ``differentiable``: through ``torch.distributed.nn``'s all_gather, whose backward sums each rank's
    gradient for a slice back onto the rank that owns it (needed when a rank's rows touch other ranks'
    features, as in ``local_loss``). Otherwise a plain all_gather with this rank's own tensor put back in
    place, as open_clip's ``gather_features``: every rank computes the whole loss, so the gradient that
    reaches the local slice is already the full-batch one.
    """
    if differentiable:
        import torch.distributed.nn.functional as dnnf  # noqa: PLC0415 - only under torch.distributed

        return torch.cat(dnnf.all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(world_size)]
    torch.distributed.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0)


def _replicated_scale(s: Scale, world_size: int) -> Scale:
    """The scale with its gradient divided by ``world_size`` (value unchanged).

    When every rank computes the full gathered loss, each would otherwise hand the replicated scale the
    full-batch gradient, while the encoders' local slices get only their own share; dividing keeps the
    rule "per-rank gradients sum to the one-process gradient" true for every parameter.
    """
    if isinstance(s, torch.Tensor) and s.requires_grad:
        return s.detach() + (s - s.detach()) / world_size
    return s


# ----------------------------------------------------------------------------------------------------------
# modules


_MIX_TERMS = ("m2", "v", "l", "vl")


class MixLoss(nn.Module):
    """``L = L_clip + decay(epoch)·(w_m2·L_m2 + w_v·L_V + w_l·L_L + w_vl·L_VL)`` (``kind='contrastive'``).

    Holds the configuration, one λ policy per active term (``mix.<term>``), the partner policy
    (``mix.partner``, one ``π`` per step shared by V, L and VL), and its own ``torch.Generator`` seeded with
    ``generator_seed``: the same seed gives bit-identical λ and partners. Each step draws, in order, the
    partners (if V/L/VL is active) then λ for m2, v, l, vl (active terms only).

    Distributed: with ``world_size > 1`` (``torch.distributed`` initialised) the local features are
    gathered first and λ/π are drawn for the *global* batch, so every rank must use the same
    ``generator_seed`` and the same local batch size. ``loss.local_loss=False``: every rank computes the
    full gathered loss (open_clip style). ``loss.local_loss=True``: each rank computes only its own rows
    (``n_local × n`` logits, labels offset by ``rank·n_local``) through a differentiable gather, and the
    logged values are all-reduced. Either way the returned value equals the one-process full-batch loss,
    and the per-rank gradients *sum* to the one-process gradient (the local feature slice gets exactly its
    full-batch gradient rows, like open_clip). Under DDP's gradient averaging the parameters therefore get
    ``1/world_size`` of the one-process gradient, uniformly; multiply the loss by ``world_size`` before
    ``backward`` if the exact one-process gradient matters (e.g. for a gradient-norm clip).

    Args:
        loss_cfg: weights, decay, ``tau`` (fixed ``τ``: ``scale = 1/τ``, the ``scale`` argument is ignored),
            ``m2_tau`` (the m² term's own fixed scale ``1/m2_tau``), ``local_loss``.
        mix_cfg: geometry, partner policy and per-term λ policies.
        rank, world_size: this process's place in the data-parallel group.
        generator_seed: seeds λ and partner draws (and the fixed projections of ``progressive``).
    """

    def __init__(
        self,
        loss_cfg: LossConfig,
        mix_cfg: MixConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        generator_seed: int = 0,
    ) -> None:
        super().__init__()
        loss_cfg.validate("loss")
        mix_cfg.validate("mix")
        if loss_cfg.kind != "contrastive":
            raise ValueError(
                f"loss.kind={loss_cfg.kind!r} is invalid for MixLoss: allowed 'contrastive' "
                "(use InputMixLoss for 'imix' and 'unmix')"
            )
        check_range("world_size", world_size, 1, None)
        check_range("rank", rank, 0, world_size - 1)
        self.loss_cfg, self.mix_cfg = loss_cfg, mix_cfg
        self.rank, self.world_size = int(rank), int(world_size)
        self.weights = {t: float(getattr(loss_cfg, f"w_{t}")) for t in _MIX_TERMS}
        self.active = tuple(t for t in _MIX_TERMS if self.weights[t] > 0)
        self._mix = _mixer(mix_cfg.geometry)
        self.generator = torch.Generator().manual_seed(int(generator_seed))
        self.policies = {
            t: build_lambda_policy(getattr(mix_cfg, t), seed=int(generator_seed) + k + 1, prefix=f"mix.{t}")
            for k, t in enumerate(_MIX_TERMS)
            if t in self.active
        }
        self.partner = build_partner_policy(mix_cfg.partner)
        self.fixed_scale = None if loss_cfg.tau is None else 1.0 / loss_cfg.tau
        self.m2_scale = None if loss_cfg.m2_tau is None else 1.0 / loss_cfg.m2_tau

    def decay(self, epoch: int) -> float:
        """The factor on all mix terms: 1 (``constant``) or ``1/(epoch+1)`` (``inverse_epoch``, 0-based)."""
        return 1.0 if self.loss_cfg.decay == "constant" else 1.0 / (epoch + 1)

    def _partners(self, n: int, device: torch.device) -> _Partners:
        if isinstance(self.partner, HistoryPartner):
            mem = self.partner.memory(n, device)
            if mem is not None:
                return _Partners(hist=mem)
            perm = self.partner.fallback(n, self.generator)
        else:
            perm = self.partner(n, self.generator)
        return _perm_partners(perm, device)

    def _scale(self, scale: Scale | None, device: torch.device) -> Scale:
        if self.fixed_scale is not None:
            return self.fixed_scale
        if scale is None:
            raise ValueError(
                "scale=None is invalid: allowed a positive float or 0-d tensor (loss.tau is None)"
            )
        _check_scale(scale, check=False)
        if not isinstance(scale, torch.Tensor):
            check_range("scale", scale, 0.0, None, lo_open=True)
        return _f32(scale, device)

    def forward(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        scale: Scale | None = None,
        *,
        epoch: int,
        step: int,
        total_steps: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step's loss.

        Args:
            img, txt: this rank's normalised features ``[n_local, d]`` (any float dtype; math in float32).
            scale: the logit scale ``1/τ`` (0-d tensor, may require grad); ignored when ``loss.tau`` is set.
            epoch: 0-based epoch (for the decay). step: 0-based optimisation step. total_steps: ``N``.

        Returns:
            ``(total, terms)``: ``total`` a 0-d float32 tensor to backpropagate; ``terms`` detached 0-d
            tensors: ``clip`` and each active term's value (unweighted, full batch), ``lam_<term>`` the λ
            used, and the policy's extra statistics as ``lam_<term>_<stat>`` (progressive: ``base``, ``q``,
            ``d_a``, ``d_b``; history: ``draw``).

        Raises:
            ValueError: bad shapes, ``n < 2``, bad ``scale``/``epoch``/``step``/``total_steps``.
            NonFiniteLossError: a term is NaN/Inf (named, with the step).
        """
        n_local = _check_batch_shapes(img, txt)
        check_range("epoch", epoch, 0, None)
        check_range("step", step, 0, None)
        check_range("total_steps", total_steps, 1, None)
        distributed = _dist_ready(self.world_size)
        local = distributed and self.loss_cfg.local_loss
        n = n_local * (self.world_size if distributed else 1)
        if n < 2:
            raise ValueError(
                f"batch size n={n} is invalid: allowed n >= 2 (a contrastive loss needs negatives)"
            )
        device = img.device
        with _fp32_context(device):
            i, t = img.float(), txt.float()
            s = self._scale(scale, device)
            if distributed:
                i = _gather(i, self.rank, self.world_size, differentiable=local)
                t = _gather(t, self.rank, self.world_size, differentiable=local)
                if not local:
                    s = _replicated_scale(s, self.world_size)
            rows = (self.rank * n_local, (self.rank + 1) * n_local) if local else None
            shares, observations = self._shares(i, t, s, rows, step, total_steps)
            decay = self.decay(epoch)
            total = shares["clip"] + decay * sum(self.weights[k] * shares[k] for k in self.active)
            values = {k: v.detach() for k, v in shares.items()}
            if local:
                stacked = torch.stack(list(values.values()))
                torch.distributed.all_reduce(stacked)
                values = dict(zip(values, stacked.unbind(0)))
                full = values["clip"] + decay * sum(self.weights[k] * values[k] for k in self.active)
                total = total + (full - total.detach())  # full-batch value, this rank's gradient share
            self._check_finite(total, values, step)
            for name, (mixed, a, b) in observations.items():
                self.policies[name].observe(mixed.detach(), a.detach(), b.detach())
            if isinstance(self.partner, HistoryPartner) and self.active:
                self.partner.remember(i.detach(), t.detach())
        terms: dict[str, torch.Tensor] = dict(values)
        for name in self.active:
            for key, v in self.policies[name].stats().items():
                label = f"lam_{name}" if key == "lam" else f"lam_{name}_{key.removeprefix('lam_')}"
                terms[label] = torch.tensor(float(v), dtype=torch.float32)
        return total, terms

    def _shares(
        self,
        i: torch.Tensor,
        t: torch.Tensor,
        s: Scale,
        rows: tuple[int, int] | None,
        step: int,
        total_steps: int,
    ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """Each active term's row share, and the (mixed, a-side, b-side) sets progressive policies observe."""
        shares = {"clip": _clip_share(i, t, s, rows)}
        observations: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        part = self._partners(i.shape[0], i.device) if set(self.active) - {"m2"} else None
        for name in self.active:
            policy = self.policies[name]
            lam = policy.sample(self.generator, step=step, total_steps=total_steps)
            if name == "m2":
                s_m = s if self.m2_scale is None else self.m2_scale
                shares[name], mixed = _m2_share(i, t, lam, s_m, rows, self._mix)
                obs = (mixed, i, t)
            elif name == "v":
                shares[name], mixed, partner = _uni_share(i, t, lam, s, rows, self._mix, part, 0)
                obs = (mixed, i, partner)
            elif name == "l":
                shares[name], mixed, partner = _uni_share(t, i, lam, s, rows, self._mix, part, 1)
                obs = (mixed, t, partner)
            else:
                shares[name], mixed, partner = _vl_share(i, t, lam, s, rows, self._mix, part)
                obs = (mixed, torch.cat([i, t]), partner)
            if policy.needs_observation:
                observations[name] = obs
        return shares, observations

    @staticmethod
    def _check_finite(total: torch.Tensor, values: dict[str, torch.Tensor], step: int) -> None:
        if bool(torch.isfinite(total.detach())):
            return
        detail = ", ".join(f"{k}={float(v):.4g}" for k, v in values.items())
        for name, v in values.items():
            if not bool(torch.isfinite(v)):
                raise NonFiniteLossError(name, step, detail)
        raise NonFiniteLossError("total", step, detail)

    # Resume: generator, λ-policy and partner state travel inside the module's state_dict.
    def get_extra_state(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "policies": {k: p.state_dict() for k, p in self.policies.items()},
            "partner": self.partner.state_dict(),
        }

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        missing = set(self.policies) ^ set(state["policies"])
        if missing:
            raise ValueError(
                f"state policies={sorted(state['policies'])} is invalid: allowed the active terms "
                f"{sorted(self.policies)} of this MixLoss"
            )
        for k, p in self.policies.items():
            p.load_state_dict(state["policies"][k])
        self.partner.load_state_dict(state["partner"])


def _check_batch_shapes(img: torch.Tensor, txt: torch.Tensor) -> int:
    check_features("img", img, finite=False)
    check_features("txt", txt, finite=False)
    if img.shape != txt.shape:
        raise ValueError(
            f"txt.shape={tuple(txt.shape)} is invalid: allowed the shape of img, {tuple(img.shape)}"
        )
    return img.shape[0]


class InputMixLoss(nn.Module):
    """The input-level baselines (``loss.kind`` ``'imix'`` or ``'unmix'``) as a module.

    :meth:`mix` mixes a pixel batch with the module's own seeded generator (:func:`mix_inputs`);
    :meth:`forward` takes the encoded features and returns ``(total, terms)`` like :class:`MixLoss`.
    Under ``torch.distributed`` each rank mixes its own pixels (partners stay within a rank); the
    features, ``λ`` and ``π`` (offset by rank) are gathered and the loss is the one-process loss of the
    concatenated batch, with the same gradient rule as :class:`MixLoss` (gathered mode only).

    Args:
        loss_cfg: ``kind`` (``imix``/``unmix``), ``input_alpha``, ``tau`` (fixed scale, as MixLoss).
        rank, world_size: data-parallel place. generator_seed: seeds the pixel mixing; ``rank`` is added so
            that ranks mix differently.
    """

    def __init__(
        self, loss_cfg: LossConfig, *, rank: int = 0, world_size: int = 1, generator_seed: int = 0
    ) -> None:
        super().__init__()
        loss_cfg.validate("loss")
        if loss_cfg.kind not in ("imix", "unmix"):
            raise ValueError(
                f"loss.kind={loss_cfg.kind!r} is invalid for InputMixLoss: allowed 'imix', 'unmix' "
                f"(one of {LOSS_KINDS}; use MixLoss for 'contrastive')"
            )
        check_range("world_size", world_size, 1, None)
        check_range("rank", rank, 0, world_size - 1)
        self.loss_cfg = loss_cfg
        self.kind = loss_cfg.kind
        self.rank, self.world_size = int(rank), int(world_size)
        self.generator = torch.Generator().manual_seed(int(generator_seed) + self.rank)
        self.fixed_scale = None if loss_cfg.tau is None else 1.0 / loss_cfg.tau

    def mix(self, pixels: torch.Tensor) -> InputMixBatch:
        """Mixed pixels, ``λ`` ``[n]`` and ``π`` for this step (draws from the module's generator)."""
        return mix_inputs(pixels, self.generator, kind=self.kind, alpha=self.loss_cfg.input_alpha)

    def forward(
        self,
        img: torch.Tensor | None,
        mixed_img: torch.Tensor,
        txt: torch.Tensor,
        batch: InputMixBatch,
        scale: Scale | None = None,
        *,
        step: int = 0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss on encoded features.

        Args:
            img: ``[n, d]`` clean image features (Un-Mix; ignored and may be None for i-Mix).
            mixed_img: ``[n, d]`` features of ``batch.pixels``. txt: ``[n, d]`` text features.
            batch: what :meth:`mix` returned for these pixels. scale: as :class:`MixLoss`.
            step: for the error message of a non-finite loss.

        Returns:
            ``(total, terms)``: i-Mix ``{'imix', 'lam_imix'}``; Un-Mix ``{'clip', 'unmix', 'lam_unmix'}``
            (``unmix`` is the mixed part; ``lam_*`` is the mean λ of the batch).
        """
        n_local = _check_batch_shapes(mixed_img, txt)
        if self.kind == "unmix":
            if img is None:
                raise ValueError(
                    "img=None is invalid for loss.kind='unmix': allowed the clean image features"
                )
            _check_batch_shapes(img, txt)
        lam, perm = batch.lam.to(mixed_img.device), batch.perm.to(mixed_img.device)
        check_lam(lam, n_local, check=False)
        _check_perm(perm, n_local, check=False)
        distributed = _dist_ready(self.world_size)
        device = mixed_img.device
        with _fp32_context(device):
            s = _f32(self.fixed_scale, device) if self.fixed_scale is not None else None
            if s is None:
                if scale is None:
                    raise ValueError("scale=None is invalid: allowed a positive float or 0-d tensor")
                _check_scale(scale, check=False)
                s = _f32(scale, device)
            im, t = mixed_img.float(), txt.float()
            i = img.float() if img is not None and self.kind == "unmix" else None
            lam = lam.float()
            if distributed:
                im, t, lam = (self._gather(x) for x in (im, t, lam))
                i = self._gather(i) if i is not None else None
                perm = self._gather(perm + self.rank * n_local)
                s = _replicated_scale(s, self.world_size)
            if self.kind == "imix":
                total = _soft_pair_share(im, t, lam, s, None, perm, _inverse(perm))
                values = {"imix": total.detach()}
            else:
                clean, mixed = _unmix_share(i, im, t, lam, s, None, perm)
                total = clean + mixed
                values = {"clip": clean.detach(), "unmix": mixed.detach()}
            MixLoss._check_finite(total, values, step)
        values[f"lam_{self.kind}"] = lam.detach().mean().cpu()
        return total, values

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        return _gather(x, self.rank, self.world_size, differentiable=False)

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
