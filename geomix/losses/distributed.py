"""Distributed helpers of the losses: feature gathering across ranks and the replicated-scale gradient rule
(``docs/losses.md``, *Distributed*)."""

from __future__ import annotations

import torch

from geomix.losses._common import Scale


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

