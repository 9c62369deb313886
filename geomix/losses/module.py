"""``MixLoss``: the CLIP loss plus the registered mix terms, composed from config, seeded, DDP-aware."""

from __future__ import annotations

import torch
from torch import nn

from geomix import registry
from geomix.checks import check_choice, check_range
from geomix.config import LossConfig, MixConfig
from geomix.losses import gram
from geomix.losses._common import (
    Scale,
    _check_batch_shapes,
    _check_scale,
    _f32,
    _fp32_context,
    _mixer,
    check_finite,
)
from geomix.losses.distributed import _dist_ready, _gather, _replicated_scale
from geomix.losses.kernels import Observation, TermInputs, _clip_share, _Partners, _perm_partners
from geomix.mixing import HistoryPartner, build_lambda_policy, build_partner_policy

PATHS = ("auto", "gram", "direct")


class MixLoss(nn.Module):
    """``L = L_clip + decay(epoch)·Σ_t w_t·L_t`` over the registered mix terms (``kind='contrastive'``).

    Holds the configuration, one λ policy per active term (``mix.<term>``), the partner policy
    (``mix.partner``, one ``π`` per step shared by V, L and VL), and its own ``torch.Generator`` seeded with
    ``generator_seed``: the same seed gives bit-identical λ and partners. Each step draws, in order, the
    partners (if an active term uses them) then λ for each active term, in registry order.

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
        path: how the built-in terms' logits are formed. ``'auto'``: each term on whichever of the Gram
            path (:mod:`geomix.losses.gram`, logits from ``I·Tᵀ``, ``I·Iᵀ``, ``T·Tᵀ``) and its direct
            kernel needs fewer ``n×n×d`` products; ``'gram'``: every built-in term on the Gram path;
            ``'direct'``: the per-term kernels of :mod:`geomix.losses.kernels`. The values agree to float
            rounding.
    """

    def __init__(
        self,
        loss_cfg: LossConfig,
        mix_cfg: MixConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        generator_seed: int = 0,
        path: str = "auto",
    ) -> None:
        super().__init__()
        check_choice("path", path, PATHS)
        if loss_cfg.kind != "contrastive":
            raise ValueError(
                f"loss.kind={loss_cfg.kind!r} is invalid for MixLoss: allowed 'contrastive' "
                "(use InputMixLoss for 'imix' and 'unmix')"
            )
        check_range("world_size", world_size, 1, None)
        check_range("rank", rank, 0, world_size - 1)
        self.loss_cfg, self.mix_cfg = loss_cfg, mix_cfg
        self.rank, self.world_size = int(rank), int(world_size)
        terms = registry.term_names()
        self.weights = {t: float(loss_cfg.weight(t)) for t in terms}
        self.active = tuple(t for t in terms if self.weights[t] > 0)
        self.kernels = {t: registry.kernel_of(registry.TERMS[t]) for t in self.active}
        self.path = path
        self._gram_terms = tuple(t for t in self.active if gram.name_of(self.kernels[t]) is not None)
        self._plans: dict[tuple[bool, bool], tuple[str, ...]] = {}
        self._uses_partners = any(registry.TERMS[t].uses_partners for t in self.active)
        self._mix = _mixer(mix_cfg.geometry)
        self.generator = torch.Generator().manual_seed(int(generator_seed))
        # Each term's policy is seeded by its place in the registry (not among the active terms), so
        # switching one term off does not change another's stream.
        self.policies = {
            t: build_lambda_policy(mix_cfg.lam(t), seed=int(generator_seed) + k + 1)
            for k, t in enumerate(terms)
            if t in self.active
        }
        self.partner = build_partner_policy(mix_cfg.partner)
        self.fixed_scale = None if loss_cfg.tau is None else 1.0 / loss_cfg.tau

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
            check_finite(total, values, step)
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
    ) -> tuple[dict[str, torch.Tensor], dict[str, Observation]]:
        """Each active term's row share, and the (mixed, a-side, b-side) sets progressive policies observe.

        Draw order (part of the seeded stream): this step's partners (if any active term uses them), then
        each active term's λ in registry order. The kernels draw nothing, so all λ come first.
        """
        part = self._partners(i.shape[0], i.device) if self._uses_partners else None
        inputs = TermInputs(i, t, s, rows, self._mix, part, self.loss_cfg)
        draw = dict(step=step, total_steps=total_steps)
        lams = {k: self.policies[k].sample(self.generator, **draw) for k in self.active}
        on_gram = self._plan(rows is not None, part is not None and part.hist is not None)
        done = {} if on_gram is None else gram.shares(inputs, lams, {k: self.kernels[k] for k in on_gram})
        shares = {"clip": done["clip"][0] if done else _clip_share(i, t, s, rows)}
        observations: dict[str, Observation] = {}
        for name in self.active:
            if name in done:
                shares[name], observe = done[name]  # the Gram path forms the observation only if asked
            else:
                shares[name], obs = self.kernels[name](inputs, lams[name])
                observe = lambda obs=obs: obs  # noqa: E731
            if self.policies[name].needs_observation:
                observations[name] = observe()
        return shares, observations

    def _plan(self, local: bool, hist: bool) -> tuple[str, ...] | None:
        """The active terms computed on the Gram path this step, with CLIP; ``None``: everything direct.

        ``'auto'`` asks :func:`gram.plan` once per (local rows, history partners) for the fewest products;
        ``'gram'`` puts every built-in term there, and CLIP too when no term is active.
        """
        if self.path == "direct":
            return None
        if self.path == "gram":
            return self._gram_terms
        key = (local, hist)
        if key not in self._plans:
            names = tuple(gram.name_of(self.kernels[t]) for t in self._gram_terms)
            chosen = set(gram.plan(names, local, hist))
            self._plans[key] = tuple(t for t, k in zip(self._gram_terms, names) if k in chosen)
        return self._plans[key] or None

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
