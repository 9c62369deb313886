"""Points on the unit hypersphere: normalisation, geodesic (slerp) and linear mixing of embeddings.

The geodesic mix follows the m²-Mix paper (eq. 3) with the weight ``λ`` on the **first** argument:
``geodesic_mix(a, b, 1) == a`` and ``geodesic_mix(a, b, 0) == b`` (``docs/losses.md``, *Geodesic mix*).

Numerics: all math runs in float32 whatever the input dtype, ``acos`` only ever sees
values strictly inside ``(-1, 1)`` on the branch that uses it, and every branch of the ``torch.where`` is
computed with safe denominators so that the branch *not* taken cannot leak NaN into the gradient
(``where`` multiplies the unused branch's gradient by zero, and ``0 * inf`` is NaN).
"""

from __future__ import annotations

import math

import torch

from geomix.checks import check_range

__all__ = [
    "normalize",
    "geodesic_mix",
    "linear_mix",
    "geodesic_weights",
    "linear_weights",
    "check_features",
    "check_lam",
]

# Below this angle the geodesic and the normalised chord agree to O(θ²) relative error, and sin θ is too
# small to divide by safely; above π - _ANTIPODAL_EPS the geodesic is (nearly) not unique.
_SMALL_THETA = 1e-3
_ANTIPODAL_EPS = 1e-3
_COS_SMALL = math.cos(_SMALL_THETA)
_COS_ANTIPODAL = math.cos(math.pi - _ANTIPODAL_EPS)
_NORM_EPS = 1e-12


def normalize(x: torch.Tensor, eps: float = _NORM_EPS) -> torch.Tensor:
    """L2-normalise the rows of ``x`` (float32 math, result in ``x``'s dtype).

    Args:
        x: ``[n, d]`` tensor.
        eps: lower bound on the norm, so that an all-zero row maps to zero instead of NaN.

    Returns:
        ``[n, d]`` tensor with unit rows (zero rows stay zero).
    """
    x32 = x.float()
    return (x32 / x32.norm(dim=-1, keepdim=True).clamp_min(eps)).to(x.dtype)


def check_features(name: str, x: torch.Tensor, *, finite: bool = True) -> None:
    """Raise ``ValueError`` unless ``x`` is a 2-D floating tensor ``[n, d]`` (and finite when ``finite``).

    The finiteness check is one reduction plus one host sync; callers on a hot path pass ``finite=False``.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}={type(x).__name__} is invalid: allowed a torch.Tensor of shape [n, d]")
    if x.ndim != 2:
        raise ValueError(f"{name}.shape={tuple(x.shape)} is invalid: allowed a 2-D tensor [n, d]")
    if not x.is_floating_point():
        raise ValueError(f"{name}.dtype={x.dtype} is invalid: allowed a floating-point dtype")
    if finite and x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} has {bad} non-finite value(s) (NaN/Inf): allowed finite values only")


def check_lam(lam: float | torch.Tensor, n: int, *, check: bool = True, name: str = "lam") -> None:
    """Raise ``ValueError`` unless ``lam`` is a number or a 0-d / ``[n]`` tensor with values in ``[0, 1]``."""
    if isinstance(lam, torch.Tensor):
        if lam.ndim > 1 or (lam.ndim == 1 and lam.shape[0] != n):
            raise ValueError(
                f"{name}.shape={tuple(lam.shape)} is invalid: allowed a float, a 0-d tensor or a tensor of "
                f"shape [{n}]"
            )
        if check and lam.numel():
            lo, hi = float(lam.min()), float(lam.max())
            if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
                bad = lo if not 0.0 <= lo <= 1.0 else hi
                raise ValueError(f"{name}={bad!r} is invalid: allowed values in [0, 1]")
    else:
        check_range(name, lam, 0.0, 1.0)


def _lam_column(lam: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
    """``lam`` as a float, or a float32 ``[n, 1]`` / 0-d tensor on ``like``'s device (broadcasts on rows)."""
    if isinstance(lam, torch.Tensor):
        lam = lam.to(device=like.device, dtype=torch.float32)
        return lam[:, None] if lam.ndim == 1 else lam
    return float(lam)


def _check_pair(a: torch.Tensor, b: torch.Tensor, lam: float | torch.Tensor, check: bool) -> None:
    check_features("a", a, finite=check)
    check_features("b", b, finite=check)
    if a.shape != b.shape:
        raise ValueError(f"b.shape={tuple(b.shape)} is invalid: allowed the shape of a, {tuple(a.shape)}")
    check_lam(lam, a.shape[0], check=check)


def geodesic_mix(
    a: torch.Tensor, b: torch.Tensor, lam: float | torch.Tensor, *, check: bool = True
) -> torch.Tensor:
    """Mix unit rows along the great circle: ``sin(λθ)/sin θ · a + sin((1-λ)θ)/sin θ · b``, renormalised.

    ``θ = arccos(clamp(cos(a, b), -1, 1))``. For ``θ < 1e-3`` the result is ``normalize(λa + (1-λ)b)``
    (the two agree to ``O(θ²)`` there and the slerp weights divide by ``sin θ ≈ 0``). For nearly
    antipodal rows (``θ > π - 1e-3``) the geodesic is not unique; the result walks from ``a`` towards
    ``-a`` through a fixed direction orthogonal to ``a`` (a finite unit vector; exactly ``b = -a`` at
    ``λ = 0``). Value and gradient are finite for every finite input.

    Args:
        a: ``[n, d]`` unit rows, the ``λ`` side (``λ = 1`` returns ``a``).
        b: ``[n, d]`` unit rows, the ``1 - λ`` side.
        lam: a float, a 0-d tensor, or a ``[n]`` tensor, each in ``[0, 1]``. Carries no gradient.
        check: validate finiteness of ``a``/``b`` and the range of a tensor ``lam`` (one host sync each);
            shapes, dtypes and a float ``lam`` are always checked.

    Returns:
        ``[n, d]`` unit rows in the promoted dtype of ``a`` and ``b``.

    Raises:
        ValueError: shape mismatch, not 2-D, ``d < 2``, ``lam`` outside ``[0, 1]``, non-finite features.
    """
    _check_pair(a, b, lam, check)
    if a.shape[1] < 2:
        raise ValueError(f"a.shape[1]={a.shape[1]} is invalid: allowed an embedding dimension d >= 2")
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    a32, b32 = a.float(), b.float()
    lam_c = _lam_column(lam, a32)
    if isinstance(lam_c, torch.Tensor):
        lam_c = lam_c.detach()

    # Everything branch-specific is a per-row coefficient ([n, 1]); the [n, d] work is a handful of
    # kernels (dot, norms, one combination, one scatter, the renormalisation) whatever the branch.
    # cos from the normalised dot product: robust to rows that are only approximately unit (fp16 input).
    na = a32.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    nb = b32.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    near, anti, ca_slerp, cb_slerp = _arc(na, nb, (a32 * b32).sum(-1, keepdim=True), lam_c)

    # Antipodal: half a great circle from a (λ = 1) to -a (λ = 0) through u = (e_k - â_k·â)/r ⟂ â,
    # â = a/|a|, k = argmin |â_k|, r = sqrt(1 - â_k²) >= sqrt(1 - 1/d) (safe for d >= 2). Written as
    # coefficients on a and on e_k: cos φ·â + sin φ·u = (cos φ/|a| - sin φ·â_k/(r|a|))·a + (sin φ/r)·e_k.
    k = a32.detach().abs().argmin(dim=-1, keepdim=True)
    ak = a32.gather(-1, k) / na
    r = torch.sqrt(1.0 - ak * ak)
    phi = (1.0 - lam_c) * math.pi
    if not isinstance(phi, torch.Tensor):
        phi = torch.full_like(na, phi)
    ca_anti = (torch.cos(phi) - torch.sin(phi) * ak / r) / na
    ce_anti = torch.sin(phi) / r

    # Near-identical rows: the chord λa + (1-λ)b, within O(θ²) of the arc.
    zero = torch.zeros_like(na)
    ca = torch.where(near, lam_c + zero, torch.where(anti, ca_anti, ca_slerp))
    cb = torch.where(near, 1.0 - lam_c + zero, torch.where(anti, zero, cb_slerp))
    ce = torch.where(anti, ce_anti, zero)
    out = (ca * a32 + cb * b32).scatter_add(-1, k, ce)
    out = out / out.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    return out.to(out_dtype)


def _arc(
    na: torch.Tensor, nb: torch.Tensor, ab: torch.Tensor, lam_c: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The slerp weights on ``a`` and ``b`` from the row norms and dot product (``[n, 1]`` each), and the
    masks of the near-identical and nearly antipodal rows, where those weights are a safe dummy."""
    cos = (ab / (na * nb)).clamp(-1.0, 1.0)
    near = cos > _COS_SMALL
    anti = cos < _COS_ANTIPODAL
    regular = ~(near | anti)

    # Slerp: acos and 1/sin θ see a safe dummy (cos = 0, θ = π/2) wherever this branch is unused.
    theta = torch.acos(torch.where(regular, cos, torch.zeros_like(cos)))
    sin_theta = torch.sin(theta)
    ca_slerp = torch.sin(lam_c * theta) / sin_theta
    cb_slerp = torch.sin((1.0 - lam_c) * theta) / sin_theta
    return near, anti, ca_slerp, cb_slerp


def geodesic_weights(
    aa: torch.Tensor, bb: torch.Tensor, ab: torch.Tensor, lam: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`geodesic_mix` as weights, from the row Gram entries ``a·a``, ``b·b``, ``a·b`` (float32 ``[n]``).

    ``geodesic_mix(a, b, λ) = normalize(ca·a + cb·b)`` on every row except where ``anti`` is set: there the
    antipodal branch needs ``a``'s coordinates, and ``ca``, ``cb`` are only a finite dummy. The losses'
    Gram path (``geomix.losses.gram``) forms mixed logits from these, with the same branches and safe
    denominators as the mix itself.
    """
    lam_c = lam.detach().to(ab) if isinstance(lam, torch.Tensor) else float(lam)
    na = aa.sqrt().clamp_min(_NORM_EPS)
    nb = bb.sqrt().clamp_min(_NORM_EPS)
    near, anti, ca_slerp, cb_slerp = _arc(na, nb, ab, lam_c)
    zero = torch.zeros_like(ab)
    return torch.where(near, lam_c + zero, ca_slerp), torch.where(near, 1.0 - lam_c + zero, cb_slerp), anti


def linear_mix(
    a: torch.Tensor, b: torch.Tensor, lam: float | torch.Tensor, *, check: bool = True
) -> torch.Tensor:
    """The Euclidean counterpart of :func:`geodesic_mix`: ``normalize(λa + (1-λ)b)``.

    Args and Raises: as :func:`geodesic_mix`. For ``b = -a`` at ``λ = ½`` the chord is zero and no
    direction is preferred; the result falls back to ``a`` itself (finite and unit).

    Returns:
        ``[n, d]`` unit rows in the promoted dtype of ``a`` and ``b``.
    """
    _check_pair(a, b, lam, check)
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    a32, b32 = a.float(), b.float()
    aa = (a32 * a32).sum(-1, keepdim=True)
    bb = (b32 * b32).sum(-1, keepdim=True)
    ab = (a32 * b32).sum(-1, keepdim=True)
    ca, cb = linear_weights(aa, bb, ab, _lam_column(lam, a32))
    out = ca * a32 + cb * b32
    return (out / out.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)).to(out_dtype)


def linear_weights(
    aa: torch.Tensor, bb: torch.Tensor, ab: torch.Tensor, lam: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`linear_mix` as weights ``normalize(ca·a + cb·b)``, from the row Gram entries ``a·a``, ``b·b``,
    ``a·b`` (any matching shapes; ``lam`` a float or a tensor broadcasting against them)."""
    lam_c = lam.detach().to(ab) if isinstance(lam, torch.Tensor) else float(lam)
    # |λa + (1-λ)b|² from row Gram entries; a (near-)zero chord has no direction, so those rows fall back
    # to a and value and gradient stay finite.
    sq = lam_c * lam_c * aa + (1.0 - lam_c) ** 2 * bb + 2.0 * lam_c * (1.0 - lam_c) * ab
    degenerate = sq < 1e-6  # chord shorter than 1e-3: its direction is mostly rounding error
    zero = torch.zeros_like(ab)
    ca = torch.where(degenerate, zero + 1.0, lam_c + zero)
    cb = torch.where(degenerate, zero, 1.0 - lam_c + zero)
    return ca, cb
