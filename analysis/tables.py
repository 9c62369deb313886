"""Paper tables from result folders: ``python analysis/tables.py RESULTS... [--format ...] [--out DIR]``.

A thin wrapper over :mod:`analysis.cli` (installed as ``geomix-tables``), kept so that the README's command
works. The tables themselves are the modules of :mod:`analysis.catalog`; :func:`analysis.build.build_tables`
makes them all.
"""

from analysis.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
