"""geomix.sphere: geodesic / linear mixing on the unit sphere."""

from __future__ import annotations

import math

import pytest
import torch

from geomix.sphere import geodesic_mix, linear_mix, normalize


def _unit(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return normalize(torch.randn(n, d, generator=g))


def _angle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.acos((x.double() * y.double()).sum(-1).clamp(-1, 1))


@pytest.mark.parametrize("mix", [geodesic_mix, linear_mix])
def test_unit_norm_and_endpoints(mix):
    a, b = _unit(7, 16, 0), _unit(7, 16, 1)
    for lam in (0.0, 0.2, 0.5, 0.9, 1.0, torch.rand(7, generator=torch.Generator().manual_seed(3))):
        out = mix(a, b, lam)
        assert out.shape == a.shape
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(7), atol=1e-6, rtol=0)
    torch.testing.assert_close(mix(a, b, 1.0), a, atol=1e-6, rtol=0)
    torch.testing.assert_close(mix(a, b, 0.0), b, atol=1e-6, rtol=0)


def test_geodesic_bisects_angle_and_moves_at_constant_speed():
    a, b = _unit(9, 8, 2), _unit(9, 8, 3)
    theta = _angle(a, b)
    mid = geodesic_mix(a, b, 0.5)
    torch.testing.assert_close(_angle(a, mid), theta / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(_angle(b, mid), theta / 2, atol=1e-5, rtol=0)
    # λ on a: the angle to a is (1-λ)θ (constant angular speed), unlike the chord.
    out = geodesic_mix(a, b, 0.8)
    torch.testing.assert_close(_angle(a, out), 0.2 * theta, atol=1e-5, rtol=0)
    lin = linear_mix(a, b, 0.8)
    assert (_angle(a, lin) - 0.2 * theta).abs().max() > 1e-3


def test_geodesic_hand_computed_2d():
    # a = e1, b = e2, θ = π/2: geodesic_mix(a, b, λ) = (cos((1-λ)π/2), sin((1-λ)π/2)).
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    for lam in (0.1, 0.25, 0.7):
        phi = (1 - lam) * math.pi / 2
        torch.testing.assert_close(geodesic_mix(a, b, lam), torch.tensor([[math.cos(phi), math.sin(phi)]]))
        c = torch.tensor([[lam, 1 - lam]]) / math.hypot(lam, 1 - lam)
        torch.testing.assert_close(linear_mix(a, b, lam), c)


def test_per_row_lambda_matches_scalar_calls():
    a, b = _unit(4, 5, 4), _unit(4, 5, 5)
    lam = torch.tensor([0.0, 0.3, 0.6, 1.0])
    out = geodesic_mix(a, b, lam)
    for i in range(4):
        torch.testing.assert_close(out[i : i + 1], geodesic_mix(a[i : i + 1], b[i : i + 1], float(lam[i])))


@pytest.mark.parametrize("mix", [geodesic_mix, linear_mix])
@pytest.mark.parametrize("case", ["equal", "antipodal", "nearly_equal", "nearly_antipodal"])
def test_finite_value_and_gradient_at_edge_cases(mix, case):
    a = _unit(5, 6, 6)  # odd batch
    b = {
        "equal": a.clone(),
        "antipodal": -a,
        "nearly_equal": normalize(a + 1e-5 * _unit(5, 6, 7)),
        "nearly_antipodal": normalize(-a + 1e-5 * _unit(5, 6, 8)),
    }[case]
    for lam in (0.0, 0.5, 0.73, 1.0, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])):
        a_ = a.clone().requires_grad_(True)
        b_ = b.clone().requires_grad_(True)
        out = mix(a_, b_, lam)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(5), atol=1e-5, rtol=0)
        (out * torch.arange(6.0)).sum().backward()
        assert torch.isfinite(a_.grad).all() and torch.isfinite(b_.grad).all()
    if case == "equal":
        torch.testing.assert_close(mix(a, b, 0.37), a, atol=1e-6, rtol=0)
    if case == "antipodal" and mix is geodesic_mix:
        torch.testing.assert_close(mix(a, b, 0.0), b, atol=1e-6, rtol=0)
        # a point of a great half-circle from a to -a: at λ = ½ it is orthogonal to both
        torch.testing.assert_close((mix(a, b, 0.5) * a).sum(-1), torch.zeros(5), atol=1e-6, rtol=0)
        torch.testing.assert_close(_angle(a, mix(a, b, 0.75)).float(), torch.full((5,), math.pi / 4))


def test_odd_batch_reverse_partner_fixed_point_returns_row():
    x = _unit(5, 4, 9)
    out = geodesic_mix(x, x.flip(0), 0.3)
    torch.testing.assert_close(out[2], x[2], atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mix", [geodesic_mix, linear_mix])
def test_low_precision_inputs(dtype, mix):
    a32, b32 = _unit(6, 32, 10), _unit(6, 32, 11)
    a, b = a32.to(dtype).requires_grad_(True), b32.to(dtype).requires_grad_(True)
    out = mix(a, b, 0.4)
    assert out.dtype == dtype
    ref = mix(a32, b32, 0.4)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=0)
    out.float().sum().backward()
    assert torch.isfinite(a.grad.float()).all() and torch.isfinite(b.grad.float()).all()
    same = mix(a, a.detach().clone(), 0.5)  # a == b in low precision: rows are only approximately unit
    assert torch.isfinite(same.float()).all()


def test_gradient_matches_finite_differences():
    a = _unit(3, 4, 12).double().requires_grad_(True)
    b = _unit(3, 4, 13).double().requires_grad_(True)
    # geodesic_mix computes in float32; compare the float32 autograd gradient with a float64 numerical one.
    out = geodesic_mix(a.float(), b.float(), 0.35)
    w = torch.arange(12.0).reshape(3, 4)
    (out * w).sum().backward()
    eps = 1e-4
    num = torch.zeros(3, 4, dtype=torch.float64)
    with torch.no_grad():
        for i in range(3):
            for j in range(4):
                ap, am = a.clone(), a.clone()
                ap[i, j] += eps
                am[i, j] -= eps
                fp = (geodesic_mix(ap.float(), b.float(), 0.35, check=False) * w).sum().double()
                fm = (geodesic_mix(am.float(), b.float(), 0.35, check=False) * w).sum().double()
                num[i, j] = (fp - fm) / (2 * eps)
    torch.testing.assert_close(a.grad, num, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("mix", [geodesic_mix, linear_mix])
def test_bad_inputs_raise_value_error(mix):
    a, b = _unit(4, 3, 14), _unit(4, 3, 15)
    with pytest.raises(ValueError, match=r"b.shape=\(3, 3\).*allowed the shape of a"):
        mix(a, b[:3], 0.5)
    with pytest.raises(ValueError, match=r"a.shape=\(12,\).*2-D"):
        mix(a.reshape(-1), b.reshape(-1), 0.5)
    with pytest.raises(ValueError, match=r"lam=1.5.*\[0, 1\]"):
        mix(a, b, 1.5)
    with pytest.raises(ValueError, match=r"lam=-0.1.*\[0, 1\]"):
        mix(a, b, -0.1)
    with pytest.raises(ValueError, match=r"lam=nan"):
        mix(a, b, float("nan"))
    with pytest.raises(ValueError, match=r"lam=2.0 is invalid: allowed values in \[0, 1\]"):
        mix(a, b, torch.tensor([0.1, 2.0, 0.3, 0.4]))
    with pytest.raises(ValueError, match=r"lam.shape=\(3,\)"):
        mix(a, b, torch.tensor([0.1, 0.2, 0.3]))
    bad = a.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"a has 1 non-finite value"):
        mix(bad, b, 0.5)
    bad = b.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"b has 1 non-finite value"):
        mix(a, bad, 0.5)
    with pytest.raises(ValueError, match=r"dtype=torch.int64"):
        mix(a.long(), b.long(), 0.5)
