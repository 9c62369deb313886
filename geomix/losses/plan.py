"""Which terms take the Gram path (:mod:`geomix.losses.gram`): count the ``n×n×d`` products of each choice.

The Gram path trades products for ``n×n`` passes; a product costs about ``d/20`` passes on a CPU and far more
on a GPU, so the plan minimises products and, on a tie, keeps the smaller subset.
"""

from __future__ import annotations

import itertools

_GRAD_BASES = ("i", "t")  # the previous step's features ("ih", "th") are detached



# The blocks each term's logits read, as "left.right" (a row-set · a column-set), left with "p" appended for
# the partners' rows; "h" marks the previous step's features (history partners).
_NEEDS = {
    "clip": ("i.t", "t.i"),
    "m2": ("i.i", "i.t", "t.i", "t.t"),
    "v": ("i.t", "ip.t", "t.i"),
    "l": ("t.i", "tp.i", "i.t"),
    "vl": ("i.t", "ip.t", "t.i", "tp.i"),
}
_NEEDS_HIST = {
    "v": ("i.t", "ih.t", "i.th", "ih.th", "t.i", "t.ih", "th.i", "th.ih"),
    "l": ("t.i", "th.i", "t.ih", "th.ih", "i.t", "i.th", "ih.t", "ih.th"),
    "vl": ("i.t", "i.th", "ih.t", "ih.th", "t.i", "t.ih", "th.i", "th.ih"),
}
# Products of the direct kernels, forward + backward (all rows, local rows), in units of rows×n×d.
_DIRECT = {"m2": (6, 6), "v": (3, 6), "l": (3, 6), "vl": (3, 6)}
_DIRECT_HIST = {**_DIRECT, "v": (11, 11), "l": (11, 11)}


def needs(term: str, hist: bool) -> set[tuple[str, str, str]]:
    """The blocks ``term`` reads, as :attr:`Gram.requested` records them: ``(left, right, 'r' | 'p')``."""
    table = _NEEDS_HIST if hist and term in _NEEDS_HIST else _NEEDS
    out = set()
    for key in table[term]:
        left, right = key.split(".")
        permuted = left.endswith("p")
        out.add((left.removesuffix("p"), right, "p" if permuted else "r"))
    return out


def products(blocks: set[tuple[str, str, str]], local: bool) -> int:
    """Forward + backward products of ``blocks``: one forward, one backward per side that needs a gradient;
    with all rows a block and its transpose are one product, and ``a·aᵀ`` takes one backward product."""
    if local:
        return sum(1 + (a in _GRAD_BASES) + (b in _GRAD_BASES) for a, b, _ in blocks)
    pairs = {tuple(sorted((a, b))) for a, b, _ in blocks}
    return sum(1 + (a in _GRAD_BASES) + (b in _GRAD_BASES and b != a) for a, b in pairs)


def plan(terms: tuple[str, ...], local: bool, hist: bool) -> tuple[str, ...]:
    """The subset of ``terms`` (built-in names) to compute on the Gram path: fewest products in all,
    CLIP included, and on a tie the smaller subset (the direct kernels do less ``n×n`` work)."""
    direct = _DIRECT_HIST if hist else _DIRECT
    best: tuple[int, tuple[str, ...]] | None = None
    for k in range(len(terms) + 1):
        for subset in itertools.combinations(terms, k):
            blocks = set().union(needs("clip", hist), *(needs(t, hist) for t in subset))
            cost = products(blocks, local) + sum(direct[t][local] for t in terms if t not in subset)
            if best is None or cost < best[0]:
                best = (cost, subset)
    return best[1]
