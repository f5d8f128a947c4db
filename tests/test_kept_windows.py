"""Kept windows: a forward kernel returns its im2col copies, its adjoint reads them.

- `Kernel(keep_windows=True)` returns, beside the outputs, each window of an input that its
  plan copies into GEMM order in full (`x_cols`), laid out as the plan states; the values
  are the window's, the outputs unchanged.
- `Kernel(adjoint, windows=...)` reads those copies instead of the windows: a convolution's
  weight gradient needs no im2col of its own. Gradients match PyTorch autograd and the
  adjoint compiled without them; reads whose ranges differ from the copy's are left alone.
- `tensorc.nn` layers keep windows in training (not in eval), so the whole layer sweep of
  test_nn_layers runs through them; here a few layers assert that they do.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tensorc as tc
from tensorc import nn
from tensorc.errors import ShapeError
from tensorc.plan import KeptWindow, keep_windows, reading_kept_windows

CONV = "y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v] + b[o]"
PADDED_STRIDED = "y[n,o,h,w] = x[n,c,2*h+u-1,2*w+v-1] * k[o,c,u,v]   where h < 4, w < 4, x: zero"


def arrays(x_shape, k_shape, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(k_shape).astype(dtype),
            rng.standard_normal(k_shape[0]).astype(dtype))


def window_values(x, window: KeptWindow, stride=1, pad=0):
    """x[n,c,stride*h+u-pad,stride*w+v-pad] gathered by NumPy, in the window's axis order."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    sizes = dict(zip(window.axes, window.shape))
    n, c, h, w, u, v = np.ogrid[tuple(slice(0, sizes[a]) for a in "nchwuv")]
    gathered = xp[n, c, stride * h + u, stride * w + v]  # axes n,c,h,w,u,v
    return gathered.transpose(["nchwuv".index(a) for a in window.axes])


@pytest.mark.parametrize("x_shape, k_shape, dtype, axes", [
    ((64, 16, 12, 12), (32, 16, 5, 5), np.float32, "nhwuvc"),  # channels-last, one GEMM
    ((6, 1, 12, 12), (5, 1, 5, 5), np.float64, "ncuvhw"),  # a GEMM per image
])
def test_forward_returns_the_window_copy_it_multiplies(x_shape, k_shape, dtype, axes):
    x, k, b = arrays(x_shape, k_shape, dtype)
    kernel = tc.Kernel(tc.parse(CONV), keep_windows=True)
    results = kernel(x=x, k=k, b=b)
    (window,) = kernel.kept_windows
    assert str(window.read) == "x[n,c,h+u,w+v]" and window.name == "x_cols"
    assert window.axes == tuple(axes) and set(results) == {"y", "x_cols"}
    np.testing.assert_array_equal(results["x_cols"], window_values(x, window))
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(k), torch.from_numpy(b)).numpy()
    tolerance = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(results["y"], expected, rtol=tolerance, atol=tolerance)
    plan = str(kernel.plan)
    assert f"kept:    {window} (im2col copies" in plan and "kept as x_cols" in plan
    assert "return {'y': y, 'x_cols': x_cols}" in kernel.source


def test_without_keep_windows_nothing_more_is_returned():
    x, k, b = arrays((6, 3, 10, 11), (4, 3, 3, 3))
    kernel = tc.compile(CONV)
    assert isinstance(kernel(x=x, k=k, b=b), np.ndarray) and kernel.kept_windows == ()


@pytest.mark.parametrize("program, stride, pad, x_shape, k_shape, dtype", [
    (CONV, 1, 0, (5, 3, 10, 11), (4, 3, 3, 3), np.float64),
    (PADDED_STRIDED, 2, 1, (5, 3, 8, 8), (4, 3, 3, 3), np.float64),
    (CONV, 1, 0, (64, 16, 12, 12), (32, 16, 5, 5), np.float32),  # copy x_cols[n,h,w,u,v,c]
])
def test_adjoint_reads_the_kept_copy_and_matches_torch(program, stride, pad, x_shape, k_shape,
                                                       dtype):
    x, k, b = arrays(x_shape, k_shape, dtype)
    forward = tc.Kernel(tc.parse(program), keep_windows=True)
    results = forward(**{"x": x, "k": k, **({"b": b} if "b[o]" in program else {})})
    (window,) = forward.kept_windows
    np.testing.assert_array_equal(results[window.name], window_values(x, window, stride, pad))

    wrt = ["x", "k"] + (["b"] if "b[o]" in program else [])
    adjoint = tc.grad(tc.parse(program), wrt=wrt)
    backward = tc.Kernel(adjoint, windows=forward.kept_windows)
    dy = np.random.default_rng(1).standard_normal(results["y"].shape).astype(dtype)
    feed = {"x": x, "k": k, "dy": dy, window.name: results[window.name]}
    grads = backward(**{name: feed[name] for name in backward.inputs})
    assert "x[n,c," in str(backward.plan) and f"read from {window.name}, the copy in GEMM " \
        "order its forward kept (no im2col)" in str(backward.plan)
    assert window.name in backward.plan.program.inputs
    assert f"{window.name}.transpose" not in backward.source  # read as stored, never copied

    reference = tc.compile(adjoint)(**{n: feed[n] for n in ("x", "k", "dy")})
    xt = torch.from_numpy(x).requires_grad_(True)
    kt = torch.from_numpy(k).requires_grad_(True)
    yt = F.conv2d(xt, kt, stride=stride, padding=pad)
    yt.backward(torch.from_numpy(dy))
    tolerance = 1e-3 if dtype == np.float32 else 1e-10
    for name, expected in (("dx", xt.grad), ("dk", kt.grad)):
        np.testing.assert_allclose(grads[name], expected.numpy(), rtol=tolerance, atol=tolerance)
        np.testing.assert_allclose(grads[name], reference[name], rtol=tolerance, atol=tolerance)


def test_weight_gradient_alone_needs_only_the_copy():
    x, k, b = arrays((5, 3, 10, 11), (4, 3, 3, 3))
    forward = tc.Kernel(tc.parse(CONV), keep_windows=True)
    results = forward(x=x, k=k, b=b)
    backward = tc.Kernel(tc.grad(tc.parse(CONV), wrt=["k"]), windows=forward.kept_windows)
    dy = np.random.default_rng(2).standard_normal(results["y"].shape)
    dk = backward(x=x, k=k, dy=dy, x_cols=results["x_cols"])
    # x itself is no longer read (k, declared, only gives dk its shape)
    assert backward.plan.program.inputs == ("dy", "x_cols")
    assert "def kernel(dy, x_cols):" in backward.source
    expected = tc.compile(tc.grad(tc.parse(CONV), wrt=["k"]))(x=x, k=k, dy=dy)
    np.testing.assert_allclose(dk, expected, rtol=1e-12, atol=1e-12)


def test_reads_over_other_ranges_are_not_replaced():
    """A copy holds the window over its own ranges: a statement whose indices range
    differently reads the tensor itself."""
    x, k, b = arrays((5, 3, 10, 11), (4, 3, 3, 3))
    forward = tc.Kernel(tc.parse(CONV), keep_windows=True)
    forward(x=x, k=k, b=b)
    (window,) = forward.kept_windows
    smaller = tc.parse("z[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]   where h < 5, w < 5")
    checked = tc.compile(smaller)
    checked(x=x, k=k)
    program, readers = reading_kept_windows(checked.ir, (window,))
    assert readers == {} and program is checked.ir


def test_copy_of_the_wrong_shape_is_a_shape_error():
    x, k, b = arrays((5, 3, 10, 11), (4, 3, 3, 3))
    forward = tc.Kernel(tc.parse(CONV), keep_windows=True)
    results = forward(x=x, k=k, b=b)
    backward = tc.Kernel(tc.grad(tc.parse(CONV), wrt=["k"]), windows=forward.kept_windows)
    dy = np.zeros(results["y"].shape)
    with pytest.raises(ShapeError, match="'x_cols' has shape .* but the window it keeps"):
        backward(x=x, k=k, dy=dy, x_cols=results["x_cols"][:, :-1])


def test_chunked_copies_are_not_kept():
    """An im2col copy made in chunks (larger than IM2COL_CHUNK_BYTES) is never whole."""
    x, k, b = arrays((64, 16, 12, 12), (32, 16, 5, 5))  # float64: 13 MB of windows
    kernel = tc.Kernel(tc.parse(CONV), keep_windows=True)
    assert isinstance(kernel(x=x, k=k, b=b), np.ndarray) and kernel.kept_windows == ()
    assert "im2col in chunks" in str(kernel.plan)


def test_keep_windows_marks_only_input_windows():
    """A GEMM operand computed by the program (not an input) has no window to keep."""
    kernel = tc.compile("t[n,c,i,j] = x[n,c,i,j] * 2\ny[n,o,h,w] = t[n,c,h+u,w+v] * k[o,c,u,v]",
                        x=(2, 3, 8, 8), k=(4, 3, 3, 3))
    assert keep_windows(kernel.plan).kept_windows == ()


def test_a_convolution_reads_a_kept_copy_as_stored():
    """It contracts (u,v,c) in the copy's own order: no transposed copy of x_cols, only of
    the small kernel."""
    x, k, b = arrays((64, 16, 12, 12), (32, 16, 5, 5), np.float32)
    forward = tc.Kernel(tc.parse(CONV), keep_windows=True)
    results = forward(x=x, k=k, b=b)
    assert forward.kept_windows[0].axes == tuple("nhwuvc")
    other = tc.Kernel(tc.parse("z[n,o,h,w] = x[n,c,h+u,w+v] * q[o,c,u,v]"),
                      windows=forward.kept_windows)
    q = np.random.default_rng(3).standard_normal((7, 16, 5, 5)).astype(np.float32)
    z = other(x=x, q=q, x_cols=results["x_cols"])
    assert "sum over u,v,c" in str(other.plan) and "x_cols.transpose" not in other.source
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(q)).numpy()
    np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-4)


# ---- tensorc.nn --------------------------------------------------------------------------

@pytest.mark.parametrize("options", [dict(), dict(padding=1), dict(stride=2, padding=1),
                                     dict(groups=2, padding=1)],
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_conv_layer_trains_through_kept_windows(options):
    torch.manual_seed(0)
    reference = torch.nn.Conv2d(4, 6, 3, **options).double()
    layer = nn.Conv2d(4, 6, 3, **options).to("float64")
    layer.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((3, 4, 9, 10))
    y = layer(x)
    forward = next(k for key, k in layer._kernels.items() if key[1] is None)
    assert [w.read.tensor for w in forward.kept_windows] == ["x"]
    dy = np.random.default_rng(1).standard_normal(y.shape)
    dx = layer.backward(dy)
    backward = next(k for key, k in layer._kernels.items() if key[1] is not None)
    assert "read from x_cols" in str(backward.plan)
    xt = torch.from_numpy(x).requires_grad_(True)
    reference(xt).backward(torch.from_numpy(dy))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.weight.grad, reference.weight.grad.numpy(),
                               rtol=1e-10, atol=1e-10)


def test_eval_mode_keeps_nothing():
    layer = nn.Conv2d(4, 6, 3).to("float64").eval()
    y = layer(np.random.default_rng(0).standard_normal((3, 4, 9, 10)))
    assert isinstance(y, np.ndarray)
    (forward,) = layer._kernels.values()
    assert forward.kept_windows == () and "x_cols" not in forward.source


def test_a_window_of_a_tensor_the_program_computes_is_not_read_from_the_copy():
    """The copy holds the values of the forward's input x: a program that computes its own
    x reads that x's window itself."""
    x, k, b = arrays((5, 3, 10, 11), (4, 3, 3, 3))
    forward = tc.Kernel(tc.parse(CONV), keep_windows=True)
    forward(x=x, k=k, b=b)
    later = tc.compile("x[n,c,i,j] = t[n,c,i,j] * 2\n"
                       "z[o,c,u,v] = x[n,c,h+u,w+v] * dy[n,o,h,w]")
    later(t=x, dy=np.ones((5, 4, 8, 9)))
    program, readers = reading_kept_windows(later.ir, forward.kept_windows)
    assert readers == {} and program is later.ir
