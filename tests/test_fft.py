"""FFT convolutions: the planner's third lowering of windowed contractions.

- Forced everywhere it applies (TENSORC_FFT=always), the whole convolution sweep and its
  gradient sweep still match PyTorch in float64 (tests/test_conv_sweep.py and
  tests/test_grad_sweep.py run again): every boundary mode, 1-D to 3-D, grouped and
  depthwise, epilogues, and the gradients (weight gradients are correlations of x with dy,
  input gradients in gather form are convolutions with the flipped kernel).
- By cost (the default), FFT is chosen for large kernels and not for the CNN layers of the
  benchmarks; what it computes then is checked against PyTorch in float32 and float64.
- Transform lengths are the smallest 5-smooth numbers that fit.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tensorc as tc
from tensorc.plan import contractions_in, fft_length

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_conv_sweep as sweep  # noqa: E402
import test_grad_sweep as grad_sweep  # noqa: E402


def uses_fft(kernel) -> bool:
    return any(c.fft is not None for sp in kernel.plan.statements
               for c in contractions_in(sp.root))


@pytest.fixture
def fft_always(monkeypatch):
    monkeypatch.setenv("TENSORC_FFT", "always")


# ---- forced: the sweeps again ------------------------------------------------------------

@pytest.mark.parametrize("case", sweep.CASES, ids=sweep.IDS)
def test_conv_sweep_by_fft(case, fft_always):
    sweep.test_conv_sweep(case)


@pytest.mark.parametrize("case", list(grad_sweep._params()))
def test_grad_sweep_by_fft(case, fft_always):
    grad_sweep.test_grad_sweep(case)


def test_forced_fft_covers_most_of_the_sweep(fft_always):
    """The sweeps above exercise FFT: every stride-1, undilated convolution has its shape
    (pooling, strided and dilated ones keep their GEMM or window loops)."""
    by_fft = [case.id for case in sweep.CASES if uses_fft(tc.compile(case.src, **case.shapes))]
    assert len(by_fft) >= 45, by_fft
    modes = {mode for mode in sweep.MODES if any(mode in name for name in by_fft)}
    assert modes == set(sweep.MODES), modes


def test_large_kernel_gradients_by_fft():
    """Forward, dx (gather form: dy convolved with k) and dk (x correlated with dy) of a
    15x15 layer are each an FFT convolution by cost, and match PyTorch autograd."""
    src = "y[n,o,h,w] = x[n,c,h+u-7,w+v-7] * k[o,c,u,v]   where h < 48, w < 40, x: zero"
    shapes = dict(x=(4, 8, 48, 40), k=(8, 8, 15, 15))
    kern = tc.compile_grad(src, wrt=["x", "k"], **shapes, dy=(4, 8, 48, 40))
    strategies = [sp.strategy for sp in kern.plan.statements]
    assert all("by FFT" in s for s in strategies) and "gather form" in strategies[1], strategies
    rng = np.random.default_rng(3)
    x, k, dy = (rng.standard_normal(s) for s in (shapes["x"], shapes["k"], (4, 8, 48, 40)))
    got = kern(x=x, k=k, dy=dy)
    xt, kt = torch.tensor(x, requires_grad=True), torch.tensor(k, requires_grad=True)
    yt = F.conv2d(xt, kt, padding=7)
    dxt, dkt = torch.autograd.grad(yt, [xt, kt], torch.from_numpy(dy))
    for name, want in (("y", yt.detach()), ("dx", dxt), ("dk", dkt)):
        want = want.numpy()
        np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-10 * np.abs(want).max(),
                                   err_msg=name)


# ---- chosen by cost ------------------------------------------------------------------------

LARGE = [  # (program, x shape, kernel shape, torch padding mode or None, padding)
    ("y[n,o,h,w] = x[n,c,h+u-7,w+v-7] * k[o,c,u,v]   where h < 48, w < 40, x: zero",
     (4, 8, 48, 40), (8, 8, 15, 15), "constant", 7),
    ("y[n,o,h,w] = x[n,c,h+u-7,w+v-7] * k[o,c,u,v]   where h < 48, w < 40, x: reflect",
     (4, 8, 48, 40), (8, 8, 15, 15), "reflect", 7),
    ("y[n,o,h,w] = x[n,c,h+u-10,w+v-10] * k[o,c,u,v]   where h < 96, w < 96, x: circular",
     (1, 1, 96, 96), (1, 1, 21, 21), "circular", 10),
    ("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]", (2, 3, 90, 80), (4, 3, 25, 25), None, 0),
]


@pytest.mark.parametrize("dtype,tolerance", [("float64", 1e-10), ("float32", 2e-5)])
@pytest.mark.parametrize("src,xshape,kshape,mode,pad", LARGE)
def test_large_kernels_are_convolved_by_fft(src, xshape, kshape, mode, pad, dtype, tolerance):
    rng = np.random.default_rng(0)
    x, k = rng.standard_normal(xshape), rng.standard_normal(kshape)
    kern = tc.compile(src, dtype=dtype, x=xshape, k=kshape)
    assert uses_fft(kern), kern.plan
    assert "by FFT" in str(kern.plan) and "np.fft.rfftn" in kern.source
    got = kern(x=x.astype(dtype), k=k.astype(dtype))
    xt = torch.from_numpy(x)
    if mode is not None:
        xt = F.pad(xt, (pad,) * 4, mode=mode)
    want = F.conv2d(xt, torch.from_numpy(k)).numpy()
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * np.abs(want).max())


@pytest.mark.parametrize("src,shapes", [
    ("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]", dict(x=(64, 1, 28, 28), k=(16, 1, 5, 5))),
    ("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]", dict(x=(64, 16, 12, 12), k=(32, 16, 5, 5))),
    ("y[n,o,h,w] = x[n,c,h+u-1,w+v-1] * k[o,c,u,v]   where h < 56, w < 56, x: zero",
     dict(x=(16, 64, 56, 56), k=(64, 64, 3, 3))),
])
def test_small_kernels_keep_im2col(src, shapes):
    """3x3 and 5x5 layers: the transforms of many channels cost more than the GEMM."""
    kern = tc.compile(src, dtype="float32", **shapes)
    assert not uses_fft(kern), kern.plan


def test_fft_off_keeps_im2col(monkeypatch):
    src, xshape, kshape = LARGE[0][:3]
    monkeypatch.setenv("TENSORC_FFT", "off")
    assert not uses_fft(tc.compile(src, x=xshape, k=kshape))


def test_true_convolution_and_partial_kernel(fft_always):
    """x[h-u] (no flip needed) and a window shorter than the kernel tensor (u < 3 of 5)."""
    rng = np.random.default_rng(1)
    x, k = rng.standard_normal((2, 30)), rng.standard_normal((3, 5))
    got = tc.compile("y[n,o,h] = x[n,h-u+2] * k[o,u]   where h < 28, u < 3",
                     x=x.shape, k=k.shape)(x=x, k=k)
    want = np.stack([np.stack([np.convolve(x[n], k[o, :3], mode="valid") for o in range(3)])
                     for n in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_fft_on_the_emulated_cupy_backend():
    """The CuPy module runs the same array code through xp.fft (cuFFT on a device)."""
    from tensorc.backends.cupy import emulate_on_numpy
    src, xshape, kshape = LARGE[0][:3]
    kern = tc.compile(src, backend="cupy", x=xshape, k=kshape)
    assert "xp.fft.rfftn" in kern.source and "__global__" not in kern.source
    rng = np.random.default_rng(2)
    x, k = rng.standard_normal(xshape), rng.standard_normal(kshape)
    with emulate_on_numpy():
        got = kern(x=x, k=k)
    want = tc.compile(src, x=xshape, k=kshape)(x=x, k=k)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# ---- transform lengths ---------------------------------------------------------------------

def test_fft_lengths_are_the_smallest_5_smooth_numbers():
    smooth = [n for n in range(1, 5000) if _is_5_smooth(n)]
    for size in range(1, 4000):
        assert fft_length(size) == next(n for n in smooth if n >= size), size
    assert fft_length(58) == 60 and fft_length(542) == 576


def _is_5_smooth(n: int) -> bool:
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1
