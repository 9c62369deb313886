"""Tables of an Optuna search: hyper-parameter importance per study and the best trials.

Importances come from the sweep's ``optuna.db`` when a results folder has one, else from an in-memory
study rebuilt from the completed ``search`` trial rows (:func:`study_from_trials`). Optuna is imported
when a table is built, not with this module.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from analysis.catalog import table
from analysis.frame import OK, decimals, direction, display_name, excluded_note, prepare, searched_columns
from analysis.render import Table
from analysis.stats import DASH, fmt_num


def _importance_evaluator() -> tuple[object, str]:
    """fANOVA when scikit-learn is there (it needs it); else PED-ANOVA, which needs nothing more.

    The forest is 32 trees of depth 8 instead of Optuna's 64 of depth 64: on 500 trials that is 0.9 s
    instead of 6.6 s, and the importances moved by at most 0.01 in ``benchmarks/tables_speed.py``'s data.
    """
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    try:
        import sklearn  # noqa: F401
    except ImportError:
        return PedAnovaImportanceEvaluator(), "PED-ANOVA (fANOVA needs scikit-learn, which is not installed)"
    return FanovaImportanceEvaluator(n_trees=32, max_depth=8, seed=0), "fANOVA (32 trees, depth 8)"


def study_from_trials(search: pd.DataFrame, metric: str, params: list[str]) -> object:
    """An in-memory Optuna study rebuilt from trial rows (distributions inferred from the values seen)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    dists, values = {}, {}
    for p in params:
        num = pd.to_numeric(search[p], errors="coerce")
        if num.notna().all() and not search[p].map(lambda v: isinstance(v, bool)).any():
            lo, hi = float(num.min()), float(num.max())
            dists[p] = FloatDistribution(lo, hi)
            values[p] = num.astype(float).tolist()
        else:
            labels = search[p].map(
                lambda v: "null" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            )
            dists[p] = CategoricalDistribution(sorted(set(labels)))
            values[p] = labels.tolist()
    study = optuna.create_study(direction="minimize" if direction(metric) is False else "maximize")
    target = pd.to_numeric(search[metric], errors="coerce").tolist()
    frozen = [
        optuna.trial.create_trial(
            value=float(target[i]), params={p: values[p][i] for p in params}, distributions=dists
        )
        for i in range(len(search))
    ]
    study.add_trials(frozen)
    return study


def _studies_from_db(folder: str, sweeps: list[str]) -> list[tuple[str, object]]:
    import optuna

    db = os.path.join(folder, "optuna.db")
    if "://" in folder or not os.path.isfile(db):
        return []
    storage = f"sqlite:///{db}"
    names = optuna.get_all_study_names(storage)
    chosen = [n for n in names if n in sweeps] or (names if len(names) == 1 else [])
    return [(n, optuna.load_study(study_name=n, storage=storage)) for n in chosen]


def _rebuilt_study(df: pd.DataFrame, metric: str, max_trials: int, notes: list[str]) -> tuple | None:
    """(name, study) from the completed search trials with ``metric``, or None with fewer than 4."""
    search = df[(df["method"] == "search") & (df["status"] == OK)]
    if metric in search:
        search = search[pd.to_numeric(search[metric], errors="coerce").notna()]
    else:
        search = search[:0]
    params = searched_columns(search)
    if len(search) < 4 or not params:
        return None
    if len(search) > max_trials:
        notes.append(f"Fitted on a random {max_trials} of {len(search)} search trials.")
        search = search.sample(n=max_trials, random_state=0)
    name = ", ".join(sorted(search["sweep"].astype(str).unique())) if "sweep" in search else "search"
    notes.append(
        f"No optuna.db found: study rebuilt from {len(search)} completed search trials, objective "
        f"{metric}, parameter ranges inferred from the values seen."
    )
    return name, study_from_trials(search, metric, params)


@table(60)
def table_param_importance(trials: pd.DataFrame, metric: str = "rsum", max_trials: int = 500) -> Table | None:
    """Optuna parameter importances of each search.

    A study is read from ``optuna.db`` (sqlite) in a ``results_dir`` of the trials, study name = the
    sweep name. Without one, completed ``search`` trials are rebuilt into an in-memory study (their
    varying config columns as parameters, ``metric`` as the objective). Searches of more than
    ``max_trials`` trials are fitted on a seeded random subset, said in a note.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    df = prepare(trials)
    studies: list[tuple[str, object]] = []
    notes: list[str] = []
    folders = df["results_dir"].dropna().unique().tolist() if "results_dir" in df.columns else []
    sweeps = df["sweep"].dropna().astype(str).unique().tolist() if "sweep" in df.columns else []
    for folder in folders:
        studies += _studies_from_db(str(folder), sweeps)
    if studies:
        notes.append("Studies read from optuna.db.")
    else:
        rebuilt = _rebuilt_study(df, metric, max_trials, notes)
        if rebuilt is None:
            return None
        studies.append(rebuilt)
    evaluator, ev_name = _importance_evaluator()
    cols: dict[str, dict[str, float]] = {}
    for name, study in studies:
        try:
            cols[name] = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except (RuntimeError, ValueError) as e:  # too few complete trials, or no varying parameter
            notes.append(f"study {name}: importance not computable ({e}).")
    if not cols:
        return None
    params = sorted(
        {p for v in cols.values() for p in v}, key=lambda p: -max(v.get(p, 0.0) for v in cols.values())
    )
    frame = {"parameter": params}
    for name, imp in cols.items():
        frame[f"importance ({name})"] = [fmt_num(imp[p], 3) if p in imp else DASH for p in params]
    notes.insert(0, f"Importance by {ev_name}, normalised to sum to 1 per study.")
    return Table(
        "table3_param_importance",
        f"Hyper-parameter importance for {metric}",
        pd.DataFrame(frame),
        None,
        notes,
    )


@table(70)
def table_top_trials(trials: pd.DataFrame, metric: str = "rsum", k: int = 10) -> Table | None:
    """The ``k`` best completed search trials (all trials when there is no search) by ``metric``."""
    df = prepare(trials)
    if metric not in df.columns:
        return None
    pool = df[df["method"] == "search"]
    source = "search trials"
    if pool.empty:
        pool, source = df, "trials"
    ok = pool[(pool["status"] == OK)].copy()
    ok[metric] = pd.to_numeric(ok[metric], errors="coerce")
    ok = ok[ok[metric].notna()]
    if ok.empty:
        return None
    ok = ok.sort_values(metric, ascending=direction(metric) is False, kind="stable").head(k)
    params = searched_columns(pool[pool["status"] == OK])[:8]
    extra = [m for m in ("r1_i2t", "r1_t2i") if m in ok.columns and m != metric]
    frame = {"rank": [str(i + 1) for i in range(len(ok))], "trial": ok["trial_id"].astype(str).tolist()}
    if ok["method"].nunique() > 1:
        frame["method"] = ok["method"].map(display_name).tolist()
    for m in [metric, *extra]:
        frame[m] = [fmt_num(v, decimals(m)) for v in pd.to_numeric(ok[m], errors="coerce")]
    for p in params:
        frame[p] = [_fmt_value(v) for v in ok[p]]
    notes = [
        f"Top {len(ok)} of {int((pool['status'] == OK).sum())} completed {source} by {metric}; "
        f"columns after the metrics are the settings that vary.",
        *excluded_note(pool),
    ]
    return Table(
        "table3_top_trials", f"Best {source} by {metric}", pd.DataFrame(frame), None, notes, label_cols=2
    )


def _fmt_value(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)
