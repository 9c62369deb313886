"""The Gram path of :class:`geomix.losses.MixLoss`: every term's logits from ``I·Tᵀ``, ``I·Iᵀ`` and ``T·Tᵀ``.

Every mixed embedding is a per-row combination of unit rows, rescaled to unit length:
``mix(a, b, λ)_i = (ca_i·a_i + cb_i·b_{p(i)}) / |…|`` (:func:`geomix.sphere.geodesic_weights`), and
the norm follows from ``a·a``, ``b·b`` and ``a·b`` without touching ``d``. So a logit between two such
sets is a sum of Gram entries with per-row and per-column coefficients and index gathers:

    Ĩ_i·T_j = ca_i·S[i, j] + cb_i·S[π(i), j],     S = I·Tᵀ

V-, L- and VL-Mix read only ``S`` (CLIP's own product); m²-Mix adds ``I·Iᵀ`` and ``T·Tᵀ``. History partners
add products with the previous step's (detached) features. :func:`plan` picks, per term, whichever of this
path and the term's direct kernel (:mod:`.kernels`) costs fewer ``n×n×d`` products; the values and
gradients agree to float rounding (``tests/test_gram.py``; ``docs/losses.md``, *The Gram path*).

Rows where the combination is ill-conditioned (partners within ~30° of antipodal, where the coefficients
grow like ``1/sin θ`` and cancel, or the antipodal branch's step along a coordinate axis) make the whole
step fall back to the direct kernels: they do not occur between real embeddings, and one boolean per step
(a host sync) is the price of the check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from geomix.losses import kernels as K
from geomix.losses import native
from geomix.losses._common import (
    Lam,
    Scale,
    _directions,
    _idx,
    _lam_rows,
    _line_ce,
    _pair_targets,
    _rows,
    _share,
    _two_way_ce,
)
from geomix.losses.plan import needs as needs  # the plan (its own module), read through this one
from geomix.losses.plan import plan as plan
from geomix.losses.plan import products as products
from geomix.sphere import geodesic_mix, geodesic_weights, linear_mix, linear_weights

# A set of rows as ((coefficient, base, permuted), ...): row i is Σ coef_i · base[π(i) if permuted else i].
# A coefficient is an [n] tensor (one per row), a 0-d tensor or float (the same for every row), or None (1).
Part = tuple[Scale | None, str, bool]
Combo = tuple[Part, ...]
Observe = Callable[[], K.Observation]

# Σ|coefficient|·|row| over |mixed row| above this: rounding in the Gram entries grows by this factor (and
# in the norm by its square). 4 keeps both below ~1e-6; slerp reaches it at about 150° at λ = ½.
_MAX_GAIN = 4.0
_NORM_EPS = 1e-12
# With all rows, blocks are stored with image-side rows and text-side columns (S, not Sᵀ), and each term's
# logits are built in that orientation: a transposed view would make every n×n pass after it strided.
_SIDE = {"i": 0, "ih": 0, "t": 1, "th": 1}


@dataclass
class TwoWay:
    """The logits between two sets ``x`` and ``y``, both ways: ``x``'s rows take their softmax in ``zx``
    along ``dx``, ``y``'s in ``zy`` along ``dy``. With all rows both are one matrix (``x·yᵀ`` or ``y·xᵀ``,
    whichever is stored); with this worker's rows they are ``x_R·yᵀ`` and ``y_R·xᵀ``."""

    zx: torch.Tensor
    dx: int
    zy: torch.Tensor
    dy: int

    def x_rows(self, *targets, scale: Scale = 1.0) -> torch.Tensor:
        return _line_ce(self.zx, self.dx, *targets, scale=scale)

    def y_rows(self, *targets, scale: Scale = 1.0) -> torch.Tensor:
        return _line_ce(self.zy, self.dy, *targets, scale=scale)

    def both(self, x_targets: tuple, y_targets: tuple, scale: Scale = 1.0) -> torch.Tensor:
        """``x_rows(*x_targets) + y_rows(*y_targets)``; on one matrix, in one cross-entropy."""
        if self.zx is not self.zy:
            return self.x_rows(*x_targets, scale=scale) + self.y_rows(*y_targets, scale=scale)
        rows, cols = (x_targets, y_targets) if self.dx == 1 else (y_targets, x_targets)
        return _two_way_ce(self.zx, rows, cols, scale=scale)


class FusedTwoWay:
    """:class:`TwoWay`'s :meth:`~TwoWay.both` on the fused kernel: the logits of ``x·yᵀ`` (all rows) stay
    combinations until :meth:`Gram.fused_ce` forms them."""

    def __init__(self, g: Gram, x: Combo, y: Combo) -> None:
        self.g, self.swap = g, _SIDE[x[0][1]] > _SIDE[y[0][1]]
        self.x, self.y = (y, x) if self.swap else (x, y)

    def both(self, x_targets: tuple, y_targets: tuple, scale: Scale = 1.0) -> torch.Tensor:
        rows, cols = (y_targets, x_targets) if self.swap else (x_targets, y_targets)
        return self.g.fused_ce(self.x, self.y, rows, cols, scale=scale)


class Gram:
    """One step's Gram blocks and row statistics, computed on first use and shared by every term.

    All rows (``rows=None``): ``G(a, b) = a·bᵀ`` once per pair, image side first; a partner's rows or
    columns are gathers. This worker's rows (``local_loss``): ``a[R]·bᵀ`` for ``R`` its rows or their
    partners' rows, each a product of its own. ``requested`` records the blocks read, as
    :func:`needs` writes them, so a test can hold :func:`plan`'s cost model to what the kernels do.
    """

    def __init__(self, x: K.TermInputs) -> None:
        self.x = x
        self.n = x.img.shape[0]
        self.full = x.rows is None
        self.r = _rows(x.rows, self.n)
        self.idx = _idx(self.r, x.img.device)
        part = x.partners
        self.perm = None if part is None else part.perm
        self.inv = None if part is None else part.inv
        self.bases = {"i": x.img, "t": x.txt}
        if part is not None and part.hist is not None:
            self.bases.update(ih=part.hist[0], th=part.hist[1])
        self.requested: set[tuple[str, str, str]] = set()
        self._blocks: dict[tuple[str, ...], torch.Tensor] = {}
        self._dots: dict[tuple[str, str, bool], torch.Tensor] = {}
        self._flags: list[torch.Tensor] = []
        self._collectors: dict[tuple[str, str], native.Collector] = {}
        # All rows of a large enough batch, no history partners, float32 on the CPU: each term's n×n work in
        # the fused kernel.
        self.fused = (self.full and (part is None or part.hist is None) and x.img.dtype == torch.float32
                      and self.n >= native.MIN_ROWS and native.available(x.img.device))

    def block(self, a: str, b: str, permuted: bool = False) -> torch.Tensor:
        """``a·bᵀ``: all rows (unpermuted; the caller gathers), or this worker's rows / their partners'."""
        sel = "p" if permuted else "r"
        self.requested.add((a, b, sel))
        x = self.bases[a]
        if not self.full:
            if (a, b, sel) not in self._blocks:
                left = x.index_select(0, self.perm[self.idx]) if permuted else x[self.r[0] : self.r[1]]
                self._blocks[(a, b, sel)] = left @ self.bases[b].T
            return self._blocks[(a, b, sel)]
        if _SIDE[a] > _SIDE[b]:
            return self.block(b, a).T
        if (a, b) not in self._blocks:
            if a == b and x.requires_grad:
                g = _Symmetric.apply(x @ x.detach().T)
            else:
                g = x @ self.bases[b].T
            self._blocks[(a, b)] = g
        return self._blocks[(a, b)]

    def _columns(self, a: str, b: str, permuted: bool, columns_permuted: bool) -> torch.Tensor:
        """:meth:`block`, with its columns at the partners of ``b``'s rows when ``columns_permuted`` (the
        gather is kept: L- and VL-Mix both read ``S·P_πᵀ``)."""
        if not columns_permuted:
            return self.block(a, b, permuted)
        key = (a, b, "p" if permuted else "r", "columns")
        if key not in self._blocks:
            self._blocks[key] = self.permute(self.block(a, b, permuted), 1)
        return self._blocks[key]

    def dot(self, a: str, b: str, permuted: bool) -> torch.Tensor:
        """``a_i·b_{π(i)}`` (or ``a_i·b_i``), ``[n]``: an ``O(n·d)`` row dot, shared by the terms."""
        if (a, b, permuted) not in self._dots:
            right = self.permute(self.bases[b], 0) if permuted else self.bases[b]
            self._dots[(a, b, permuted)] = (self.bases[a] * right).sum(1)
        return self._dots[(a, b, permuted)]

    def logits(self, x: Combo, y: Combo) -> torch.Tensor:
        """This worker's rows of ``x·yᵀ`` (``[rows, n]``): Σ over the parts of ``x`` and ``y``.

        The column side (coefficients of ``y``, its partner gather) is applied once per base of ``x``; in
        all-rows mode the row gather of a partner part follows, on the combined matrix.
        """
        out, inner = None, {}
        for cx, bx, px in x:
            key = bx if self.full else (bx, px)
            if key not in inner:
                acc = None
                for cy, by, py in y:
                    g = self._columns(bx, by, px and not self.full, py)
                    acc = _axpy(acc, g, cy)
                inner[key] = acc
            z = inner[key]
            if self.full and px:
                z = self.permute(z, 0)
            out = _axpy(out, z, cx[self.r[0] : self.r[1], None] if _per_row(cx) else cx)
        return out

    def two_way(self, x: Combo, y: Combo) -> TwoWay | FusedTwoWay:
        """The logits between ``x`` and ``y`` both ways (see :class:`TwoWay`)."""
        if self.fused:
            return FusedTwoWay(self, x, y)
        if not self.full:
            return TwoWay(self.logits(x, y), 1, self.logits(y, x), 1)
        if _SIDE[x[0][1]] <= _SIDE[y[0][1]]:
            z = self.logits(x, y)
            return TwoWay(z, 1, z, 0)
        z = self.logits(y, x)
        return TwoWay(z, 0, z, 1)

    def fused_ce(self, x: Combo, y: Combo, rows: tuple | None = None, cols: tuple | None = None,
                 scale: Scale = 1.0, diag: torch.Tensor | None = None) -> torch.Tensor:
        """``_two_way_ce(logits(x, y), rows, cols)`` (either direction may be ``None``) with ``diag`` on the
        diagonal, in the fused kernel (:mod:`.native`): the logits are never formed as torch ops."""
        blocks: list[native.Collector] = []
        index: dict[tuple[str, str], int] = {}
        parts = []
        perm, inv = (None, None) if self.perm is None else (self.perm.contiguous(), self.inv.contiguous())
        for cx, bx, px in x:
            for cy, by, py in y:
                if (bx, by) not in index:  # image side first, as two_way orients them: no transposed block
                    assert _SIDE[bx] <= _SIDE[by], (bx, by)
                    index[bx, by] = len(blocks)
                    if (bx, by) not in self._collectors:  # one per block and step, shared by the terms
                        self._collectors[bx, by] = native.Collector(self.block(bx, by))
                    blocks.append(self._collectors[bx, by])
                rows_at = (perm, inv) if px else (None, None)
                cols_at = (perm, inv) if py else (None, None)
                part = native.Part(index[bx, by], *rows_at, *cols_at)
                parts.append((part, self._vector(cx), self._vector(cy)))
        n = self.n
        tg = native.targets(None if rows is None else _directions(n, 1, *rows),
                            None if cols is None else _directions(n, 0, *cols))
        return native.combo_ce(blocks, parts, (n, n), tg, scale=scale, diag=diag)

    def _vector(self, c: Scale | None) -> torch.Tensor:
        """A coefficient as an ``[n]`` float32 vector (``None``: ones)."""
        if c is None:
            return torch.ones(self.n)
        if isinstance(c, torch.Tensor):
            return c.float().expand(self.n) if c.ndim == 0 else c.float()
        return torch.full((self.n,), float(c))

    def mixed(self, a: str, b: str, permuted: bool, lam: Lam, scale: Scale) -> tuple[Combo, Observe]:
        """``scale · mix(base a, base b at the partner rows when permuted, λ)`` as a combination, and a
        function returning what a progressive λ policy observes (computed only if asked)."""
        aa, bb, ab = self.dot(a, a, False), self.dot(b, b, False), self.dot(a, b, permuted)
        if permuted:
            bb = self.permute(bb, 0)
        if self.x.mix is geodesic_mix:
            ca, cb, anti = geodesic_weights(aa, bb, ab, lam)
        else:
            (ca, cb), anti = linear_weights(aa, bb, ab, lam), None
        norm = (ca * ca * aa + cb * cb * bb + 2.0 * ca * cb * ab).clamp_min(_NORM_EPS**2).sqrt()
        bad = ca.abs() * aa.sqrt() + cb.abs() * bb.sqrt() > _MAX_GAIN * norm
        self._flags.append((bad if anti is None else bad | anti).any())
        k = scale / norm

        def observe() -> K.Observation:
            left = self.bases[a]
            right = self.bases[b][self.perm] if permuted else self.bases[b]
            with torch.no_grad():
                return self.x.mix(left, right, lam, check=False).float(), left, right

        return ((ca * k, a, False), (cb * k, b, permuted)), observe

    def permute(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """``x`` at the partners along ``dim`` (a gather by ``π``, whose backward gathers by ``π⁻¹``)."""
        return _Permute.apply(x, dim, self.perm, self.inv)

    def ill_conditioned(self) -> bool:
        """Whether any mixed row of this step needs the direct kernels (one host sync)."""
        return bool(torch.stack(self._flags).any()) if self._flags else False


class _Permute(torch.autograd.Function):
    """``x.index_select(dim, π)`` for a permutation ``π``: the backward is the gather by ``π⁻¹`` (one pass),
    where ``index_select``'s own fills a zero buffer and scatters into it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, perm: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        ctx.dim = dim
        ctx.save_for_backward(inv)
        return x.index_select(dim, perm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inv,) = ctx.saved_tensors
        return grad.index_select(ctx.dim, inv), None, None, None


class _Symmetric(torch.autograd.Function):
    """The identity on ``g = a·āᵀ`` (``ā`` = ``a`` detached) with its gradient symmetrised, ``D ↦ D + Dᵀ``, so
    that ``a`` receives ``(D + Dᵀ)·a``, the gradient of ``a·aᵀ``, from one backward product instead of two
    (the transposed add costs a few ``n×n`` passes; a product costs about ``d/20`` of them on a CPU)."""

    @staticmethod
    def forward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g.view_as(g)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.T.contiguous().add_(grad)


def _axpy(acc: torch.Tensor | None, g: torch.Tensor, c: Scale | None) -> torch.Tensor:
    """``acc + c·g`` (``c`` broadcasting), as one fused pass where it can."""
    if c is None:
        return g if acc is None else acc + g
    if acc is None:
        return g * c
    return torch.addcmul(acc, g, c) if isinstance(c, torch.Tensor) else acc + c * g


def _per_row(c: Scale | None) -> bool:
    return isinstance(c, torch.Tensor) and c.ndim == 1


def _plain(base: str, scale: Scale | None = None) -> Combo:
    return ((scale, base, False),)


# ----------------------------------------------------------------------------------------------------------
# the terms: each mirrors its direct kernel in .kernels (same targets), with the logits from the Gram blocks


def clip_share(g: Gram) -> torch.Tensor:
    """``L_clip`` (its row share): ``s·S`` both ways, ``s`` applied inside the cross-entropy."""
    tw = g.two_way(_plain("i"), _plain("t"))
    return 0.5 * tw.both((g.idx,), (g.idx,), scale=g.x.scale) * _share(g.r, g.n)


def m2_term(x: K.TermInputs, lam: Lam, g: Gram) -> tuple[torch.Tensor, Observe]:
    """m²-Mix: ``A = I·Mᵀ = I·Iᵀ·diag(ca) + S·diag(cb)``, ``B = T·Mᵀ`` the same with ``Sᵀ`` and ``T·Tᵀ``."""
    s_m = x.scale if x.loss.m2_tau is None else 1.0 / x.loss.m2_tau
    m, observe = g.mixed("i", "t", False, lam, s_m)
    pos = s_m * g.block("i", "t").diagonal(offset=g.r[0])  # I_i·T_i, at (row, its global column)
    if g.fused:
        a = g.fused_ce(_plain("i"), m, rows=(g.idx,), diag=pos)
        b = g.fused_ce(m, _plain("t"), cols=(g.idx,), diag=pos)
        return 0.5 * (a + b) * _share(g.r, g.n), lambda: (observe()[0], x.img, x.txt)
    local = torch.arange(g.r[1] - g.r[0], device=g.idx.device)
    # In place: both logit matrices are fresh sums (m has coefficients), which no backward keeps.
    a = g.logits(_plain("i"), m).index_put_((local, g.idx), pos)
    # With all rows B is built as Bᵀ = M·Tᵀ (image side first) and its rows are the columns.
    b = g.logits(m, _plain("t")) if g.full else g.logits(_plain("t"), m)
    b = b.index_put_((local, g.idx), pos)
    share = 0.5 * (_line_ce(a, 1, g.idx) + _line_ce(b, 0 if g.full else 1, g.idx)) * _share(g.r, g.n)
    return share, lambda: (observe()[0], x.img, x.txt)


def _uni_term(x: K.TermInputs, lam: Lam, g: Gram, side: int) -> tuple[torch.Tensor, Observe]:
    """V-Mix (``side=0``) or L-Mix (``side=1``), as :func:`.kernels._uni_share`."""
    a, b = ("i", "t") if side == 0 else ("t", "i")
    lam_r, n, idx = _lam_rows(lam, g.r), g.n, g.idx
    if x.partners.hist is None:
        am, observe = g.mixed(a, a, True, lam, x.scale)
        to_mixed, to_clean = _pair_targets(lam, g.perm, g.inv, idx, g.r)
        tw = g.two_way(am, _plain(b))
        return 0.5 * tw.both(to_mixed, to_clean) * _share(g.r, n), observe
    am, observe = g.mixed(a, a + "h", False, lam, x.scale)
    cur, prev = g.two_way(am, _plain(b)), g.two_way(am, _plain(b + "h"))
    # The mixed rows' softmax runs over the current and the previous pairs together, as in the direct kernel.
    to_b = _line_ce(torch.cat([cur.zx, prev.zx], cur.dx), cur.dx, idx, idx + n, lam_r)
    # Current pairs put mass λ on their own mix, previous-step pairs 1-λ on the mix they entered.
    to_a = cur.y_rows(idx, None, 1.0, lam_r) + prev.y_rows(idx, None, 1.0, 1.0 - lam_r)
    return 0.5 * (to_b + to_a) * _share(g.r, n), observe


def v_term(x: K.TermInputs, lam: Lam, g: Gram) -> tuple[torch.Tensor, Observe]:
    """V-Mix: ``Ĩ·Tᵀ = diag(ca)·S + diag(cb)·P_π·S``."""
    return _uni_term(x, lam, g, 0)


def l_term(x: K.TermInputs, lam: Lam, g: Gram) -> tuple[torch.Tensor, Observe]:
    """L-Mix: ``T̃·Iᵀ = diag(ca)·Sᵀ + diag(cb)·P_π·Sᵀ``, built as ``I·T̃ᵀ``."""
    return _uni_term(x, lam, g, 1)


def vl_term(x: K.TermInputs, lam: Lam, g: Gram) -> tuple[torch.Tensor, Observe]:
    """VL-Mix: ``Ĩ·T̃ᵀ`` from ``S`` with both sides' coefficients and partner gathers."""
    hist = x.partners.hist is not None
    im, obs_i = g.mixed("i", "ih" if hist else "i", not hist, lam, x.scale)
    tm, obs_t = g.mixed("t", "th" if hist else "t", not hist, lam, 1.0)
    tw = g.two_way(im, tm)
    share = 0.5 * tw.both((g.idx,), (g.idx,)) * _share(g.r, g.n)

    def observe() -> K.Observation:
        (mi, ii, pi), (mt, tt, pt) = obs_i(), obs_t()
        return torch.cat([mi, mt]), torch.cat([ii, tt]), torch.cat([pi, pt])

    return share, observe


# The direct kernels this path replaces (a term registered with another kernel stays direct).
TERMS = {K.m2_term: m2_term, K.v_term: v_term, K.l_term: l_term, K.vl_term: vl_term}
_NAMES = {K.m2_term: "m2", K.v_term: "v", K.l_term: "l", K.vl_term: "vl"}


def shares(
    x: K.TermInputs, lams: dict[str, Lam], terms: dict[str, Callable]
) -> dict[str, tuple[torch.Tensor, Observe | None]]:
    """CLIP and ``terms`` (name -> direct kernel) through one :class:`Gram`: ``{name: (share, observe)}``,
    with ``"clip"`` (observe ``None``). Empty when a mixed row is ill-conditioned or the mix function is
    neither of :mod:`geomix.sphere`'s (the caller then uses the direct kernels for the whole step)."""
    if x.mix not in (geodesic_mix, linear_mix):
        return {}
    g = Gram(x)
    out: dict[str, tuple[torch.Tensor, Observe | None]] = {"clip": (clip_share(g), None)}
    for name, kernel in terms.items():
        out[name] = TERMS[kernel](x, lams[name], g)
    return {} if g.ill_conditioned() else out


def name_of(kernel: Callable) -> str | None:
    """The built-in term whose direct kernel is ``kernel``, or ``None`` (no Gram form)."""
    return _NAMES.get(kernel)
