"""geomix.losses: functional terms against independent numpy references, parity and properties."""

from __future__ import annotations

import math

import numpy as np
import open_clip
import pytest
import torch

from geomix import losses as L
from geomix.sphere import normalize

# ----------------------------------------------------------------------------------------------------------
# independent references: dense numpy, written from losses.md (explicit n×n targets, plain slerp)


def _np_slerp(a: np.ndarray, b: np.ndarray, lam) -> np.ndarray:
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), (a.shape[0],))
    out = np.empty_like(a)
    for k in range(a.shape[0]):
        th = math.acos(max(-1.0, min(1.0, float(a[k] @ b[k]))))
        if th < 1e-9:
            v = lam[k] * a[k] + (1 - lam[k]) * b[k]
        else:
            v = (math.sin(lam[k] * th) * a[k] + math.sin((1 - lam[k]) * th) * b[k]) / math.sin(th)
        out[k] = v / np.linalg.norm(v)
    return out


def _np_ce(z: np.ndarray, y: np.ndarray) -> float:
    """CE(Z, Y) = mean_i -Σ_j Y_ij log_softmax(Z_i)_j."""
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-(y * logp).sum(axis=1).mean())


def _np_perm_matrix(perm) -> np.ndarray:
    p = np.zeros((len(perm), len(perm)))
    p[np.arange(len(perm)), perm] = 1.0
    return p


def _angles(*th: float) -> np.ndarray:
    return np.array([[math.cos(t), math.sin(t)] for t in th])


# The 3×2 example: n = 3 (odd), d = 2, unit rows given by their angles.
I3 = _angles(0.1, 1.0, 2.0)
T3 = _angles(0.5, 1.3, 2.9)
S = 2.0
LAM = 0.7
REV = [2, 1, 0]
CYC = [1, 2, 0]  # a derangement that is not an involution


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def _ref_clip(i, t, s):
    eye = np.eye(len(i))
    return 0.5 * (_np_ce(s * i @ t.T, eye) + _np_ce(s * t @ i.T, eye))


def _ref_m2(i, t, lam, s):
    m = _np_slerp(i, t, lam)
    a, b = s * i @ m.T, s * t @ m.T
    np.fill_diagonal(a, s * (i * t).sum(1))
    np.fill_diagonal(b, s * (t * i).sum(1))
    eye = np.eye(len(i))
    return 0.5 * (_np_ce(a, eye) + _np_ce(b, eye))


def _ref_v(i, t, lam, perm, s):
    im = _np_slerp(i, i[perm], lam)
    y = lam * np.eye(len(i)) + (1 - lam) * _np_perm_matrix(perm)
    return 0.5 * (_np_ce(s * im @ t.T, y) + _np_ce(s * t @ im.T, y.T))


def _ref_l_page(i, t, lam, perm, s):
    """L-Mix exactly as losses.md writes it (Y on I·T̃ᵀ)."""
    tm = _np_slerp(t, t[perm], lam)
    y = lam * np.eye(len(i)) + (1 - lam) * _np_perm_matrix(perm)
    return 0.5 * (_np_ce(s * i @ tm.T, y) + _np_ce(s * tm @ i.T, y.T))


def _ref_vl(i, t, lam, perm, s):
    im, tm = _np_slerp(i, i[perm], lam), _np_slerp(t, t[perm], lam)
    eye = np.eye(len(i))
    return 0.5 * (_np_ce(s * im @ tm.T, eye) + _np_ce(s * tm @ im.T, eye))


def _ref_imix(im, t, lam, perm, s):
    y = np.diag(lam) + np.diag(1 - lam) @ _np_perm_matrix(perm)
    yt = y.T / y.T.sum(axis=1, keepdims=True)
    return 0.5 * (_np_ce(s * im @ t.T, y) + _np_ce(s * t @ im.T, yt))


def _ref_unmix(i, im, t, lam, perm, s):
    return (
        _ref_clip(i, t, s)
        + lam * _np_ce(s * im @ t.T, np.eye(len(i)))
        + (1 - lam) * _np_ce(s * im @ t.T, _np_perm_matrix(perm))
    )


# ----------------------------------------------------------------------------------------------------------
# hand-computed 3×2 values


def test_reference_slerp_is_itself_correct_on_the_example():
    # Independent sanity of the reference: in 2-D the slerp of angles α, β is the angle λα + (1-λ)β.
    m = _np_slerp(I3, T3, LAM)
    expect = _angles(*(LAM * np.array([0.1, 1.0, 2.0]) + (1 - LAM) * np.array([0.5, 1.3, 2.9])))
    np.testing.assert_allclose(m, expect, atol=1e-12)


def test_clip_hand_computed():
    # Fully by hand for row 0 of the image->text direction, to pin the reference itself.
    z0 = S * np.array([math.cos(0.1 - 0.5), math.cos(0.1 - 1.3), math.cos(0.1 - 2.9)])
    row0 = -(z0[0] - math.log(sum(math.exp(v) for v in z0)))
    z = S * I3 @ T3.T
    assert abs(row0 - (-(z[0, 0] - math.log(np.exp(z[0]).sum())))) < 1e-12
    got = L.clip_loss(_t(I3), _t(T3), S)
    assert got.shape == () and got.dtype == torch.float32
    assert abs(got.item() - _ref_clip(I3, T3, S)) < 1e-6


@pytest.mark.parametrize("perm", [REV, CYC])
def test_every_term_hand_computed_3x2(perm):
    i, t, p = _t(I3), _t(T3), torch.tensor(perm)
    assert abs(L.m2_mix_loss(i, t, LAM, S).item() - _ref_m2(I3, T3, LAM, S)) < 1e-6
    assert abs(L.v_mix_loss(i, t, LAM, p, S).item() - _ref_v(I3, T3, LAM, perm, S)) < 1e-6
    assert abs(L.vl_mix_loss(i, t, LAM, p, S).item() - _ref_vl(I3, T3, LAM, perm, S)) < 1e-6
    # L-Mix is V-Mix with the modalities swapped (the mixed side carries Y).
    assert abs(L.l_mix_loss(i, t, LAM, p, S).item() - _ref_v(T3, I3, LAM, perm, S)) < 1e-6
    if perm == REV:  # for an involutive π this is also literally the page's formula
        assert abs(L.l_mix_loss(i, t, LAM, p, S).item() - _ref_l_page(I3, T3, LAM, perm, S)) < 1e-6
    lam_i = np.array([0.9, 0.6, 0.75])
    got = L.imix_loss(i, t, torch.tensor(lam_i), p, S)
    assert abs(got.item() - _ref_imix(I3, T3, lam_i, perm, S)) < 1e-6
    im = _t(_angles(0.3, 1.6, 2.2))
    got = L.unmix_loss(i, im, t, LAM, p, S)
    assert abs(got.item() - _ref_unmix(I3, _angles(0.3, 1.6, 2.2), T3, LAM, perm, S)) < 1e-6


def test_linear_geometry_hand_computed():
    lin = (LAM * I3 + (1 - LAM) * T3) / np.linalg.norm(LAM * I3 + (1 - LAM) * T3, axis=1, keepdims=True)
    a, b = S * I3 @ lin.T, S * T3 @ lin.T
    np.fill_diagonal(a, S * (I3 * T3).sum(1))
    np.fill_diagonal(b, S * (I3 * T3).sum(1))
    ref = 0.5 * (_np_ce(a, np.eye(3)) + _np_ce(b, np.eye(3)))
    got = L.m2_mix_loss(_t(I3), _t(T3), LAM, S, geometry="linear")
    assert abs(got.item() - ref) < 1e-6
    assert abs(got.item() - L.m2_mix_loss(_t(I3), _t(T3), LAM, S).item()) > 1e-4


# ----------------------------------------------------------------------------------------------------------
# parity and properties on random batches


def _batch(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return normalize(torch.randn(n, d, generator=g)), normalize(torch.randn(n, d, generator=g))


@pytest.mark.parametrize("n", [2, 7, 16])
def test_clip_loss_matches_open_clip(n):
    img, txt = _batch(n, 12, n)
    scale = torch.tensor(14.3)
    ref = open_clip.loss.ClipLoss()(img, txt, scale)
    got = L.clip_loss(img, txt, scale)
    assert abs(got.item() - ref.item()) < 1e-6
    # gradients too (through features and a learnable scale)
    i1, t1, s1 = img.clone().requires_grad_(), txt.clone().requires_grad_(), scale.clone().requires_grad_()
    i2, t2, s2 = img.clone().requires_grad_(), txt.clone().requires_grad_(), scale.clone().requires_grad_()
    L.clip_loss(i1, t1, s1).backward()
    open_clip.loss.ClipLoss()(i2, t2, s2).backward()
    for a, b in ((i1, i2), (t1, t2), (s1, s2)):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("fn", [L.v_mix_loss, L.l_mix_loss, L.vl_mix_loss])
@pytest.mark.parametrize("geometry", ["geodesic", "linear"])
def test_uni_and_vl_mix_with_lambda_one_equal_clip(fn, geometry):
    img, txt = _batch(9, 8, 1)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    clip = L.clip_loss(img, txt, 10.0)
    got = fn(img, txt, 1.0, perm, 10.0, geometry=geometry)
    assert abs(got.item() - clip.item()) < 1e-5


def test_m2_with_lambda_zero_puts_texts_off_diagonal():
    # λ = 0: M = T, so A = s·I·Tᵀ (the CLIP image->text logits) and B = s·T·Tᵀ with diagonal s·T_i·I_i.
    img, txt = _batch(6, 5, 2)
    s = 7.0
    a = s * img @ txt.T
    b = s * txt @ txt.T
    b.diagonal().copy_(s * (img * txt).sum(-1))
    ref = 0.5 * (
        torch.nn.functional.cross_entropy(a, torch.arange(6))
        + torch.nn.functional.cross_entropy(b, torch.arange(6))
    )
    assert abs(L.m2_mix_loss(img, txt, 0.0, s).item() - ref.item()) < 1e-5


def test_terms_run_in_float32_under_autocast_and_low_precision():
    img, txt = _batch(8, 16, 3)
    perm = torch.arange(7, -1, -1)
    ref = L.v_mix_loss(img, txt, 0.4, perm, 5.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = L.v_mix_loss(img, txt, 0.4, perm, 5.0)
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) < 1e-6
    half = L.m2_mix_loss(img.bfloat16(), txt.bfloat16(), 0.4, 5.0)
    assert half.dtype == torch.float32
    assert abs(half.item() - L.m2_mix_loss(img, txt, 0.4, 5.0).item()) < 5e-2


@pytest.mark.parametrize("fn", ["m2", "v", "l", "vl"])
def test_gradients_finite_with_duplicate_and_antipodal_rows(fn):
    img, txt = _batch(5, 4, 4)
    img = img.clone()
    img[1] = img[0]  # V-Mix partner equal to itself under some π
    txt = txt.clone()
    txt[2] = img[2]  # m² mixes an image with an identical caption
    txt[3] = -img[3]  # and with an antipodal one
    img.requires_grad_(True)
    txt.requires_grad_(True)
    perm = torch.tensor([1, 0, 4, 2, 3])
    scale = torch.tensor(20.0, requires_grad=True)
    if fn == "m2":
        loss = L.m2_mix_loss(img, txt, 0.5, scale)
    else:
        loss = getattr(L, f"{fn}_mix_loss")(img, txt, 0.5, perm, scale)
    loss.backward()
    assert torch.isfinite(loss)
    for x in (img, txt, scale):
        assert torch.isfinite(x.grad).all()
    assert img.grad.abs().sum() > 0 and txt.grad.abs().sum() > 0 and scale.grad.abs() > 0


def test_imix_per_sample_lambda_with_fixed_points():
    img, txt = _batch(5, 6, 5)
    perm = torch.tensor([0, 2, 1, 4, 3])  # 0 is a fixed point
    lam = torch.tensor([0.5, 0.9, 0.6, 0.7, 0.55])
    got = L.imix_loss(img, txt, lam, perm, 3.0)
    ref = _ref_imix(img.double().numpy(), txt.double().numpy(), lam.double().numpy(), perm.tolist(), 3.0)
    assert abs(got.item() - ref) < 1e-5


def test_mix_inputs_imix_and_unmix():
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    b = L.mix_inputs(x, torch.Generator().manual_seed(1), kind="imix", alpha=1.0)
    assert b.pixels.shape == x.shape and b.lam.shape == (6,) and b.perm.shape == (6,)
    assert (b.lam >= 0.5).all() and (b.lam <= 1).all() and len(set(b.lam.tolist())) == 6
    assert sorted(b.perm.tolist()) == list(range(6))
    for k in range(6):
        expect = b.lam[k] * x[k] + (1 - b.lam[k]) * x[b.perm[k]]
        torch.testing.assert_close(b.pixels[k], expect)
    again = L.mix_inputs(x, torch.Generator().manual_seed(1), kind="imix", alpha=1.0)
    assert torch.equal(again.pixels, b.pixels) and torch.equal(again.perm, b.perm)
    other = L.mix_inputs(x, torch.Generator().manual_seed(2), kind="imix", alpha=1.0)
    assert not torch.equal(other.lam, b.lam)
    u = L.mix_inputs(x, torch.Generator().manual_seed(1), kind="unmix", alpha=1.0)
    assert u.perm.tolist() == [5, 4, 3, 2, 1, 0]
    assert len(set(u.lam.tolist())) == 1 and 0 <= u.lam[0] <= 1
    torch.testing.assert_close(u.pixels[0], u.lam[0] * x[0] + (1 - u.lam[0]) * x[5])


def test_functional_bad_inputs_raise_value_error():
    img, txt = _batch(4, 3, 6)
    perm = torch.tensor([3, 2, 1, 0])
    with pytest.raises(ValueError, match=r"txt.shape=\(3, 3\).*allowed the shape of img"):
        L.clip_loss(img, txt[:3], 1.0)
    with pytest.raises(ValueError, match=r"n=1 is invalid: allowed n >= 2"):
        L.clip_loss(img[:1], txt[:1], 1.0)
    with pytest.raises(ValueError, match=r"scale=0.0 is invalid"):
        L.clip_loss(img, txt, 0.0)
    with pytest.raises(ValueError, match=r"scale=-1.0 is invalid"):
        L.clip_loss(img, txt, torch.tensor(-1.0))
    with pytest.raises(ValueError, match=r"lam=1.2 is invalid: allowed a finite number in \[0, 1\]"):
        L.v_mix_loss(img, txt, 1.2, perm, 1.0)
    with pytest.raises(ValueError, match=r"lam=-0.5"):
        L.m2_mix_loss(img, txt, torch.tensor(-0.5), 1.0)
    with pytest.raises(ValueError, match=r"perm=\[0, 0, 1, 2\] is invalid: allowed a permutation of 0..3"):
        L.vl_mix_loss(img, txt, 0.5, torch.tensor([0, 0, 1, 2]), 1.0)
    with pytest.raises(ValueError, match=r"perm=\(3,\) is invalid"):
        L.l_mix_loss(img, txt, 0.5, torch.tensor([0, 1, 2]), 1.0)
    with pytest.raises(ValueError, match=r"geometry='cubic' is invalid: allowed one of 'geodesic', 'linear'"):
        L.v_mix_loss(img, txt, 0.5, perm, 1.0, geometry="cubic")
    bad = img.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"img has 1 non-finite"):
        L.m2_mix_loss(bad, txt, 0.5, 1.0)
    with pytest.raises(ValueError, match=r"kind='mixup' is invalid"):
        L.mix_inputs(torch.zeros(4, 3), torch.Generator(), kind="mixup")
    with pytest.raises(ValueError, match=r"alpha=0.0 is invalid"):
        L.mix_inputs(torch.zeros(4, 3), torch.Generator(), kind="imix", alpha=0.0)
    with pytest.raises(ValueError, match=r"n=1 is invalid"):
        L.mix_inputs(torch.zeros(1, 3), torch.Generator(), kind="unmix")
