"""MixLoss / InputMixLoss under torch.distributed (2 gloo processes) equal one process, whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from geomix import losses as L
from geomix.config import LambdaConfig, LossConfig, MixConfig

WORLD = 2
N_LOCAL = 5  # odd local and global sizes on purpose
D = 6
STEPS = 3


def _configs() -> dict[str, tuple[LossConfig, MixConfig]]:
    mix = dict(
        m2=LambdaConfig(policy="progressive", sigma=0.2, n_projections=8),
        v=LambdaConfig(policy="beta", alpha=0.5),
        l=LambdaConfig(policy="history", alpha=0.5, momentum=0.5),
        vl=LambdaConfig(policy="fixed", value=0.3),
    )
    w = dict(w_m2=0.3, w_v=0.2, w_l=0.2, w_vl=0.5, decay="inverse_epoch", m2_tau=0.2)
    out = {}
    for local in (False, True):
        for partner in ("random", "history"):
            out[f"{'local' if local else 'gathered'}-{partner}"] = (
                LossConfig(local_loss=local, **w),
                MixConfig(partner=partner, **mix),
            )
    return out


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    n = WORLD * N_LOCAL
    out = []
    for _ in range(STEPS):
        i, t = torch.randn(n, D, generator=g), torch.randn(n, D, generator=g)
        out.append((i / i.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)))
    return out


def _run(loss: torch.nn.Module, batches, rows: slice) -> list[dict]:
    out = []
    for step, (i_full, t_full) in enumerate(batches):
        img = i_full[rows].clone().requires_grad_(True)
        txt = t_full[rows].clone().requires_grad_(True)
        scale = torch.tensor(7.0, requires_grad=True)
        total, terms = loss(img, txt, scale, epoch=step, step=step, total_steps=STEPS)
        total.backward()
        out.append(
            {
                "total": total.detach(),
                "terms": {k: v.detach().clone() for k, v in terms.items()},
                "img_grad": img.grad.clone(),
                "txt_grad": txt.grad.clone(),
                "scale_grad": scale.grad.clone(),
            }
        )
    return out


def _run_imix(mod: L.InputMixLoss, rows: slice) -> dict:
    g = torch.Generator().manual_seed(1)
    n = WORLD * N_LOCAL
    pixels = torch.randn(n, 3, 2, 2, generator=g)
    feats = [torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=1) for _ in range(2)]
    batch = mod.mix(pixels[rows])
    mixed = feats[0][rows].clone().requires_grad_(True)
    txt = feats[1][rows].clone().requires_grad_(True)
    total, _ = mod(None, mixed, txt, batch, 5.0)
    total.backward()
    return {
        "total": total.detach(),
        "lam": batch.lam,
        "perm": batch.perm,
        "mixed_grad": mixed.grad,
        "feats": feats,
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        results = {}
        for name, (loss_cfg, mix_cfg) in _configs().items():
            loss = L.MixLoss(loss_cfg, mix_cfg, rank=rank, world_size=WORLD, generator_seed=11)
            results[name] = _run(loss, _data(), rows)
        imix = L.InputMixLoss(LossConfig(kind="imix"), rank=rank, world_size=WORLD, generator_seed=3)
        results["imix"] = _run_imix(imix, rows)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        # Both ranks leave together: a rank that tears gloo down while its peer is still in a collective
        # makes the peer's gloo thread abort the process ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory, gloo_spawn):
    return gloo_spawn(_worker, WORLD, tmp_path_factory.mktemp("dist"))


@pytest.mark.parametrize("name", list(_configs()))
def test_distributed_equals_single_process(distributed_results, name):
    loss_cfg, mix_cfg = _configs()[name]
    ref = _run(L.MixLoss(loss_cfg, mix_cfg, generator_seed=11), _data(), slice(None))
    for step in range(STEPS):
        want = ref[step]
        for rank in range(WORLD):
            got = distributed_results[rank][name][step]
            rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
            torch.testing.assert_close(got["total"], want["total"], atol=1e-5, rtol=1e-5)
            assert set(got["terms"]) == set(want["terms"])
            for k, v in want["terms"].items():
                torch.testing.assert_close(got["terms"][k], v, atol=1e-5, rtol=1e-5, msg=f"{name} {k}")
            # The local slice gets exactly the one-process gradient rows.
            torch.testing.assert_close(got["img_grad"], want["img_grad"][rows], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(got["txt_grad"], want["txt_grad"][rows], atol=1e-5, rtol=1e-4)
        # Replicated parameters (the logit scale): the per-rank gradients sum to the one-process one.
        summed = sum(distributed_results[r][name][step]["scale_grad"] for r in range(WORLD))
        torch.testing.assert_close(summed, want["scale_grad"], atol=1e-5, rtol=1e-4)
    # λ and partners were identical on both ranks (the terms agree), and the mixing really happened.
    assert ref[-1]["terms"]["lam_m2_q"].item() >= 0.0 and 0.0 < ref[-1]["terms"]["lam_v"].item() < 1.0


def test_distributed_input_mix_equals_single_process_of_concatenated_batch(distributed_results):
    r0, r1 = distributed_results[0]["imix"], distributed_results[1]["imix"]
    lam = torch.cat([r0["lam"], r1["lam"]])
    perm = torch.cat([r0["perm"], r1["perm"] + N_LOCAL])  # each rank mixed its own pixels
    mixed, txt = (f.clone().requires_grad_(True) for f in r0["feats"])
    ref = L.imix_loss(mixed, txt, lam, perm, 5.0)
    ref.backward()
    assert not torch.equal(r0["lam"], r1["lam"])  # ranks draw differently (seed + rank)
    for r, got in enumerate((r0, r1)):
        torch.testing.assert_close(got["total"], ref.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            got["mixed_grad"], mixed.grad[r * N_LOCAL : (r + 1) * N_LOCAL], atol=1e-5, rtol=1e-4
        )
