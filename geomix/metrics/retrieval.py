"""Image-text retrieval: Recall@K in both directions, with the pessimistic tie rule.

The image->text scan also yields the image-level calibration that :func:`geomix.metrics.evaluate_embeddings`
reports as ``ece`` when no class prompts are given, because it needs the same similarity blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from geomix.metrics.inputs import _block, _check_embeddings, _check_ks, _check_same, _check_txt_to_img

RETRIEVAL_KS: tuple[int, ...] = (1, 5, 10)


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
