"""NumPy's own BLAS GEMM, called directly: `out = a @ b (+ out)` on strided views.

np.matmul cannot add into its output (BLAS's beta) nor read a matrix whose rows are
further apart than its width without copying it. Shifted GEMMs need both: each window
offset multiplies the kernel's slice by the padded image read at a shift (rows one image
plane apart), and adds the product into the same output. This module finds the BLAS
library NumPy itself loaded (threadpoolctl lists it; the same library, so the same thread
pool) and calls its `cblas_sgemm` / `cblas_dgemm` through ctypes, with the views' own
strides as leading dimensions: no copies.

`available(dtype)` says whether this works here (a BLAS NumPy loaded that has CBLAS, and a
first product that agrees with np.matmul); the planner chooses shifted GEMMs only then.
"""

from __future__ import annotations

import ctypes
import functools
import pathlib
from typing import Any

import numpy as np

__all__ = ["available", "gemm", "library"]

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# How BLAS builds name their CBLAS symbols: plain; SciPy's OpenBLAS wheels (NumPy's own)
# prefix "scipy_" and, with 64-bit integers, suffix "64_".
_AFFIXES = (("", ""), ("scipy_", "64_"), ("scipy_", ""), ("", "64_"), ("", "_64"))


@functools.cache
def library() -> dict[str, Any] | None:
    """NumPy's BLAS: {'path', 'api', 'sgemm', 'dgemm'} with ctypes functions, or None."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    numpy_dir = pathlib.Path(np.__file__).resolve().parent.parent
    loaded = [info for info in threadpool_info() if info.get("user_api") == "blas"]
    # NumPy's wheels bundle their BLAS beside the package (numpy.libs, numpy/.dylibs);
    # another library loaded by another package (PyTorch's) would be another thread pool
    ours = [info for info in loaded if pathlib.Path(info["filepath"]).resolve()
            .is_relative_to(numpy_dir)] or loaded[:1]
    for info in ours:
        try:
            dynlib = ctypes.CDLL(info["filepath"])
        except OSError:
            continue
        for prefix, suffix in _AFFIXES:
            names = {kind: f"{prefix}cblas_{kind}{suffix}" for kind in ("sgemm", "dgemm")}
            if all(hasattr(dynlib, name) for name in names.values()):
                integer = ctypes.c_int64 if "64" in suffix else ctypes.c_int
                functions = {kind: _declared(getattr(dynlib, name), integer, real)
                             for (kind, name), real in zip(names.items(),
                                                           (ctypes.c_float, ctypes.c_double))}
                return {"path": info["filepath"], "api": info.get("internal_api"), **functions}
    return None


def _declared(function, integer, real):
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer, integer,
                         real, ctypes.c_void_p, integer, ctypes.c_void_p, integer,
                         real, ctypes.c_void_p, integer]
    function.restype = None
    return function


@functools.cache
def available(dtype: str) -> bool:
    """Whether `gemm` runs here for `dtype` (float32 or float64), checked on a small product
    with strided operands against np.matmul."""
    if dtype not in ("float32", "float64") or library() is None:
        return False
    rng = np.random.default_rng(0)
    buffer = rng.standard_normal(200).astype(dtype)
    a = buffer[:60].reshape(5, 12)[:, 1:8]  # [5x7], rows 12 apart
    b = buffer[60:180].reshape(12, 10)[2:9, :6]  # [7x6]
    out = rng.standard_normal((5, 6)).astype(dtype)
    expected = a @ b + out
    try:
        gemm(a, b, out, accumulate=True)
        gemm(b.T, a.T, out.T.copy(), accumulate=False)  # transposed operands
    except Exception:  # noqa: BLE001 - a foreign library's failure means: not here
        return False
    return bool(np.allclose(out, expected, rtol=1e-4, atol=1e-4))


def _matrix(view: np.ndarray) -> tuple[int, int]:
    """(transpose flag, leading dimension) of a 2-D view as a row-major BLAS operand."""
    rows, columns = view.shape
    row_step, column_step = (s // view.itemsize for s in view.strides)
    # BLAS reads row r at r * ld: rows must not overlap (ld at least the row's length)
    if (column_step == 1 or columns == 1) and (rows == 1 or row_step >= columns):
        return _NO_TRANS, max(row_step if rows > 1 else columns, columns, 1)
    if (row_step == 1 or rows == 1) and (columns == 1 or column_step >= rows):
        return _TRANS, max(column_step if columns > 1 else rows, rows, 1)
    raise ValueError(f"a GEMM operand needs unit steps along one axis and rows that do not "
                     f"overlap (steps {view.strides}, shape {view.shape})")


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray, accumulate: bool = False) -> None:
    """out = a @ b, or out += a @ b when `accumulate`: one BLAS call on 2-D views (rows and
    columns may be any distance apart, as long as one of them is unit-strided)."""
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2 or out.shape != (m, n) or not (a.dtype == b.dtype == out.dtype):
        raise ValueError(f"gemm: [{m}x{k}] @ [{k2}x{n}] into {out.shape}, dtypes "
                         f"{a.dtype}, {b.dtype}, {out.dtype}")
    if m == 0 or n == 0:
        return
    function = library()["sgemm" if out.dtype == np.float32 else "dgemm"]
    out_steps = [s // out.itemsize for s in out.strides]
    if out_steps[1] != 1 and n > 1:  # a column-major result: compute its transpose
        a, b, out = b.T, a.T, out.T
        m, n = n, m
    trans_a, lda = _matrix(a)
    trans_b, ldb = _matrix(b)
    ldc = max(out.strides[0] // out.itemsize if m > 1 else n, n, 1)
    function(_ROW_MAJOR, trans_a, trans_b, m, n, k, 1.0, a.ctypes.data, lda,
             b.ctypes.data, ldb, 1.0 if accumulate else 0.0, out.ctypes.data, ldc)
