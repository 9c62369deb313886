"""Forward+backward cost of each geomix loss term, and of m³-Mix, relative to the CLIP loss.

All cases run side by side in one process: the repeats are interleaved (case A, B, C, ..., then again), so
machine noise hits every case alike; the table reports medians and the ratio to CLIP at the same ``n``,
and the minimum (the least-disturbed run, the steadier figure on a shared machine) with its ratio.
The ``matmuls`` column is the number of ``n×n×d`` products (forward + backward) each case needs, divided
by CLIP's; the rest is ``O(n²)`` and ``O(n·d)`` work, which the Gram path has more of.

Cases: ``clip``, ``open_clip`` and the single terms ``m2``, ``v``, ``l``, ``vl`` are the one-process
functions (the direct kernels, each term alone). ``m3`` is ``MixLoss`` with all four terms on the direct
kernels (before), ``m3_gram`` the same on the Gram path (after, ``path='auto'``); ``m2_gram``, ``v_gram``,
``l_gram``, ``vl_gram`` are the single-term methods (CLIP plus that term) on the Gram path. On the CPU the
Gram path runs each term's ``n×n`` work in the fused kernel (``geomix/losses/native.py``); the ``*_torch``
cases are the same losses with it off (the Gram path's torch ops), and ``clip_fused`` is CLIP alone through
the fused kernel, the fastest CLIP here: the last column is each case against it.

    python benchmarks/loss_overhead.py                     # n in {128, 512, 1024}, d = 512
    python benchmarks/loss_overhead.py --sizes 1024 4096 --repeats 7
    python benchmarks/loss_overhead.py --threads 1         # one thread: steadier on a busy machine
    python benchmarks/loss_overhead.py --smoke-test        # tiny sizes, seconds
    python benchmarks/loss_overhead.py --sizes 1024 --threads 1 --profile clip m3_gram   # where the time goes

``--profile`` runs each named case under ``torch.profiler`` (after the timing table) and prints its total
and the operators that take the most time, split by input shape: the ``n×n×d`` products against the
``n×n`` elementwise passes the Gram path trades them for.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import open_clip
import torch

from geomix import losses as L
from geomix.config import LambdaConfig, LossConfig, MixConfig
from geomix.losses import gram, native

# n×n×d products per case, forward + backward (a matmul's backward needs two more).
_MATMULS = {"clip": 3, "open_clip": 6, "m2": 6, "v": 3, "l": 3, "vl": 3, "m3": 18}
_M3 = {"w_m2": 1.0, "w_v": 0.5, "w_l": 0.5, "w_vl": 1.0}
# The Gram-path cases: MixLoss (path='auto') with CLIP and these terms.
_GRAM = {
    "m3_gram": _M3,
    "m2_gram": {"w_m2": 1.0},
    "v_gram": {"w_v": 1.0},
    "l_gram": {"w_l": 1.0},
    "vl_gram": {"w_vl": 1.0},
}
# The same with the fused kernel off (the Gram path's torch ops), and CLIP alone through the fused kernel.
_TORCH = {name.replace("_gram", "_torch"): weights for name, weights in _GRAM.items()}
_FUSED_CLIP = "clip_fused"


def _gram_products(weights: dict[str, float]) -> int:
    """The plan's product count (``tests/test_gram.py`` holds it to the products actually run)."""
    terms = ["clip", *(k.removeprefix("w_") for k in weights)]
    return gram.products(set().union(*(gram.needs(t, hist=False) for t in terms)), local=False)


_MATMULS |= {name: _gram_products(weights) for name, weights in (_GRAM | _TORCH | {_FUSED_CLIP: {}}).items()}


def _mix_loss(weights: dict[str, float], path: str, fused: bool = True) -> Callable[..., torch.Tensor]:
    mix = MixConfig(m2=LambdaConfig(alpha=1.0), v=LambdaConfig(alpha=0.2), l=LambdaConfig(alpha=0.2))
    loss = L.MixLoss(LossConfig(**weights), mix, path=path)

    def call(i, t, s):
        with contextlib.nullcontext() if fused else native.disabled():
            return loss(i, t, s, epoch=0, step=0, total_steps=1)[0]

    return call


def _cases(n: int, device: torch.device) -> dict[str, Callable[..., torch.Tensor]]:
    perm = torch.arange(n - 1, -1, -1, device=device)
    ref = open_clip.loss.ClipLoss()
    cases = {
        "clip": lambda i, t, s: L.clip_loss(i, t, s, check=False),
        "open_clip": lambda i, t, s: ref(i, t, s),
        "m2": lambda i, t, s: L.m2_mix_loss(i, t, 0.5, s, check=False),
        "v": lambda i, t, s: L.v_mix_loss(i, t, 0.5, perm, s, check=False),
        "l": lambda i, t, s: L.l_mix_loss(i, t, 0.5, perm, s, check=False),
        "vl": lambda i, t, s: L.vl_mix_loss(i, t, 0.5, perm, s, check=False),
        "m3": _mix_loss(_M3, "direct"),
    }
    cases |= {name: _mix_loss(weights, "auto") for name, weights in _GRAM.items()}
    cases |= {name: _mix_loss(weights, "auto", fused=False) for name, weights in _TORCH.items()}
    return cases | {_FUSED_CLIP: _mix_loss({}, "gram")}


def _time_once(fn: Callable[..., torch.Tensor], img, txt, device: torch.device) -> float:
    i = img.clone().requires_grad_(True)
    t = txt.clone().requires_grad_(True)
    s = torch.tensor(14.0, device=device, requires_grad=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(i, t, s).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(
    sizes: list[int], dim: int, repeats: int, warmup: int, device: torch.device, only: list[str] | None = None
) -> list[dict]:
    rows = []
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        img = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1).to(device)
        txt = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1).to(device)
        cases = {k: f for k, f in _cases(n, device).items() if only is None or k in only or k == "clip"}
        times: dict[str, list[float]] = {k: [] for k in cases}
        for rep in range(warmup + repeats):
            for name, fn in cases.items():
                dt = _time_once(fn, img, txt, device)
                if rep >= warmup:
                    times[name].append(dt)
        base, base_min = statistics.median(times["clip"]), min(times["clip"])
        fused = statistics.median(times[_FUSED_CLIP]) if _FUSED_CLIP in times else None
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append(
                {
                    "n": n,
                    "case": name,
                    "median_ms": 1e3 * med,
                    "ratio": med / base,
                    "min_ms": 1e3 * min(ts),
                    "min_ratio": min(ts) / base_min,
                    "matmuls": _MATMULS[name] / _MATMULS["clip"],
                    "ratio_fused": None if fused is None else med / fused,
                }
            )
    return rows


def profile(name: str, n: int, dim: int, device: torch.device, repeats: int = 5, top: int = 16) -> None:
    """Print where one forward + backward of case ``name`` spends its time (self time per call, averaged)."""
    g = torch.Generator().manual_seed(n)
    img = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1).to(device)
    txt = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1).to(device)
    fn = _cases(n, device)[name]
    for _ in range(2):
        _time_once(fn, img, txt, device)
    with torch.profiler.profile(record_shapes=True) as prof:
        for _ in range(repeats):
            _time_once(fn, img, txt, device)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events) / repeats / 1e3
    mm = sum(e.self_cpu_time_total for e in events if e.key == "aten::mm") / repeats / 1e3
    print(f"\n# profile {name}, n={n}: {total:.1f} ms per forward+backward, of which aten::mm {mm:.1f} ms")
    print(f"{'operator':<30} {'input shapes':<52} {'ms':>8} {'calls':>6}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        shapes = str(e.input_shapes)[:52]
        print(f"{e.key[:30]:<30} {shapes:<52} {e.self_cpu_time_total / repeats / 1e3:>8.2f} "
              f"{e.count / repeats:>6.0f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 1024])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cases", nargs="+", help="only these cases (and clip, the reference)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--smoke-test", action="store_true", help="tiny sizes and few repeats (CI)")
    p.add_argument("--profile", nargs="+", metavar="CASE", choices=sorted(_MATMULS),
                   help="also profile these cases at the largest size")
    args = p.parse_args(argv)
    if args.smoke_test:
        args.sizes, args.dim, args.repeats, args.warmup = [16, 32], 8, 3, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = run(args.sizes, args.dim, args.repeats, args.warmup, device, args.cases)
    print(
        f"# loss forward+backward, d={args.dim}, device={device}, threads={torch.get_num_threads()}, "
        f"{args.repeats} interleaved repeats, median"
    )
    print(
        f"{'n':>6} {'case':<10} {'median ms':>10} {'x CLIP':>7} {'min ms':>9} {'x CLIP':>7} "
        f"{'matmuls x':>10} "
        f"{'x fused CLIP':>12}"
    )
    for r in rows:
        fused = "" if r["ratio_fused"] is None else f"{r['ratio_fused']:>12.2f}"
        print(
            f"{r['n']:>6} {r['case']:<10} {r['median_ms']:>10.3f} {r['ratio']:>7.2f} "
            f"{r['min_ms']:>9.3f} {r['min_ratio']:>7.2f} {r['matmuls']:>10.2f} {fused}"
        )
    for name in args.profile or ():
        profile(name, max(args.sizes), args.dim, device)


if __name__ == "__main__":
    main()
