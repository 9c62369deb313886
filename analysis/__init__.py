"""Paper tables and figures from geomix result folders (pandas, pyarrow, matplotlib, scipy, optuna).

``python analysis/tables.py RESULTS... [--format markdown|latex|csv] [--out DIR] [--figures]``; the table
builders (:mod:`analysis.tables`) and figures (:mod:`analysis.plots`) are pure functions of the frames that
:func:`geomix.results.read_results` returns.
"""
