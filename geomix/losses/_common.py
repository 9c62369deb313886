"""Shared pieces of the loss terms: input checks, float32 context, soft-target cross-entropy, row shares.

Soft targets, the timm way, without ever materialising an ``n×n`` target: every target row used here has
at most two non-zero entries, ``w`` at column ``a_i`` and ``1 - w`` at column ``b_i``, so

    CE(Z, λ·Id + (1-λ)·P_π) = mean_i -[λ·log_softmax(Z_i)[i] + (1-λ)·log_softmax(Z_i)[π(i)]]

is one ``log_softmax`` and one ``gather`` (exact, not an approximation). Hard targets use
``F.cross_entropy`` with ``arange`` labels.

Row shares: each term is written as a mean over *rows* of a logit matrix. Computing only the rows
``r0:r1`` of the gathered batch and multiplying by ``(r1 - r0) / n`` gives that worker's share; the shares of
all workers sum to the full-batch loss. This is ``loss.local_loss`` (open_clip's label offsets by rank).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from geomix.checks import check_choice, check_range
from geomix.config import MIX_GEOMETRIES
from geomix.sphere import check_features, geodesic_mix, linear_mix

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
    """Disable autocast so the loss's matmuls and log-softmax run in float32 (``docs/losses.md``)."""
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


def _pair_targets(
    lam: Lam, perm: torch.Tensor, inv: torch.Tensor, idx: torch.Tensor, r: tuple[int, int]
) -> tuple[tuple[torch.Tensor, torch.Tensor, Lam], tuple[torch.Tensor, torch.Tensor, Lam]]:
    """The two-entry targets of a pair-mixed set (``_soft_pair_share``), as ``(la, lb, wa)`` per direction.

    Mixed row ``i`` holds pair ``i`` with weight ``λ_i`` and pair ``π(i)`` with ``1-λ_i``: its row of
    ``Y = diag(λ)·Id + diag(1-λ)·P_π`` is ``(i, π(i), λ_i)``. Row ``k`` of ``Yᵀ`` (the other direction) is
    ``(k, π⁻¹(k), ·)``, with the column of ``Y`` renormalised to sum to one for a per-row ``λ``.
    """
    lam_r = _lam_rows(lam, r)
    inv_r = inv[idx]
    if isinstance(lam, torch.Tensor) and lam.ndim == 1:
        # Column k of Y holds λ_k (row k) and 1-λ_{π⁻¹(k)} (row π⁻¹(k)).
        own, other = lam_r, 1.0 - lam[inv_r]
        wa = own / (own + other)
    else:
        wa = lam_r
    return (idx, perm[idx], lam_r), (idx, inv_r, wa)


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


class _LineCE(torch.autograd.Function):
    """``Σ_l W_l·logsumexp(s·z_l) - Σ_{k,l} V_kl·s·z_l[labels_kl]`` over the lines ``z_l`` of ``z`` along
    ``dim`` (rows for ``dim=1``, columns for ``dim=0``), ``W_l = Σ_k V_kl``, summed over one or both
    directions, with the backward written out.

    The gradient ``s·(W_l·softmax(s·z_l) - Σ_k V_kl·onehot(labels_kl))`` is one pass over the kept ``exp``
    per direction and a scatter of the targets; built from ``logsumexp`` and ``gather`` instead, autograd
    fills an ``n×n`` zero buffer per gather and adds every use's gradient separately. The scale ``s > 0``
    (a float or a 0-d tensor, which may require grad) costs no pass of its own: it rides on the shift, and
    its gradient is one dot product. Each direction is ``(dim, labels [K, L] int64, V [K, L])``, which carry
    no gradient; not twice differentiable.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, scale: Scale, *directions) -> torch.Tensor:
        s = torch.as_tensor(scale, dtype=z.dtype, device=z.device)
        loss, kept = 0.0, []
        for dim, labels, v in zip(directions[0::3], directions[1::3], directions[2::3]):
            m = s * z.amax(dim, keepdim=True)  # the max of s·z, as s > 0
            e = torch.addcmul(-m, z, s).exp_()
            total = e.sum(dim, keepdim=True)
            index, v = (labels, v) if dim == 0 else (labels.T, v.T)
            w = v.sum(dim)
            loss = loss + (w * (m + total.log()).squeeze(dim)).sum() - s * (z.gather(dim, index) * v).sum()
            kept.append((dim, e, total, index, v, w))
        ctx.kept = kept  # intermediates; z itself goes through save_for_backward
        ctx.save_for_backward(s, z if ctx.needs_input_grad[1] else None)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        s, z = ctx.saved_tensors
        dz = None
        for dim, e, total, _, _, w in ctx.kept:
            f = (grad * s * w).unsqueeze(dim) / total
            dz = e * f if dz is None else dz.addcmul_(e, f)
        for dim, _, _, index, v, _ in ctx.kept:
            dz.scatter_add_(dim, index, -grad * s * v)
        ds = None if z is None else torch.vdot(dz.reshape(-1), z.reshape(-1)) / s
        return (dz, ds, *[None] * (3 * len(ctx.kept)))


def _targets(
    z: torch.Tensor, dim: int, la: torch.Tensor, lb: torch.Tensor | None = None, wa: Lam = 1.0, w: Lam = 1.0
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """One direction of :class:`_LineCE`: the mean over the lines of ``z`` along ``dim`` of
    ``-w·(wa·log_softmax[la] + (1-wa)·log_softmax[lb])`` (``lb=None``: mass ``w`` at ``la`` alone)."""
    return _directions(z.shape[1 - dim], dim, la, lb, wa, w, dtype=z.dtype)


def _directions(
    lines: int, dim: int, la: torch.Tensor, lb: torch.Tensor | None = None, wa: Lam = 1.0, w: Lam = 1.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """:func:`_targets` for ``lines`` lines along ``dim``, with no logits at hand (for the fused kernel)."""
    mass = (w / lines) * torch.ones(lines, dtype=dtype, device=la.device)
    if lb is None:
        return dim, la.unsqueeze(0), mass.unsqueeze(0).detach()
    return dim, torch.stack([la, lb]), torch.stack([mass * wa, mass * (1.0 - wa)]).detach()


def _line_ce(z: torch.Tensor, dim: int, *targets, scale: Scale = 1.0) -> torch.Tensor:
    """Mean over the lines of ``scale·z`` along ``dim`` (1: rows, 0: columns) of
    ``-w·(wa·log_softmax[la] + (1-wa)·log_softmax[lb])`` (``targets = (la, lb, wa, w)``, as
    :func:`_targets`): :func:`_nll2` and :func:`_nll_w` along either axis, through :class:`_LineCE`."""
    return _LineCE.apply(z, scale, *_targets(z, dim, *targets))


def _two_way_ce(z: torch.Tensor, rows: tuple, cols: tuple, *, scale: Scale = 1.0) -> torch.Tensor:
    """``_line_ce(z, 1, *rows) + _line_ce(z, 0, *cols)`` in one :class:`_LineCE`, whose backward writes one
    gradient for both directions."""
    return _LineCE.apply(z, scale, *_targets(z, 1, *rows), *_targets(z, 0, *cols))


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device, dtype=perm.dtype)
    return inv



def _check_batch_shapes(img: torch.Tensor, txt: torch.Tensor) -> int:
    check_features("img", img, finite=False)
    check_features("txt", txt, finite=False)
    if img.shape != txt.shape:
        raise ValueError(
            f"txt.shape={tuple(txt.shape)} is invalid: allowed the shape of img, {tuple(img.shape)}"
        )
    return img.shape[0]



def check_finite(total: torch.Tensor, values: dict[str, torch.Tensor], step: int) -> None:
    """Raise :class:`NonFiniteLossError` naming the first non-finite term (or ``total``) at ``step``."""
    if bool(torch.isfinite(total.detach())):
        return
    detail = ", ".join(f"{k}={float(v):.4g}" for k, v in values.items())
    for name, v in values.items():
        if not bool(torch.isfinite(v)):
            raise NonFiniteLossError(name, step, detail)
    raise NonFiniteLossError("total", step, detail)
