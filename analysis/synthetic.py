"""Synthetic result frames with the real schema, for the tables benchmark and for trying the analysis.

The numbers are made up (a method effect plus seed noise); the columns are exactly what a sweep writes:
the flattened :class:`geomix.config.TrainConfig`, the metrics (:data:`store.METRIC_COLUMNS`), status and
bookkeeping columns (``method_rank`` for the ablation's rows).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from geomix.config import TrainConfig, flatten, to_dict
from store import METRIC_COLUMNS, SCHEMA_VERSION

#: The ablation's methods: made-up effect on the latent quality, and how each differs from the default
#: config (as a sweep config would set it).
METHODS: dict[str, tuple[float, dict[str, object]]] = {
    "zs": (-25.0, {}),
    "ft": (0.0, {}),
    "ft_tau0.05": (-1.0, {"loss.tau": 0.05}),
    "ft_tau0.10": (-6.0, {"loss.tau": 0.10}),
    "imix": (-3.0, {"loss.kind": "imix"}),
    "unmix": (-1.0, {"loss.kind": "unmix"}),
    "m2_mix": (1.0, {"loss.w_m2": 0.01}),
    "v_mix": (0.5, {"loss.w_v": 0.05}),
    "l_mix": (0.3, {"loss.w_l": 0.05}),
    "vl_mix": (0.8, {"loss.w_vl": 0.1}),
    "m3_mix": (2.0, {"loss.w_m2": 0.01, "loss.w_v": 0.05, "loss.w_l": 0.05, "loss.w_vl": 0.1}),
    "m3_mix_linear": (
        1.2,
        {"loss.w_m2": 0.01, "loss.w_v": 0.05, "loss.w_l": 0.05, "loss.w_vl": 0.1, "mix.geometry": "linear"},
    ),
}


def _metrics(rng: np.random.Generator, quality: np.ndarray) -> dict[str, np.ndarray]:
    """Plausible metric columns from a latent quality [n] (higher = better)."""
    n = quality.shape[0]
    out: dict[str, np.ndarray] = {}
    for k, base in (("r1", 40.0), ("r5", 70.0), ("r10", 80.0)):
        for d in ("i2t", "t2i"):
            out[f"{k}_{d}"] = np.clip(base + quality + rng.normal(0, 1.0, n), 0, 100)
    out["rsum"] = sum(out[f"{k}_{d}"] for k in ("r1", "r5", "r10") for d in ("i2t", "t2i"))
    out["align"] = np.clip(1.2 - 0.01 * quality + rng.normal(0, 0.02, n), 0, 4)
    out["unif"] = -1.5 - 0.01 * quality + rng.normal(0, 0.02, n)
    out["unif_img"] = out["unif"] + rng.normal(0, 0.01, n)
    out["unif_txt"] = out["unif"] + rng.normal(0, 0.01, n)
    out["gap"] = np.clip(0.8 - 0.01 * quality + rng.normal(0, 0.02, n), 0, 2)
    out["cos_pos"] = np.clip(0.4 + 0.004 * quality, -1, 1)
    out["cos_neg"] = np.clip(0.1 - 0.001 * quality, -1, 1)
    out["zs_acc"] = np.clip(50 + quality + rng.normal(0, 1.0, n), 0, 100)
    out["ece"] = np.clip(8 - 0.1 * quality + rng.normal(0, 0.5, n), 0, 100)
    assert set(out) == set(METRIC_COLUMNS)
    return out


#: With ``evals=True``: how much each method forgets of the base model's source styles (made up; ZS, the
#: base model itself, forgets nothing). Search trials forget :data:`_SEARCH_FORGET`.
FORGET: dict[str, float] = {
    "zs": 0.0, "ft": 6.0, "ft_tau0.05": 6.0, "ft_tau0.10": 7.0, "imix": 5.0, "unmix": 5.5, "m2_mix": 4.5,
    "v_mix": 5.0, "l_mix": 5.5, "vl_mix": 4.5, "m3_mix": 3.0, "m3_mix_linear": 4.0,
}
_SEARCH_FORGET = 5.0
#: The embedded data's styles as extra evaluation sets: the fine-tune target, then the base model's.
EVAL_STYLES = ("dark", "flat", "outline", "textured")
FEWSHOT_SHOTS = (1, 4, 16)
_ARITH_KIND_OFFSET = {"colour": 10.0, "shape": 5.0, "size": 0.0, "position": -5.0, "count": -10.0}


def _probe_metrics(
    rng: np.random.Generator, quality: np.ndarray, *, arithmetic: bool
) -> dict[str, np.ndarray]:
    """Few-shot accuracies ``fewshot_k<k>`` and (``arithmetic``) the ``arith_*`` columns from a latent
    quality [n]."""
    n = quality.shape[0]
    out: dict[str, np.ndarray] = {}
    for k in FEWSHOT_SHOTS:
        acc = 30 + 8 * np.log2(k + 1) + 0.5 * quality + rng.normal(0, 1.0, n)
        out[f"fewshot_k{k}"] = np.clip(acc, 0, 100)
    if arithmetic:
        for r, base in ((1, 20.0), (5, 45.0)):
            per_kind = []
            for kind, off in _ARITH_KIND_OFFSET.items():
                v = np.clip(base + off + 0.6 * quality + rng.normal(0, 1.0, n), 0, 100)
                out[f"arith_r{r}_{kind}"] = v
                per_kind.append(v)
            out[f"arith_r{r}"] = np.mean(per_kind, axis=0)
    return out


def _eval_metrics(
    rng: np.random.Generator, quality: np.ndarray, forget: np.ndarray
) -> dict[str, np.ndarray]:
    """``eval.<style>.<metric>`` for every style of :data:`EVAL_STYLES`: the target ``dark`` at the trial's
    quality, the source styles at what the base model knew minus what the method forgot."""
    out: dict[str, np.ndarray] = {}
    for i, style in enumerate(EVAL_STYLES):
        q = quality if style == "dark" else 5.0 - forget - 0.5 * i + rng.normal(0, 0.5, quality.shape[0])
        metrics = {**_metrics(rng, q), **_probe_metrics(rng, q, arithmetic=True)}
        out.update({f"eval.{style}.{k}": v for k, v in metrics.items()})
    return out


def synthetic_trials(
    n_trials: int,
    *,
    seeds: int = 3,
    search_frac: float = 0.5,
    fail_frac: float = 0.05,
    seed: int = 0,
    evals: bool = False,
) -> pd.DataFrame:
    """A trials frame of ``n_trials`` rows: ablation methods x seeds, the rest Optuna-style search trials.

    Search trials vary ``mix.m2.alpha``, ``mix.m2.beta``, ``loss.w_m2``, ``loss.tau`` and the λ policy.
    A ``fail_frac`` share is failed / diverged / early-stopped, with no metrics. With ``evals``, the trials
    also carry the end-of-run probes on the primary test split (``fewshot_k1/4/16``, ``arith_r1``,
    ``arith_r5`` and per kind) and every metric of the four styles as extra evaluation sets
    (``eval.<style>.<metric>``; target ``dark``, sources ``flat outline textured``, see :data:`FORGET`).
    """
    rng = np.random.default_rng(seed)
    base = flatten(to_dict(TrainConfig()))
    n_search = int(round(n_trials * search_frac))
    n_abl = n_trials - n_search
    methods = list(METHODS)
    abl_method = [methods[i % len(methods)] for i in range(n_abl)]
    abl_seed = [(i // len(methods)) % seeds for i in range(n_abl)]
    cols: dict[str, list[object]] = {k: [v] * n_trials for k, v in base.items()}
    method = abl_method + ["search"] * n_search
    for i, m in enumerate(abl_method):
        for k, v in METHODS[m][1].items():
            cols[k][i] = v
    quality = np.array([METHODS.get(m, (0.0,))[0] for m in method]) + rng.normal(0, 0.7, n_trials)
    if n_search:
        s = slice(n_abl, n_trials)
        alpha = rng.uniform(0.1, 2.0, n_search)
        beta = rng.uniform(0.1, 2.0, n_search)
        w = rng.uniform(0.001, 0.1, n_search)
        tau = rng.choice([np.nan, 0.01, 0.05], n_search)
        policy = rng.choice(["beta", "fixed", "progressive"], n_search)
        cols["mix.m2.alpha"][s] = alpha.tolist()
        cols["mix.m2.beta"][s] = beta.tolist()
        cols["loss.w_m2"][s] = w.tolist()
        cols["loss.tau"][s] = [None if np.isnan(t) else float(t) for t in tau]
        cols["mix.m2.policy"][s] = policy.tolist()
        quality[s] += 2.0 - 1.5 * np.abs(alpha - 0.7) - 0.5 * np.abs(beta - alpha) + 10 * w
    cols["run.seed"] = abl_seed + rng.integers(0, seeds, n_search).tolist()
    df = pd.DataFrame(cols)
    df.insert(0, "sweep", "synthetic")
    df.insert(1, "trial_id", [f"t{i:05d}" for i in range(n_trials)])
    df.pop("method")
    df.insert(2, "method", method)
    # The position in the sweep YAML's methods, as an ablation writes it; search trials have none.
    rank = {m: i for i, m in enumerate(methods)}
    df.insert(3, "method_rank", pd.array([rank.get(m) for m in method], dtype="Int64"))
    df.insert(4, "seed", df["run.seed"])
    status = rng.choice(
        ["completed", "failed", "diverged", "early_stopped"],
        n_trials,
        p=[1 - fail_frac, fail_frac / 3, fail_frac / 3, fail_frac / 3],
    )
    df["status"] = status
    df["error"] = np.where(status == "completed", None, "synthetic " + status.astype(object))
    metrics = _metrics(rng, quality)
    if evals:
        forget = np.array([FORGET.get(m, _SEARCH_FORGET) for m in method])
        metrics.update(_probe_metrics(rng, quality, arithmetic=True))
        metrics.update(_eval_metrics(rng, quality, forget))
    done = status == "completed"
    df = pd.concat([df, pd.DataFrame({k: np.where(done, v, np.nan) for k, v in metrics.items()})], axis=1)
    df["steps"] = 100
    df["wall_s"] = rng.uniform(10, 20, n_trials)
    df["schema_version"] = SCHEMA_VERSION
    return df
