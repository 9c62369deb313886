"""``python analysis/tables.py RESULTS... [--format markdown|latex|csv] [--out DIR] [--figures] [--no-holm]``.

Also installed as ``geomix-tables``. Prints every table to stdout; ``--out`` writes one file per table,
``--figures`` the figures under ``OUT/figures``; ``--no-holm`` turns off Holm's adjustment of the
comparisons with FT (``docs/statistics.md``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.build import build_tables, write_tables
from analysis.render import FORMATS, render
from geomix import logs
from geomix.checks import check_writable_dir
from store import TABLES, read_results

log = logging.getLogger("analysis.tables")  # the name the "wrote ..." lines have always carried


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="The paper's tables (Markdown, LaTeX or CSV) and figures from geomix result folders.",
    )
    p.add_argument("results", nargs="+", help="result folders or URIs (with trials/, or sweep roots)")
    p.add_argument("--format", choices=FORMATS, default="markdown", help="output format (default markdown)")
    p.add_argument("--out", help="also write one file per table (and figures) into this folder")
    p.add_argument("--figures", action="store_true", help="write the figures (PNG + PDF) under OUT/figures")
    p.add_argument("--metric", default="rsum", help="objective for the hyper-parameter tables (default rsum)")
    p.add_argument("--top-k", type=int, default=10, help="rows of the best-trials table (default 10)")
    p.add_argument(
        "--no-holm",
        dest="holm",
        action="store_false",
        help="unadjusted intervals and marks in the comparisons with FT (default: Holm-adjusted per metric)",
    )
    return p


def main(argv: Sequence[str] | None = None, *, prog: str = "python analysis/tables.py") -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Bad arguments and unreadable results exit with status 2 and a one-line message (argparse's way).
    """
    parser = _parser(prog)
    args = parser.parse_args(argv)
    if args.figures and not args.out:
        parser.error("--figures needs --out DIR (the figures go to DIR/figures)")
    if args.top_k < 1:
        parser.error(f"--top-k={args.top_k} is invalid: allowed an integer >= 1")
    logs.setup("%(levelname)s %(name)s: %(message)s")
    try:
        if args.out:  # before anything is printed: a table on the console and none on disk helps nobody
            check_writable_dir("--out", args.out)
        trials, history = read_folders(args.results)
        tables = build_tables(trials, metric=args.metric, top_k=args.top_k, holm=args.holm)
    except ValueError as e:
        parser.error(str(e))
    sys.stdout.write("\n".join(render(t, args.format) for t in tables))
    if args.out:
        for path in write_tables(tables, args.out, args.format):
            log.info("wrote %s", path)
    if args.figures:
        from analysis import plots  # matplotlib only when figures are asked for

        for path in plots.make_figures(trials, history, Path(args.out) / "figures", metric=args.metric):
            log.info("wrote %s", path)
    return 0


def read_folders(folders: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``store.read_results`` of each folder, together: a folder given twice counts once; the same trial
    (sweep and trial id) in two different folders is refused, not resolved by argument order.

    Raises:
        ValueError: as ``store.read_results``; a trial in two folders; or no completed trial at all.
    """
    read = [read_results(f) for f in folders]
    trials = pd.concat([t for t, _ in read], ignore_index=True, sort=False)
    key = ["sweep", "trial_id"] if "sweep" in trials.columns else ["trial_id"]
    trials = trials.drop_duplicates(subset=[*key, "results_dir"], keep="last")
    clash = trials[trials.duplicated(subset=key, keep=False)]
    if not clash.empty:
        first = clash.iloc[0]
        dirs = clash.loc[(clash[key] == first[key]).all(axis=1), "results_dir"].tolist()
        n = clash.drop_duplicates(subset=key).shape[0]
        raise ValueError(
            f"trial_id={first['trial_id']!r}{' of sweep ' + repr(first['sweep']) if 'sweep' in key else ''} "
            f"is in two results folders ({dirs[0]} and {dirs[1]}; {n} such trial(s) in all): allowed folders "
            "that hold different trials (pass one of them, or give the sweeps different --name)"
        )
    trials = trials.reset_index(drop=True)
    status = trials["status"] if "status" in trials.columns else pd.Series(dtype=object)
    if not (status == "completed").any():
        counts = ", ".join(f"{k} {v}" for k, v in status.fillna("none").value_counts().items()) or "no status"
        errors = trials["error"].dropna() if "error" in trials.columns else pd.Series(dtype=object)
        first_error = f"; first error: {_one_line(errors.iloc[0])}" if len(errors) else ""
        raise ValueError(
            f"results {', '.join(folders)} hold no completed trial ({len(trials)} trial(s): {counts}"
            f"{first_error}): allowed results with at least one completed trial"
        )
    histories = [h for _, h in read if not h.empty]
    if len(histories) > 1:
        history = pd.concat(histories, ignore_index=True, sort=False)
        history = history.drop_duplicates(subset=["results_dir", *TABLES["history"]], keep="last")
        return trials, history.reset_index(drop=True)
    return trials, histories[0] if histories else read[0][1]


def _one_line(error: object) -> str:
    """A trial's error text as one line: its first line, or a traceback's last (the exception itself)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [""]
    return (lines[-1] if lines[0].startswith("Traceback") else lines[0])[:200]


def cli() -> None:
    """The ``geomix-tables`` console script."""
    raise SystemExit(main(prog="geomix-tables"))
