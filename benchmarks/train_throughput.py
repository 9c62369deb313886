"""Training throughput, side by side in one run on the same model, data and batch.

1. geomix's loop: CLIP-only (``ft``) vs m³-Mix (all four mix terms), interleaved repeats, median
   per-step samples/s (target: m³ costs <= 10 % more per step on the CPU tiny model at batch 256); and
   m³-Mix with the fused Gram kernel off (``geomix/losses/native.py``), where it would run (batch >= 256).
2. geomix's loop vs open_clip's own training loop (``python -m open_clip_train.main``, shipped in the
   open_clip wheel) on the same CSV export of the embedded data (``python -m geomix.data.export``), same
   model, batch, precision and optimiser (target: geomix >= 1.0x).

Per-step throughput is the median over steps after the first (warm-up) of batch / step time, data loading
included, for both loops (open_clip prints exactly that per step with ``--log-every-n-steps 1``).

Usage::

    python benchmarks/train_throughput.py [--batch 256] [--steps 6] [--repeats 3] [--model geomix-tiny]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from geomix import train
from geomix.config import build_config
from geomix.losses import native

M3 = ["loss.w_m2=0.1", "loss.w_v=0.05", "loss.w_l=0.05", "loss.w_vl=0.1"]


class _StepClock:
    """Hooks that time every optimisation step (``run.report_every=1``)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.steps: list[int] = []

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        if "step" in metrics and not metrics.get("done") and "val_r1_i2t" not in metrics:
            self.times.append(time.perf_counter())
            self.steps.append(metrics["step"])

    def initial_checkpoint(self) -> None:
        return None


def _geomix_rates(overrides: list[str], batch: int, steps: int, model: str) -> list[float]:
    """Samples/s of every step of one geomix run after the first (warm-up)."""
    cfg = build_config(
        {},
        [
            f"model.name={model}",
            "model.pretrained=null",
            f"optim.batch_size={batch}",
            f"optim.max_steps={steps}",
            "optim.epochs=1",
            "run.eval_every=0",
            "run.report_every=1",
            "run.progress=false",
            "data.val_size=16",
            "data.test_size=16",
            f"data.train_size={batch * steps}",
        ]
        + overrides,
    )
    clock = _StepClock()
    result = train.run(cfg, hooks=clock)
    if result["status"] != "completed":
        raise RuntimeError(f"benchmark run failed: {result['error']}")
    dts = [b - a for a, b in zip(clock.times, clock.times[1:])]
    return [batch / dt for dt in dts]


def _m3_on_torch_ops(batch: int, steps: int, model: str) -> list[float]:
    """m³-Mix with the fused Gram kernel off (the Gram path's torch ops): the kernel's end-to-end effect."""
    with native.disabled():
        return _geomix_rates(M3, batch, steps, model)


def _open_clip_rates(
    csv: Path, batch: int, steps: int, model: str, logs: Path, precision: str = "fp32"
) -> list[float]:
    """Samples/s of every step after the first that open_clip_train prints (``precision``: its
    ``--precision``, e.g. ``amp_bf16`` against geomix's ``run.precision=bf16``)."""
    code = (
        "import sys, geomix.models as m; m.register_tiny_configs(); from open_clip_train.main import main; "
        "main(sys.argv[1:])"
    )
    cmd = [
        sys.executable,
        "-c",
        code,
        "--train-data",
        str(csv),
        "--dataset-type",
        "csv",
        "--csv-separator",
        "\t",
        "--csv-img-key",
        "filepath",
        "--csv-caption-key",
        "title",
        "--model",
        model,
        "--batch-size",
        str(batch),
        "--epochs",
        "1",
        "--workers",
        "0",
        "--lr",
        "5e-4",
        "--wd",
        "0.2",
        "--warmup",
        "1",
        "--precision",
        precision,
        "--logs",
        str(logs),
        "--name",
        "bench",
        "--log-every-n-steps",
        "1",
        "--save-frequency",
        "0",
        "--val-frequency",
        "0",
        "--zeroshot-frequency",
        "0",
        "--report-to",
        "",
        "--seed",
        "0",
        "--train-num-samples",
        str(batch * steps),
    ]
    # open_clip's CsvDataset opens paths as written; the export's are relative to the CSV's folder.
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=csv.parent)
    text = out.stdout + out.stderr
    rates = [float(r) for r in re.findall(r"Batch \(t\): [0-9.]+, ([0-9.]+)/s,", text)]
    if out.returncode != 0 or len(rates) < 2:
        raise RuntimeError(f"open_clip_train failed (rc={out.returncode}):\n{text[-3000:]}")
    return rates[1 : steps + 1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=8, help="optimisation steps per run (first one not timed)")
    p.add_argument("--repeats", type=int, default=4, help="interleaved repeats of every configuration")
    p.add_argument("--model", default="geomix-tiny")
    p.add_argument("--skip-open-clip", action="store_true")
    args = p.parse_args(argv)

    rates: dict[str, list[float]] = {k: [] for k in ("clip", "m3", "m3_torch", "geomix_csv", "open_clip_csv")}
    with tempfile.TemporaryDirectory(prefix="geomix-bench-") as tmp:
        export = Path(tmp) / "export"
        if not args.skip_open_clip:
            # open_clip trains on every CSV row (one caption per row), geomix on one caption per image per
            # epoch: export enough images that neither loop runs out of rows in `steps` steps.
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "geomix.data.export",
                    "--out",
                    str(export),
                    "--size",
                    str(args.batch * args.steps),
                    "--styles",
                    "dark",
                    "--split",
                    "train",
                    "--split",
                    "val",
                    "--split",
                    "test",
                ],
                check=True,
                capture_output=True,
            )
        csv = [
            "data.source=csv",
            f"data.path={export / 'train.csv'}",
            f"data.val_path={export / 'val.csv'}",
            f"data.test_path={export / 'test.csv'}",
        ]
        runs = {
            "clip": lambda r: _geomix_rates([], args.batch, args.steps, args.model),
            "m3": lambda r: _geomix_rates(M3, args.batch, args.steps, args.model),
        }
        if native.available(torch.device("cpu")) and args.batch >= native.MIN_ROWS:
            runs["m3_torch"] = lambda r: _m3_on_torch_ops(args.batch, args.steps, args.model)
        if not args.skip_open_clip:
            runs["geomix_csv"] = lambda r: _geomix_rates(csv, args.batch, args.steps, args.model)
            runs["open_clip_csv"] = lambda r: _open_clip_rates(
                export / "train.csv", args.batch, args.steps, args.model, Path(tmp) / f"l{r}"
            )
        for r in range(args.repeats):
            # the order flips every repeat (A B C D, D C B A, ...) so a drift of the machine's speed over
            # the run hits every configuration alike instead of favouring the one that goes first
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            last = {}
            for k in order:
                got = runs[k](r)
                rates[k] += got
                last[k] = statistics.median(got)
            print(
                f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k}={last[k]:.1f}" for k in runs),
                flush=True,
            )

    # every timed step of every repeat pooled: the median and the interquartile range of per-step samples/s
    med = {k: statistics.median(v) for k, v in rates.items() if v}
    iqr = {k: statistics.quantiles(v, n=4) for k, v in rates.items() if len(v) >= 2}
    print(
        f"\nmodel={args.model} batch={args.batch} steps/run={args.steps} repeats={args.repeats} "
        "(per-step samples/s pooled over repeats: median and interquartile range; CPU fp32)"
    )
    print(f"{'configuration':<34}{'samples/s':>12}{'IQR':>20}{'steps':>7}")
    for k, label in [
        ("clip", "geomix CLIP-only (embedded)"),
        ("m3", "geomix m3-Mix (embedded)"),
        ("m3_torch", "  the same, fused kernel off"),
        ("geomix_csv", "geomix CLIP-only (CSV export)"),
        ("open_clip_csv", "open_clip_train (CSV export)"),
    ]:
        if k in med:
            q = iqr.get(k, [med[k], med[k], med[k]])
            print(f"{label:<34}{med[k]:>12.1f}{f'{q[0]:.1f} - {q[2]:.1f}':>20}{len(rates[k]):>7}")
    extra = med["clip"] / med["m3"] - 1.0
    print(f"m3-Mix extra time per step vs CLIP-only: {100 * extra:+.1f} % (target <= +10 %)")
    if "m3_torch" in med:
        ratio = med["m3"] / med["m3_torch"]
        print(f"fused Gram kernel: m3-Mix throughput {ratio:.2f}x the Gram path's torch ops")
    if "open_clip_csv" in med:
        print(
            f"geomix / open_clip_train throughput: {med['geomix_csv'] / med['open_clip_csv']:.2f}x "
            "(target >= 1.0x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
