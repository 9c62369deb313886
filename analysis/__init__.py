"""Paper tables and figures from geomix result folders (pandas, pyarrow; matplotlib, scipy and optuna are
imported only when a figure, interval or importance is made).

``python analysis/tables.py RESULTS... [--format markdown|latex|csv] [--out DIR] [--figures]`` (or
``geomix-tables``; :mod:`analysis.cli`). Every table is a pure function ``trials DataFrame -> Table`` of the
frames :func:`store.read_results` returns, so it can be tested on a fixture and reused in a notebook:

* :mod:`analysis.frame` - the shared vocabulary (from :mod:`geomix.registry`), frame preparation, method
  order, per-seed statistics, cells and notes; under both the tables and :mod:`analysis.plots`;
* :mod:`analysis.catalog.retrieval` - Table 1 (retrieval) and Table 2 (embedding quality, components on/off);
* :mod:`analysis.catalog.hyper` - the Beta(α, β) grid, τ x method and λ policy x mixing level tables;
* :mod:`analysis.catalog.search_tables` - an Optuna search's parameter importances and best trials;
* :mod:`analysis.catalog.evals` - Table 1 per evaluation set, robustness across sets, few-shot, arithmetic;
* :mod:`analysis.catalog.paired` - each method minus FT, paired by seed: t interval, Holm, MDE;
* :mod:`analysis.catalog.claims` - the paper's claims (m³-Mix vs FT): holds / does not hold / inconclusive;
* :mod:`analysis.compare`, :mod:`analysis.evalsets` - comparisons with FT; evaluation sets and their roles;
* :mod:`analysis.build` - every table the catalog registers (``@catalog.table(order)``), in order;
* :mod:`analysis.render` (Markdown, LaTeX, CSV), :mod:`analysis.stats` (intervals, Holm, MDE, number
  formats; ``docs/statistics.md``).

:func:`summary` is the one function the sweeps call: the Markdown Table 1 of a results folder, with the
robustness table and the claims when the data has them. (It shadows the module :mod:`analysis.summary` as
an attribute of the package; ``from analysis.summary import summary`` imports the same function.)
"""

from analysis.summary import summary

__all__ = ["summary"]
