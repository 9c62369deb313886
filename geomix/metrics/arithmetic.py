"""SIMAT-style embedding arithmetic: does ``image(A) + delta * (text(B) - text(A))`` retrieve image(B)?

Scene B differs from scene A in one attribute (:data:`KINDS`); the queries and their gallery come from
:func:`geomix.data.arithmetic.build_arithmetic_set`. Every embedding is L2-normalised, the query is
``normalize(img[src] + delta * (tgt_txt - src_txt))``, and the gallery is ranked by cosine without the
query's own source image (returning the source would be the trivial answer). Ties are pessimistic as in
:mod:`geomix.metrics.retrieval`: the rank is the number of other candidates scoring >= the target, a hit at
K when it is < K (K clamped to the G - 1 candidates). A query that comes out as the zero vector scores 0
against every image and therefore misses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from geomix.checks import check_range
from geomix.metrics.inputs import _bad, _block, _check_embeddings, _check_ks, _check_labels, _check_same
from geomix.metrics.retrieval import _recall
from geomix.registry import ARITH_KEYS as _REGISTRY_KEYS
from geomix.registry import ARITH_KINDS

__all__ = ["ARITH_KEYS", "ARITH_KS", "KINDS", "arithmetic_keys", "arithmetic_retrieval"]

#: The edit kinds, in report order (declared once, in :data:`geomix.registry.ARITH_KINDS`).
KINDS: tuple[str, ...] = ARITH_KINDS
ARITH_KS: tuple[int, ...] = (1, 5)


def arithmetic_keys(ks: Sequence[int] = ARITH_KS, kinds: Sequence[str] = KINDS) -> tuple[str, ...]:
    """The keys of :func:`arithmetic_retrieval`, in order: overall ``arith_r{k}`` for every k, then
    ``arith_r{k}_{kind}`` per kind (in ``kinds`` order) and k."""
    return tuple(f"arith_r{k}" for k in ks) + tuple(f"arith_r{k}_{kind}" for kind in kinds for k in ks)


#: Every key for the default ks and all of :data:`KINDS`, overall first (the registry's list, which
#: :func:`arithmetic_keys` reproduces: a test checks it).
ARITH_KEYS: tuple[str, ...] = _REGISTRY_KEYS


def _check_kinds(kinds: object, n: int) -> list[str]:
    if isinstance(kinds, str) or not isinstance(kinds, Sequence):
        _bad("kinds", type(kinds).__name__, f"a sequence of {n} kinds from {KINDS}")
    if len(kinds) != n:
        _bad("len(kinds)", len(kinds), f"{n} (one kind per query)")
    for k in kinds:
        if k not in KINDS:
            _bad("kinds", repr(k), f"kinds from {KINDS}")
    return list(kinds)


def _ranks(gallery: torch.Tensor, query: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Rank of each target among the gallery without the query's source (pessimistic ties)."""
    n, g = query.shape[0], gallery.shape[0]
    ranks = torch.empty(n, dtype=torch.long, device=query.device)
    step = _block(g)
    for s in range(0, n, step):
        e = min(n, s + step)
        sim = query[s:e] @ gallery.T
        rows = torch.arange(e - s, device=query.device)
        own = sim[rows, tgt[s:e]].unsqueeze(1)
        sim[rows, src[s:e]] = -torch.inf
        # the target always satisfies sim >= own; it is not a competitor
        ranks[s:e] = (sim >= own).sum(dim=1) - 1
    return ranks


@torch.no_grad()
def arithmetic_retrieval(
    gallery_img: torch.Tensor,
    src_index: torch.Tensor,
    tgt_index: torch.Tensor,
    src_txt: torch.Tensor,
    tgt_txt: torch.Tensor,
    kinds: Sequence[str],
    *,
    delta: float = 1.0,
    ks: Sequence[int] = ARITH_KS,
) -> dict[str, float]:
    """Recall@K of embedding-arithmetic queries, overall and per edit kind, in percent.

    Args:
        gallery_img: [G, d] image embeddings of the gallery (every source and target), G >= 2.
        src_index: LongTensor [n], gallery row of each query's source image A.
        tgt_index: LongTensor [n], gallery row of each query's target image B (never the source's row).
        src_txt: [n, d] embeddings of the source texts.
        tgt_txt: [n, d] embeddings of the target texts.
        kinds: the edit kind of each query, from :data:`KINDS`.
        delta: positive weight of the text difference.
        ks: positive cut-offs K.

    Returns:
        ``arith_r{k}`` (mean over all queries) for every k, then ``arith_r{k}_{kind}`` for each kind with at
        least one query, in :data:`KINDS` order (the order of :func:`arithmetic_keys`).
    """
    ks = _check_ks(ks)
    check_range("delta", delta, 0.0, lo_open=True)
    gallery = _check_embeddings("gallery_img", gallery_img)
    src_txt = _check_embeddings("src_txt", src_txt, min_rows=1)
    tgt_txt = _check_embeddings("tgt_txt", tgt_txt, min_rows=1)
    n, g = src_txt.shape[0], gallery.shape[0]
    if tgt_txt.shape[0] != n:
        _bad("tgt_txt.shape[0]", tgt_txt.shape[0], f"{n} (paired with src_txt row by row)")
    gallery, src_txt = _check_same(gallery, src_txt, "gallery_img", "src_txt")
    gallery, tgt_txt = _check_same(gallery, tgt_txt, "gallery_img", "tgt_txt")
    src_txt = src_txt.to(gallery.dtype)
    src = _check_labels("src_index", src_index, n, g, gallery.device)
    tgt = _check_labels("tgt_index", tgt_index, n, g, gallery.device)
    same = (src == tgt).nonzero().flatten()
    if same.numel():
        queries = same[:5].tolist()
        _bad("tgt_index", f"<the source's row for queries {queries}>", "a target row != its source row")
    kinds = _check_kinds(kinds, n)

    query = gallery[src] + float(delta) * (tgt_txt - src_txt)
    query = query / query.norm(dim=1, keepdim=True).clamp_min(torch.finfo(query.dtype).tiny)
    ranks = _ranks(gallery, query, src, tgt)
    out = {f"arith_r{k}": _recall(ranks, k, g - 1) for k in ks}
    kind_of = torch.tensor([KINDS.index(k) for k in kinds], device=ranks.device)
    for j, kind in enumerate(KINDS):
        mask = kind_of == j
        if bool(mask.any()):
            for k in ks:
                out[f"arith_r{k}_{kind}"] = _recall(ranks[mask], k, g - 1)
    return out
