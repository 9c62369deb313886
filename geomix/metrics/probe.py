"""Few-shot linear probe: k labelled images per class train a softmax classifier on frozen image embeddings.

For each ``k`` in ``shots`` and each of ``draws`` draws, :func:`draw_shots` picks ``k`` images per class as
the probe's training set and the rest of the set is its test set. A multinomial logistic regression
(weight + bias, L2 on the weight) is fitted by full-batch L-BFGS in float64 on the CPU, and
:func:`few_shot_probe` returns the test accuracy in percent, averaged over the draws.

The probe is written in torch rather than scikit-learn because the ``geomix`` package may not import scipy,
which scikit-learn needs (an import-linter contract: scikit-learn is only in the ``analysis`` extra).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from geomix.checks import check_range, check_seed, fail
from geomix.metrics.inputs import _bad, _check_embeddings

__all__ = ["few_shot_probe", "draw_shots", "check_shots"]

# L-BFGS stopping rule: max |gradient| of the (mean) objective, change of the loss / step, iteration cap.
_TOL_GRAD = 1e-6
_TOL_CHANGE = 1e-10
_MAX_ITER = 1000
_HISTORY = 20


def _as_labels(name: str, labels: object, n: int | None = None) -> torch.Tensor:
    """Class indices as a CPU LongTensor [n] (from a tensor or a sequence of ints), all >= 0."""
    if isinstance(labels, torch.Tensor):
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            _bad(f"{name}.dtype", labels.dtype, "an integer tensor (e.g. torch.long)")
        if labels.dim() != 1 or (n is not None and labels.shape[0] != n):
            _bad(f"{name}.shape", tuple(labels.shape), f"({n},) (one label per row of features)"
                 if n is not None else "a 1-D tensor [n]")
        out = labels.detach().to(device="cpu", dtype=torch.long)
    elif isinstance(labels, Sequence) and not isinstance(labels, (str, bytes)):
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in labels):
            _bad(name, type(labels).__name__, "a sequence of integer class indices")
        out = torch.tensor([int(v) for v in labels], dtype=torch.long)
        if n is not None and out.shape[0] != n:
            _bad(f"{name} length", out.shape[0], f"{n} (one label per row of features)")
    else:
        _bad(name, type(labels).__name__, "a torch.Tensor or a sequence of integer class indices")
    if out.numel() and int(out.min()) < 0:
        _bad(f"{name} value", int(out.min()), "integers >= 0 (class indices)")
    return out


def _check_shot_list(name: str, shots: object) -> tuple[int, ...]:
    allowed = "a non-empty sequence of integers >= 1 (images per class)"
    if isinstance(shots, (int, str, bytes)) or not isinstance(shots, Sequence) or len(shots) == 0:
        fail(name, shots, allowed)
    for k in shots:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            fail(name, tuple(shots), allowed)
    return tuple(dict.fromkeys(int(k) for k in shots))  # each k once, in the order given


def _class_counts(labels_counts_or_labels: object) -> dict[str, int]:
    """``{class name: images}`` over the classes that occur: from ``{class: count}`` or a list of labels."""
    if isinstance(labels_counts_or_labels, Mapping):
        counts = {}
        for c, m in labels_counts_or_labels.items():
            if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 0:
                _bad(f"counts[{c!r}]", m, "an integer >= 0 (images of the class)")
            if m > 0:
                counts[c if isinstance(c, str) else f"class {c}"] = int(m)
        return counts
    labels = _as_labels("labels", labels_counts_or_labels)
    classes, per = torch.unique(labels, return_counts=True)
    return {f"class {int(c)}": int(m) for c, m in zip(classes, per)}


def check_shots(labels_counts_or_labels: object, shots: object, where: str = "shots") -> tuple[int, ...]:
    """Refuse shot counts that leave some class without a test image, before any training starts.

    Args:
        labels_counts_or_labels: the evaluation set's labels (a LongTensor or a list of ints), or its class
            sizes as ``{class (name or index): images}``. Only classes that occur count.
        shots: the ``k`` values (images per class drawn for training).
        where: the name in the error, e.g. ``evaluation.fewshot_shots``.

    Returns the shots, each once, in the order given. Raises ``ValueError``
    (``where=16 is invalid: allowed at most 11 (the smallest class, 'class 7', has 12 images …)``) for a
    ``k`` >= the size of the smallest class, and for a set with fewer than two classes.
    """
    ks = _check_shot_list(where, shots)
    counts = _class_counts(labels_counts_or_labels)
    if len(counts) < 2:
        _bad("labels", f"<{len(counts)} class(es)>", "at least 2 classes with images")
    name, smallest = min(counts.items(), key=lambda item: item[1])
    for k in ks:
        if k >= smallest:
            images = f"{smallest} image{'s' if smallest != 1 else ''}"
            why = (f"(the smallest class, {name!r}, has {images} and at least one per class must stay out "
                   "for testing)")
            fail(where, k, f"at most {smallest - 1} {why}" if smallest > 1 else f"no value {why}")
    return ks


def _seed_for(seed: int, k: int, draw: int) -> np.random.Generator:
    # SeedSequence hashes the tuple: the same (seed, k, draw) gives the same stream in any process.
    return np.random.default_rng(np.random.SeedSequence((seed, k, draw)))


def _draw(labels: torch.Tensor, k: int, seed: int, draw: int) -> torch.Tensor:
    rng = _seed_for(seed, k, draw)
    lab = labels.numpy()
    picked = []
    for c in np.unique(lab):  # ascending class order, so the stream is used the same way every time
        members = np.flatnonzero(lab == c)
        picked.append(members[rng.permutation(members.size)[:k]])
    return torch.from_numpy(np.sort(np.concatenate(picked))).long()


def draw_shots(labels: object, k: int, seed: int = 0, draw: int = 0) -> torch.Tensor:
    """The training indices of one draw: exactly ``k`` images of every class that occurs in ``labels``.

    Deterministic in ``(seed, k, draw)`` (a numpy ``SeedSequence`` of the three), in any process. Returns a
    sorted LongTensor [k * classes]; the probe's test set is every other index.
    """
    labels = _as_labels("labels", labels)
    (k,) = check_shots(labels, [k], "k")
    check_seed("seed", seed)
    if isinstance(draw, bool) or not isinstance(draw, int) or draw < 0:
        fail("draw", draw, "an integer >= 0")
    return _draw(labels, k, seed, draw)


def _split(labels: torch.Tensor, k: int, seed: int, draw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices of one draw: the drawn shots and the rest."""
    train = _draw(labels, k, seed, draw)
    held_out = torch.ones(labels.shape[0], dtype=torch.bool)
    held_out[train] = False
    return train, held_out.nonzero().flatten()


def _fit(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float) -> torch.Tensor:
    """The [d + 1, C] weight (last row: bias) minimising mean cross-entropy + l2/2 * ||weight||^2."""
    xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    w = torch.zeros(xa.shape[1], n_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w], lr=1.0, max_iter=_MAX_ITER, tolerance_grad=_TOL_GRAD, tolerance_change=_TOL_CHANGE,
        history_size=_HISTORY, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xa @ w, y) + 0.5 * l2 * w[:-1].square().sum()
        loss.backward()
        return loss

    opt.step(closure)  # one step runs L-BFGS until a tolerance or the iteration cap
    return w.detach()


def few_shot_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    shots: Sequence[int],
    *,
    draws: int = 5,
    seed: int = 0,
    l2: float | None = None,
) -> dict[int, float]:
    """Few-shot linear-probe accuracy in percent: ``{k: mean test accuracy over the draws}``.

    Each draw trains on ``k`` images per class (:func:`draw_shots`) and tests on all the other images. The
    classifier is a softmax over the classes that occur, with a weight and a bias, fitted by full-batch
    L-BFGS (strong-Wolfe line search) in float64 on the CPU to ``max |grad| <= 1e-6`` (at most 1000
    iterations), from zero. Rows of ``features`` are L2-normalised first.

    The objective is ``mean cross-entropy + l2/2 * ||W||^2`` (the bias is not penalised). CLIP's protocol
    sweeps the L2 strength on a validation split, but k shots leave no validation data, so ``l2=None``
    uses ``1 / (k * C)``, one over the number of training images: the same as scikit-learn's default
    ``C = 1`` on the summed loss, i.e. a fixed prior whose weight shrinks as the shots grow. At one shot it
    is strong and the probe stays close to the class-mean (prototype) classifier, the sensible few-shot
    baseline; with more shots the data takes over.

    Args:
        features: [n, d] frozen image embeddings (float).
        labels: [n] integer class indices >= 0; only classes that occur count.
        shots: ``k`` values, each below the size of the smallest class (one test image per class must stay).
        draws: draws per ``k``, >= 1.
        seed: seeds the draws (with ``k`` and the draw index); the fit itself has no randomness.
        l2: the L2 strength (> 0), or None for ``1 / (k * C)``.
    """
    x = _check_embeddings("features", features).detach().to(device="cpu", dtype=torch.float64)
    y = _as_labels("labels", labels, x.shape[0])
    ks = check_shots(y, shots, "shots")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        fail("draws", draws, "an integer >= 1")
    check_seed("seed", seed)
    if l2 is not None:
        check_range("l2", l2, 0.0, lo_open=True)
    classes, y = torch.unique(y, return_inverse=True)  # only the classes present, as 0..C-1
    n_classes = classes.numel()
    out: dict[int, float] = {}
    with torch.enable_grad():
        for k in ks:
            strength = float(l2) if l2 is not None else 1.0 / (k * n_classes)
            accs = []
            for d in range(draws):
                train, test = _split(y, k, seed, d)
                w = _fit(x[train], y[train], n_classes, strength)
                pred = (x[test] @ w[:-1] + w[-1]).argmax(dim=1)
                accs.append(100.0 * (pred == y[test]).double().mean().item())
            out[k] = sum(accs) / len(accs)
    return out
