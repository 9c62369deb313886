"""Evaluation metrics for image-text embeddings: retrieval, alignment / uniformity, modality gap, calibration.

Everything takes embeddings as torch tensors (CPU or CUDA) and returns Python floats. Rows are L2-normalised
here (a no-op for already normalised features), so every metric is the one of the unit sphere. Half-precision
inputs are upcast to float32, float64 stays float64. Any ``n x m`` similarity matrix is built in row blocks of
at most ``_BLOCK_ELEMS`` entries (4M, i.e. 16 MB per float32 block): ``evaluate_embeddings`` on 5k images x
25k captions x 512 dims peaks at ~280 MB extra RSS on the CPU (input copies included) against ~1.6 GB with one
full block.

Conventions (see ``losses.md``, section Metrics):

- Retrieval ``R@K`` in percent. Image->text: a hit when ANY caption of the image is within the top K.
  Text->image: a hit when the caption's own image is within the top K. Ties are counted pessimistically: the
  rank of a query is the number of wrong candidates whose score is >= the best correct score, so a tie with
  a wrong candidate never helps (a fully collapsed embedding scores 0 for every K below the number of
  candidates, not 100).
- ``align`` and ``unif`` follow the paper's (seed) definitions; both are higher-is-better.
- ``unif_img`` / ``unif_txt`` are the standard Wang-Isola within-modality uniformity
  ``log E_{i != j} exp(-2 ||x_i - x_j||^2)``: NEGATIVE numbers, LOWER = more uniform (not negated, so they
  compare directly with published Wang-Isola values). :data:`HIGHER_IS_BETTER` records every direction.
- ``ece`` is the expected calibration error in percent with 15 equal-width confidence bins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NoReturn

import torch

from geomix.config import check_range

METRIC_KEYS: tuple[str, ...] = (
    "r1_i2t", "r5_i2t", "r10_i2t", "r1_t2i", "r5_t2i", "r10_t2i", "rsum",
    "align", "unif", "unif_img", "unif_txt", "gap", "cos_pos", "cos_neg", "zs_acc", "ece",
)  # fmt: skip
"""The keys of :func:`evaluate_embeddings`, in order."""

HIGHER_IS_BETTER: dict[str, bool | None] = {
    **{k: True for k in METRIC_KEYS[:7]},
    "align": True,
    "unif": True,
    "unif_img": False,  # Wang-Isola value, lower = more uniform
    "unif_txt": False,
    "gap": None,  # descriptive: the paper argues for a smaller gap, but it is not a score
    "cos_pos": None,
    "cos_neg": None,
    "zs_acc": True,
    "ece": False,
}
"""Direction of each metric: True = higher is better, False = lower is better, None = descriptive."""

DEFAULT_SCALE = 100.0
"""Logit scale (1/τ with τ = 0.01, as the authors' code) for retrieval ECE and zero-shot softmax."""

RETRIEVAL_KS: tuple[int, ...] = (1, 5, 10)

# At most this many entries per similarity block: bounds memory for large retrieval sets.
_BLOCK_ELEMS = 1 << 22

# Probability rows may sum to 1 only up to float32 softmax round-off over many classes.
_PROB_SUM_ATOL = 1e-3


# ----------------------------------------------------------------------------------------------------------
# validation


def _bad(name: str, value: object, allowed: str) -> NoReturn:
    raise ValueError(f"{name}={value} is invalid: allowed {allowed}")


def _check_embeddings(name: str, x: object, min_rows: int = 2) -> torch.Tensor:
    """Validate a [rows, d] embedding matrix and return it L2-normalised in float32 (or float64)."""
    if not isinstance(x, torch.Tensor):
        _bad(name, type(x).__name__, "a torch.Tensor")
    if x.dim() != 2 or x.shape[1] < 1:
        _bad(f"{name}.shape", tuple(x.shape), "a 2-D tensor [rows, dim] with dim >= 1")
    if x.shape[0] < min_rows:
        _bad(f"{name}.shape[0]", x.shape[0], f">= {min_rows} rows")
    if not x.dtype.is_floating_point:
        _bad(f"{name}.dtype", x.dtype, "a floating-point tensor")
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        rows = (~finite).nonzero().flatten()[:5].tolist()
        _bad(f"{name} rows {rows}", "non-finite", "finite values only")
    norm = x.norm(dim=1, keepdim=True)
    if not bool((norm > 0).all()):
        rows = (norm.flatten() == 0).nonzero().flatten()[:5].tolist()
        _bad(f"{name} rows {rows}", "zero vectors", "rows with non-zero norm (they are L2-normalised)")
    return x / norm


def _check_same(
    a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same width and device; promote both to a common float dtype."""
    if a.shape[1] != b.shape[1]:
        _bad(f"{b_name}.shape[1]", b.shape[1], f"{a.shape[1]} (the width of {a_name})")
    if a.device != b.device:
        _bad(f"{b_name}.device", b.device, f"{a.device} (the device of {a_name})")
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def _check_paired(img: object, txt: object) -> tuple[torch.Tensor, torch.Tensor]:
    img = _check_embeddings("img", img)
    txt = _check_embeddings("txt", txt)
    if txt.shape[0] != img.shape[0]:
        _bad("txt.shape[0]", txt.shape[0], f"{img.shape[0]} (paired with img row by row)")
    return _check_same(img, txt, "img", "txt")


def _check_labels(name: str, labels: object, n: int, n_classes: int, device: torch.device) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        _bad(name, type(labels).__name__, "a torch.Tensor of integer indices")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        _bad(f"{name}.dtype", labels.dtype, "an integer tensor (e.g. torch.long)")
    if tuple(labels.shape) != (n,):
        _bad(f"{name}.shape", tuple(labels.shape), f"({n},)")
    labels = labels.to(device=device, dtype=torch.long)
    outside = (labels < 0) | (labels >= n_classes)
    if bool(outside.any()):
        _bad(f"{name} value", int(labels[outside][0]), f"integers in [0, {n_classes - 1}]")
    return labels


def _check_txt_to_img(txt_to_img: object, n: int, m: int, device: torch.device) -> torch.Tensor:
    """Return the caption -> image map as a LongTensor [m]; every image must have a caption."""
    if txt_to_img is None:
        if m != n:
            _bad("txt.shape[0]", m, f"{n} (one caption per image) when txt_to_img is None")
        return torch.arange(n, device=device)
    t2i = _check_labels("txt_to_img", txt_to_img, m, n, device)
    captionless = torch.bincount(t2i, minlength=n) == 0
    if bool(captionless.any()):
        images = captionless.nonzero().flatten()[:5].tolist()
        _bad("txt_to_img", f"<no caption for images {images}>", "a map that gives every image >= 1 caption")
    return t2i


def _check_ks(ks: object) -> tuple[int, ...]:
    if isinstance(ks, (int, str)) or not isinstance(ks, Sequence) or len(ks) == 0:
        _bad("ks", ks, "a non-empty sequence of positive integers")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            _bad("ks", tuple(ks), "a non-empty sequence of positive integers")
    return tuple(ks)


def _check_n_bins(n_bins: object) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        _bad("n_bins", n_bins, "an integer >= 1")
    return n_bins


def _check_scale(scale: object) -> float:
    check_range("scale", scale, 0.0, lo_open=True)
    return float(scale)


# ----------------------------------------------------------------------------------------------------------
# cores (inputs already validated and normalised)


def _block(cols: int) -> int:
    """Rows per block so that a [rows, cols] block stays within _BLOCK_ELEMS entries."""
    return max(1, _BLOCK_ELEMS // max(cols, 1))


def _i2t_scan(
    img: torch.Tensor, txt: torch.Tensor, t2i: torch.Tensor, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Image->text ranks (pessimistic ties, any caption counts) and, with ``scale``, image-level calibration.

    Returns:
        ranks: LongTensor [n], number of wrong captions scoring >= the image's best own caption.
        conf: [n] or None. ``p = softmax(scale * cos(img_i, txt))`` over the m captions is summed per image
            (the "class" of a caption is its image); conf is the largest per-image mass.
        hit: BoolTensor [n] or None, the image's own mass is strictly larger than every other image's.
    """
    n, m = img.shape[0], txt.shape[0]
    ranks = torch.empty(n, dtype=torch.long, device=img.device)
    conf = hit = None
    if scale is not None:
        conf = torch.empty(n, dtype=img.dtype, device=img.device)
        hit = torch.empty(n, dtype=torch.bool, device=img.device)
    table = None if scale is None else _caption_table(t2i, n)
    step = _block(m if table is None else max(m, table.numel()))
    for s in range(0, n, step):
        e = min(n, s + step)
        sim = img[s:e] @ txt.T
        own = t2i.unsqueeze(0) == torch.arange(s, e, device=img.device).unsqueeze(1)
        best = sim.masked_fill(~own, -math.inf).amax(dim=1, keepdim=True)
        ranks[s:e] = ((sim >= best) & ~own).sum(dim=1)
        if scale is not None:
            # Summing over an image's captions keeps the confidence meaningful with 5 captions per image:
            # 5 near-equal good captions would otherwise cap the top-caption probability near 0.2.
            # gather + sum in a fixed order (not index_add_, whose CUDA atomics reorder the sum), so equal
            # caption sets give bit-equal masses and ties stay ties on every device
            p = torch.cat([torch.softmax(sim * scale, dim=1), sim.new_zeros(e - s, 1)], dim=1)
            mass = p[:, table].sum(dim=2)
            rows, cols = torch.arange(e - s, device=img.device), torch.arange(s, e, device=img.device)
            own_mass = mass[rows, cols]
            mass[rows, cols] = -math.inf
            rival = mass.amax(dim=1)
            conf[s:e] = torch.maximum(own_mass, rival)
            hit[s:e] = own_mass > rival  # a tie with another image counts as a miss, as in retrieval
    return ranks, conf, hit


def _t2i_ranks(img: torch.Tensor, txt: torch.Tensor, t2i: torch.Tensor) -> torch.Tensor:
    """Text->image ranks: number of other images scoring >= the caption's own image."""
    n, m = img.shape[0], txt.shape[0]
    ranks = torch.empty(m, dtype=torch.long, device=img.device)
    step = _block(n)
    for s in range(0, m, step):
        e = min(m, s + step)
        sim = txt[s:e] @ img.T
        own = sim.gather(1, t2i[s:e].unsqueeze(1))
        # the own image always satisfies sim >= own; it is not a competitor
        ranks[s:e] = (sim >= own).sum(dim=1) - 1
    return ranks


def _recall(ranks: torch.Tensor, k: int, n_candidates: int) -> float:
    return 100.0 * (ranks < min(k, n_candidates)).double().mean().item()


def _sqdist_from_cos(cos: torch.Tensor) -> torch.Tensor:
    # ||a - b||^2 = 2 - 2 a.b on the unit sphere; clamp the round-off below 0
    return (2.0 - 2.0 * cos).clamp_min(0.0)


def _alignment(img: torch.Tensor, txt: torch.Tensor) -> float:
    n = img.shape[0]
    total = torch.zeros((), dtype=torch.float64, device=img.device)
    step = _block(n)
    for s in range(0, n, step):
        e = min(n, s + step)
        sim = img[s:e] @ txt.T
        rows, cols = torch.arange(e - s, device=img.device), torch.arange(s, e, device=img.device)
        pos = sim[rows, cols]  # advanced indexing copies, so masking sim below keeps pos intact
        sim[rows, cols] = -math.inf
        hardest_neg = sim.amax(dim=1)
        total += (_sqdist_from_cos(pos) - _sqdist_from_cos(hardest_neg)).double().sum()
    return -(total / n).item()


def _log_mean_exp_sqdist(a: torch.Tensor, b: torch.Tensor, t: float, skip_diagonal: bool) -> float:
    """log mean_{i,j} exp(-t ||a_i - b_j||^2), over i != j when ``skip_diagonal`` (a is b)."""
    n, m = a.shape[0], b.shape[0]
    parts = []
    step = _block(m)
    for s in range(0, n, step):
        e = min(n, s + step)
        v = -t * _sqdist_from_cos(a[s:e] @ b.T)
        if skip_diagonal:
            v[torch.arange(e - s, device=a.device), torch.arange(s, e, device=a.device)] = -math.inf
        parts.append(torch.logsumexp(v.flatten(), dim=0))
    count = n * (n - 1) if skip_diagonal else n * m
    return (torch.logsumexp(torch.stack(parts), dim=0).double() - math.log(count)).item()


def _modality_gap(img: torch.Tensor, txt: torch.Tensor) -> dict[str, float]:
    n = img.shape[0]
    img64, txt64 = img.double(), txt.double()
    pos = (img64 * txt64).sum(dim=1)
    # sum_{i != j} <I_i, T_j> = <sum_i I_i, sum_j T_j> - sum_i <I_i, T_i>: no n x n matrix needed
    neg_sum = img64.sum(dim=0) @ txt64.sum(dim=0) - pos.sum()
    return {
        "gap": (img64.mean(dim=0) - txt64.mean(dim=0)).norm().item(),
        "cos_pos": pos.mean().item(),
        "cos_neg": (neg_sum / (n * (n - 1))).item(),
    }


def _ece(conf: torch.Tensor, correct: torch.Tensor, n_bins: int) -> float:
    """ECE in percent; bin b holds confidences in (b/n_bins, (b+1)/n_bins], with 0 in the first bin."""
    conf = conf.double()
    bins = (conf * n_bins).ceil().long().clamp(1, n_bins) - 1
    conf_sum = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).index_add_(0, bins, conf)
    acc_sum = torch.zeros_like(conf_sum).index_add_(0, bins, correct.double())
    # sum_b |B_b|/n * |acc_b - conf_b| = sum_b |acc_sum_b - conf_sum_b| / n
    return (100.0 * (acc_sum - conf_sum).abs().sum() / conf.shape[0]).item()


def _zero_shot(
    img: torch.Tensor, class_txt: torch.Tensor, labels: torch.Tensor, scale: float, n_bins: int = 15
) -> dict[str, float]:
    n = img.shape[0]
    conf = torch.empty(n, dtype=img.dtype, device=img.device)
    pred = torch.empty(n, dtype=torch.long, device=img.device)
    step = _block(class_txt.shape[0])
    for s in range(0, n, step):
        e = min(n, s + step)
        logits = scale * (img[s:e] @ class_txt.T)
        top, pred[s:e] = logits.max(dim=1)
        conf[s:e] = torch.exp(top - torch.logsumexp(logits, dim=1))
    correct = pred == labels
    return {"zs_acc": 100.0 * correct.double().mean().item(), "ece": _ece(conf, correct, n_bins)}


def _caption_table(t2i: torch.Tensor, n: int) -> torch.Tensor:
    """LongTensor [n, max captions per image]: each image's caption indices, padded with m (zero column)."""
    m = t2i.shape[0]
    order = torch.argsort(t2i, stable=True)
    counts = torch.bincount(t2i, minlength=n)
    starts = torch.cumsum(counts, dim=0) - counts
    grouped = t2i[order]
    table = torch.full((n, int(counts.max())), m, dtype=torch.long, device=t2i.device)
    table[grouped, torch.arange(m, device=t2i.device) - starts[grouped]] = order
    return table


def _first_caption(t2i: torch.Tensor, n: int) -> torch.Tensor:
    """Index of the first caption (lowest txt row) of every image: LongTensor [n]."""
    m = t2i.shape[0]
    first = torch.full((n,), m, dtype=torch.long, device=t2i.device)
    return first.scatter_reduce(0, t2i, torch.arange(m, device=t2i.device), reduce="amin")


# ----------------------------------------------------------------------------------------------------------
# public API


@torch.no_grad()
def retrieval_recall(
    img: torch.Tensor,
    txt: torch.Tensor,
    ks: Sequence[int] = RETRIEVAL_KS,
    txt_to_img: torch.Tensor | None = None,
) -> dict[str, float]:
    """Recall@K for image->text and text->image retrieval by cosine similarity, in percent.

    Ties are pessimistic: a query's rank is the number of WRONG candidates whose score is >= the best correct
    score, and it is a hit at K when that rank is < K. A tie therefore never inflates recall, and the result
    does not depend on the order of the candidates. K larger than the number of candidates is clamped to it
    (every query then hits).

    Args:
        img: [n, d] image embeddings, n >= 2 (L2-normalised here).
        txt: [m, d] caption embeddings (L2-normalised here).
        ks: positive cut-offs K.
        txt_to_img: LongTensor [m], image index of each caption; every image needs >= 1 caption. None means
            one caption per image with caption i <-> image i (m == n).

    Returns:
        ``{"r{k}_i2t": ..., "r{k}_t2i": ...}`` for every k. Image->text hits when ANY caption of the image
        is in the top K (the 5-caption protocol); text->image when the caption's own image is.
    """
    ks = _check_ks(ks)
    img = _check_embeddings("img", img)
    txt = _check_embeddings("txt", txt, min_rows=1)
    img, txt = _check_same(img, txt, "img", "txt")
    t2i = _check_txt_to_img(txt_to_img, img.shape[0], txt.shape[0], img.device)
    i2t, _, _ = _i2t_scan(img, txt, t2i)
    t2i_ranks = _t2i_ranks(img, txt, t2i)
    out = {}
    for k in ks:
        out[f"r{k}_i2t"] = _recall(i2t, k, txt.shape[0])
        out[f"r{k}_t2i"] = _recall(t2i_ranks, k, img.shape[0])
    return out


@torch.no_grad()
def alignment(img: torch.Tensor, txt: torch.Tensor) -> float:
    """Seed alignment ``-E_i[ ||I_i - T_i||^2 - min_{k != i} ||I_i - T_k||^2 ]``; higher is better.

    Positive when every image is closer to its own caption than to the hardest other caption.

    Args:
        img: [n, d] image embeddings, n >= 2 (L2-normalised here).
        txt: [n, d] caption embeddings, row i is the positive of image i.
    """
    img, txt = _check_paired(img, txt)
    return _alignment(img, txt)


@torch.no_grad()
def uniformity(img: torch.Tensor, txt: torch.Tensor) -> float:
    """Seed cross-modal uniformity ``-log E_{i,j} exp(-2 ||I_i - T_j||^2)`` over all image-text pairs.

    Higher is better; the range on the unit sphere is [0, 8]. Computed with logsumexp, so it is stable.

    Args:
        img: [n, d] image embeddings, n >= 2 (L2-normalised here).
        txt: [m, d] caption embeddings, m >= 2.
    """
    img = _check_embeddings("img", img)
    txt = _check_embeddings("txt", txt)
    img, txt = _check_same(img, txt, "img", "txt")
    return -_log_mean_exp_sqdist(img, txt, 2.0, skip_diagonal=False)


@torch.no_grad()
def within_uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """Wang-Isola uniformity of one modality, ``log E_{i != j} exp(-t ||x_i - x_j||^2)``.

    The standard (not negated) value: it is <= 0 and LOWER means more uniform (the opposite direction from
    :func:`uniformity`; see :data:`HIGHER_IS_BETTER`). Identical rows give 0.

    Args:
        x: [n, d] embeddings, n >= 2 (L2-normalised here).
        t: positive temperature of the Gaussian potential.
    """
    check_range("t", t, 0.0, lo_open=True)
    x = _check_embeddings("x", x)
    return _log_mean_exp_sqdist(x, x, float(t), skip_diagonal=True)


@torch.no_grad()
def modality_gap(img: torch.Tensor, txt: torch.Tensor) -> dict[str, float]:
    """Modality gap and mean positive / negative cosine, in O(n d) (no n x n matrix).

    Args:
        img: [n, d] image embeddings, n >= 2 (L2-normalised here).
        txt: [n, d] caption embeddings, row i is the positive of image i.

    Returns:
        ``gap`` = ||mean(I) - mean(T)||, ``cos_pos`` = mean_i cos(I_i, T_i),
        ``cos_neg`` = mean_{i != j} cos(I_i, T_j).
    """
    img, txt = _check_paired(img, txt)
    return _modality_gap(img, txt)


@torch.no_grad()
def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error in percent: ``100 * sum_b |B_b|/n * |acc_b - conf_b|``.

    Confidence is the max probability of a row and the prediction its argmax (the first index on ties).
    Bins are ``n_bins`` equal-width intervals ``(b/n_bins, (b+1)/n_bins]`` (a confidence of exactly 0 goes to
    the first bin).

    Args:
        probs: [n, C] probabilities in [0, 1], rows summing to 1 (within 1e-3).
        labels: [n] integer class indices in [0, C).
        n_bins: number of bins, >= 1.
    """
    n_bins = _check_n_bins(n_bins)
    if not isinstance(probs, torch.Tensor):
        _bad("probs", type(probs).__name__, "a torch.Tensor")
    if probs.dim() != 2 or probs.shape[0] < 1 or probs.shape[1] < 1:
        _bad("probs.shape", tuple(probs.shape), "a 2-D tensor [n >= 1, classes >= 1]")
    if not probs.dtype.is_floating_point:
        _bad("probs.dtype", probs.dtype, "a floating-point tensor")
    probs = probs.to(torch.promote_types(probs.dtype, torch.float32))
    if not bool(torch.isfinite(probs).all()):
        _bad("probs", "<non-finite values>", "finite probabilities in [0, 1]")
    lo, hi = probs.min().item(), probs.max().item()
    if lo < 0.0 or hi > 1.0:
        _bad("probs", f"<values in [{lo:g}, {hi:g}]>", "probabilities in [0, 1]")
    sums = probs.sum(dim=1, dtype=torch.float64)
    worst = int((sums - 1.0).abs().argmax())
    if abs(sums[worst].item() - 1.0) > _PROB_SUM_ATOL:
        _bad(f"probs row {worst} sum", f"{sums[worst].item():g}", f"1 (within {_PROB_SUM_ATOL:g})")
    labels = _check_labels("labels", labels, probs.shape[0], probs.shape[1], probs.device)
    conf, pred = probs.max(dim=1)
    return _ece(conf, pred == labels, n_bins)


@torch.no_grad()
def zero_shot(
    img: torch.Tensor, class_txt: torch.Tensor, labels: torch.Tensor, scale: float = DEFAULT_SCALE
) -> dict[str, float]:
    """Zero-shot classification by nearest class prompt: accuracy and ECE (15 bins), both in percent.

    The prediction is the argmax of ``scale * cos(img, class_txt)`` (first class on ties) and the confidence
    its softmax probability.

    Args:
        img: [n, d] image embeddings (L2-normalised here).
        class_txt: [C, d] class-prompt embeddings (L2-normalised here).
        labels: [n] integer class indices in [0, C).
        scale: positive logit scale (1/τ).
    """
    scale = _check_scale(scale)
    img = _check_embeddings("img", img, min_rows=1)
    class_txt = _check_embeddings("class_txt", class_txt, min_rows=1)
    img, class_txt = _check_same(img, class_txt, "img", "class_txt")
    labels = _check_labels("labels", labels, img.shape[0], class_txt.shape[0], img.device)
    return _zero_shot(img, class_txt, labels, scale)


@torch.no_grad()
def evaluate_embeddings(
    img: torch.Tensor,
    txt: torch.Tensor,
    txt_to_img: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    class_txt: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, float]:
    """Every evaluation metric of a test set, with exactly the keys of :data:`METRIC_KEYS`.

    - ``r{1,5,10}_{i2t,t2i}``, ``rsum`` (sum of the six): see :func:`retrieval_recall`, over all captions.
    - Pair metrics ``align``, ``unif``, ``unif_img``, ``unif_txt``, ``gap``, ``cos_pos``, ``cos_neg`` use the
      n pairs (image i, FIRST caption of image i in txt order), i.e. the one-caption-per-image protocol of the
      authors' code; with ``txt_to_img=None`` that is simply row i of txt.
    - With ``class_txt`` and ``labels``: ``zs_acc`` and ``ece`` from :func:`zero_shot`. Without them:
      ``zs_acc`` is NaN and ``ece`` is that of image->text retrieval seen as classification of image i
      among the n images through its captions: ``p = softmax(scale * cos(img_i, txt))`` over ALL m captions,
      the mass of image g is the sum of ``p`` over g's captions ("any caption of the image" is the correct
      class), confidence = the largest mass, correct = image i's own mass is strictly the largest (ties
      pessimistic, as in retrieval). With one caption per image the accuracy behind it equals ``r1_i2t``.

    Args:
        img: [n, d] image embeddings, n >= 2.
        txt: [m, d] caption embeddings.
        txt_to_img: LongTensor [m] caption -> image index, or None for one caption per image (m == n).
        scale: positive logit scale for the ECE / zero-shot softmax; None = 100 (τ = 0.01).
        class_txt: [C, d] class-prompt embeddings, given together with ``labels``.
        labels: [n] integer class of each image in [0, C).
    """
    scale = DEFAULT_SCALE if scale is None else _check_scale(scale)
    if (class_txt is None) != (labels is None):
        given = "class_txt" if labels is None else "labels"
        _bad(given, "<given alone>", "class_txt and labels together, or neither")
    img = _check_embeddings("img", img)
    txt = _check_embeddings("txt", txt, min_rows=1)
    img, txt = _check_same(img, txt, "img", "txt")
    n, m = img.shape[0], txt.shape[0]
    t2i = _check_txt_to_img(txt_to_img, n, m, img.device)
    if class_txt is not None:
        class_txt = _check_embeddings("class_txt", class_txt, min_rows=1)
        img, class_txt = _check_same(img, class_txt, "img", "class_txt")
        txt = txt.to(img.dtype)
        labels = _check_labels("labels", labels, n, class_txt.shape[0], img.device)

    i2t_ranks, conf, hit = _i2t_scan(img, txt, t2i, scale)
    t2i_ranks = _t2i_ranks(img, txt, t2i)
    out: dict[str, float] = {}
    for k in RETRIEVAL_KS:
        out[f"r{k}_i2t"] = _recall(i2t_ranks, k, m)
        out[f"r{k}_t2i"] = _recall(t2i_ranks, k, n)
    out["rsum"] = sum(out[f"r{k}_{d}"] for d in ("i2t", "t2i") for k in RETRIEVAL_KS)

    pair_txt = txt[_first_caption(t2i, n)]
    out["align"] = _alignment(img, pair_txt)
    out["unif"] = -_log_mean_exp_sqdist(img, pair_txt, 2.0, skip_diagonal=False)
    out["unif_img"] = _log_mean_exp_sqdist(img, img, 2.0, skip_diagonal=True)
    out["unif_txt"] = _log_mean_exp_sqdist(pair_txt, pair_txt, 2.0, skip_diagonal=True)
    out.update(_modality_gap(img, pair_txt))

    if class_txt is None:
        out["zs_acc"] = math.nan
        out["ece"] = _ece(conf, hit, 15)
    else:
        out.update(_zero_shot(img, class_txt, labels, scale))
    return {k: out[k] for k in METRIC_KEYS}
