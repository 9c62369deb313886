"""The Gram path of MixLoss (geomix.losses.gram) against the direct kernels: the same values and gradients for
every combination of terms, partner policy and geometry, on all rows, on one worker's rows, and under DDP."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from geomix import losses as L
from geomix.config import LambdaConfig, LossConfig, MixConfig
from geomix.losses import gram
from geomix.losses import kernels as K
from geomix.losses._common import _inverse, _line_ce, _two_way_ce
from geomix.sphere import geodesic_mix, linear_mix

TERMS = ("m2", "v", "l", "vl")
SUBSETS = [s for k in range(len(TERMS) + 1) for s in itertools.combinations(TERMS, k)]
PARTNERS = ("reverse", "random", "history")
# Odd n: reverse partners have a fixed point. d = 32 keeps random pairs far from antipodal (no fallback).
N, D, STEPS = 9, 32, 3
RTOL = 1e-5

# λ policies of every kind, so the observations (progressive) and the draw order are exercised too.
MIX = dict(
    m2=LambdaConfig(policy="progressive", sigma=0.2, n_projections=8),
    v=LambdaConfig(policy="beta", alpha=0.5),
    l=LambdaConfig(policy="history", alpha=0.5, momentum=0.5),
    vl=LambdaConfig(policy="beta", alpha=1.0),
)


def _unit(*shape: int, seed: int) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=-1, keepdim=True)


def _batches(n: int = N, d: int = D, steps: int = STEPS, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    return [(_unit(n, d, seed=seed + 2 * k), _unit(n, d, seed=seed + 2 * k + 1)) for k in range(steps)]


def _run(loss: L.MixLoss, batches, rows: slice = slice(None), dtype=torch.float32) -> list[dict]:
    out = []
    for step, (i_full, t_full) in enumerate(batches):
        img = i_full[rows].to(dtype).requires_grad_(True)
        txt = t_full[rows].to(dtype).requires_grad_(True)
        scale = torch.tensor(7.0, requires_grad=True)
        total, terms = loss(img, txt, scale, epoch=step, step=step, total_steps=len(batches))
        total.backward()
        out.append({"total": total.detach(), **terms, "img": img.grad, "txt": txt.grad, "scale": scale.grad})
    return out


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Equal to ``RTOL`` relative to the size of ``want`` (a gradient's small entries are judged against its
    largest, as rounding in a sum of many terms is)."""
    got, want = got.detach().double(), want.detach().double()
    bound = RTOL * float(want.abs().max().clamp_min(1e-30))
    err = float((got - want).abs().max())
    assert err <= bound, f"{what}: |diff| {err:.3g} > {bound:.3g}"


def _same_runs(got: list[dict], want: list[dict], what: str) -> None:
    for step, (g, w) in enumerate(zip(got, want)):
        assert set(g) == set(w), what
        for key in w:
            _close(g[key], w[key], f"{what} step {step} {key}")


@pytest.fixture
def gram_calls(monkeypatch):
    """How many steps the Gram path served (``gram.shares`` answered), so a parity test cannot pass by
    falling back to the direct kernels."""
    calls = []
    real = gram.shares

    def counted(*args):
        out = real(*args)
        calls.append(bool(out))
        return out

    monkeypatch.setattr(gram, "shares", counted)
    return calls


# ----------------------------------------------------------------------------------------------------------
# one process, all rows


@pytest.mark.parametrize("partner", PARTNERS)
@pytest.mark.parametrize("subset", SUBSETS, ids=lambda s: "+".join(("clip", *s)))
def test_gram_path_equals_direct_kernels(subset, partner, gram_calls):
    for geometry, m2_tau in (("geodesic", None), ("linear", 0.2)):
        loss_cfg = LossConfig(decay="inverse_epoch", m2_tau=m2_tau, **{f"w_{t}": 0.5 for t in subset})
        mix_cfg = MixConfig(partner=partner, geometry=geometry, **MIX)
        want = _run(L.MixLoss(loss_cfg, mix_cfg, generator_seed=5, path="direct"), _batches())
        got = _run(L.MixLoss(loss_cfg, mix_cfg, generator_seed=5, path="gram"), _batches())
        _same_runs(got, want, f"{geometry} {partner} {subset}")
    assert gram_calls == [True] * (2 * STEPS)


def test_auto_path_equals_direct_and_low_precision_is_upcast(gram_calls):
    loss_cfg = LossConfig(**{f"w_{t}": 0.3 for t in TERMS})
    mix_cfg = MixConfig(partner="random", **MIX)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        want = _run(L.MixLoss(loss_cfg, mix_cfg, path="direct"), _batches(), dtype=dtype)
        got = _run(L.MixLoss(loss_cfg, mix_cfg), _batches(), dtype=dtype)
        _same_runs(got, want, f"auto {dtype}")
        assert all(r["total"].dtype == torch.float32 for r in got)
    assert gram_calls == [True] * (3 * STEPS)


# ----------------------------------------------------------------------------------------------------------
# the kernels on one worker's rows (local_loss without processes), and a per-row λ


def _inputs(img, txt, rows, partner: str, geometry: str, perm=None, seed: int = 0) -> K.TermInputs:
    n = img.shape[0]
    if partner == "history":
        d = img.shape[1]
        part = K._Partners(hist=(_unit(n, d, seed=seed + 100), _unit(n, d, seed=seed + 101)))
    else:
        perm = torch.arange(n - 1, -1, -1) if perm is None else perm
        part = K._Partners(perm=perm, inv=_inverse(perm))
    mix = geodesic_mix if geometry == "geodesic" else linear_mix
    scale = torch.tensor(6.0, requires_grad=True)
    return K.TermInputs(img, txt, scale, rows, mix, part, LossConfig(m2_tau=0.25))


def _grads(share: torch.Tensor, x: K.TermInputs) -> list[torch.Tensor]:
    inputs = (x.img, x.txt, x.scale)  # m² with m2_tau set does not use the scale
    grads = torch.autograd.grad(share, inputs, allow_unused=True)
    return [share.detach(), *(torch.zeros_like(v) if g is None else g for g, v in zip(grads, inputs))]


DIRECT = {"m2": K.m2_term, "v": K.v_term, "l": K.l_term, "vl": K.vl_term}


@pytest.mark.parametrize("partner", ["random", "history"])
@pytest.mark.parametrize("geometry", ["geodesic", "linear"])
@pytest.mark.parametrize("term", TERMS)
def test_row_shares_equal_direct_kernels_and_sum_to_the_batch(term, geometry, partner):
    img, txt = (x.requires_grad_(True) for x in _batches(n=11, steps=1, seed=3)[0])
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(1))
    lam = torch.rand(11, generator=torch.Generator().manual_seed(2))  # one λ per row
    total = 0.0
    for rows in ((0, 4), (4, 11), None):
        x = _inputs(img, txt, rows, partner, geometry, perm)
        want_share, want_obs = DIRECT[term](x, lam)
        out = gram.shares(x, {term: lam}, {term: DIRECT[term]})
        assert out, "the Gram path answered"
        got_share, observe = out[term]
        for g, w, what in zip(_grads(got_share, x), _grads(want_share, x), ("value", "img", "txt", "scale")):
            _close(g, w, f"{term} rows {rows} {what}")
        for g, w in zip(observe(), want_obs):
            _close(g, w.detach(), f"{term} observation")
        _close(out["clip"][0], K._clip_share(img, txt, x.scale, rows), "clip")
        total = total + got_share.detach() if rows is not None else total
    _close(total, got_share.detach(), "row shares sum to the batch")


# ----------------------------------------------------------------------------------------------------------
# edge cases: identical partners (handled by the coefficients), antipodal ones (the direct kernels)


def _edge_batch(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    img, txt = _batches(n=7, d=8, steps=1, seed=9)[0]
    img, txt = img.clone(), txt.clone()
    # Reverse partners (n = 7): row 3 is its own partner, 0 and 6 are partners.
    if kind == "identical":  # equal partners, and a caption equal to its image
        img[6] = img[0]
        txt[6] = txt[0]
        txt[2] = img[2]
    elif kind == "antipodal":
        img[6] = -img[0]
        txt[5] = -txt[1]
        txt[2] = -img[2]
    else:  # "obtuse": 160°, regular slerp, but the weights grow like 1/sin θ
        u = torch.zeros(8)
        u[0], u[1] = torch.cos(torch.tensor(2.79)), torch.sin(torch.tensor(2.79))
        img[0], img[6] = torch.eye(8)[0], u
    return img, txt


@pytest.mark.parametrize("geometry", ["geodesic", "linear"])
@pytest.mark.parametrize("kind", ["identical", "antipodal", "obtuse"])
def test_edge_cases_finite_and_equal_to_direct(kind, geometry, gram_calls):
    img, txt = _edge_batch(kind)
    loss_cfg = LossConfig(**{f"w_{t}": 0.5 for t in TERMS})
    mix_cfg = MixConfig(geometry=geometry, **{t: LambdaConfig(policy="fixed", value=0.5) for t in TERMS})
    want = _run(L.MixLoss(loss_cfg, mix_cfg, path="direct"), [(img, txt)])
    got = _run(L.MixLoss(loss_cfg, mix_cfg, path="gram"), [(img, txt)])
    _same_runs(got, want, kind)
    assert all(torch.isfinite(v).all() for v in got[0].values())
    # Identical rows are the near branch (the chord), which the coefficients reproduce; so is a linear mix of
    # opposite rows at λ = ½ (its fallback to a). The others are the direct kernels' to handle.
    assert gram_calls == [kind == "identical" or (kind == "antipodal" and geometry == "linear")]


def test_antipodal_partners_fall_back_at_any_lambda():
    img, txt = _edge_batch("antipodal")
    x = _inputs(img, txt, None, "reverse", "geodesic")
    for lam in (0.0, 0.3, 0.7, 1.0):
        assert gram.shares(x, {"v": lam}, {"v": K.v_term}) == {}
    x = _inputs(*_edge_batch("identical"), None, "reverse", "geodesic")
    assert gram.shares(x, {"v": 0.3}, {"v": K.v_term})


# ----------------------------------------------------------------------------------------------------------
# the helpers with a written-out backward


def _line_ce_of(z: torch.Tensor, dim: int, targets: tuple, scale=1.0) -> torch.Tensor:
    return _line_ce(z, dim, *targets, scale=scale)


def test_line_cross_entropy_matches_log_softmax_and_gradcheck():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    s = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    for dim in (0, 1):
        lines, size = z.shape[1 - dim], z.shape[dim]
        la, lb = (torch.randint(0, size, (lines,), generator=g) for _ in range(2))
        wa, w = (torch.rand(lines, dtype=torch.float64, generator=g) for _ in range(2))
        logp = torch.log_softmax(s * (z if dim == 1 else z.T), 1)
        rows = torch.arange(lines)
        ref = -(w * (wa * logp[rows, la] + (1 - wa) * logp[rows, lb])).mean()
        soft = functools.partial(_line_ce_of, dim=dim, targets=(la, lb, wa, w))
        hard = functools.partial(_line_ce_of, dim=dim, targets=(la, None, 1.0, 0.3))
        torch.testing.assert_close(soft(z, scale=s), ref)
        assert torch.autograd.gradcheck(lambda z, s, f=soft: f(z, scale=s), (z, s))
        assert torch.autograd.gradcheck(lambda z, f=hard: f(z), (z,))
    sq = z[:, :5].detach().requires_grad_(True)
    la, lb = torch.randperm(5, generator=g), torch.randperm(5, generator=g)
    both = functools.partial(_two_way_ce, rows=(la, lb, 0.3), cols=(lb, None, 1.0, 0.6))
    apart = _line_ce(sq, 1, la, lb, 0.3, scale=s) + _line_ce(sq, 0, lb, None, 1.0, 0.6, scale=s)
    torch.testing.assert_close(both(sq, scale=s), apart)
    assert torch.autograd.gradcheck(lambda z, s: both(z, scale=s), (sq, s))


def test_permutation_and_symmetric_blocks_have_the_plain_gradients():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    perm = torch.randperm(6, generator=g)
    w = torch.randn(6, 6, dtype=torch.float64, generator=g)

    def grad(m: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad((m * w).sum(), x)[0]

    for dim in (0, 1):
        got = grad(gram._Permute.apply(x @ x.T, dim, perm, _inverse(perm)))
        torch.testing.assert_close(got, grad((x @ x.T).index_select(dim, perm)))
    torch.testing.assert_close(grad(gram._Symmetric.apply(x @ x.detach().T)), grad(x @ x.T))


# ----------------------------------------------------------------------------------------------------------
# the plan and its cost model


def _requested(term: str, local: bool, hist: bool) -> set:
    img, txt = _batches(n=6, d=4, steps=1)[0]
    x = _inputs(img, txt, (0, 3) if local else None, "history" if hist else "random", "geodesic")
    g = gram.Gram(x)
    gram.clip_share(g)
    clip = set(g.requested)
    gram.TERMS[DIRECT[term]](x, 0.4, g)
    return clip | g.requested


@pytest.mark.parametrize("hist", [False, True])
@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("term", TERMS)
def test_needs_table_is_what_the_kernels_read(term, local, hist):
    want = gram.needs("clip", hist) | gram.needs(term, hist)
    got = _requested(term, local, hist)
    if local:
        assert got == want
    else:  # with all rows a partner's rows are a gather, and a block and its transpose are one product
        assert {tuple(sorted(b[:2])) for b in got} == {tuple(sorted(b[:2])) for b in want}


def _products(loss: L.MixLoss, n: int = 8) -> int:
    """Matrix products run by one forward and backward, counted by the profiler."""
    img, txt = (x.requires_grad_(True) for x in _batches(n=n, steps=1)[0])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss(img, txt, torch.tensor(5.0, requires_grad=True), epoch=0, step=0, total_steps=1)[0].backward()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::mm")


@pytest.mark.parametrize(
    ("weights", "path", "expect"),
    [
        ({}, "auto", 3),
        (dict(w_m2=1, w_v=1, w_l=1, w_vl=1), "direct", 18),
        (dict(w_m2=1, w_v=1, w_l=1, w_vl=1), "auto", 7),
        (dict(w_v=1), "auto", 3),
        (dict(w_l=1), "auto", 3),
        (dict(w_vl=1), "auto", 3),
        (dict(w_m2=1), "auto", 7),
        (dict(w_m2=1), "direct", 9),
    ],
)
def test_products_counted_match_the_plan(weights, path, expect):
    loss = L.MixLoss(LossConfig(**weights), MixConfig(), path=path)
    assert _products(loss) == expect
    if path == "auto" and weights:
        names = tuple(t for t in TERMS if f"w_{t}" in weights)
        blocks = set().union(gram.needs("clip", False), *(gram.needs(t, False) for t in names))
        assert gram.products(blocks, local=False) == expect


def test_plan_picks_the_fewest_products():
    assert gram.plan(TERMS, local=False, hist=False) == TERMS
    assert gram.plan(TERMS, local=False, hist=True) == TERMS
    assert gram.plan(("m2",), local=True, hist=False) == ()  # 12 products either way: the direct kernel
    assert gram.plan(("vl",), local=True, hist=False) == ()
    assert gram.plan(("v",), local=True, hist=False) == ("v",)  # S[π(R)] alone: 9 products instead of 12
    assert gram.plan(("v", "vl"), local=True, hist=False) == ("v", "vl")
    assert gram.plan((), local=False, hist=False) == ()


def test_custom_mix_function_and_terms_stay_direct():
    img, txt = _batches(n=5, d=4, steps=1)[0]
    x = _inputs(img, txt, None, "reverse", "geodesic")
    x.mix = lambda a, b, lam, check=True: geodesic_mix(a, b, lam, check=check)
    assert gram.shares(x, {"v": 0.5}, {"v": K.v_term}) == {}
    assert gram.name_of(lambda x, lam: None) is None
    with pytest.raises(ValueError, match=r"path='fast' is invalid"):
        L.MixLoss(LossConfig(), MixConfig(), path="fast")


# ----------------------------------------------------------------------------------------------------------
# DDP: 2 gloo processes, gathered and local_loss, the Gram path against the direct kernels on each rank

WORLD = 2


def _ddp_configs() -> dict[str, tuple[LossConfig, MixConfig]]:
    w = dict(w_m2=0.3, w_v=0.2, w_l=0.2, w_vl=0.5, decay="inverse_epoch", m2_tau=0.2)
    return {
        f"{'local' if local else 'gathered'}-{partner}": (
            LossConfig(local_loss=local, **w),
            MixConfig(partner=partner, **MIX),
        )
        for local in (False, True)
        for partner in ("random", "history")
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    served, real = [], gram.shares
    gram.shares = lambda *args: served.append(bool(out := real(*args))) or out
    try:
        n_local = N // 2 + 1  # 5 per rank: odd local and global sizes
        rows = slice(rank * n_local, (rank + 1) * n_local)
        batches = _batches(n=WORLD * n_local)
        results = {}
        for name, (loss_cfg, mix_cfg) in _ddp_configs().items():
            for path in ("direct", "gram", "auto"):
                loss = L.MixLoss(loss_cfg, mix_cfg, rank=rank, world_size=WORLD, generator_seed=11, path=path)
                results[name, path] = _run(loss, batches, rows)
        results["served"] = served
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # leave together (see tests/test_distributed_loss.py)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory, gloo_spawn):
    return gloo_spawn(_worker, WORLD, tmp_path_factory.mktemp("gram_ddp"))


@pytest.mark.parametrize("name", list(_ddp_configs()))
def test_ddp_gram_path_equals_direct_kernels(ddp_results, name):
    for rank in range(WORLD):
        # Every step of both Gram runs of every config took the Gram path (local "auto" keeps m² direct).
        assert ddp_results[rank]["served"] == [True] * (2 * STEPS * len(_ddp_configs()))
        want = ddp_results[rank][name, "direct"]
        for path in ("gram", "auto"):
            _same_runs(ddp_results[rank][name, path], want, f"{name} {path} rank {rank}")
