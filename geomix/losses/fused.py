"""The Gram path's ``n×n`` work compiled: ``MixLoss(path='compiled')``, ``run.compile_loss: true``.

:mod:`.gram` forms every term's logits from ``S = I·Tᵀ``, ``I·Iᵀ`` and ``T·Tᵀ`` with per-row and per-column
coefficients, then takes their two-way cross-entropies: some thirty eager passes over ``n×n`` matrices per
term (each coefficient applied, each partner gather, each softmax and their backward), which on a CPU cost
more than the products they replace (``benchmarks/loss_overhead.py --profile``). Here the same formulas,
written as plain tensor code, go through ``torch.compile`` once per set of active terms (and batch size,
and λ shape), so the coefficients, gathers and log-sum-exps of a term fuse into a few loops, forward and
backward. The products, the coefficients (``O(n·d)``), the partner draw and the ill-conditioning check stay
:mod:`.gram`'s, eager; the values agree with it to float rounding (``tests/test_fused.py``).

Scope: all rows (not ``loss.local_loss``) and partners in the batch (not ``mix.partner=history``), the
common single-process and gathered-DDP case; anything else takes the eager Gram path. The first step of a
process compiles (seconds to tens of seconds on a CPU; Inductor's on-disk cache makes later processes on
the machine faster); later steps reuse it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from geomix.losses import gram
from geomix.losses import kernels as K
from geomix.losses._common import Lam, _pair_targets
from geomix.sphere import geodesic_mix, linear_mix

Observe = Callable[[], K.Observation]
Coefs = dict[str, tuple[torch.Tensor, ...]]


def supported(x: K.TermInputs) -> bool:
    """Whether this step can take the compiled path (else the eager Gram path runs it)."""
    hist = x.partners is not None and x.partners.hist is not None
    return x.rows is None and not hist and x.mix in (geodesic_mix, linear_mix)


def _ce(z: torch.Tensor, dim: int, ar: torch.Tensor, la: torch.Tensor, lb: torch.Tensor | None = None,
        wa: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the lines of ``z`` along ``dim`` of ``lse − (wa·z[la] + (1−wa)·z[lb])`` (``lb=None``:
    ``lse − z[la]``): ``_common._LineCE``'s soft-target cross-entropy."""
    lse = torch.logsumexp(z, dim)

    def pick(idx: torch.Tensor) -> torch.Tensor:
        return z[idx, ar] if dim == 0 else z[ar, idx]

    target = pick(la) if lb is None else wa * pick(la) + (1.0 - wa) * pick(lb)
    return (lse - target).mean()


def _elementwise(terms: tuple[str, ...], S: torch.Tensor, GI: torch.Tensor | None, GT: torch.Tensor | None,
                 s: torch.Tensor, p: dict[str, torch.Tensor], c: Coefs) -> tuple[torch.Tensor, ...]:
    """CLIP's and each of ``terms``' share from the blocks and coefficients, as :mod:`.gram`'s terms
    build them (image-side rows, text-side columns). ``p`` holds ``S`` at the partners, gathered outside
    (:meth:`.gram.Gram.permute`, whose backward is a gather, where a gather here would scatter):
    ``rows`` ``P·S``, ``cols`` ``S·Pᵀ``, ``both`` ``P·S·Pᵀ``."""
    ar = torch.arange(S.shape[0], device=S.device)
    out = [0.5 * (_ce(s * S, 1, ar, ar) + _ce(s * S, 0, ar, ar))]
    for term in terms:
        if term == "m2":  # A = I·Mᵀ and Bᵀ = M·Tᵀ, each diagonal the positive pair s_m·S_ii
            ma, mb, s_m = c["m2"]
            eye = ar[:, None] == ar[None, :]
            pos = (s_m * torch.diagonal(S))[:, None]
            a = torch.where(eye, pos, GI * ma + S * mb)
            b = torch.where(eye, pos, ma[:, None] * S + mb[:, None] * GT)
            out.append(0.5 * (_ce(a, 1, ar, ar) + _ce(b, 0, ar, ar)))
        elif term == "v":  # Ĩ·Tᵀ: mixed image rows
            ka, kb, lb_r, wa_r, lb_c, wa_c = c["v"]
            z = ka[:, None] * S + kb[:, None] * p["rows"]
            out.append(0.5 * (_ce(z, 1, ar, ar, lb_r, wa_r) + _ce(z, 0, ar, ar, lb_c, wa_c)))
        elif term == "l":  # I·T̃ᵀ: mixed text columns
            ka, kb, lb_r, wa_r, lb_c, wa_c = c["l"]
            z = S * ka + p["cols"] * kb
            out.append(0.5 * (_ce(z, 0, ar, ar, lb_r, wa_r) + _ce(z, 1, ar, ar, lb_c, wa_c)))
        else:  # "vl": Ĩ·T̃ᵀ, hard targets
            ia, ib, ta, tb = c["vl"]
            z = ia[:, None] * (S * ta + p["cols"] * tb) + ib[:, None] * (p["rows"] * ta + p["both"] * tb)
            out.append(0.5 * (_ce(z, 1, ar, ar) + _ce(z, 0, ar, ar)))
    return tuple(out)


# One graph per (terms, batch size, λ shape, which inputs need a gradient): a process has a few; a test
# suite that runs many term sets in one process more than Dynamo's default of 8 per function.
_MAX_GRAPHS = 64


@functools.cache
def _compiled(terms: tuple[str, ...]) -> Callable[..., tuple[torch.Tensor, ...]]:
    compiled = torch.compile(functools.partial(_elementwise, terms), dynamic=False, fullgraph=True)

    def call(*args):
        with torch._dynamo.config.patch(recompile_limit=_MAX_GRAPHS):
            return compiled(*args)

    return call


def _tensor(v: Lam, like: torch.Tensor) -> torch.Tensor:
    """A float as a 0-d tensor: a Python float would be compiled in as a constant, once per value."""
    return v if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=like.dtype, device=like.device)


def shares(
    x: K.TermInputs, lams: dict[str, Lam], terms: dict[str, Callable]
) -> dict[str, tuple[torch.Tensor, Observe | None]]:
    """As :func:`.gram.shares` (``{name: (share, observe)}`` with ``"clip"``; empty when a mixed row is
    ill-conditioned, and the caller then takes the direct kernels), for a step :func:`supported` accepts;
    ``terms`` (name -> direct kernel) are built-in terms of :mod:`.gram`."""
    g = gram.Gram(x)
    s = _tensor(x.scale, x.img)
    names = {key: gram.name_of(kernel) for key, kernel in terms.items()}
    c: Coefs = {}
    observes: dict[str, Observe] = {}
    for key, name in names.items():
        lam = lams[key]
        if name == "m2":
            s_m = x.scale if x.loss.m2_tau is None else 1.0 / x.loss.m2_tau
            ((ma, _, _), (mb, _, _)), obs = g.mixed("i", "t", False, lam, s_m)
            c[name] = (ma, mb, _tensor(s_m, x.img))
            observes[key] = lambda obs=obs: (obs()[0], x.img, x.txt)
        elif name in ("v", "l"):
            base = "i" if name == "v" else "t"
            ((ka, _, _), (kb, _, _)), observes[key] = g.mixed(base, base, True, lam, x.scale)
            (_, lb_r, wa_r), (_, lb_c, wa_c) = _pair_targets(lam, g.perm, g.inv, g.idx, g.r)
            c[name] = (ka, kb, lb_r, _tensor(wa_r, x.img), lb_c, _tensor(wa_c, x.img))
        else:
            ((ia, _, _), (ib, _, _)), obs_i = g.mixed("i", "i", True, lam, x.scale)
            ((ta, _, _), (tb, _, _)), obs_t = g.mixed("t", "t", True, lam, 1.0)
            c[name] = (ia, ib, ta, tb)
            observes[key] = functools.partial(gram.joint_observation, obs_i, obs_t)
    m2 = "m2" in c
    S = g.block("i", "t")
    GI, GT = (g.block("i", "i"), g.block("t", "t")) if m2 else (None, None)
    p: dict[str, torch.Tensor] = {}
    if {"v", "vl"} & set(c):
        p["rows"] = g.permute(S, 0)
    if {"l", "vl"} & set(c):
        p["cols"] = g.permute(S, 1)
    if "vl" in c:
        p["both"] = g.permute(p["cols"], 0)
    values = _compiled(tuple(names.values()))(S, GI, GT, s, p, c)
    if g.ill_conditioned():
        return {}
    out: dict[str, tuple[torch.Tensor, Observe | None]] = {"clip": (values[0], None)}
    for (key, _), value in zip(names.items(), values[1:]):
        out[key] = (value, observes[key])
    return out
