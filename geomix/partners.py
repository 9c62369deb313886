"""Partner policies: which row each row of a batch is mixed with (``docs/losses.md``, *Partners*).

``reverse`` (``i ↦ n-1-i``, the authors' choice), ``random`` (a uniformly random derangement, no fixed
points), ``history`` (partners are the previous step's detached embeddings, held in :class:`HistoryPartner`;
RecursiveMix's "mix with the previous batch"). Built by name with :func:`build_partner_policy`; the names
are those of the config's ``mix.partner`` (:data:`geomix.config.PARTNER_POLICIES`).

Random partners come only from the ``torch.Generator`` the caller passes in, so the same seed gives the same
partners, bit for bit. Every policy has ``state_dict`` / ``load_state_dict`` for exact resume.
"""

from __future__ import annotations

import abc
from typing import Any

import torch

from geomix.checks import check_choice, fail
from geomix.config import PARTNER_POLICIES

__all__ = [
    "PartnerPolicy",
    "ReversePartner",
    "RandomPartner",
    "HistoryPartner",
    "build_partner_policy",
    "random_derangement",
]


def random_derangement(n: int, generator: torch.Generator, max_tries: int = 100) -> torch.Tensor:
    """A uniformly random permutation of ``0..n-1`` with no fixed point (``n >= 2``), by rejection.

    A random permutation is a derangement with probability ≈ 1/e, so ``max_tries`` is never reached in
    practice; if it were, a random ``n``-cycle (always a derangement) is returned instead.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        fail("n", n, "an integer n >= 2 (a derangement needs two rows)")
    ar = torch.arange(n)
    for _ in range(max_tries):
        perm = torch.randperm(n, generator=generator)
        if not bool((perm == ar).any()):
            return perm
    order = torch.randperm(n, generator=generator)  # pragma: no cover - probability ~ e^-100
    perm = torch.empty_like(order)
    perm[order] = order.roll(-1)
    return perm


class PartnerPolicy(abc.ABC):
    """Maps a batch size to partner indices ``π`` (``[n]`` int64), or ``None`` for history partners."""

    name = "base"

    @abc.abstractmethod
    def __call__(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        """Partner indices for a batch of ``n`` rows."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (stateless by default)
        pass


class ReversePartner(PartnerPolicy):
    """``π(i) = n-1-i`` (the authors' choice; for odd ``n`` the middle row is its own partner)."""

    name = "reverse"

    def __call__(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if n < 2:
            fail("n", n, "n >= 2")
        return torch.arange(n - 1, -1, -1)


class RandomPartner(PartnerPolicy):
    """A uniformly random derangement from the generator."""

    name = "random"

    def __call__(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return random_derangement(n, generator)


class HistoryPartner(PartnerPolicy):
    """Partners are the previous step's detached ``(img, txt)`` embeddings (RecursiveMix-style).

    :meth:`remember` stores a step's embeddings; :meth:`memory` gives them back when the batch size
    matches, else ``None`` (the first step, or a short last batch), in which case the caller falls back to
    ``fallback`` (reverse) partners for that step.
    """

    name = "history"

    def __init__(self) -> None:
        self.fallback = ReversePartner()
        self._img: torch.Tensor | None = None
        self._txt: torch.Tensor | None = None

    def __call__(self, n: int, generator: torch.Generator) -> None:
        return None

    def remember(self, img: torch.Tensor, txt: torch.Tensor) -> None:
        self._img, self._txt = img.detach().clone(), txt.detach().clone()

    def memory(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self._img is None or self._img.shape[0] != n:
            return None
        return self._img.to(device), self._txt.to(device)

    def state_dict(self) -> dict[str, Any]:
        return {"img": self._img, "txt": self._txt}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._img, self._txt = state["img"], state["txt"]


def build_partner_policy(name: str, *, prefix: str = "mix.partner") -> PartnerPolicy:
    """``reverse`` | ``random`` | ``history``; anything else raises ``ValueError`` listing those."""
    check_choice(prefix, name, PARTNER_POLICIES)
    return {"reverse": ReversePartner, "random": RandomPartner, "history": HistoryPartner}[name]()
