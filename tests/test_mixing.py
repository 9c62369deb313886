"""geomix.mixing: λ policies, partner policies, Wasserstein estimators."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geomix import mixing as M
from geomix import partners
from geomix.config import LAMBDA_POLICIES, PARTNER_POLICIES, LambdaConfig, build_config


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _draws(policy: M.LambdaPolicy, seed: int, k: int = 20, total: int = 20) -> list[float]:
    g = _g(seed)
    return [policy.sample(g, step=s, total_steps=total) for s in range(k)]


# ----------------------------------------------------------------------------------------------------------
# λ policies


def test_factory_builds_each_policy():
    assert isinstance(M.build_lambda_policy(LambdaConfig(policy="beta")), M.BetaLambda)
    assert isinstance(M.build_lambda_policy(LambdaConfig(policy="fixed", value=0.3)), M.FixedLambda)
    assert isinstance(M.build_lambda_policy(LambdaConfig(policy="progressive")), M.ProgressiveLambda)
    assert isinstance(M.build_lambda_policy(LambdaConfig(policy="history")), M.HistoryLambda)


def test_every_config_policy_name_builds_the_policy_of_that_name():
    # the names come from the config's Literal types; a name added there without a policy must fail here
    assert all(M.build_lambda_policy(LambdaConfig(policy=p)).name == p for p in LAMBDA_POLICIES)
    assert all(M.build_partner_policy(p).name == p for p in PARTNER_POLICIES)


def test_partner_policies_are_reexported_from_mixing():
    for name in partners.__all__:
        assert getattr(M, name) is getattr(partners, name), name
        assert name in M.__all__


def test_built_policy_uses_the_config_values():
    beta = M.build_lambda_policy(LambdaConfig(policy="beta", alpha=0.7))
    assert (beta.alpha, beta.beta) == (0.7, 0.7)  # beta=None is the symmetric Beta(α, α)
    hist = M.build_lambda_policy(LambdaConfig(policy="history", alpha=2.0, beta=3.0, momentum=0.25))
    u = M.sample_beta(_g(5), 2.0, 3.0)
    assert hist.sample(_g(5), step=0, total_steps=1) == pytest.approx(0.25 * 0.4 + 0.75 * u, abs=1e-15)
    prog = M.build_lambda_policy(
        LambdaConfig(policy="progressive", temperature=0.3, sigma=0.1, n_projections=8), seed=4
    )
    assert (prog.temperature, prog.sigma, prog.n_projections, prog.seed) == (0.3, 0.1, 8, 4)


def test_beta_draws_are_seeded_in_range_and_follow_the_distribution():
    p = M.build_lambda_policy(LambdaConfig(policy="beta", alpha=2.0, beta=5.0))
    a, b = _draws(p, 1), _draws(p, 1)
    assert a == b  # bit-identical for the same seed
    assert a != _draws(p, 2)
    assert all(0.0 <= x <= 1.0 for x in a)
    many = np.array(_draws(p, 3, k=4000))
    assert abs(many.mean() - 2 / 7) < 0.01  # Beta(2, 5) mean
    sym = np.array(_draws(M.BetaLambda(0.2), 4, k=4000))
    assert abs(sym.mean() - 0.5) < 0.03 and (np.minimum(sym, 1 - sym) < 0.05).mean() > 0.4  # U-shaped


def test_fixed_returns_value_and_consumes_no_randomness():
    p = M.FixedLambda(0.25)
    g = _g(0)
    before = g.get_state()
    assert [p.sample(g, step=s, total_steps=5) for s in range(5)] == [0.25] * 5
    assert torch.equal(before, g.get_state())
    assert p.stats() == {"lam": 0.25}


def test_history_lambda_is_an_ema_of_beta_draws():
    p = M.HistoryLambda(1.0, 3.0, momentum=0.5)
    g, g_ref = _g(7), _g(7)
    ema = 0.25  # α/(α+β)
    for s in range(10):
        lam = p.sample(g, step=s, total_steps=10)
        u = M.sample_beta(g_ref, 1.0, 3.0)
        ema = 0.5 * ema + 0.5 * u
        assert lam == pytest.approx(ema, abs=1e-15)
        assert p.stats() == {"lam": lam, "lam_draw": u}
    state = p.state_dict()
    q = M.HistoryLambda(1.0, 3.0, momentum=0.5)
    q.load_state_dict(state)
    g2 = _g(99)
    g2.set_state(g.get_state())
    assert q.sample(g2, step=10, total_steps=20) == p.sample(g, step=10, total_steps=20)


def _hand_progressive(distances, total, temperature, lam0=0.0):
    lam, out = lam0, []
    for n, (d_a, d_b) in enumerate(distances, start=1):
        q = math.exp(-d_a / ((d_a + d_b + 1e-8) * temperature))
        lam = n * (1 - q) / total + q * lam
        out.append((lam, q))
    return out


def test_progressive_matches_hand_computed_sequence_sigma_zero():
    total, temp = 6, 0.5
    distances = [(0.2, 0.8), (0.5, 0.5), (0.9, 0.1), (0.3, 0.3), (0.1, 0.4), (0.6, 0.2)]
    # Hand-worked first step: q = exp(-0.2 / (1.0 · 0.5)) = exp(-0.4), λ_1 = (1 - q)/6.
    assert _hand_progressive(distances, total, temp)[0][0] == pytest.approx(
        (1 - math.exp(-0.4)) / 6, rel=1e-7
    )
    p = M.ProgressiveLambda(temperature=temp, sigma=0.0)
    g = _g(0)
    expect = _hand_progressive(distances, total, temp)
    for step, ((d_a, d_b), (lam, q)) in enumerate(zip(distances, expect)):
        p.observe_distances(d_a, d_b)
        got = p.sample(g, step=step, total_steps=total)
        assert got == pytest.approx(lam, abs=1e-12)
        st = p.stats()
        assert st["lam"] == got and st["lam_base"] == pytest.approx(lam, abs=1e-12)
        assert st["q"] == pytest.approx(q, abs=1e-12)
        assert (st["d_a"], st["d_b"]) == (d_a, d_b)
    # At the last step n = N and λ_N = (1-q) + q·λ_{N-1}: a convex combination that reaches 1 only as q→0.
    assert expect[-1][0] < 1.0


def test_progressive_with_sigma_perturbs_from_the_generator_and_clamps():
    total, temp, sigma = 4, 0.05, 0.6
    distances = [(0.1, 0.9), (0.4, 0.6), (0.5, 0.5), (0.9, 0.1)]
    p = M.ProgressiveLambda(temperature=temp, sigma=sigma)
    g, g_ref = _g(3), _g(3)
    clamped = 0
    for step, ((d_a, d_b), (lam, _)) in enumerate(zip(distances, _hand_progressive(distances, total, temp))):
        p.observe_distances(d_a, d_b)
        got = p.sample(g, step=step, total_steps=total)
        u = float(torch.rand((), generator=g_ref))
        raw = lam - sigma + 2 * sigma * u
        assert got == pytest.approx(min(max(raw, 0.0), 1.0), abs=1e-12)
        assert p.stats()["lam_base"] == pytest.approx(lam, abs=1e-12)
        clamped += raw < 0 or raw > 1
    assert clamped >= 1  # σ = 0.6 around λ_1 ≈ 0.25 must leave [0, 1] at least once with this seed


def test_progressive_observe_uses_sliced_distances_and_resumes_exactly():
    p = M.ProgressiveLambda(temperature=0.1, sigma=0.1, n_projections=16, seed=5)
    x = torch.randn(32, 8, generator=_g(1))
    a, b = x + 0.1, x + 2.0
    p.observe(x, a, b)
    g = _g(2)
    p.sample(g, step=0, total_steps=10)
    st = p.stats()
    assert st["d_a"] < st["d_b"]  # the mix is closer to the a side
    assert st["d_a"] == pytest.approx(M.sliced_wasserstein(x, a, p.projections(8)))
    q = M.ProgressiveLambda(temperature=0.1, sigma=0.1, n_projections=16, seed=5)
    q.load_state_dict(p.state_dict())
    g2 = _g(0)
    g2.set_state(g.get_state())
    p.observe(x, b, a)
    q.observe(x, b, a)
    assert q.sample(g2, step=1, total_steps=10) == p.sample(g, step=1, total_steps=10)
    assert q.stats() == p.stats()


def test_sliced_wasserstein_properties():
    g = _g(0)
    x = torch.randn(50, 6, generator=g)
    proj = M.ProgressiveLambda(n_projections=32, seed=1).projections(6)
    assert proj.shape == (6, 32)
    torch.testing.assert_close(proj.norm(dim=0), torch.ones(32))
    assert torch.equal(proj, M.ProgressiveLambda(n_projections=32, seed=1).projections(6))
    assert M.sliced_wasserstein(x, x[torch.randperm(50, generator=g)], proj) == pytest.approx(0.0, abs=1e-6)
    y = torch.randn(50, 6, generator=g)
    assert M.sliced_wasserstein(x, y, proj) == pytest.approx(M.sliced_wasserstein(y, x, proj), rel=1e-6)
    # A translation by v moves every projection by v·θ: SW² = mean_k (v·θ_k)².
    v = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    expect = math.sqrt(float(((v @ proj) ** 2).mean()))
    assert M.sliced_wasserstein(x, x + v, proj) == pytest.approx(expect, rel=1e-5)


def test_exact_estimator_without_pot_names_the_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ot", None)  # `import ot` raises ImportError, installed or not
    with pytest.raises(ImportError, match="pip install pot"):
        M.build_lambda_policy(LambdaConfig(policy="progressive", estimator="exact"))


def test_exact_estimator_matches_assignment_when_pot_installed():
    pytest.importorskip("ot")
    from scipy.optimize import linear_sum_assignment

    g = _g(4)
    x, y = torch.randn(12, 3, generator=g), torch.randn(12, 3, generator=g)
    cost = torch.cdist(x.double(), y.double()).pow(2).numpy()
    r, c = linear_sum_assignment(cost)
    assert M.exact_wasserstein(x, y) == pytest.approx(math.sqrt(cost[r, c].mean()), rel=1e-9)
    p = M.build_lambda_policy(LambdaConfig(policy="progressive", estimator="exact"))
    p.observe(x, x, y)
    p.sample(_g(0), step=0, total_steps=3)
    assert p.stats()["d_a"] == 0.0


# ----------------------------------------------------------------------------------------------------------
# partners


def test_reverse_partner():
    assert M.build_partner_policy("reverse")(5, _g()).tolist() == [4, 3, 2, 1, 0]


@pytest.mark.parametrize("n", [2, 3, 7, 64])
def test_random_partner_is_a_seeded_derangement(n):
    pol = M.build_partner_policy("random")
    for seed in range(5):
        perm = pol(n, _g(seed))
        assert sorted(perm.tolist()) == list(range(n))
        assert not (perm == torch.arange(n)).any()
        assert torch.equal(perm, pol(n, _g(seed)))
    if n >= 7:
        assert not torch.equal(pol(n, _g(0)), pol(n, _g(1)))


def test_random_derangement_is_uniform_for_n3():
    # n = 3 has exactly two derangements, [1, 2, 0] and [2, 0, 1]; each should come up about half the time.
    g = _g(11)
    counts: dict[tuple, int] = {}
    for _ in range(400):
        key = tuple(M.random_derangement(3, g).tolist())
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) == {(1, 2, 0), (2, 0, 1)}
    assert min(counts.values()) > 150


def test_history_partner_memory():
    pol = M.build_partner_policy("history")
    assert pol(4, _g()) is None and pol.memory(4, torch.device("cpu")) is None
    img, txt = torch.randn(4, 3), torch.randn(4, 3, requires_grad=True)
    pol.remember(img, txt)
    mem = pol.memory(4, torch.device("cpu"))
    assert torch.equal(mem[0], img) and torch.equal(mem[1], txt.detach()) and not mem[1].requires_grad
    assert pol.memory(3, torch.device("cpu")) is None  # short batch: caller falls back to reverse
    other = M.HistoryPartner()
    other.load_state_dict(pol.state_dict())
    assert torch.equal(other.memory(4, torch.device("cpu"))[0], img)


# ----------------------------------------------------------------------------------------------------------
# bad values


def test_bad_lambda_config_fails_on_construction_naming_the_key():
    # a LambdaConfig is validated when it is built, so build_lambda_policy never sees a bad one
    with pytest.raises(ValueError, match=r"lambda.policy='cosine' is invalid: allowed one of 'beta'"):
        LambdaConfig(policy="cosine")
    with pytest.raises(ValueError, match=r"lambda.alpha=0.0 is invalid"):
        LambdaConfig(alpha=0.0)
    with pytest.raises(ValueError, match=r"lambda.alpha=-1.0 is invalid"):
        LambdaConfig(alpha=-1.0)
    with pytest.raises(ValueError, match=r"lambda.temperature=0.0 is invalid"):
        LambdaConfig(policy="progressive", temperature=0.0)
    with pytest.raises(ValueError, match=r"lambda.value=1.5 is invalid"):
        LambdaConfig(policy="fixed", value=1.5)
    with pytest.raises(ValueError, match=r"lambda.sigma=-0.1 is invalid"):
        LambdaConfig(policy="progressive", sigma=-0.1)


def test_bad_mix_override_names_the_terms_dotted_key():
    with pytest.raises(ValueError, match=r"^mix\.v\.alpha=0\.0 is invalid: allowed"):
        build_config(overrides=["mix.v.alpha=0"])
    with pytest.raises(ValueError, match=r"^mix\.m2\.policy='cosine' is invalid: allowed one of 'beta'"):
        build_config(overrides=["mix.m2.policy=cosine"])


def test_bad_values_raise_value_error_naming_them():
    with pytest.raises(ValueError, match=r"alpha=0.0 is invalid"):
        M.BetaLambda(0.0)
    with pytest.raises(ValueError, match=r"value=-0.2 is invalid"):
        M.FixedLambda(-0.2)
    with pytest.raises(ValueError, match=r"temperature=-1.0 is invalid"):
        M.ProgressiveLambda(temperature=-1.0)
    with pytest.raises(ValueError, match=r"estimator='emd' is invalid: allowed one of 'sliced', 'exact'"):
        M.ProgressiveLambda(estimator="emd")
    with pytest.raises(ValueError, match=r"d_a=-1.0 is invalid"):
        M.ProgressiveLambda().observe_distances(-1.0, 0.5)
    with pytest.raises(ValueError, match=r"total_steps=0 is invalid"):
        M.ProgressiveLambda().sample(_g(), step=0, total_steps=0)
    with pytest.raises(
        ValueError, match=r"mix.partner='nearest' is invalid: allowed one of 'reverse', 'random', 'history'"
    ):
        M.build_partner_policy("nearest")
    with pytest.raises(ValueError, match=r"n=1 is invalid: allowed an integer n >= 2"):
        M.random_derangement(1, _g())
    with pytest.raises(ValueError, match=r"n=1 is invalid"):
        M.ReversePartner()(1, _g())
    with pytest.raises(ValueError, match=r"y.shape=\(4, 2\) is invalid: allowed the shape of x, \(3, 2\)"):
        M.sliced_wasserstein(torch.zeros(3, 2), torch.zeros(4, 2), torch.eye(2))
