"""Kept windows: a forward kernel returns its im2col copies, its adjoint reads them.

- `Kernel(keep_windows=True)` returns, beside the outputs, each window of an input that its
  plan copies into GEMM order in full (`x_cols`), laid out as the plan states; the values
  are the window's, the outputs unchanged.
- `Kernel(adjoint, windows=...)` reads those copies instead of the windows: a convolution's
  weight gradient needs no im2col of its own. Gradients match PyTorch autograd and the
  adjoint compiled without them; reads whose ranges differ from the copy's are left alone.
- `tensorc.nn` layers keep windows in training (not in eval), so the whole layer sweep of
  test_nn_layers runs through them; here a few layers assert that they do.
- Within one kernel (share_windows), a statement reads the im2col copy an earlier one made
  of the same window, where the cost model says it is cheaper: a convolution's forward and
  weight gradient in one `compile_grad` kernel make one copy of x. Values match PyTorch;
  windows of tensors the program writes, other ranges, loop kernels and a memory budget
  the held copy would exceed keep their own copies.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tensorc as tc
from tensorc import nn
from tensorc.check import check
from tensorc.errors import ShapeError
from tensorc.plan import (KeptWindow, _gemm_operand_only, keep_windows, plan_program,
                          reading_kept_windows, share_windows)

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


# ---- shared within one kernel ------------------------------------------------------------

def conv_grad_kernel(x_shape, k_shape, dtype, program=CONV.replace(" + b[o]", ""), **options):
    y_shape = (x_shape[0], k_shape[0], x_shape[2] - k_shape[2] + 1, x_shape[3] - k_shape[3] + 1)
    return tc.compile_grad(program, wrt=["x", "k"], dtype=np.dtype(dtype).name, x=x_shape,
                           k=k_shape, dy=y_shape, **options), y_shape


def check_against_torch(kernel, x_shape, k_shape, y_shape, dtype):
    x, k, _ = arrays(x_shape, k_shape, dtype)
    dy = np.random.default_rng(1).standard_normal(y_shape).astype(dtype)
    results = kernel(x=x, k=k, dy=dy)
    xt = torch.from_numpy(x).requires_grad_(True)
    kt = torch.from_numpy(k).requires_grad_(True)
    yt = F.conv2d(xt, kt)
    yt.backward(torch.from_numpy(dy))
    tolerance = 1e-3 if dtype == np.float32 else 1e-10
    for name, expected in (("y", yt.detach()), ("dx", xt.grad), ("dk", kt.grad)):
        np.testing.assert_allclose(results[name], expected.numpy(), rtol=tolerance,
                                   atol=tolerance, err_msg=name)
    return results


@pytest.mark.parametrize("x_shape, k_shape, dtype", [
    ((64, 16, 12, 12), (32, 16, 5, 5), np.float32),  # LeNet-2: copy x_cols[n,h,w,u,v,c]
    ((64, 1, 28, 28), (16, 1, 5, 5), np.float32),  # LeNet-1
])
def test_weight_gradient_reads_the_forwards_copy_in_one_kernel(x_shape, k_shape, dtype):
    kernel, y_shape = conv_grad_kernel(x_shape, k_shape, dtype)
    check_against_torch(kernel, x_shape, k_shape, y_shape, dtype)
    forward, _, weight = kernel.plan.statements
    assert "the im2col copy of x[n,c,h+u,w+v] kept in x_cols for statement 3" in forward.strategy
    assert weight.strategy.startswith(
        "x[n,c,h+u,w+v] read from x_cols, the copy in GEMM order statement 1 made (no im2col)")
    source = kernel.source
    assert source.count("x_cols = _scratch('x_cols'") == 1 and "x_win_2" not in source
    assert "x_cols.reshape(" in source.split("# statement 3")[1]  # as stored, no copy
    assert kernel.plan.program.inputs == ("x", "k", "dy")  # the copy is no input


def test_kept_and_shared_copy_is_one_array():
    """A kernel that keeps windows (keep_windows) returns the copy its later statement reads
    under the same name."""
    x_shape, k_shape = (64, 16, 12, 12), (32, 16, 5, 5)
    combined = conv_grad_kernel(x_shape, k_shape, np.float32)[0].program  # y, dx and dk
    kernel = tc.Kernel(combined, dtype="float32", keep_windows=True,
                       outputs=("y", "dx", "dk"))
    x, k, _ = arrays(x_shape, k_shape, np.float32)
    dy = np.random.default_rng(1).standard_normal((64, 32, 8, 8)).astype(np.float32)
    results = kernel(x=x, k=k, dy=dy)
    (window,) = kernel.kept_windows
    assert window.name == "x_cols" and "read from x_cols" in str(kernel.plan)
    np.testing.assert_array_equal(results["x_cols"], window_values(x, window))
    assert "x_cols = np.ascontiguousarray(" in kernel.source and "_scratch('x_cols'" not in \
        kernel.source
    expected = tc.compile(tc.grad(tc.parse(CONV), wrt=["k"]))(x=x, k=k, dy=dy)
    np.testing.assert_allclose(results["dk"], expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("jit, pack", [("always", "auto"), ("auto", "always"), ("off", "off")])
def test_shared_copy_under_every_cpu_mode(monkeypatch, jit, pack):
    """Threaded im2col copies write the shared buffer; loop kernels make no copy, so nothing
    is shared."""
    pytest.importorskip("numba")
    monkeypatch.setenv("TENSORC_JIT", jit)
    monkeypatch.setenv("TENSORC_PACK", pack)
    x_shape, k_shape = (8, 4, 9, 10), (6, 4, 3, 3)
    kernel, y_shape = conv_grad_kernel(x_shape, k_shape, np.float64)
    check_against_torch(kernel, x_shape, k_shape, y_shape, np.float64)
    shared = "read from x_cols" in str(kernel.plan)
    assert shared == (jit != "always")
    if pack == "always":
        assert "x_cols = _scratch('x_cols'" in kernel.source
        assert "_jit.pack_x_1(" in kernel.source.split("# statement 2")[0]


@pytest.mark.parametrize("pack", ["off", "always"])
def test_a_forward_copying_in_chunks_copies_them_into_slices_of_the_shared_copy(
        monkeypatch, pack):
    """A forward whose im2col runs in chunks of images (each GEMMed into its part of y)
    writes each chunk into its slice of one whole copy, which the weight gradient reads."""
    monkeypatch.setenv("TENSORC_PACK", pack)
    monkeypatch.setenv("TENSORC_SHIFT", "off")
    x_shape, k_shape = (16, 32, 28, 28), (32, 32, 3, 3)  # float64: 24.9 MB of windows
    kernel, y_shape = conv_grad_kernel(x_shape, k_shape, np.float64)
    plan = str(kernel.plan)
    assert "along n (each into its slice of x_cols)" in plan, plan
    assert "read from x_cols, the copy in GEMM order statement 1 made" in plan
    source = kernel.source
    assert "x_cols = _scratch('x_cols', (16," in source and "= x_cols[n_start:n_stop]" in source
    for _ in range(2):  # the second call reuses the buffer
        check_against_torch(kernel, x_shape, k_shape, y_shape, np.float64)


def test_windows_of_a_written_tensor_or_over_other_ranges_are_not_shared():
    written = tc.compile("t[n,c,i,j] = x[n,c,i,j] * 2\n"
                         "y[n,o,h,w] = t[n,c,h+u,w+v] * k[o,c,u,v]\n"
                         "z[n,o,h,w] = t[n,c,h+u,w+v] * q[o,c,u,v]\n"
                         "t[n,c,i,j] += x[n,c,i,j]",
                         x=(4, 3, 8, 8), k=(5, 3, 3, 3), q=(5, 3, 3, 3))
    assert "read from" not in str(written.plan) and "t_cols" not in written.source
    ranges = tc.compile("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]\n"
                        "z[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]   where h < 5, w < 5",
                        x=(4, 3, 8, 8), k=(5, 3, 3, 3))
    assert "read from" not in str(ranges.plan)
    rng = np.random.default_rng(0)
    x, k = rng.standard_normal((4, 3, 8, 8)), rng.standard_normal((5, 3, 3, 3))
    results = ranges(x=x, k=k)
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(k)).numpy()
    np.testing.assert_allclose(results["y"], expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(results["z"], expected[:, :, :5, :5], rtol=1e-12, atol=1e-12)


def test_two_statements_over_the_same_window_share_it():
    program = ("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]\n"
               "z[n,o,h,w] = x[n,c,h+u,w+v] * q[o,c,u,v]")
    kernel = tc.compile(program, x=(16, 8, 12, 12), k=(5, 8, 3, 3), q=(7, 8, 3, 3))
    assert "read from x_cols, the copy in GEMM order statement 1 made" in str(kernel.plan)
    rng = np.random.default_rng(0)
    x, k, q = (rng.standard_normal(s) for s in ((16, 8, 12, 12), (5, 8, 3, 3), (7, 8, 3, 3)))
    results = kernel(x=x, k=k, q=q)
    for name, weight in (("y", k), ("z", q)):
        expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(weight)).numpy()
        np.testing.assert_allclose(results[name], expected, rtol=1e-12, atol=1e-12)


def test_a_copy_held_past_the_memory_budget_is_not_shared():
    """The copy stays alive through the statements in between, and counts in their peak
    temporaries: where it would take one of them past the budget, it is not shared."""
    combined = conv_grad_kernel((64, 16, 12, 12), (32, 16, 5, 5), np.float32)[0].program
    checked = check(combined, {"x": (64, 16, 12, 12), "k": (32, 16, 5, 5), "dy": (64, 32, 8, 8)})
    copy_bytes = 64 * 8 * 8 * 400 * 4  # x_cols[n,h,w,u,v,c], float32
    plan = plan_program(checked, "float32", 4)
    between = plan.statements[1].peak_temporary_bytes
    shared = share_windows(plan)
    assert "read from x_cols" in str(shared)
    assert shared.statements[1].peak_temporary_bytes == between + copy_bytes
    for budget, shares in ((between + copy_bytes, True), (between + copy_bytes - 1, False)):
        plan = plan_program(checked, "float32", 4)
        plan = replace(plan, settings=replace(plan.settings, budget=budget))
        assert ("read from x_cols" in str(share_windows(plan))) == shares


def test_only_gemm_operands_read_a_shared_copy():
    """A statement reading the held buffer must multiply it by GEMM (a fresh result); one
    that would hand back the buffer, or an elementwise function of it, is not a reader."""
    checked = check(tc.parse("y[i,k] = a[i,j] * b[j,k]\nz[i,j] = a[i,j] * 2\nw[i,j] = a[i,j]"),
                    {"a": (3, 4), "b": (4, 5)})
    plan = plan_program(checked, "float64", 8)
    assert [_gemm_operand_only(sp, "a") for sp in plan.statements] == [True, False, False]
    assert [_gemm_operand_only(sp, "b") for sp in plan.statements] == [True, True, True]


def test_copies_held_over_the_same_statement_count_together_against_the_budget():
    """x's copy is held over statements 2-3, z's over 3-4: statement 3 holds both, so a
    budget with room for one of them there shares only the first."""
    program = tc.parse("a[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]\n"
                       "b[n,o,h,w] = z[n,c,h+u,w+v] * k[o,c,u,v]\n"
                       "f[n,o,h,w] = g[n,c,h+u,w+v] * k[o,c,u,v]\n"
                       "d[n,o,h,w] = x[n,c,h+u,w+v] * q[o,c,u,v]\n"
                       "e[n,o,h,w] = z[n,c,h+u,w+v] * q[o,c,u,v]")
    image = (16, 8, 12, 12)
    checked = check(program, {"x": image, "z": image, "g": image, "k": (5, 8, 3, 3),
                              "q": (7, 8, 3, 3)})
    copy_bytes = 16 * 10 * 10 * 8 * 3 * 3 * 8  # x_cols and z_cols, float64
    plan = plan_program(checked, "float64", 8)
    peaks = [sp.peak_temporary_bytes for sp in plan.statements]
    shared = share_windows(plan)
    assert [s.strategy.startswith(f"{t}[n,c,h+u,w+v] read from {t}_cols")
            for s, t in zip(shared.statements[3:], "xz")] == [True, True]
    assert shared.statements[2].peak_temporary_bytes == peaks[2] + 2 * copy_bytes
    room_for_one = peaks[2] + 2 * copy_bytes - 1  # statement 3 holds one copy, not both
    assert room_for_one >= max(peaks[1] + copy_bytes, peaks[2] + copy_bytes,
                               peaks[3] + copy_bytes)
    plan = plan_program(checked, "float64", 8)
    plan = replace(plan, settings=replace(plan.settings, budget=room_for_one))
    shared = share_windows(plan)
    assert "read from x_cols" in shared.statements[3].strategy
    assert "read from z_cols" not in shared.statements[4].strategy
