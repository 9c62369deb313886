"""The fused Gram kernel (geomix.losses.native): the same values and gradients as the Gram path's torch ops
and the direct kernels, on explicit combinations and through MixLoss; non-finite logits stay non-finite;
the build is cached, and without a compiler (or switched off) the Gram path keeps its torch ops."""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

import pytest
import torch

from geomix import losses as L
from geomix.config import LambdaConfig, LossConfig, MixConfig
from geomix.losses import native
from geomix.losses._common import _directions, _inverse, _two_way_ce

TERMS = ("m2", "v", "l", "vl")
RTOL = 1e-5
MIX = dict(
    m2=LambdaConfig(policy="progressive", sigma=0.2, n_projections=8),
    v=LambdaConfig(policy="beta", alpha=0.5),
    l=LambdaConfig(policy="fixed", value=0.3),
    vl=LambdaConfig(policy="beta", alpha=1.0),
)

pytestmark = pytest.mark.skipif(not native.available(torch.device("cpu")), reason="no C compiler here")


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    got, want = got.detach().double(), want.detach().double()
    bound = RTOL * float(want.abs().max().clamp_min(1e-30))
    err = float((got - want).abs().max())
    assert err <= bound, f"{what}: |diff| {err:.3g} > {bound:.3g}"


@pytest.fixture
def fused_calls(monkeypatch):
    calls = []
    real = native.combo_ce

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(native, "combo_ce", counted)
    return calls


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("rows_on,cols_on,with_diag", [(True, True, False), (True, False, True),
                                                       (False, True, True), (True, True, True)])
def test_a_combination_equals_line_ce_on_the_logits_it_forms(rows_on, cols_on, with_diag, threads,
                                                             monkeypatch):
    monkeypatch.setattr(native, "_threads", lambda rows: threads)  # 9 rows: 5 + 4, 3 + 3 + 3 + 0
    n, g = 9, torch.Generator().manual_seed(3)
    perm = torch.randperm(n, generator=g)
    inv = _inverse(perm)
    blocks = [torch.randn(n, n, generator=g).requires_grad_(True) for _ in range(2)]
    # (block, row gather, column gather): every kind of gather, two parts on the same block
    layout = [(0, None, None), (0, perm, None), (1, None, perm), (1, perm, perm)]
    coefs = [tuple(torch.rand(n, generator=g).requires_grad_(True) for _ in "rc") for _ in layout]
    diag = torch.randn(n, generator=g).requires_grad_(True) if with_diag else None
    scale = torch.tensor(3.0, requires_grad=True)
    lam = torch.rand(n, generator=g)
    rows = (torch.arange(n), perm, lam) if rows_on else None
    cols = (torch.arange(n), None, 1.0, 0.7) if cols_on else None

    parts = [(native.Part(b, rho, None if rho is None else inv, gam, None if gam is None else inv), r, c)
             for (b, rho, gam), (r, c) in zip(layout, coefs)]
    tg = native.targets(None if rows is None else _directions(n, 1, *rows),
                        None if cols is None else _directions(n, 0, *cols))
    got = native.combo_ce([native.Collector(b) for b in blocks], parts, (n, n), tg, scale=scale, diag=diag)

    z = 0
    for (b, rho, gam), (r, c) in zip(layout, coefs):
        m = blocks[b]
        m = m if rho is None else m[rho]
        m = m if gam is None else m[:, gam]
        z = z + r[:, None] * c[None, :] * m
    if diag is not None:
        z = z.clone()
        z[torch.arange(n), torch.arange(n)] = diag
    if rows_on and cols_on:
        want = _two_way_ce(z, rows, cols, scale=scale)
    else:
        want = L._common._line_ce(z, 1 if rows_on else 0, *(rows or cols), scale=scale)
    _close(got, want, "value")
    inputs = [*blocks, *[t for rc in coefs for t in rc], scale, *([diag] if with_diag else [])]
    grads = zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs))
    for k, (a, b) in enumerate(grads):
        _close(a, b, f"gradient {k}")


def test_non_finite_logits_give_what_the_torch_ops_give():
    n = 5
    idx = torch.arange(n)
    for bad, finite in ((float("nan"), False), (float("inf"), False), (-float("inf"), True)):
        block = torch.randn(n, n, generator=torch.Generator().manual_seed(1))
        block[2, 3] = bad  # not a target: -inf there only drops out of the softmax
        part = (native.Part(0, None, None, None, None), torch.ones(n), torch.ones(n))
        tg = native.targets(_directions(n, 1, idx), _directions(n, 0, idx))
        got = native.combo_ce([native.Collector(block)], [part], (n, n), tg)
        want = _two_way_ce(block, (idx,), (idx,))
        assert bool(torch.isfinite(got)) == bool(torch.isfinite(want)) == finite, bad
        if finite:
            _close(got, want, "value")


@pytest.mark.parametrize("partner", ["reverse", "random"])
def test_mix_loss_on_the_fused_kernel_equals_its_torch_ops_and_the_direct_kernels(partner, fused_calls,
                                                                                  monkeypatch):
    monkeypatch.setattr(native, "_threads", lambda rows: 2)
    monkeypatch.setattr(native, "MIN_ROWS", 2)  # small batches, so the run is quick
    batches = [(_unit(11, 16, 2 * k), _unit(11, 16, 2 * k + 1)) for k in range(2)]
    for subset in [s for k in range(1, 5) for s in itertools.combinations(TERMS, k)]:
        for geometry in ("geodesic", "linear"):
            m2_tau = 0.2 if geometry == "linear" else None
            loss_cfg = LossConfig(m2_tau=m2_tau, **{f"w_{t}": 0.5 for t in subset})
            mix_cfg = MixConfig(partner=partner, geometry=geometry, **MIX)
            runs = {}
            for path, fused in (("gram", True), ("gram", False), ("direct", False)):
                loss, out = L.MixLoss(loss_cfg, mix_cfg, generator_seed=5, path=path), []
                for step, (i, t) in enumerate(batches):
                    i, t = i.clone().requires_grad_(True), t.clone().requires_grad_(True)
                    scale = torch.tensor(7.0, requires_grad=True)
                    before = len(fused_calls)
                    with contextlib.nullcontext() if fused else native.disabled():
                        total, terms = loss(i, t, scale, epoch=step, step=step, total_steps=2)
                        total.backward()
                    assert (len(fused_calls) > before) == fused, (path, fused)
                    out.append({"total": total, **terms, "img": i.grad, "txt": t.grad, "scale": scale.grad})
                runs[path, fused] = out
            for other in (("gram", False), ("direct", False)):
                for step, (a, b) in enumerate(zip(runs["gram", True], runs[other])):
                    for key in b:
                        _close(a[key], b[key], f"{subset} {geometry} {other} step {step} {key}")


def test_the_build_is_cached_and_without_a_compiler_the_torch_ops_serve(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOMIX_NATIVE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_lib", None)
    assert native.available(torch.device("cpu"))
    built = sorted(tmp_path.glob("combo_ce-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_tried", False)
    assert native.available(torch.device("cpu")) and built[0].stat().st_mtime_ns == stamp  # reused

    monkeypatch.setenv("GEOMIX_NATIVE_DIR", str(tmp_path / "fresh"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_lib", None)
    assert not native.available(torch.device("cpu"))
    monkeypatch.setattr(native, "MIN_ROWS", 2)
    i, t = (x.requires_grad_(True) for x in (_unit(8, 16, 0), _unit(8, 16, 1)))
    loss_cfg = LossConfig(w_v=0.5, w_vl=0.5)
    got = L.MixLoss(loss_cfg, MixConfig(**MIX), path="gram")(i, t, 7.0, epoch=0, step=0, total_steps=1)[0]
    want = L.MixLoss(loss_cfg, MixConfig(**MIX), path="direct")(i, t, 7.0, epoch=0, step=0, total_steps=1)[0]
    _close(got, want, "fallback")

    monkeypatch.setenv("GEOMIX_NATIVE_DIR", str(tmp_path / "refused"))
    monkeypatch.setenv("CC", "false")  # a compiler that runs and fails: nothing is left in the cache
    monkeypatch.setattr(native, "_tried", False)
    assert not native.available(torch.device("cpu"))
    assert list((tmp_path / "refused").iterdir()) == []

    monkeypatch.delenv("CC")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("GEOMIX_NATIVE_DIR", str(tmp_path / "a-file" / "cache"))  # cannot be created
    monkeypatch.setattr(native, "_tried", False)
    assert not native.available(torch.device("cpu"))

    monkeypatch.setenv("GEOMIX_NATIVE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_tried", False)
    assert native.available(torch.device("cpu"))
    monkeypatch.setenv("GEOMIX_NATIVE", "0")
    assert not native.available(torch.device("cpu"))
    assert not native.available(torch.device("meta"))


def test_a_second_backward_through_the_same_graph_is_refused():
    n = 6
    block = torch.randn(n, n).requires_grad_(True)
    part = (native.Part(0, None, None, None, None), torch.ones(n), torch.ones(n))
    tg = native.targets(_directions(n, 1, torch.arange(n)), None)
    loss = native.combo_ce([native.Collector(block)], [part], (n, n), tg)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="GEOMIX_NATIVE=0"):
        loss.backward()


def test_threads_follow_torch_and_the_setting(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert native._threads(4096) == 3 and native._threads(2 * native.ROWS_PER_THREAD) == 2
    assert native._threads(10) == 1
    monkeypatch.setenv("GEOMIX_NATIVE_THREADS", "5")
    assert native._threads(4096) == 5


def test_the_kernel_joins_torchs_openmp_runtime_where_torch_uses_libgomp():
    native._library()  # loaded, so its libgomp.so.1 dependency is resolved by now
    gomp = native.gnu_openmp_loaded()
    assert len(gomp) <= 1, f"two libgomp.so.1 loaded: {sorted(gomp)}"
    if native.torch_libgomp():
        torch_lib = Path(torch.__file__).resolve().parent / "lib"
        assert {Path(p).resolve().parent for p in gomp} == {torch_lib}, gomp


def test_calls_sharing_a_block_sum_their_gradients_once_and_alone_give_their_own():
    n, g = 8, torch.Generator().manual_seed(7)
    perm = torch.randperm(n, generator=g)
    inv = _inverse(perm)
    base = torch.randn(n, n, generator=g)
    idx = torch.arange(n)
    tg = native.targets(_directions(n, 1, idx), _directions(n, 0, idx))
    plain = (native.Part(0, None, None, None, None), torch.ones(n), torch.ones(n))
    gathered = (native.Part(0, perm, inv, None, None), torch.full((n,), 0.5), torch.ones(n))

    def calls(block, which):
        shared = native.Collector(block)
        return [native.combo_ce([shared], [part], (n, n), tg) for part in which]

    def reference(block, which):
        out = []
        for part in which:
            z = block if part[0].rho is None else 0.5 * block[perm]
            out.append(_two_way_ce(z, (idx,), (idx,)))
        return out

    for which, take in (((plain, gathered), (0, 1)), ((plain, gathered), (1,)), ((gathered, plain), (0,))):
        got_block, want_block = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
        got = sum(calls(got_block, which)[k] for k in take)
        want = sum(reference(want_block, which)[k] for k in take)
        got.backward()
        want.backward()
        _close(got, want, f"value {take}")
        _close(got_block.grad, want_block.grad, f"gradient {take}")


def test_a_batch_below_min_rows_stays_on_the_torch_ops(fused_calls):
    loss = L.MixLoss(LossConfig(w_v=0.5), MixConfig(**MIX), path="gram")
    for n, used in ((native.MIN_ROWS - 1, False), (native.MIN_ROWS, True)):
        i, t = _unit(n, 8, 0).requires_grad_(True), _unit(n, 8, 1).requires_grad_(True)
        before = len(fused_calls)
        loss(i, t, 7.0, epoch=0, step=0, total_steps=1)[0].backward()
        assert (len(fused_calls) > before) == used, n
