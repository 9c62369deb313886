"""geomix.losses: functional terms against independent numpy references, parity and properties."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import open_clip
import pytest
import torch

from geomix import losses as L
from geomix.sphere import normalize

# ----------------------------------------------------------------------------------------------------------
# independent references: dense numpy, written from docs/losses.md (explicit n×n targets, plain slerp)


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
    """L-Mix in the earlier form (Y on I·T̃ᵀ), which agrees with docs/losses.md for involutions."""
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


# ----------------------------------------------------------------------------------------------------------
# MixLoss


from geomix.config import LambdaConfig, LossConfig, MixConfig, from_dict  # noqa: E402
from geomix.mixing import random_derangement, sample_beta  # noqa: E402


def _fixed(v: float) -> LambdaConfig:
    return LambdaConfig(policy="fixed", value=v)


ALL_W = dict(w_m2=0.3, w_v=0.2, w_l=0.1, w_vl=0.4)


def test_mixloss_composes_terms_with_weights_and_decay():
    img, txt = _batch(6, 8, 20)
    mix = MixConfig(m2=_fixed(0.3), v=_fixed(0.6), l=_fixed(0.8), vl=_fixed(0.5))
    rev = torch.arange(5, -1, -1)
    s = torch.tensor(9.0)
    expect = {
        "clip": L.clip_loss(img, txt, s),
        "m2": L.m2_mix_loss(img, txt, 0.3, s),
        "v": L.v_mix_loss(img, txt, 0.6, rev, s),
        "l": L.l_mix_loss(img, txt, 0.8, rev, s),
        "vl": L.vl_mix_loss(img, txt, 0.5, rev, s),
    }
    for decay, epoch, factor in (("constant", 3, 1.0), ("inverse_epoch", 0, 1.0), ("inverse_epoch", 3, 0.25)):
        loss = L.MixLoss(LossConfig(decay=decay, **ALL_W), mix)
        total, terms = loss(img, txt, s, epoch=epoch, step=0, total_steps=10)
        for k, v in expect.items():
            assert abs(terms[k].item() - v.item()) < 1e-6, k
        ref = expect["clip"] + factor * sum(ALL_W[f"w_{k}"] * expect[k] for k in ("m2", "v", "l", "vl"))
        assert abs(total.item() - ref.item()) < 1e-6
        lams = [terms[f"lam_{k}"].item() for k in ("m2", "v", "l", "vl")]
        assert lams == pytest.approx([0.3, 0.6, 0.8, 0.5])


def test_mixloss_only_active_terms_and_ft_equals_clip():
    img, txt = _batch(5, 4, 21)
    total, terms = L.MixLoss(LossConfig(), MixConfig())(img, txt, 3.0, epoch=0, step=0, total_steps=1)
    assert set(terms) == {"clip"}
    assert abs(total.item() - L.clip_loss(img, txt, 3.0).item()) < 1e-7
    _, terms = L.MixLoss(LossConfig(w_m2=0.1), MixConfig())(img, txt, 3.0, epoch=0, step=0, total_steps=1)
    assert set(terms) == {"clip", "m2", "lam_m2"}


def test_mixloss_beta_draws_and_random_partners_follow_the_seeded_generator():
    img, txt = _batch(7, 6, 22)
    loss = L.MixLoss(LossConfig(w_v=1.0, w_vl=1.0), MixConfig(partner="random"), generator_seed=5)
    g = torch.Generator().manual_seed(5)
    for step in range(3):
        total, terms = loss(img, txt, 4.0, epoch=0, step=step, total_steps=3)
        perm = random_derangement(7, g)
        lam_v = sample_beta(g, 0.2, 0.2)
        lam_vl = sample_beta(g, 1.0, 1.0)
        assert terms["lam_v"].item() == pytest.approx(lam_v, abs=1e-7)
        assert terms["lam_vl"].item() == pytest.approx(lam_vl, abs=1e-7)
        assert abs(terms["v"].item() - L.v_mix_loss(img, txt, lam_v, perm, 4.0).item()) < 1e-6
        assert abs(terms["vl"].item() - L.vl_mix_loss(img, txt, lam_vl, perm, 4.0).item()) < 1e-6


def test_mixloss_fixed_tau_and_m2_tau():
    img, txt = _batch(6, 5, 23)
    loss = L.MixLoss(LossConfig(w_m2=1.0, tau=0.1, m2_tau=0.5), MixConfig(m2=_fixed(0.4)))
    total, terms = loss(img, txt, torch.tensor(123.0), epoch=0, step=0, total_steps=1)  # scale ignored
    assert abs(terms["clip"].item() - L.clip_loss(img, txt, 10.0).item()) < 1e-6
    assert abs(terms["m2"].item() - L.m2_mix_loss(img, txt, 0.4, 2.0).item()) < 1e-6
    total2, _ = loss(img, txt, None, epoch=0, step=1, total_steps=2)
    assert total2.item() == total.item()


def test_mixloss_gradients_reach_both_encoders_and_scale():
    img, txt = _batch(6, 5, 24)
    img.requires_grad_(True)
    txt.requires_grad_(True)
    s = torch.tensor(5.0, requires_grad=True)
    total, _ = L.MixLoss(LossConfig(**ALL_W), MixConfig())(img, txt, s, epoch=0, step=0, total_steps=1)
    total.backward()
    assert all(torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0 for x in (img, txt, s))


def _run_steps(loss, batches, steps, start=0, total_steps=10):
    out = []
    for k in range(start, start + steps):
        img, txt = batches[k]
        total, terms = loss(img, txt, 6.0, epoch=k // 3, step=k, total_steps=total_steps)
        out.append((total.item(), {key: v.item() for key, v in terms.items()}))
    return out


def _mixed_cfgs():
    loss_cfg = LossConfig(decay="inverse_epoch", **ALL_W)
    mix_cfg = MixConfig(
        partner="random",
        m2=LambdaConfig(policy="progressive", sigma=0.1, n_projections=8),
        v=LambdaConfig(policy="history", alpha=0.5, momentum=0.7),
        l=LambdaConfig(policy="beta", alpha=0.4, beta=0.9),
        vl=_fixed(0.35),
    )
    return loss_cfg, mix_cfg


def test_mixloss_same_seed_identical_different_seed_differs():
    batches = [_batch(8, 6, 30 + k) for k in range(4)]
    loss_cfg, mix_cfg = _mixed_cfgs()
    a = _run_steps(L.MixLoss(loss_cfg, mix_cfg, generator_seed=1), batches, 4)
    b = _run_steps(L.MixLoss(loss_cfg, mix_cfg, generator_seed=1), batches, 4)
    c = _run_steps(L.MixLoss(loss_cfg, mix_cfg, generator_seed=2), batches, 4)
    assert a == b  # bit-identical floats
    assert [x[1]["lam_l"] for x in a] != [x[1]["lam_l"] for x in c]
    prog = a[-1][1]
    assert {"lam_m2", "lam_m2_base", "lam_m2_q", "lam_m2_d_a", "lam_m2_d_b", "lam_v_draw"} <= set(prog)


@pytest.mark.parametrize("partner", ["random", "history"])
def test_mixloss_state_dict_resume_is_bit_exact(partner, tmp_path):
    batches = [_batch(8, 6, 40 + k) for k in range(6)]
    loss_cfg, mix_cfg = _mixed_cfgs()
    mix_cfg = MixConfig(**{**mix_cfg.__dict__, "partner": partner})
    ref_loss = L.MixLoss(loss_cfg, mix_cfg, generator_seed=3)
    ref = _run_steps(ref_loss, batches, 6)
    first = L.MixLoss(loss_cfg, mix_cfg, generator_seed=3)
    _run_steps(first, batches, 3)
    torch.save(first.state_dict(), tmp_path / "loss.pt")
    resumed = L.MixLoss(loss_cfg, mix_cfg, generator_seed=999)  # the seed is overwritten by the state
    resumed.load_state_dict(torch.load(tmp_path / "loss.pt", weights_only=True))
    assert _run_steps(resumed, batches, 3, start=3) == ref[3:]


def test_mixloss_history_partner_uses_previous_step_embeddings():
    (i1, t1), (i2, t2) = _batch(4, 3, 50), _batch(4, 3, 51)
    loss = L.MixLoss(
        LossConfig(w_v=1.0, w_vl=1.0), MixConfig(partner="history", v=_fixed(0.6), vl=_fixed(0.7))
    )
    _, terms1 = loss(i1, t1, 2.0, epoch=0, step=0, total_steps=2)
    rev = torch.arange(3, -1, -1)  # first step: no memory yet, falls back to reverse
    assert abs(terms1["v"].item() - L.v_mix_loss(i1, t1, 0.6, rev, 2.0).item()) < 1e-6
    _, terms2 = loss(i2, t2, 2.0, epoch=0, step=1, total_steps=2)
    I, T, HI, HT = (x.double().numpy() for x in (i2, t2, i1, t1))
    lam, s, n = 0.6, 2.0, 4
    im = _np_slerp(I, HI, lam)
    y = np.hstack([lam * np.eye(n), (1 - lam) * np.eye(n)])  # image->text over [T; HT]
    w = np.vstack([lam * np.eye(n), (1 - lam) * np.eye(n)])  # text rows [T; HT] -> mixed images
    to_a = 2 * _np_ce(s * np.vstack([T, HT]) @ im.T, w)  # CE averages over 2n rows; the term over n
    ref_v = 0.5 * (_np_ce(s * im @ np.vstack([T, HT]).T, y) + to_a)
    assert abs(terms2["v"].item() - ref_v) < 1e-6
    ref_vl = _ref_vl_hist(I, T, HI, HT, 0.7, s)
    assert abs(terms2["vl"].item() - ref_vl) < 1e-6


def _ref_vl_hist(i, t, hi, ht, lam, s):
    im, tm = _np_slerp(i, hi, lam), _np_slerp(t, ht, lam)
    eye = np.eye(len(i))
    return 0.5 * (_np_ce(s * im @ tm.T, eye) + _np_ce(s * tm @ im.T, eye))


def test_mixloss_nonfinite_raises_named_error():
    img, txt = _batch(4, 3, 60)
    loss = L.MixLoss(LossConfig(w_m2=0.5), MixConfig())
    bad = img.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(L.NonFiniteLossError, match=r"'clip' is non-finite at step 17") as info:
        loss(bad, txt, 2.0, epoch=0, step=17, total_steps=20)
    assert isinstance(info.value, FloatingPointError) and info.value.term == "clip" and info.value.step == 17
    with pytest.raises(L.NonFiniteLossError, match=r"step 3"):
        loss(img, txt, torch.tensor(float("inf")), epoch=0, step=3, total_steps=20)


def test_mixloss_bad_values_raise_value_error():
    img, txt = _batch(4, 3, 61)
    ok = L.MixLoss(LossConfig(w_v=1.0), MixConfig())
    with pytest.raises(ValueError, match=r"n=1 is invalid: allowed n >= 2"):
        ok(img[:1], txt[:1], 2.0, epoch=0, step=0, total_steps=1)
    with pytest.raises(ValueError, match=r"txt.shape=\(3, 3\)"):
        ok(img, txt[:3], 2.0, epoch=0, step=0, total_steps=1)
    with pytest.raises(ValueError, match=r"scale=-2.0 is invalid"):
        ok(img, txt, -2.0, epoch=0, step=0, total_steps=1)
    with pytest.raises(ValueError, match=r"total_steps=0 is invalid"):
        ok(img, txt, 2.0, epoch=0, step=0, total_steps=0)
    # Configs are validated when they are built, so a bad one never reaches MixLoss; the error names the key
    # (a LambdaConfig built on its own says `lambda.<field>`; built from a mapping, its place).
    with pytest.raises(ValueError, match=r"loss.w_m2=-0.1 is invalid"):
        LossConfig(w_m2=-0.1)
    with pytest.raises(ValueError, match=r"loss.tau=0.0 is invalid"):
        LossConfig(tau=0.0)
    with pytest.raises(ValueError, match=r"loss.m2_tau=-1.0 is invalid"):
        LossConfig(m2_tau=-1.0)
    with pytest.raises(ValueError, match=r"lambda.alpha=0.0 is invalid"):
        LambdaConfig(alpha=0.0)
    with pytest.raises(ValueError, match=r"mix.v.alpha=0.0 is invalid"):
        from_dict(MixConfig, {"v": {"alpha": 0.0}}, prefix="mix")
    with pytest.raises(ValueError, match=r"mix.partner='nearest' is invalid: allowed one of"):
        MixConfig(partner="nearest")
    with pytest.raises(ValueError, match=r"mix.geometry='cubic' is invalid"):
        MixConfig(geometry="cubic")
    with pytest.raises(ValueError, match=r"mix.m2.policy='cosine' is invalid"):
        from_dict(MixConfig, {"m2": {"policy": "cosine"}}, prefix="mix")
    with pytest.raises(ValueError, match=r"loss.w_m3=1.0 is invalid: allowed a registered mix term"):
        LossConfig(w_m3=1.0)
    # dataclasses.replace constructs, so it validates too
    with pytest.raises(ValueError, match=r"loss.w_v=-1.0 is invalid"):
        dataclasses.replace(LossConfig(w_v=1.0), w_v=-1.0)
    with pytest.raises(ValueError, match=r"loss.kind='imix' is invalid for MixLoss"):
        L.MixLoss(LossConfig(kind="imix"), MixConfig())
    with pytest.raises(ValueError, match=r"rank=2 is invalid"):
        L.MixLoss(LossConfig(), MixConfig(), rank=2, world_size=2)
    with pytest.raises(RuntimeError, match=r"world_size=2 but torch.distributed is not initialised"):
        L.MixLoss(LossConfig(), MixConfig(), world_size=2)(img, txt, 2.0, epoch=0, step=0, total_steps=1)


def test_mixloss_linear_geometry():
    img, txt = _batch(6, 5, 62)
    loss = L.MixLoss(LossConfig(w_m2=1.0), MixConfig(geometry="linear", m2=_fixed(0.3)))
    _, terms = loss(img, txt, 3.0, epoch=0, step=0, total_steps=1)
    assert abs(terms["m2"].item() - L.m2_mix_loss(img, txt, 0.3, 3.0, geometry="linear").item()) < 1e-6


# ----------------------------------------------------------------------------------------------------------
# InputMixLoss


@pytest.mark.parametrize("kind", ["imix", "unmix"])
def test_input_mix_loss_module(kind, tmp_path):
    pixels = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    mod = L.InputMixLoss(LossConfig(kind=kind, input_alpha=0.7), generator_seed=4)
    batch = mod.mix(pixels)
    again = L.mix_inputs(pixels, torch.Generator().manual_seed(4), kind=kind, alpha=0.7)
    assert torch.equal(batch.pixels, again.pixels)
    img, txt = _batch(6, 5, 70)
    mixed, _ = _batch(6, 5, 71)
    total, terms = mod(img, mixed, txt, batch, 3.0, step=0)
    if kind == "imix":
        ref = L.imix_loss(mixed, txt, batch.lam, batch.perm, 3.0)
        assert set(terms) == {"imix", "lam_imix"}
    else:
        ref = L.unmix_loss(img, mixed, txt, batch.lam[0].item(), batch.perm, 3.0)
        assert abs(terms["clip"].item() - L.clip_loss(img, txt, 3.0).item()) < 1e-6
    assert abs(total.item() - ref.item()) < 1e-6
    torch.save(mod.state_dict(), tmp_path / "m.pt")
    nxt = mod.mix(pixels)
    other = L.InputMixLoss(LossConfig(kind=kind, input_alpha=0.7), generator_seed=0)
    other.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert torch.equal(other.mix(pixels).lam, nxt.lam)
    with pytest.raises(ValueError, match=r"loss.kind='contrastive' is invalid for InputMixLoss"):
        L.InputMixLoss(LossConfig())
