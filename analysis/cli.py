"""``python analysis/tables.py RESULTS... [--format markdown|latex|csv] [--out DIR] [--figures]``.

Also installed as ``geomix-tables``. Prints every table to stdout; ``--out`` writes one file per table,
``--figures`` the figures under ``OUT/figures``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from analysis.build import build_tables, write_tables
from analysis.render import FORMATS, render
from geomix import logs
from store import read_results

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
        trials, history = read_results(*args.results)
        tables = build_tables(trials, metric=args.metric, top_k=args.top_k)
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


def cli() -> None:
    """The ``geomix-tables`` console script."""
    raise SystemExit(main(prog="geomix-tables"))
