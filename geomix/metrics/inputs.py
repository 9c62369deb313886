"""Input checks shared by every metric, and the row-block size that bounds their memory.

Each ``_check_*`` raises ``ValueError("X=v is invalid: allowed …")`` naming the argument, and returns the
value ready for the metric cores: embeddings L2-normalised in float32 (float64 stays float64), labels as
``torch.long`` on the embeddings' device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import torch

from geomix.checks import check_range

# At most this many entries per similarity block: bounds memory for large retrieval sets.
_BLOCK_ELEMS = 1 << 22


def _block(cols: int) -> int:
    """Rows per block so that a [rows, cols] block stays within _BLOCK_ELEMS entries."""
    return max(1, _BLOCK_ELEMS // max(cols, 1))


def _bad(name: str, value: object, allowed: str) -> NoReturn:
    # Not geomix.checks.fail: the values here are descriptions (``<given alone>``, ``non-finite``) and dtypes,
    # which read better without fail's repr() quotes.
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
