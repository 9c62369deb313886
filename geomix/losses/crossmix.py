"""Cross-domain mixup for few-shot supervised multi-source domain transfer (P-Mixup, Zhu, Yu, Li, ICLR 2023).

A source batch ``(x_s, y_s)`` and a target batch ``(x_t, y_t)`` are paired (:func:`pair_batches`: source
row ``i`` with target row ``π(i)``) and mixed with ONE ``λ`` per step at both levels (eqs. 3-6):

- image level: ``x̃ = λ·x_s + (1-λ)·x_t`` (pixels), :func:`image_mix`;
- feature level: ``g̃ = λ·G(x_s) + (1-λ)·G(x_t)`` (encoder outputs), :func:`feature_mix`;
- both with the soft label ``ỹ = λ·onehot(y_s) + (1-λ)·onehot(y_t)`` and the soft-target cross-entropy
  ``-Σ_c ỹ_c·log softmax(F(·))_c`` (:func:`soft_cross_entropy`), the timm way.

``λ = 1`` is the source sample, ``λ = 0`` the target one. :class:`FSMDTLoss` adds the hard cross-entropy
of the clean source and clean target samples. ``λ`` comes from a :mod:`geomix.mixing` policy
(``beta`` = "random λ", ``fixed``, ``progressive``, ``history``). The progressive rule (``docs/losses.md``)
starts at ``λ_0 = 0`` (the target) and moves toward the source as fast as the Wasserstein distances allow:
after each step the policy observes the detached mixed features, the ``a`` side (the paired source
features) and the ``b`` side (the paired target features).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geomix.checks import check_choice, check_range, fail
from geomix.config import LambdaConfig
from geomix.losses._common import _fp32_context, check_finite
from geomix.mixing import LambdaPolicy, build_lambda_policy
from geomix.sphere import normalize

__all__ = [
    "PAIRINGS",
    "pair_batches",
    "image_mix",
    "feature_mix",
    "soft_cross_entropy",
    "FSMDTLoss",
    "init_head_from_text",
]

PAIRINGS: tuple[str, ...] = ("random", "same_class")

Lam = float | torch.Tensor


def pair_batches(
    src_labels: torch.Tensor, tgt_labels: torch.Tensor, *, how: str = "random", generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair every source row with one target row: ``(src_idx, tgt_idx)``, both int64 ``[n_s]``.

    ``src_idx`` is ``arange(n_s)``; ``tgt_idx[i]`` is drawn with replacement (the target batch is the few
    shots, usually smaller than the source batch):

    - ``'random'``: uniformly over the ``n_t`` target rows;
    - ``'same_class'``: uniformly over the target rows of source row ``i``'s class. Fallback: when the
      target batch has no row of that class, uniformly over all target rows (the soft label still names
      both classes, so the loss stays right; only the pair is cross-class).

    Both draw exactly ``n_s`` uniforms from ``generator`` (one ``torch.rand``), so the stream does not
    depend on ``how`` or on the labels.
    """
    check_choice("pairing", how, PAIRINGS)
    ys, yt = src_labels.reshape(-1).long().cpu(), tgt_labels.reshape(-1).long().cpu()
    n_s, n_t = ys.numel(), yt.numel()
    if n_s < 1 or n_t < 1:
        fail("batch sizes", (n_s, n_t), "at least one source and one target sample")
    u = torch.rand(n_s, generator=generator, dtype=torch.float64)
    tgt = (u * n_t).long().clamp_max(n_t - 1)
    if how == "same_class":
        for c in ys.unique().tolist():
            cands = torch.nonzero(yt == c).flatten()
            if len(cands):
                rows = torch.nonzero(ys == c).flatten()
                tgt[rows] = cands[(u[rows] * len(cands)).long().clamp_max(len(cands) - 1)]
    device = src_labels.device
    return torch.arange(n_s, device=device), tgt.to(device)


def _check_lam(lam: Lam) -> float | torch.Tensor:
    if isinstance(lam, torch.Tensor):
        if lam.numel() != 1:
            fail("lam.shape", tuple(lam.shape), "a scalar: one λ per step for the whole batch")
        check_range("lam", float(lam.detach()), 0.0, 1.0)
        return lam.reshape(())
    check_range("lam", lam, 0.0, 1.0)
    return float(lam)


def _mix(a: torch.Tensor, b: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: Lam, num_classes: int,
         names: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        fail(f"{names[1]}.shape", tuple(b.shape), f"the shape of {names[0]}, {tuple(a.shape)} (pair first)")
    if y_a.shape != (a.shape[0],) or y_b.shape != (a.shape[0],):
        fail("labels.shape", (tuple(y_a.shape), tuple(y_b.shape)), f"two [{a.shape[0]}] class-id tensors")
    check_range("num_classes", num_classes, 1, None)
    lam = _check_lam(lam)
    mixed = lam * a + (1.0 - lam) * b
    oh_a = F.one_hot(y_a.long(), num_classes).float()
    oh_b = F.one_hot(y_b.long(), num_classes).float()
    return mixed, lam * oh_a + (1.0 - lam) * oh_b


def image_mix(x_s: torch.Tensor, x_t: torch.Tensor, y_s: torch.Tensor, y_t: torch.Tensor, lam: Lam,
              num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-level mix of paired rows: ``x̃ = λ·x_s + (1-λ)·x_t`` ``[n, 3, H, W]`` and the soft label
    ``ỹ = λ·onehot(y_s) + (1-λ)·onehot(y_t)`` ``[n, K]`` (float32). ``lam``: a float or 0-d tensor."""
    return _mix(x_s, x_t, y_s, y_t, lam, num_classes, ("x_s", "x_t"))


def feature_mix(g_s: torch.Tensor, g_t: torch.Tensor, y_s: torch.Tensor, y_t: torch.Tensor, lam: Lam,
                num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature-level mix of paired rows: ``g̃ = λ·g_s + (1-λ)·g_t`` ``[n, d]`` (linear, not renormalised)
    and the same soft label as :func:`image_mix`."""
    return _mix(g_s, g_t, y_s, y_t, lam, num_classes, ("g_s", "g_t"))


def soft_cross_entropy(logits: torch.Tensor, y_soft: torch.Tensor) -> torch.Tensor:
    """``mean_i -Σ_c y_ic·log softmax(logits_i)_c`` in float32; ``logits``, ``y_soft``: ``[n, K]``.
    With one-hot targets it equals ``F.cross_entropy``."""
    if logits.ndim != 2 or y_soft.shape != logits.shape:
        fail("y_soft.shape", tuple(y_soft.shape), f"the shape of logits, {tuple(logits.shape)}")
    with _fp32_context(logits.device):
        return -(y_soft.float() * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def init_head_from_text(class_text_emb: torch.Tensor, logit_scale: float | torch.Tensor) -> nn.Linear:
    """CLIP's zero-shot classifier as a trainable head ``F``: ``F(g) = s·normalize(T)·g``.

    Args:
        class_text_emb: ``[K, d]`` text embeddings of one prompt per class (e.g.
            ``model.encode_text(tokenize(prompts_for(domain)))``); normalised here.
        logit_scale: the multiplier ``s`` itself, e.g. ``model.logit_scale.exp()`` (≈ 100 for a trained
            CLIP), NOT open_clip's log-parameter.

    Returns:
        ``nn.Linear(d, K)`` with weight ``s·T/‖T‖`` and bias 0, detached from the text tower. On
        normalised image features its logits are the zero-shot logits ``s·cos(g, T_c)``, so training
        starts from zero-shot CLIP.
    """
    if class_text_emb.ndim != 2 or class_text_emb.shape[0] < 1:
        fail("class_text_emb.shape", tuple(class_text_emb.shape), "[K, d] with K >= 1")
    s = float(logit_scale.detach()) if isinstance(logit_scale, torch.Tensor) else logit_scale
    check_range("logit_scale", s, 0.0, None, lo_open=True)
    k, d = class_text_emb.shape
    head = nn.Linear(d, k, bias=True)
    with torch.no_grad():
        head.weight.copy_(normalize(class_text_emb.detach().float()) * s)
        head.bias.zero_()
    return head.to(class_text_emb.device)


class FSMDTLoss(nn.Module):
    """P-Mixup's objective, one step:

    ``L = w_clean_src·CE(F(G(x_s)), y_s) + w_clean_tgt·CE(F(G(x_t)), y_t)
         + w_img·SCE(F(G(x̃)), ỹ) + w_feat·SCE(F(g̃), ỹ)``,

    with ``x̃``, ``g̃``, ``ỹ`` from the SAME ``λ`` and the same pairs. A mix level with weight 0 is not
    computed. ``G`` (the encoder) and ``F`` (the head) are passed to :meth:`forward`, so the module holds no
    parameters: only the λ policy, the pairing and its own ``torch.Generator``.

    Per step, in order: the pairs (:func:`pair_batches`, ``n_s`` uniforms), then ``λ``
    (``policy.sample``); then one encoder call on ``cat([x_s, x_t, x̃])``; after the loss the progressive
    policy observes ``(mixed, source, target)`` features, detached: ``mixed`` is ``G(x̃)`` when the image
    level is on, else ``g̃``; ``source = G(x_s)``, ``target = G(x_t)[π]`` (the paired rows, so the two
    sets have the same size, as the sliced estimator needs).

    Args:
        lam: a :class:`~geomix.config.LambdaConfig` (built with :func:`geomix.mixing.build_lambda_policy`,
            seeded ``generator_seed + 1``) or a ready :class:`~geomix.mixing.LambdaPolicy`.
        num_classes: ``K``.
        w_clean_src, w_clean_tgt, w_img, w_feat: the four weights, each ``>= 0``.
        pairing: ``'random'`` or ``'same_class'``.
        generator_seed: seeds the pairs and λ draws (the same seed gives the same stream, bit for bit).
    """

    def __init__(
        self,
        lam: LambdaConfig | LambdaPolicy,
        *,
        num_classes: int,
        w_clean_src: float = 1.0,
        w_clean_tgt: float = 1.0,
        w_img: float = 1.0,
        w_feat: float = 1.0,
        pairing: str = "random",
        generator_seed: int = 0,
    ) -> None:
        super().__init__()
        check_range("num_classes", num_classes, 1, None)
        check_choice("pairing", pairing, PAIRINGS)
        self.weights = {"clean_src": w_clean_src, "clean_tgt": w_clean_tgt, "img": w_img, "feat": w_feat}
        for k, v in self.weights.items():
            check_range(f"w_{k}", v, 0.0, None)
        self.num_classes, self.pairing = int(num_classes), pairing
        self.generator = torch.Generator().manual_seed(int(generator_seed))
        self.policy = (lam if isinstance(lam, LambdaPolicy)
                       else build_lambda_policy(lam, seed=int(generator_seed) + 1))
        self.pair_same = torch.tensor(float("nan"))

    def forward(
        self,
        encoder: Callable[[torch.Tensor], torch.Tensor],
        head: nn.Module,
        x_s: torch.Tensor,
        y_s: torch.Tensor,
        x_t: torch.Tensor,
        y_t: torch.Tensor,
        *,
        step: int,
        total_steps: int,
        batch_labels: torch.Tensor | None = None,
        offset: int = 0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step's loss.

        Args:
            encoder: ``G``, images ``[m, 3, H, W]`` -> features ``[m, d]`` (for CLIP: the normalised image
                embeddings, which :func:`init_head_from_text` expects).
            head: ``F``, features -> logits ``[m, K]``.
            x_s, y_s: source images ``[n_s, 3, H, W]`` and class ids ``[n_s]``.
            x_t, y_t: target images ``[n_t, 3, H, W]`` and class ids ``[n_t]``.
            step, total_steps: the step (0-based) and the run's length, for the λ policy.
            batch_labels, offset: data parallel: the labels of the whole (global) source batch, of which
                ``x_s`` / ``y_s`` are rows ``offset .. offset + n_s``. The pairs are drawn for the whole
                batch (the same stream on every rank) and this rank's rows kept, so W ranks pair exactly as
                one process does. None: ``y_s`` is the whole batch.

        Returns:
            ``(total, parts)``: the weighted 0-d loss, and detached 0-d float32 tensors to log (the
            unweighted parts): ``ce_src``, ``ce_tgt``, ``mix_img`` / ``mix_feat`` (active levels only), and
            the policy's stats with a ``lam`` prefix (``lam`` always; ``lam_base``, ``lam_q``, ``lam_d_a``,
            ``lam_d_b`` for progressive, where ``a`` is the source side). ``self.pair_same`` holds the
            share of same-class pairs of the step (a 0-d tensor; below 1 with ``'same_class'`` only where
            the fallback paired across classes).
        """
        n_s, n_t = x_s.shape[0], x_t.shape[0]
        if x_s.shape[1:] != x_t.shape[1:]:
            fail("x_t.shape", tuple(x_t.shape), f"[n_t, {', '.join(map(str, x_s.shape[1:]))}] like x_s")
        whole = y_s if batch_labels is None else batch_labels
        if whole.shape[0] < offset + n_s:
            fail("offset", offset, f"at most {whole.shape[0] - n_s}: rows of the {whole.shape[0]} batch "
                 "labels")
        _, tgt_idx = pair_batches(whole, y_t, how=self.pairing, generator=self.generator)
        src_idx, tgt_idx = torch.arange(n_s, device=y_s.device), tgt_idx[offset : offset + n_s].to(y_s.device)
        lam = self.policy.sample(self.generator, step=step, total_steps=total_steps)
        y_s, y_t = y_s.long(), y_t.long()
        y_tp = y_t[tgt_idx]
        use_img, use_feat = self.weights["img"] > 0, self.weights["feat"] > 0
        batch = [x_s, x_t]
        if use_img:
            x_mix, y_img = image_mix(x_s[src_idx], x_t[tgt_idx], y_s, y_tp, lam, self.num_classes)
            batch.append(x_mix)
        g = encoder(torch.cat(batch))
        g_s, g_t = g[:n_s], g[n_s : n_s + n_t]
        parts: dict[str, torch.Tensor] = {
            "ce_src": F.cross_entropy(head(g_s).float(), y_s),
            "ce_tgt": F.cross_entropy(head(g_t).float(), y_t),
        }
        mixed = None
        if use_img:
            mixed = g[n_s + n_t :]
            parts["mix_img"] = soft_cross_entropy(head(mixed), y_img.to(g.device))
        if use_feat:
            g_mix, y_feat = feature_mix(g_s[src_idx], g_t[tgt_idx], y_s, y_tp, lam, self.num_classes)
            parts["mix_feat"] = soft_cross_entropy(head(g_mix), y_feat.to(g.device))
            mixed = g_mix if mixed is None else mixed
        w = {"ce_src": "clean_src", "ce_tgt": "clean_tgt", "mix_img": "img", "mix_feat": "feat"}
        total = sum(self.weights[w[k]] * v for k, v in parts.items())
        values = {k: v.detach().float() for k, v in parts.items()}
        check_finite(total, values, step)
        if mixed is not None and self.policy.needs_observation:
            self.policy.observe(mixed.detach(), g_s[src_idx].detach(), g_t[tgt_idx].detach())
        self.pair_same = (y_s == y_tp).float().mean().detach()
        for key, v in self.policy.stats().items():  # lam, lam_base, lam_q, lam_d_a, lam_d_b: the loop's
            label = "lam" if key == "lam" else f"lam_{key.removeprefix('lam_')}"  # lam* keys stay unprefixed
            values[label] = torch.tensor(float(v), dtype=torch.float32)
        return total, values

    # Resume: the generator and the λ policy's state travel inside the module's state_dict.
    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "policy": self.policy.state_dict()}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.policy.load_state_dict(dict(state["policy"]))
