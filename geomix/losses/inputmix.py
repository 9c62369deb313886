"""The input-level baselines, i-Mix and Un-Mix (``docs/losses.md``): pixel mixing, their losses, a module.

They mix images before the encoder, so unlike the embedding-level terms they are not registry terms:
``loss.kind`` chooses them and they replace (i-Mix) or extend (Un-Mix) the CLIP loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from geomix.checks import check_choice, check_range
from geomix.config import LOSS_KINDS, LossConfig
from geomix.losses._common import (
    Lam,
    Scale,
    _check_batch,
    _check_batch_shapes,
    _check_perm,
    _check_scale,
    _f32,
    _fp32_context,
    _idx,
    _inverse,
    _lam_rows,
    _nll2,
    _rows,
    _share,
    check_finite,
)
from geomix.losses.distributed import _dist_ready, _gather, _replicated_scale
from geomix.losses.functional import _prepare
from geomix.losses.kernels import _clip_share, _soft_pair_share
from geomix.mixing import sample_beta
from geomix.sphere import check_lam


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


def mix_inputs(
    pixels: torch.Tensor, generator: torch.Generator, *, kind: str, alpha: float = 1.0
) -> InputMixBatch:
    """Mix a pixel batch for the input-level baselines (``docs/losses.md``, *i-Mix*, *Un-Mix*).

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
        lam = sample_beta(generator, alpha, alpha, size=n)
        lam = np.maximum(lam, 1.0 - lam)
        perm = torch.randperm(n, generator=generator)
    else:
        lam = np.full(n, sample_beta(generator, alpha, alpha, size=1)[0])
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
            check_finite(total, values, step)
        values[f"lam_{self.kind}"] = lam.detach().mean().cpu()
        return total, values

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        return _gather(x, self.rank, self.world_size, differentiable=False)

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
