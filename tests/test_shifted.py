"""Shifted GEMMs: the planner's lowering of stride-1 windowed contractions without im2col.

- `tensorc.backends.blas.gemm`, NumPy's own BLAS called on strided views, against
  np.matmul: row-major, transposed and gapped operands, adding into its output or not.
- Forced everywhere it applies (TENSORC_SHIFT=always), the whole convolution sweep and its
  gradient sweep still match PyTorch in float64 (tests/test_conv_sweep.py and
  tests/test_grad_sweep.py run again): zero and no boundaries, 1-D to 3-D, grouped
  convolutions, epilogues, input gradients in gather form and weight gradients.
- By cost (the default), ResNet's 3x3 layer runs its forward and input gradient as shifted
  GEMMs and keeps im2col for its weight gradient and for LeNet's small layers.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tensorc as tc
from tensorc.backends import blas
from tensorc.plan import contractions_in

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_conv_sweep as sweep  # noqa: E402
import test_grad_sweep as grad_sweep  # noqa: E402
from test_snapshots import check_snapshot  # noqa: E402

pytestmark = pytest.mark.skipif(not blas.available("float64"),
                                reason="NumPy's BLAS cannot be called directly here")


def shifted_modes(kernel) -> list[str]:
    return [c.shifted.mode for sp in kernel.plan.statements for c in contractions_in(sp.root)
            if c.shifted is not None]


@pytest.fixture
def shift_always(monkeypatch):
    monkeypatch.setenv("TENSORC_SHIFT", "always")


# ---- the BLAS call -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("accumulate", [False, True])
def test_gemm_on_strided_views_matches_matmul(dtype, accumulate):
    rng = np.random.default_rng(0)
    buffer = rng.standard_normal(4000).astype(dtype)
    a = buffer[:700].reshape(20, 35)[2:9, 3:14]  # [7x11], rows 35 apart
    b_t = buffer[1000:1600].reshape(40, 15)[1:6, 2:13]  # read transposed: [11x5]
    out_buffer = rng.standard_normal((9, 8)).astype(dtype)
    before = out_buffer.copy()
    out = out_buffer[1:8, 2:7]  # [7x5], rows 8 apart
    expected = a @ b_t.T + (out if accumulate else 0)
    blas.gemm(a, b_t.T, out, accumulate=accumulate)
    np.testing.assert_allclose(out, expected, rtol=1e-5 if dtype == "float32" else 1e-12)
    # the rest of the output's buffer is untouched
    outside = np.ones(out_buffer.shape, bool)
    outside[1:8, 2:7] = False
    assert np.array_equal(out_buffer[outside], before[outside])


def test_gemm_into_a_transposed_output_and_degenerate_shapes():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((6, 4)), rng.standard_normal((4, 3))
    out = np.zeros((3, 6)).T  # column-major [6x3]
    blas.gemm(a, b, out)
    np.testing.assert_allclose(out, a @ b, rtol=1e-12)
    column = np.zeros((6, 1))
    blas.gemm(a, b[:, :1], column)
    np.testing.assert_allclose(column, a @ b[:, :1], rtol=1e-12)
    blas.gemm(a[:, :0], b[:0, :1], column)  # nothing to contract: zeros
    assert not column.any()


def test_gemm_rejects_what_blas_cannot_read():
    a = np.ones((4, 6))[:, ::2]  # no unit step along either axis
    with pytest.raises(ValueError, match="unit steps"):
        blas.gemm(a, np.ones((3, 2)), np.ones((4, 2)))
    overlapping = np.lib.stride_tricks.as_strided(np.ones(10), shape=(4, 3), strides=(8, 8))
    with pytest.raises(ValueError, match="do not overlap"):
        blas.gemm(overlapping, np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"\[4x3\] @ \[2x2\]"):
        blas.gemm(np.ones((4, 3)), np.ones((2, 2)), np.ones((4, 2)))


# ---- forced: the sweeps again ------------------------------------------------------------

@pytest.mark.parametrize("case", sweep.CASES, ids=sweep.IDS)
def test_conv_sweep_by_shifted_gemms(case, shift_always):
    sweep.test_conv_sweep(case)


@pytest.mark.parametrize("case", list(grad_sweep._params()))
def test_grad_sweep_by_shifted_gemms(case, shift_always):
    grad_sweep.test_grad_sweep(case)


def test_forced_shifts_cover_the_stride_1_convolutions(shift_always):
    """The sweeps above exercise shifted GEMMs: stride-1, undilated convolutions without a
    boundary mode or with zeros (other modes, pooling, strided and dilated ones keep their
    own lowering)."""
    by_shifts = [case.id for case in sweep.CASES
                 if shifted_modes(tc.compile(case.src, **case.shapes))]
    assert len(by_shifts) >= 15, by_shifts
    assert any("1d" in name for name in by_shifts) and any("3d" in name for name in by_shifts)


# ---- by cost ---------------------------------------------------------------------------

def test_resnet_layer_by_cost_matches_pytorch():
    """ResNet's 3x3 64-channel layer: the forward and the input gradient (gather form) by
    shifted GEMMs, the weight gradient by im2col (its long, contracted GEMMs run slowly);
    float32 values against PyTorch."""
    src = "y[n,o,h,w] = x[n,c,h+u-1,w+v-1] * k[o,c,u,v]   where h < 56, w < 56, x: zero"
    shapes = dict(x=(2, 64, 56, 56), k=(64, 64, 3, 3))
    forward = tc.compile(src, dtype="float32", **shapes)
    backward = tc.compile(tc.grad(src, wrt=["x", "k"]), dtype="float32", **shapes,
                          dy=(2, 64, 56, 56))
    assert shifted_modes(forward) == ["offsets summed"]
    assert shifted_modes(backward) == ["offsets summed"]  # dx; dk keeps im2col
    assert "by shifted GEMMs" in backward.plan.statements[0].strategy
    assert "im2col" in backward.plan.statements[1].strategy
    assert "_gemm(" in forward.source and "GEMMs: 2 x 3 x 3 = 18 BLAS calls" in str(forward.plan)
    rng = np.random.default_rng(5)
    x, k, dy = (rng.standard_normal(s).astype(np.float32)
                for s in (shapes["x"], shapes["k"], (2, 64, 56, 56)))
    xt, kt = torch.tensor(x, requires_grad=True), torch.tensor(k, requires_grad=True)
    yt = F.conv2d(xt, kt, padding=1)
    dxt, dkt = torch.autograd.grad(yt, [xt, kt], torch.from_numpy(dy))
    got = {"y": forward(x=x, k=k), **backward(x=x, k=k, dy=dy)}
    for name, want in (("y", yt.detach()), ("dx", dxt), ("dk", dkt)):
        want = want.numpy()
        np.testing.assert_allclose(got[name], want, rtol=0, atol=2e-5 * np.abs(want).max(),
                                   err_msg=name)


def test_weight_gradient_forced_to_shifts_matches_pytorch(shift_always):
    """The other mode, 'offsets kept' (dk[o,c,u,v] summed over images by BLAS), in float32."""
    src = "y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]"
    kernel = tc.compile(tc.grad(src, wrt=["k"]), dtype="float32", x=(3, 5, 9, 8),
                        k=(4, 5, 3, 2), dy=(3, 4, 7, 7))
    assert shifted_modes(kernel) == ["offsets kept"]
    rng = np.random.default_rng(6)
    x, k, dy = (rng.standard_normal(s).astype(np.float32)
                for s in ((3, 5, 9, 8), (4, 5, 3, 2), (3, 4, 7, 7)))
    kt = torch.tensor(k, requires_grad=True)
    (dkt,) = torch.autograd.grad(F.conv2d(torch.from_numpy(x), kt), [kt], torch.from_numpy(dy))
    np.testing.assert_allclose(kernel(x=x, k=k, dy=dy), dkt.numpy(), rtol=0,
                               atol=2e-5 * np.abs(dkt.numpy()).max())


def test_small_layers_keep_im2col():
    """LeNet's layers would need thousands of small GEMMs: im2col stays cheaper."""
    for src, shapes in (("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]",
                         dict(x=(64, 16, 12, 12), k=(32, 16, 5, 5))),
                        ("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]",
                         dict(x=(64, 1, 28, 28), k=(16, 1, 5, 5)))):
        assert not shifted_modes(tc.compile(src, dtype="float32", **shapes))


def test_shifts_off(monkeypatch):
    monkeypatch.setenv("TENSORC_SHIFT", "off")
    src = "y[n,o,h,w] = x[n,c,h+u-1,w+v-1] * k[o,c,u,v]   where h < 20, w < 20, x: zero"
    kernel = tc.compile(src, dtype="float32", x=(4, 64, 20, 20), k=(64, 64, 3, 3))
    assert not shifted_modes(kernel) and "_gemm" not in kernel.source


def test_generated_source_snapshot_and_its_imports(monkeypatch, tmp_path):
    """The generated module of a padded ResNet-style layer with bias and ReLU, pinned; it
    imports tensorc's BLAS call besides NumPy, and run from its file it computes what the
    kernel does."""
    import importlib.util
    monkeypatch.setenv("TENSORC_JIT", "off")
    src = ("y[n,o,h,w] = relu(x[n,c,h+u-1,w+v-1] * k[o,c,u,v] + b[o])   "
           "where h < 56, w < 56, x: zero")
    kernel = tc.compile(src, x=(2, 64, 56, 56), k=(64, 64, 3, 3), b=(64,))
    check_snapshot("conv_shifted_gemms", kernel.source)
    imports = [line for line in kernel.source.splitlines() if line.startswith(("import ", "from "))]
    assert [line for line in imports if "numpy" not in line and line != "import threading"] \
        == ["from tensorc.backends.blas import gemm as _gemm  # noqa: E402"]
    path = tmp_path / "conv_shifted_gemms.py"
    path.write_text(kernel.source)
    spec = importlib.util.spec_from_file_location("conv_shifted_gemms", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    x, k, b = (rng.standard_normal(s) for s in ((2, 64, 56, 56), (64, 64, 3, 3), (64,)))
    want = F.relu(F.conv2d(torch.from_numpy(x), torch.from_numpy(k), torch.from_numpy(b),
                           padding=1)).numpy()
    np.testing.assert_allclose(module.kernel(x, k, b), want, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(module.kernel(x, k, b), kernel(x=x, k=k, b=b))
