"""The tables of the extra evaluations: Table 1 per evaluation set, robustness across sets, few-shot probe
accuracy and embedding arithmetic.

Rows are methods in :func:`analysis.frame.method_order` (per data set when there are several); cells are
mean ± sample std over seeds of the completed trials, best per column marked. The robustness, few-shot and
arithmetic tables end with one comparison against FT (paired by seed, Holm-adjusted over the methods by
default, with its MDE; :mod:`analysis.compare`). A table whose columns are absent or all NaN is not made;
a column without values is left out.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis import compare, evalsets
from analysis.catalog import table
from analysis.catalog.retrieval import RETRIEVAL
from analysis.frame import (
    OK,
    cells,
    decimals,
    direction,
    direction_note,
    display_name,
    excluded_note,
    method_order,
    metrics_present,
    numeric,
    prepare,
    seed_stats,
)
from analysis.render import Table
from analysis.stats import DASH, fmt_num

RETRIEVAL_SETS = {**RETRIEVAL, "rsum": "rsum"}
_ROLE_COLS = ("data.source", "data.styles", "data.base_styles")
_MEAN_STD = "Mean ± sample std (ddof = 1) over seeds; n = seeds with a completed trial."


class _Builder:
    """Rows (data set, method) of the compared methods, and the columns added to them in order."""

    def __init__(self, trials: pd.DataFrame, cols: list[str]):
        df = prepare(trials)
        df = df[df["method"] != "search"]
        self.df = numeric(df, cols, keep=_ROLE_COLS)
        self.ok = self.df[self.df["status"] == OK]
        self.datasets = sorted(self.df["dataset"].unique())
        self.multi = len(self.datasets) > 1
        methods = method_order(self.df)
        pairs = set(zip(self.df["dataset"], self.df["method"]))
        self.index = [(ds, m) for ds in self.datasets for m in methods if (ds, m) in pairs]
        self.frame: dict[str, list[str]] = {}
        if self.multi:
            self.frame["data"] = [k[0] for k in self.index]
        self.frame["method"] = [display_name(k[1]) for k in self.index]
        self.label_cols = len(self.frame)
        self.best: dict[str, list[bool]] = {c: [False] * len(self.index) for c in self.frame}
        self.values: dict[str, list[float]] = {}
        self.notes: list[str] = []
        self.seeds: pd.Series | None = None

    def stat_columns(self, columns: dict[str, str]) -> None:
        """``header -> column``: mean ± std cells with the best marked within each data set."""
        cols = list(dict.fromkeys(columns.values()))
        stats, self.seeds = seed_stats(self.ok, ["dataset", "method"], cols)
        groups = [k[0] for k in self.index]
        for header, col in columns.items():
            self.frame[header], self.best[header], self.values[header] = cells(
                stats, self.seeds, self.index, col, groups
            )

    def plain(self, header: str, texts: list[str]) -> None:
        self.frame[header] = texts
        self.best[header] = [False] * len(self.index)

    def paired(
        self, col: str, label: str, *, baseline: str, holm: bool, confidence: float
    ) -> None:
        """Δ ``label`` vs the baseline [CI], p and MDE columns (nothing when no data set has the baseline)."""
        seeds = compare.per_seed(self.ok, [col])
        diffs: dict[str, dict[str, object]] = {}
        families: dict[str, int] = {}
        for ds in self.datasets:
            methods = [m for d, m in self.index if d == ds]
            got = compare.versus(seeds, ds, baseline, methods, col, confidence=confidence, holm=holm)
            if got is not None:
                diffs[ds] = got  # type: ignore[assignment]
                families[ds] = compare.tested(got.values())
        if not diffs:
            self.notes.append(f"No completed {display_name(baseline)} trial: no paired comparison.")
            return
        dec = decimals(col)
        texts, ps, mdes = [], [], []
        for ds, m in self.index:
            d = diffs.get(ds, {}).get(m)
            if d is None:
                texts.append(DASH)
                ps.append(DASH)
                mdes.append(DASH)
                continue
            texts.append(compare.diff_text(d, dec))  # type: ignore[arg-type]
            ps.append(compare.p_text(d))  # type: ignore[arg-type]
            mdes.append(compare.mde_text(d, dec))  # type: ignore[arg-type]
        base = display_name(baseline)
        self.plain(f"Δ {label} vs {base} [{confidence:.0%} CI]", texts)
        self.plain("p (Holm)" if holm else "p", ps)
        self.plain(compare.MDE_HEADER, mdes)
        self.notes.append(
            f"Δ {label} = method − {base}, paired by seed. " + compare.family_note(
                base, families if self.multi else {label: sum(families.values())}, holm=holm,
                confidence=confidence,
            )
        )
        self.notes.append(compare.mde_note(confidence, holm=holm))

    def n_column(self) -> None:
        assert self.seeds is not None
        self.plain("n", [str(int(self.seeds.get(k, 0))) for k in self.index])

    def table(self, name: str, title: str, notes: list[str]) -> Table:
        """The table, without the rows that have no value in any mean ± std column (a method that did not
        measure these metrics; counted in the last note)."""
        keep = [i for i in range(len(self.index)) if any(math.isfinite(v[i]) for v in self.values.values())]
        dropped = [display_name(self.index[i][1]) for i in range(len(self.index)) if i not in keep]
        labels = [f"{ds}/{display_name(m)}" if self.multi else display_name(m) for ds, m in self.index]
        frame = pd.DataFrame(self.frame).iloc[keep].reset_index(drop=True)
        best = pd.DataFrame(self.best).iloc[keep].reset_index(drop=True)
        values = pd.DataFrame(self.values, index=labels).iloc[keep]
        if dropped:
            notes = [*notes, f"Not shown (no value in these columns): {', '.join(dict.fromkeys(dropped))}."]
        return Table(
            name,
            title,
            frame,
            best,
            [*notes, *self.notes, *excluded_note(self.df)],
            values,
            label_cols=self.label_cols,
        )


def _compared(trials: pd.DataFrame) -> pd.DataFrame:
    df = prepare(trials)
    return df[df["method"] != "search"]


def _sets_note(b: _Builder, metrics: list[str]) -> list[str]:
    out = []
    for ds in b.datasets:
        info = evalsets.eval_sets(b.df[b.df["dataset"] == ds], metrics)
        if info.sets:
            out.append((f"{ds}: " if b.multi else "") + info.note())
    return out


@table(11)
def table_retrieval_sets(trials: pd.DataFrame, metrics: dict[str, str] | None = None) -> Table | None:
    """Table 1 per evaluation set: one column block per ``eval.<set>`` (the paper's Flickr / COCO shape)
    with R@1/5/10 in both directions and rsum; None without ``eval.<set>.<retrieval metric>`` values."""
    metrics = metrics or RETRIEVAL_SETS
    df = _compared(trials)
    if df.empty:
        return None
    info = evalsets.eval_sets(df, list(metrics))
    columns = {
        f"{s} {label}": evalsets.eval_col(s, m)
        for s in info.sets
        for m, label in metrics.items()
        if metrics_present(df, [evalsets.eval_col(s, m)])
    }
    if not columns:
        return None
    b = _Builder(trials, list(columns.values()))
    b.stat_columns(columns)
    b.n_column()
    notes = [
        _MEAN_STD + " The primary test split is Table 1; these are the extra evaluation sets.",
        *_sets_note(b, list(metrics)),
        direction_note(list(metrics)),
    ]
    title = "Retrieval (%) per evaluation set: mean ± std over seeds"
    return b.table("table1_retrieval_sets", title, notes)


@table(22)
def table_robustness(
    trials: pd.DataFrame,
    metrics: tuple[str, ...] = ("rsum", "zs_acc"),
    baseline: str = "ft",
    reference: str = "zs",
    holm: bool = True,
    confidence: float = 0.95,
) -> list[Table]:
    """Robustness across the evaluation sets, one table per metric of ``metrics`` that the sets have.

    Rows are methods; columns: each set (target, sources, others), the shifted-set mean (the sources', or
    the non-target sets' when no set is a source; :mod:`analysis.evalsets`), the worst set (the set with
    the row's lowest mean), the shifted mean minus ``reference`` (ZS: what fine-tuning lost), and the
    paired difference of the shifted mean against ``baseline`` (Holm-adjusted over the methods by default)
    with its MDE.
    """
    out = []
    df = _compared(trials)
    for metric in metrics:
        if df.empty or not evalsets.set_names(df, [metric]):
            continue
        out.append(_robustness(trials, df, metric, baseline, reference, holm, confidence))
    return [t for t in out if t is not None]


def _robustness(
    trials: pd.DataFrame,
    df: pd.DataFrame,
    metric: str,
    baseline: str,
    reference: str,
    holm: bool,
    confidence: float,
) -> Table | None:
    per_ds = {
        ds: evalsets.eval_sets(df[df["dataset"] == ds], [metric]) for ds in sorted(df["dataset"].unique())
    }
    sets: list[str] = []
    for info in per_ds.values():
        sets += [s for s in info.sets if s not in sets]
    single = next(iter(per_ds.values())) if len(per_ds) == 1 else None
    cols = [evalsets.eval_col(s, metric) for s in sets]
    b = _Builder(trials, cols)
    shifted = evalsets.add_shifted_mean(b.df, metric)
    b.ok = b.df[b.df["status"] == OK]
    scol = evalsets.shifted_col(metric)
    labels = {info.shifted_label for info in shifted.values()}
    mean_label = labels.pop() if len(labels) == 1 else "shifted mean"
    columns = {(single.header(s) if single else s): evalsets.eval_col(s, metric) for s in sets}
    if shifted:
        columns[mean_label] = scol
    b.stat_columns(columns)
    higher = direction(metric)
    set_headers = [h for h, c in columns.items() if c != scol]
    if higher is not None and len(set_headers) > 1:
        worst = []
        for i in range(len(b.index)):
            vals = [(b.values[h][i], s) for h, s in zip(set_headers, sets) if math.isfinite(b.values[h][i])]
            if not vals:
                worst.append(DASH)
                continue
            v, s = min(vals) if higher else max(vals)
            worst.append(f"{fmt_num(v, decimals(metric))} ({s})")
        b.plain("worst set", worst)
    if shifted:
        ref = {ds: v for (ds, m), v in zip(b.index, b.values[mean_label]) if m == reference}
        if any(math.isfinite(v) for v in ref.values()):
            texts = []
            for (ds, m), v in zip(b.index, b.values[mean_label]):
                r = ref.get(ds, math.nan)
                texts.append(DASH if m == reference else fmt_num(v - r, decimals(metric), sign=True))
            b.plain(f"{mean_label} − {display_name(reference)}", texts)
        b.paired(scol, f"{mean_label} {metric}", baseline=baseline, holm=holm, confidence=confidence)
    b.n_column()
    notes = [
        _MEAN_STD + f" {mean_label}: per trial, the mean of {metric} over "
        + ("the source sets" if mean_label == "source mean" else "the shifted sets")
        + " (a trial lacking one has none); worst set: the set with the row's "
        + ("lowest" if higher is not False else "highest") + " mean.",
        *[(f"{ds}: " if b.multi else "") + info.note() for ds, info in per_ds.items() if info.sets],
        direction_note([metric]),
    ]
    if shifted and f"{mean_label} − {display_name(reference)}" in b.frame:
        notes.insert(1, f"{mean_label} − {display_name(reference)}: difference of the means (negative = "
                        "below the zero-shot model on the shifted sets).")
    title = f"Robustness: {metric} per evaluation set, mean ± std over seeds"
    return b.table(f"table_robustness_{metric}", title, notes)


@table(24)
def table_fewshot(
    trials: pd.DataFrame, baseline: str = "ft", holm: bool = True, confidence: float = 0.95
) -> Table | None:
    """Few-shot linear-probe accuracy (%): rows methods, columns ``k`` per split (the primary test split,
    then each evaluation set), the primary split's mean over ``k`` and its paired difference against FT."""
    df = _compared(trials)
    if df.empty:
        return None
    columns: dict[str, str] = {}
    for k in evalsets.fewshot_ks(df):
        columns[f"test k={k}"] = f"fewshot_k{k}"
    fewshot_metrics = sorted({str(c).rsplit(".", 1)[-1] for c in df.columns if "fewshot_k" in str(c)})
    for s in evalsets.eval_sets(df, fewshot_metrics).sets:
        for k in evalsets.fewshot_ks(df, s):
            columns[f"{s} k={k}"] = evalsets.eval_col(s, f"fewshot_k{k}")
    if not columns:
        return None
    b = _Builder(trials, list(columns.values()))
    common = evalsets.add_fewshot_mean(b.df)
    b.ok = b.df[b.df["status"] == OK]
    mean_header = "test mean (k = " + ", ".join(map(str, common)) + ")"
    if common:
        columns[mean_header] = evalsets.FEWSHOT_MEAN
    b.stat_columns(columns)
    if common:
        b.paired(evalsets.FEWSHOT_MEAN, "test mean", baseline=baseline, holm=holm, confidence=confidence)
    b.n_column()
    notes = [
        _MEAN_STD + " Linear probe on the frozen image embeddings with k labelled images per class "
        "(evaluation.fewshot_shots); test = the primary test split.",
        *_sets_note(b, fewshot_metrics),
        "Best per column marked (bold; `*` in CSV), among rows with a value; higher is better.",
    ]
    return b.table("table_fewshot", "Few-shot probe accuracy (%): mean ± std over seeds", notes)


@table(26)
def table_arithmetic(
    trials: pd.DataFrame, baseline: str = "ft", holm: bool = True, confidence: float = 0.95
) -> Table | None:
    """Embedding arithmetic (%), primary test split: R@1 per attribute kind, overall R@1 and R@5, and the
    paired difference of overall R@1 against FT."""
    df = _compared(trials)
    if df.empty:
        return None
    columns = {f"R@1 {kind}": f"arith_r1_{kind}" for kind in evalsets.arith_kinds(df)}
    for col, header in (("arith_r1", "R@1"), ("arith_r5", "R@5")):
        if metrics_present(df, [col]):
            columns[header] = col
    if not columns:
        return None
    b = _Builder(trials, list(columns.values()))
    b.stat_columns(columns)
    if "arith_r1" in columns.values():
        b.paired("arith_r1", "R@1", baseline=baseline, holm=holm, confidence=confidence)
    b.n_column()
    notes = [
        _MEAN_STD + " Query image(A) + δ·(text(B) − text(A)) must retrieve image(B), B differing from A "
        "in one attribute (the kind; δ = evaluation.arith_delta); R@1 / R@5 over all queries.",
        "Best per column marked (bold; `*` in CSV), among rows with a value; higher is better.",
    ]
    return b.table("table_arithmetic", "Embedding arithmetic (%): mean ± std over seeds", notes)
