"""Contrastive losses with geodesic multi-modal mixup (``docs/losses.md``).

A functional core (tensors in, 0-d tensor out; shapes in the docstrings) and two thin modules:
:class:`MixLoss` (CLIP + the registered mix terms, λ and partners from its own seeded generator,
distributed gathering) and :class:`InputMixLoss` (the i-Mix / Un-Mix input-level baselines, with
:func:`mix_inputs`).

Modules: :mod:`._common` (checks, soft-target CE, row shares), :mod:`.kernels` (the per-term kernels the
registry names), :mod:`.gram` (the same terms from three Gram matrices, which ``MixLoss`` picks by product
count), :mod:`.functional` (the public one-process functions), :mod:`.inputmix` (i-Mix, Un-Mix),
:mod:`.distributed` (gathering), :mod:`.module` (``MixLoss``).
"""

from geomix.losses._common import NonFiniteLossError
from geomix.losses.functional import clip_loss, l_mix_loss, m2_mix_loss, v_mix_loss, vl_mix_loss
from geomix.losses.inputmix import InputMixBatch, InputMixLoss, imix_loss, mix_inputs, unmix_loss
from geomix.losses.kernels import TermInputs
from geomix.losses.module import MixLoss

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
    "TermInputs",
]
