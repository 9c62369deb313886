"""The fused Gram kernel (``combo_ce.c``): one term's logits, cross-entropy and gradients in four passes.

On the CPU the Gram path's cost beyond its products is ``n×n`` passes: forming a term's logits from the
blocks (gathers, per-row and per-column coefficients), the log-sum-exp both ways, and the same again in the
backward, each a separate torch op that reads and writes a whole ``n×n`` matrix into a fresh buffer.
:func:`combo_ce` builds a term's logits row by row with the row and column maxima, takes both sums of
exponentials, and in the backward overwrites the logits with their gradient and adds every part's block and
coefficient gradients; the blocks' gradients of a step share one buffer (:class:`Collector`). The value
is ``_LineCE``'s on the logits ``Gram.logits`` would form (``tests/test_native.py``, 1e-5).

The C source is compiled on first use with the system C compiler (``cc``, glibc's ``libmvec`` for a
vectorised ``expf``, ``-fopenmp`` where torch's ``libgomp`` is loaded, so rows run on torch's thread pool)
into ``$GEOMIX_NATIVE_DIR`` (default ``~/.cache/geomix/native``), keyed by the source, the flags and the
CPU's feature flags, written atomically so concurrent workers may race; it is loaded with :mod:`ctypes`.
Where there is no compiler, the build fails, the tensors are not CPU float32, or ``GEOMIX_NATIVE=0``,
:func:`available` is false and the Gram path keeps its torch ops (the same values). ``docs/losses.md``,
*The fused Gram kernel*, has the design and the measurements.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from geomix.atomic import atomic_path

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("combo_ce.c")
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared"]
_LIBS = ["-lmvec", "-lm"]
# The smallest batch the Gram path hands to the kernel: below it the torch ops cost no more (n = 256 measured
# even, n = 64 the kernel's per-call set-up about 10 % dearer for m³-Mix), and small-batch runs, the default
# ablation's included, stay on the exact arithmetic they had before the kernel.
MIN_ROWS = 256
# Rows per thread below which a call uses fewer threads (a parallel region costs about as much as 64 rows).
ROWS_PER_THREAD = 64
_P = ctypes.c_void_p


class _Part(ctypes.Structure):
    _names = ("block", "rho", "rho_inv", "gam", "gam_inv", "r", "c", "dblock", "dr", "dc")
    _fields_ = [*((name, _P) for name in _names), ("first", ctypes.c_int64)]


class _BuildFailed(RuntimeError):
    """The compiler ran and refused the source (its message attached)."""


_lib: ctypes.CDLL | None = None
_tried = False
_off = 0


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def torch_libgomp() -> bool:
    """Whether torch runs its threads on GNU OpenMP, loaded in this process: the kernel is then built with
    ``-fopenmp`` and its ``libgomp.so.1`` resolves to that same library, so its parallel rows run on torch's
    own thread pool. Elsewhere a second OpenMP runtime would fight torch's for the cores: one thread."""
    return bool(gnu_openmp_loaded()) and "OpenMP" in torch.__config__.parallel_info()


def gnu_openmp_loaded() -> set[str]:
    """The mapped files named ``libgomp.so.1*``: the libraries that can answer a ``libgomp.so.1`` dependency.
    (Wheels that vendor their own copy, scikit-learn's or POT's, rename it ``libgomp-<hash>.so.1``.)"""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return set()
    paths = {line.split()[-1] for line in lines if "/" in line}
    return {p for p in paths if Path(p).name.startswith("libgomp.so.1")}


def _build() -> ctypes.CDLL | None:
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None or platform.system() != "Linux":
        return None
    src = _SOURCE.read_bytes()
    flags = [*_FLAGS, "-fopenmp" if torch_libgomp() else "-fopenmp-simd"]
    key = hashlib.sha256(b"\0".join([src, " ".join(flags + _LIBS).encode(), _cpu_flags().encode(),
                                     platform.machine().encode()])).hexdigest()[:16]
    root = Path(os.environ.get("GEOMIX_NATIVE_DIR") or Path.home() / ".cache" / "geomix" / "native")
    out = root / f"combo_ce-{key}.so"
    if not out.exists():
        # Another process may win the race: the same bytes. A failed build leaves nothing behind.
        with atomic_path(out) as tmp:
            cmd = [cc, *flags, str(_SOURCE), "-o", str(tmp), *_LIBS]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise _BuildFailed(f"{cc}: {done.stderr.strip()[:500]}")
    lib = ctypes.CDLL(str(out))
    i64 = ctypes.c_int64
    f32, i32 = ctypes.c_float, ctypes.c_int
    lib.combo_forward.argtypes = [_P, i64, i64, i64, _P, f32, i32, i32, _P, _P, _P, i64]
    lib.combo_forward.restype = None
    lib.combo_backward.argtypes = [_P, i64, i64, i64, f32, _P, _P, _P, _P, _P, i64, _P, _P, i64, _P, _P, _P,
                                   i64]
    lib.combo_backward.restype = ctypes.c_double
    return lib


def _library() -> ctypes.CDLL | None:
    global _lib, _tried
    if not _tried:
        _tried = True
        try:
            _lib = _build()
        except (OSError, subprocess.SubprocessError, _BuildFailed) as err:  # unwritable cache, stuck cc, ...
            log.warning("geomix: the fused Gram kernel is unavailable (%s); using torch ops", err)
            _lib = None
    return _lib


def available(device: torch.device) -> bool:
    """Whether :func:`combo_ce` runs here: a CPU tensor, ``GEOMIX_NATIVE`` not ``0``, not inside
    :func:`disabled`, the kernel built."""
    if device.type != "cpu" or _off or os.environ.get("GEOMIX_NATIVE", "1") == "0":
        return False
    return _library() is not None


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """The Gram path on its torch ops inside this block (tests and benchmarks compare the two)."""
    global _off
    _off += 1
    try:
        yield
    finally:
        _off -= 1


@dataclass(frozen=True)
class Part:
    """One summand of the logits: ``r[i]·c[j]·blocks[block][ρ(i), γ(j)]`` (``ρ``/``γ`` ``None``: identity;
    both are permutations, given with their inverses)."""

    block: int
    rho: torch.Tensor | None
    rho_inv: torch.Tensor | None
    gam: torch.Tensor | None
    gam_inv: torch.Tensor | None


@dataclass(frozen=True)
class Targets:
    """The cross-entropy's targets, per direction (``None``: that direction off): line weights ``w_r`` [R] /
    ``w_c`` [C], and the target mass ``val_r`` [Kr, R] at columns ``lab_r`` (row ``i`` puts ``val_r[k, i]``
    on column ``lab_r[k, i]``) / ``val_c`` [Kc, C] at rows ``lab_c``."""

    w_r: torch.Tensor | None
    w_c: torch.Tensor | None
    lab_r: torch.Tensor | None
    val_r: torch.Tensor | None
    lab_c: torch.Tensor | None
    val_c: torch.Tensor | None

    def picked(self, z: torch.Tensor) -> torch.Tensor:
        """``Σ mass · z[target]`` over both directions."""
        out = z.new_zeros(())
        if self.lab_r is not None:
            out = out + (z.gather(1, self.lab_r.T) * self.val_r.T).sum()
        if self.lab_c is not None:
            out = out + (z.gather(0, self.lab_c) * self.val_c).sum()
        return out


def targets(rows: tuple | None, cols: tuple | None) -> Targets:
    """:class:`Targets` from ``_LineCE``'s directions (``(dim, labels [K, L], V [K, L])``, see
    ``_common._targets``), ``rows`` the one along dim 1, ``cols`` along dim 0."""
    w_r = lab_r = val_r = w_c = lab_c = val_c = None
    if rows is not None:
        _, lab_r, val_r = rows
        lab_r, val_r = lab_r.contiguous(), val_r.float().contiguous()
        w_r = val_r.sum(0)
    if cols is not None:
        _, lab_c, val_c = cols
        lab_c, val_c = lab_c.contiguous(), val_c.float().contiguous()
        w_c = val_c.sum(0)
    return Targets(w_r, w_c, lab_r, val_r, lab_c, val_c)


# Logit buffers whose backward has run, kept for the next call of their shape: a fresh n×n buffer costs
# first-touch page faults, a reused one none.
_POOL: dict[tuple[int, int], list[torch.Tensor]] = {}
POOL_BYTES = 256 << 20


def _take(shape: tuple[int, int]) -> torch.Tensor:
    free = _POOL.get(shape)
    return free.pop() if free else torch.empty(shape)


def _give(z: torch.Tensor) -> None:
    held = sum(t.numel() * 4 for free in _POOL.values() for t in free)
    if held + z.numel() * 4 <= POOL_BYTES:
        _POOL.setdefault(tuple(z.shape), []).append(z)


def _threads(rows: int) -> int:
    """Threads for one call: torch's count (``GEOMIX_NATIVE_THREADS`` overrides it), fewer for a small
    matrix; the kernel runs them on torch's OpenMP pool (:func:`torch_libgomp`), or runs alone."""
    want = int(os.environ.get("GEOMIX_NATIVE_THREADS", "0")) or torch.get_num_threads()
    return max(1, min(want, rows // ROWS_PER_THREAD))


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _structs(parts, blocks, coefs, dblocks=None, dcoefs=None, fresh=frozenset()) -> ctypes.Array:
    """The kernel's ``Part`` array: pointers into tensors the caller keeps alive for the call; the first part
    on each block in ``fresh`` writes its gradient, every other part adds to it."""
    out = (_Part * len(parts))()
    seen = set()
    for j, (p, st) in enumerate(zip(parts, out)):
        st.block, st.rho, st.rho_inv = blocks[p.block].data_ptr(), _ptr(p.rho), _ptr(p.rho_inv)
        st.gam, st.gam_inv = _ptr(p.gam), _ptr(p.gam_inv)
        st.first, _ = p.block in fresh and p.block not in seen, seen.add(p.block)
        st.r, st.c = coefs[2 * j].data_ptr(), coefs[2 * j + 1].data_ptr()
        if dblocks is not None:
            st.dblock, st.dr, st.dc = _ptr(dblocks[p.block]), _ptr(dcoefs[2 * j]), _ptr(dcoefs[2 * j + 1])
    return out


class Collector:
    """One block's gradient, summed in place over every fused call that reads it (the block's first part in
    the first backward writes it, the rest add) and handed to autograd once, by :class:`_Collect`: one
    ``n×n`` buffer per block and step, where each call returning its own would cost a fresh buffer (page
    faults) and an add each."""

    def __init__(self, block: torch.Tensor) -> None:
        self.block = block.detach().contiguous()
        self.grad: torch.Tensor | None = None
        self.token = _Collect.apply(block, self)


class _Collect(torch.autograd.Function):
    """``block -> token`` (an empty tensor the fused calls take as input): its backward runs after every
    call that took the token (they are its only consumers) and returns the summed gradient."""

    @staticmethod
    def forward(ctx, block, collector):
        ctx.collector = collector
        return block.new_empty(0)

    @staticmethod
    def backward(ctx, _):
        grad, ctx.collector.grad = ctx.collector.grad, None
        return grad, None


class _ComboCE(torch.autograd.Function):
    """:func:`combo_ce`: inputs ``(parts, targets, shape, scale, diag, collectors, *tokens, *coefs)``."""

    @staticmethod
    def forward(ctx, parts, tg, shape, scale, diag, collectors, *tensors):
        n_r, n_c = shape
        coefs = tensors[len(collectors) :]
        blocks = [c.block for c in collectors]
        s = float(scale)
        z, lse_r, lse_c = _take((n_r, n_c)), torch.empty(n_r), torch.empty(n_c)
        _library().combo_forward(_structs(parts, blocks, coefs), len(parts), n_r, n_c, _ptr(diag), s,
                                 int(tg.w_r is not None), int(tg.w_c is not None), z.data_ptr(),
                                 lse_r.data_ptr(), lse_c.data_ptr(), _threads(n_r))
        picked = tg.picked(z)
        loss = -s * picked
        if tg.w_r is not None:
            loss = loss + (tg.w_r * lse_r).sum()
        if tg.w_c is not None:
            loss = loss + (tg.w_c * lse_c).sum()
        ctx.parts, ctx.tg, ctx.shape, ctx.s, ctx.has_diag = parts, tg, shape, s, diag is not None
        ctx.collectors, ctx.picked = collectors, float(picked)
        ctx.scale_grad = isinstance(scale, torch.Tensor) and ctx.needs_input_grad[3]
        ctx.spent = False
        ctx.save_for_backward(z, lse_r, lse_c, *coefs)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        if ctx.spent:
            raise RuntimeError("the fused Gram kernel's backward runs once (it overwrites its saved logits); "
                               "for retain_graph=True, set GEOMIX_NATIVE=0")
        ctx.spent = True
        z, lse_r, lse_c, *coefs = ctx.saved_tensors
        parts, tg, (n_r, n_c), s, collectors = ctx.parts, ctx.tg, ctx.shape, ctx.s, ctx.collectors
        blocks = [c.block for c in collectors]
        need = ctx.needs_input_grad[6:]
        fresh = set()  # blocks whose gradient buffer this call starts (its first part there writes it)
        for i, c in enumerate(collectors):
            if need[i] and c.grad is None:
                c.grad = torch.empty_like(c.block)
                fresh.add(i)
        dblocks = [c.grad if need[i] else None for i, c in enumerate(collectors)]
        # Every entry is written by the kernel.
        dcoefs = [torch.empty_like(c) if need[len(blocks) + i] else None for i, c in enumerate(coefs)]
        g = float(grad) * s  # dz = g·s·(softmax weights - targets)
        a = None if tg.w_r is None else (g * tg.w_r).float().contiguous()
        b = None if tg.w_c is None else (g * tg.w_c).float().contiguous()
        val_r = None if tg.val_r is None else (g * tg.val_r).contiguous()
        val_c = None if tg.val_c is None else (g * tg.val_c).contiguous()
        ddiag = torch.empty(n_r) if ctx.has_diag else None
        zdz = _library().combo_backward(
            _structs(parts, blocks, coefs, dblocks, dcoefs, fresh), len(parts), n_r, n_c, s, z.data_ptr(),
            lse_r.data_ptr(), _ptr(a), lse_c.data_ptr(), _ptr(b),
            0 if val_r is None else len(val_r), _ptr(tg.lab_r), _ptr(val_r),
            0 if val_c is None else len(val_c), _ptr(tg.lab_c), _ptr(val_c), _ptr(ddiag), _threads(n_r),
        ) - g * ctx.picked  # the targets' part of Σ dz·z
        _give(z)  # spent: nothing reads it again (a second backward is refused above)
        ds = torch.tensor(zdz / s, dtype=torch.float32) if ctx.scale_grad else None  # Σ dz·z / s
        tokens = [c.token.new_empty(0) if need[i] else None for i, c in enumerate(collectors)]
        return (None, None, None, ds, ddiag, None, *tokens, *dcoefs)


def combo_ce(collectors: list[Collector], parts: list[tuple[Part, torch.Tensor, torch.Tensor]],
             shape: tuple[int, int], tg: Targets, scale: float | torch.Tensor = 1.0,
             diag: torch.Tensor | None = None) -> torch.Tensor:
    """``_LineCE`` on the logits ``Σ_parts r[i]·c[j]·block[ρ(i), γ(j)]`` (``diag``: the diagonal replaced).

    ``collectors``: a :class:`Collector` per block (contiguous CPU float32 matrices of ``shape[1]`` columns),
    shared by every call of a step that reads the block; each part is ``(Part, r [R], c [C])`` with ``r``,
    ``c`` float32 vectors (which may require grad). Returns the summed loss (a 0-d tensor).
    """
    coefs = [t.contiguous() for _, r, c in parts for t in (r, c)]
    specs = tuple(p for p, _, _ in parts)
    diag = None if diag is None else diag.contiguous()
    tokens = [c.token for c in collectors]
    return _ComboCE.apply(specs, tg, shape, scale, diag, tuple(collectors), *tokens, *coefs)
