"""The paper's claims, each decided from the paired comparison of m³-Mix against FT (by seed).

Each claim is one metric with a claimed direction. Its verdict (``docs/statistics.md``):

* **holds**: the interval excludes 0 on the claimed side;
* **does not hold**: the interval excludes 0 on the other side;
* **inconclusive**: the interval contains 0 (the line gives the MDE: the difference the test would have
  found with at least 80 % power; the observed one is smaller), or fewer than 2 paired seeds;
* **not measured**: the metric's columns are absent or have no paired values.

The intervals are Holm-adjusted over the claims measured for the data set (``holm=True``, the default;
:func:`analysis.stats.holm_adjust`), so "excludes 0" is "Holm-adjusted p < 0.05".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis import compare, evalsets
from analysis.catalog import table
from analysis.frame import OK, decimals, display_name, excluded_note, numeric, prepare
from analysis.render import Table
from analysis.stats import DASH, PairedDiff, fmt_num, holm_adjust, paired_t_interval

ROBUST = "robust"  # resolved to the shifted-set mean of rsum (else of zs_acc)
FEWSHOT = "fewshot"  # resolved to fewshot_mean


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    metric: str
    higher: bool


CLAIMS: tuple[Claim, ...] = (
    Claim("a", "retrieval at least as good as FT (rsum higher)", "rsum", True),
    Claim("b", "better alignment (align higher)", "align", True),
    Claim("b", "better uniformity (unif higher)", "unif", True),
    Claim("c", "smaller modality gap (gap lower)", "gap", False),
    Claim("d", "better calibrated (ECE lower)", "ece", False),
    Claim("e", "more robust on shifted sets (shifted-set mean higher)", ROBUST, True),
    Claim("f", "better few-shot transfer (mean over k higher)", FEWSHOT, True),
    Claim("g", "better embedding arithmetic (R@1 higher)", "arith_r1", True),
)

_UNRESOLVED = {ROBUST: "shifted-set mean", FEWSHOT: "fewshot mean"}
HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED = "holds", "does not hold", "inconclusive", "not measured"


def _resolve(num: pd.DataFrame) -> dict[str, tuple[str, str] | str]:
    """Claim metric -> (column, label), or the reason it is not measured; adds the derived columns."""
    out: dict[str, tuple[str, str] | str] = {}
    for c in CLAIMS:
        if c.metric in (ROBUST, FEWSHOT):
            continue
        ok = c.metric in num.columns and num[c.metric].notna().any()
        out[c.metric] = (c.metric, c.metric) if ok else f"no {c.metric} values"
    out[ROBUST] = "no eval.<set>.rsum or eval.<set>.zs_acc values on shifted sets"
    for metric in ("rsum", "zs_acc"):
        if not evalsets.set_names(num, [metric]):
            continue
        found = evalsets.add_shifted_mean(num, metric)
        col = evalsets.shifted_col(metric)
        if found and num[col].notna().any():
            labels = {info.shifted_label for info in found.values()}
            out[ROBUST] = (col, f"{labels.pop() if len(labels) == 1 else 'shifted mean'} {metric}")
            break
    ks = evalsets.add_fewshot_mean(num)
    out[FEWSHOT] = (evalsets.FEWSHOT_MEAN, "fewshot mean k=" + ",".join(map(str, ks))) if ks else (
        "no fewshot_k<k> values on the test split"
    )
    return out


def verdict(d: PairedDiff, higher: bool, dec: int) -> str:
    """The claim's verdict from its (Holm-adjusted) comparison ``d`` (``n`` = paired seeds)."""
    if d.n == 0:
        return f"{NOT_MEASURED} (no paired values)"
    if d.n < 2:
        return f"{INCONCLUSIVE}: fewer than 2 paired seeds (no interval, no MDE)"
    if d.significant:
        return HOLDS if (d.mean > 0) == higher else FAILS
    return f"{INCONCLUSIVE}: no difference larger than the MDE ({fmt_num(d.mde, dec)}, 80 % power) found"


@table(90)
def table_claims(
    trials: pd.DataFrame,
    method: str = "m3_mix",
    baseline: str = "ft",
    holm: bool = True,
    confidence: float = 0.95,
) -> Table | None:
    """One line per claim of :data:`CLAIMS` (per data set): verdict, mean difference ``method - baseline``
    with its interval, p-value, MDE and paired seeds. None unless both methods have trials."""
    df = prepare(trials)
    df = df[df["method"] != "search"]
    if method not in set(df["method"]) or baseline not in set(df["method"]):
        return None
    cols = [c.metric for c in CLAIMS if c.metric in df.columns]
    cols += [str(c) for c in df.columns if str(c).startswith("eval.") or str(c).startswith("fewshot_k")]
    num = numeric(df, cols, keep=("data.source", "data.styles", "data.base_styles"))
    resolved = _resolve(num)
    used = [v[0] for v in resolved.values() if isinstance(v, tuple)]
    ok = num[num["status"] == OK]
    seeds = compare.per_seed(ok, used) if used else None
    groups = seeds.index.droplevel("seed") if seeds is not None else pd.Index([])
    datasets = sorted(num["dataset"].unique())
    multi = len(datasets) > 1
    delta = f"Δ [{confidence:.0%} CI]"
    frame: dict[str, list[str]] = {
        "data": [], "claim": [], "metric": [], "verdict": [], delta: [], "p": [], compare.MDE_HEADER: [],
        "pairs": [],
    }
    families = {}
    for ds in datasets:
        if (ds, method) not in groups or (ds, baseline) not in groups:
            continue
        a, b = seeds.loc[(ds, baseline)], seeds.loc[(ds, method)]
        common = a.index.intersection(b.index)
        diffs: list[PairedDiff | None] = []
        for c in CLAIMS:
            r = resolved[c.metric]
            if isinstance(r, str):
                diffs.append(None)
                continue
            diffs.append(paired_t_interval(a.loc[common, r[0]].to_numpy(), b.loc[common, r[0]].to_numpy(),
                                           confidence))
        if holm:
            idx = [i for i, d in enumerate(diffs) if d is not None]
            for i, d in zip(idx, holm_adjust([diffs[i] for i in idx])):
                diffs[i] = d
        families[ds] = compare.tested(d for d in diffs if d is not None)
        for c, d in zip(CLAIMS, diffs):
            r = resolved[c.metric]
            frame["data"].append(ds)
            frame["claim"].append(f"({c.key}) {c.text}")
            if d is None:
                frame["metric"].append(_UNRESOLVED.get(c.metric, c.metric))
                frame["verdict"].append(f"{NOT_MEASURED} ({r})")
                for k in (delta, "p", compare.MDE_HEADER, "pairs"):
                    frame[k].append(DASH)
                continue
            dec = decimals(r[0])
            frame["metric"].append(r[1])
            frame["verdict"].append(verdict(d, c.higher, dec))
            frame[delta].append(compare.diff_text(d, dec))
            frame["p"].append(compare.p_text(d))
            frame[compare.MDE_HEADER].append(compare.mde_text(d, dec))
            frame["pairs"].append(str(d.n))
    if not frame["claim"]:
        return None
    if not multi:
        del frame["data"]
    if holm:
        frame["p (Holm)"] = frame.pop("p")
        frame[compare.MDE_HEADER] = frame.pop(compare.MDE_HEADER)
        frame["pairs"] = frame.pop("pairs")
    name, base = display_name(method), display_name(baseline)
    alpha = 1.0 - confidence
    k = ", ".join(f"{v} ({ds})" for ds, v in families.items()) if multi else str(sum(families.values()))
    adjust = (
        f"Holm-adjusted over the k = {k} claims measured (p = Holm's adjusted p-value; the interval excludes "
        f"0 exactly when it is < {alpha:g})" if holm else f"unadjusted {confidence:.0%} intervals (--no-holm)"
    )
    notes = [
        f"Δ = {name} − {base}, paired by seed (seeds both completed): mean and interval, {adjust}; † = "
        "excludes 0.",
        "holds = the interval excludes 0 on the claimed side; does not hold = it excludes 0 on the other "
        "side; inconclusive = it contains 0 (or fewer than 2 pairs); not measured = the columns are absent.",
        compare.mde_note(confidence, holm=holm),
        *excluded_note(num),
    ]
    return Table(
        "paper_claims",
        f"Paper claims: {name} against {base}",
        pd.DataFrame(frame),
        None,
        notes,
        label_cols=4 if multi else 3,
    )
