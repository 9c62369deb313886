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
