"""The GPU check: one script, one CUDA GPU, under 8 minutes, one table; exit status 1 when a check fails.

    python benchmarks/gpu_check.py                 # on a machine with one CUDA GPU
    python benchmarks/gpu_check.py --cpu           # the CPU-reachable parts, tiny sizes (no GPU needed)

Checks, in order (each runs even if an earlier one failed; its row says FAIL and why):

1. **bf16 train step, CLIP-only vs m³-Mix**: open_clip ``ViT-B-32``, random init, batch 256, through
   geomix's own loop (``geomix.train.run``, ``run.precision=bf16``); median per-step samples/s of each and
   the step-time ratio m³ / CLIP.
2. **geomix vs ``open_clip_train``**: the same model, data (the embedded data exported as CSV), batch and
   precision through both loops; samples/s ratio.
3. **peak GPU memory** of the m³-Mix run of check 1 (``torch.cuda.max_memory_allocated``).
4. **a 1-GPU Ray Train trial, NCCL**: ``sweeps.raytrain.fit`` with one GPU worker on a tiny trial; it must
   complete and report its test metrics.
5. **loss only, n = 4096**: m³-Mix / CLIP forward + backward at d = 512 (``benchmarks/loss_overhead.py``).

``--cpu`` runs the same code paths on the CPU at tiny sizes (geomix-tiny, batch 32, fp32, gloo for the Ray
Train trial): a dry run of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch


class Check:
    """One row of the table: a name, a value, a verdict."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def run(self, name: str, fn: Callable[[], str]) -> None:
        t0 = time.perf_counter()
        try:
            value, verdict = fn(), "ok"
        except Exception as e:  # every check runs; a failure is a row, and the exit status
            traceback.print_exc()
            value, verdict = f"{type(e).__name__}: {str(e).splitlines()[0][:90] if str(e) else ''}", "FAIL"
        self.rows.append((name, value, f"{verdict} ({time.perf_counter() - t0:.0f} s)"))
        print(f"[{verdict}] {name}: {value}", flush=True)

    def table(self) -> str:
        w = max(len(r[0]) for r in self.rows)
        lines = [f"| {'check':<{w}} | value | verdict |", f"|{'-' * (w + 2)}|---|---|"]
        lines += [f"| {n:<{w}} | {v} | {s} |" for n, v, s in self.rows]
        return "\n".join(lines)

    @property
    def failed(self) -> bool:
        return any(r[2].startswith("FAIL") for r in self.rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="the CPU-reachable parts at tiny sizes (a dry run)")
    p.add_argument("--steps", type=int, default=None, help="train steps per throughput run")
    args = p.parse_args(argv)
    gpu = not args.cpu
    if gpu and not torch.cuda.is_available():
        print("error: --cpu is required on a machine without a CUDA GPU: allowed is a CUDA machine, or --cpu",
              file=sys.stderr)
        return 2
    model, batch = ("ViT-B-32", 256) if gpu else ("geomix-tiny", 32)
    steps = args.steps or (12 if gpu else 4)
    device = ["run.device=cuda", "run.precision=bf16"] if gpu else ["run.device=cpu", "run.precision=fp32"]
    # the sibling benchmarks (a script's own folder is first on its import path)
    import loss_overhead as overhead
    import train_throughput as throughput

    check = Check()
    rates: dict[str, list[float]] = {}
    peak: dict[str, float] = {}
    t_start = time.perf_counter()
    where = torch.cuda.get_device_name(0) if gpu else "CPU dry run"
    print(f"# gpu_check: {where}, torch {torch.__version__}, model {model}, batch {batch}, {steps} steps "
          "per run", flush=True)

    def step_ratio() -> str:
        for name, extra in (("clip", []), ("m3", throughput.M3), ("clip2", []), ("m32", throughput.M3)):
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            got = throughput._geomix_rates(device + extra, batch, steps, model)
            rates.setdefault(name.rstrip("2"), []).extend(got)
            if gpu:
                peak[name.rstrip("2")] = torch.cuda.max_memory_allocated() / 2**30
        clip, m3 = statistics.median(rates["clip"]), statistics.median(rates["m3"])
        return f"CLIP {clip:.0f} samples/s, m3 {m3:.0f} samples/s, step time m3/CLIP {clip / m3:.2f}x"

    def versus_open_clip() -> str:
        with tempfile.TemporaryDirectory(prefix="geomix-gpucheck-") as tmp:
            export = Path(tmp) / "export"
            subprocess.run([sys.executable, "-m", "geomix.data.export", "--out", str(export), "--size",
                            str(batch * steps), "--styles", "dark", "--split", "train", "--split", "val",
                            "--split", "test"], check=True, capture_output=True)
            csv = ["data.source=csv", f"data.path={export / 'train.csv'}",
                   f"data.val_path={export / 'val.csv'}", f"data.test_path={export / 'test.csv'}"]
            ours = throughput._geomix_rates(device + csv, batch, steps, model)
            theirs = throughput._open_clip_rates(export / "train.csv", batch, steps, model,
                                                 Path(tmp) / "logs", precision="amp_bf16" if gpu else "fp32")
        a, b = statistics.median(ours), statistics.median(theirs)
        return f"geomix {a:.0f} samples/s, open_clip_train {b:.0f} samples/s, ratio {a / b:.2f}x"

    def memory() -> str:
        if not gpu:
            return "n/a on the CPU"
        if not peak:
            raise RuntimeError("the train-step check did not run")
        return f"CLIP {peak['clip']:.1f} GiB, m3 {peak['m3']:.1f} GiB"

    def ray_train_trial() -> str:
        from geomix.config import build_config
        from sweeps import raytrain, session

        with tempfile.TemporaryDirectory(prefix="geomix-gpucheck-ray-") as tmp:
            cfg = build_config({}, ["model.name=geomix-micro", "model.pretrained=null", "data.train_size=256",
                                    "data.val_size=64", "data.test_size=64", "optim.epochs=1",
                                    "optim.batch_size=64", "run.progress=false", *device])
            session.start_ray("local", num_cpus=2, num_gpus=1 if gpu else 0)
            try:
                t0 = time.perf_counter()
                result = raytrain.fit(cfg, num_workers=1, use_gpu=gpu, storage_path=tmp, name="gpu-check")
                wall = time.perf_counter() - t0
            finally:
                import ray

                ray.shutdown()
        m = result.metrics
        if m.get("status") != "completed" or "test_rsum" not in m:
            raise RuntimeError(f"the trial did not complete: {m}")
        return (f"{'nccl' if gpu else 'gloo'}, completed in {wall:.0f} s, test rsum {m['test_rsum']:.1f}, "
                f"device {m.get('device')}")

    def loss_ratio() -> str:
        n, d = (4096, 512) if gpu else (256, 64)
        rows = overhead.run([n], d, repeats=10 if gpu else 3, warmup=2 if gpu else 1,
                            device=torch.device("cuda" if gpu else "cpu"))
        ratio = {r["case"]: r["ratio"] for r in rows}
        return f"n={n}, d={d}: m3/CLIP {ratio['m3']:.2f}x" + "".join(
            f", {k} {v:.2f}x" for k, v in ratio.items() if k not in ("clip", "m3"))

    check.run("1. bf16 train step, m3 vs CLIP" if gpu else "1. train step, m3 vs CLIP", step_ratio)
    check.run("2. geomix vs open_clip_train", versus_open_clip)
    check.run("3. peak GPU memory", memory)
    check.run("4. 1-GPU Ray Train trial (NCCL)" if gpu else "4. Ray Train trial (gloo, CPU)", ray_train_trial)
    check.run("5. loss only, m3/CLIP", loss_ratio)
    print(f"\n{check.table()}\n\ntotal {time.perf_counter() - t_start:.0f} s")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
