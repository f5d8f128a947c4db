"""Numba loop kernels on the CPU (tensorc[jit]): the same loop nests as the CUDA kernels,
compiled by Numba, checked against the NumPy path they replace."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import tensorc as tc
from tensorc.backends.jit import numba_available

pytestmark = pytest.mark.skipif(not numba_available(), reason="Numba is not installed")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_cupy_backend import GRADIENTS, PROGRAMS, gradient_inputs  # noqa: E402

DEPTHWISE = "y[n,c,h,w] = x[n,c,h+u-1,w+v-1] * k[c,u,v]   where h < {H}, w < {W}, x: zero"


@pytest.fixture
def jit(monkeypatch, tmp_path):
    """Every statement that can be a loop kernel is one; kernels cached under tmp_path."""
    monkeypatch.setenv("TENSORC_JIT", "always")
    monkeypatch.setenv("TENSORC_CACHE_DIR", str(tmp_path))
    return tmp_path


def _numpy_path(monkeypatch, build):
    monkeypatch.setenv("TENSORC_JIT", "off")
    try:
        return build()
    finally:
        monkeypatch.setenv("TENSORC_JIT", "always")


def _inputs(kern, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(kern.ir.tensors[n].shape).astype(dtype)
            for n in kern.ir.inputs}


def _close(got, want, tolerance):
    if isinstance(want, dict):
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=tolerance, atol=tolerance,
                                       err_msg=key)
    else:
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_loop_kernels_match_the_numpy_path(name, dtype, jit, monkeypatch):
    source, shapes = PROGRAMS[name]
    kern = tc.compile(source, dtype=dtype, **shapes)
    arrays = _inputs(kern, dtype)
    with np.errstate(all="ignore"):
        got = kern(**arrays)
        want = _numpy_path(monkeypatch, lambda: tc.compile(source, dtype=dtype, **shapes)(**arrays))
    _close(got, want, 1e-12 if dtype == "float64" else 2e-5)
    if name not in ("gemm_conv", "matmul_chain"):  # '=' targets written whole: all eligible
        assert any(sp.loop_nest is not None for sp in kern.plan.statements), kern.plan


@pytest.mark.parametrize("name", sorted(GRADIENTS))
def test_gradient_loop_kernels_match_the_numpy_path(name, jit, monkeypatch):
    source, wrt, shapes = GRADIENTS[name]
    kern = tc.compile_grad(source, wrt=wrt, dtype="float64")
    arrays = gradient_inputs(source, wrt, shapes, seed=3)
    got = kern(**arrays)
    want = _numpy_path(monkeypatch, lambda: tc.compile_grad(source, wrt=wrt,
                                                             dtype="float64")(**arrays))
    _close(got, want, 1e-10)
    assert any(sp.loop_nest is not None and sp.statement.accumulate
               for sp in kern.plan.statements) or name == "softmax_cross_entropy"


def test_the_planner_picks_a_loop_kernel_for_a_large_depthwise_convolution(monkeypatch):
    monkeypatch.delenv("TENSORC_JIT", raising=False)
    depthwise = tc.compile(DEPTHWISE.format(H=32, W=32), x=(8, 32, 32, 32), k=(32, 3, 3),
                           dtype="float32")
    assert "Numba loop kernel compute_y_1" in depthwise.plan.statements[0].strategy
    assert "matrix-vector products" in depthwise.plan.statements[0].strategy
    # a GEMM with some width (LeNet-1: 16 output channels) stays with BLAS
    lenet1 = tc.compile("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]", x=(64, 1, 28, 28),
                        k=(16, 1, 5, 5), dtype="float32")
    assert lenet1.plan.statements[0].loop_nest is None
    # pooling and its gradient: one pass instead of one per window offset
    pool = "p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   where u < 2, v < 2"
    grad = tc.compile(tc.grad(tc.parse(pool), wrt=["y"]), y=(64, 16, 24, 24),
                      dp=(64, 16, 12, 12), dtype="float32")
    assert [sp.loop_nest is not None for sp in grad.plan.statements] == [True, False, True]
    assert grad.plan.statements[1].computed_in == "compute_dy_3"  # the tie counts: inside
    assert "through windows, without a GEMM" in grad.plan.statements[2].strategy
    # plain elementwise work stays NumPy's
    relu = tc.compile("z[n,c] = relu(a[n,c] + b[c])", a=(1000, 1000), b=(1000,))
    assert relu.plan.statements[0].loop_nest is None
    # too small to matter: NumPy
    small = tc.compile(DEPTHWISE.format(H=8, W=8), x=(2, 4, 8, 8), k=(4, 3, 3))
    assert small.plan.statements[0].loop_nest is None


def test_a_sum_over_no_indices_is_its_body(jit):
    """The adjoint of `y[i] = x[i] * 2 where i in 1:3` sums over no indices (each dx[i]
    gets one term): its loop kernel evaluates the body once (it crashed the renderer)."""
    kern = tc.compile(tc.grad("y[i] = x[i] * 2   where i in 1:3", wrt=["x"]),
                      x=(4,), dy=(2,))
    assert kern.plan.statements[0].loop_nest is not None
    np.testing.assert_allclose(kern(x=np.arange(4.0), dy=np.array([1.0, 10.0])),
                               [0.0, 2.0, 20.0, 0.0])


SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 2.0]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_max_min_relu_and_sign_give_numpys_values_on_nan_inf_zeros_and_ties(
        dtype, jit, monkeypatch):
    """The helpers are written without branches (tc_max & co.); on every pair of special
    values, in loops reading every second element and in plain ones, they give what
    np.maximum, np.minimum, relu and np.sign give, NaN included (zeros compare equal
    whatever their sign)."""
    source = """mx[i,j] = max(a[i,2*j], b[i,2*j+1])
mn[i,j] = min(a[i,2*j], b[i,2*j+1])
r[i,j] = relu(a[i,2*j]) + sign(b[i,2*j+1])
e[i,k] = max(min(a[i,k], b[i,k]), sign(a[i,k]) * relu(b[i,k]))"""
    pairs = np.array([(x, y) for x in SPECIAL for y in SPECIAL], dtype=dtype)
    a = np.repeat(pairs[:, :1], 6, axis=1)  # each row: one pair, at every place a row has
    b = np.repeat(pairs[:, 1:], 6, axis=1)
    build = lambda: tc.compile(source, dtype=dtype, a=a.shape, b=b.shape)  # noqa: E731
    kern = build()
    assert all(s.loop_nest is not None for s in kern.plan.statements)
    with np.errstate(invalid="ignore"):
        got, want = kern(a=a, b=b), _numpy_path(monkeypatch, build)(a=a, b=b)
    for name in ("mx", "mn", "r", "e"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    x, y = pairs[:, 0], pairs[:, 1]
    np.testing.assert_array_equal(got["mx"][:, 0], np.maximum(x, y))
    np.testing.assert_array_equal(got["mn"][:, 0], np.minimum(x, y))
    relu = np.where(x > 0, x, np.where(np.isnan(x), x, 0))
    np.testing.assert_array_equal(got["r"][:, 0], relu + np.sign(y))


def test_off_means_numpy_and_the_kernel_module_is_cached_on_disk(jit, monkeypatch):
    source = DEPTHWISE.format(H=6, W=6)
    kern = tc.compile(source, x=(2, 3, 6, 6), k=(3, 3, 3))
    assert "from tensorc.backends.jit import load as _load_jit" in kern.source
    kern(x=np.ones((2, 3, 6, 6)), k=np.ones((3, 3, 3)))
    written = list((jit / "jit").glob("tensorc_jit_*.py"))
    assert len(written) == 1 and "@njit(parallel=True, cache=True" in written[0].read_text()
    monkeypatch.setenv("TENSORC_JIT", "off")
    plain = tc.compile(source, x=(2, 3, 6, 6), k=(3, 3, 3))
    assert "_jit" not in plain.source and plain.plan.statements[0].loop_nest is None


def test_without_numba_the_numpy_path_runs():
    code = ("import sys; sys.modules['numba'] = None\n"
            "import os; os.environ['TENSORC_JIT'] = 'always'\n"
            "import numpy as np, tensorc as tc\n"
            f"k = tc.compile({DEPTHWISE.format(H=6, W=6)!r}, x=(2, 3, 6, 6), k=(3, 3, 3))\n"
            "assert k.plan.statements[0].loop_nest is None\n"
            "print(float(k(x=np.ones((2, 3, 6, 6)), k=np.ones((3, 3, 3))).sum()))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == 2 * 3 * (16 * 9 + 16 * 6 + 4 * 4)


@pytest.mark.parametrize("source, shapes", [
    ("y[i] = x[-i+j+5] * k[j]   where i < 9, x: zero", dict(x=(8,), k=(3,))),
    ("y[h,w] = x[2*h+u-1,-w+v+4] * k[u,v]   where h < 5, w < 6, x: reflect",
     dict(x=(9, 6), k=(3, 3))),
    ("y[n,w] = x[n,3*w+v-2] * k[v]   where w < 7, x: circular", dict(x=(2, 19), k=(4,))),
])
def test_interior_loops_skip_checks_only_where_reads_stay_in_bounds(source, shapes, jit,
                                                                    monkeypatch):
    kern = tc.compile(source, **shapes)
    assert "interior" in kern.source  # rows or points whose reads need no bounds checks
    arrays = _inputs(kern, "float64", seed=4)
    want = _numpy_path(monkeypatch, lambda: tc.compile(source, **shapes)(**arrays))
    np.testing.assert_allclose(kern(**arrays), want, rtol=1e-12, atol=1e-12)


def test_a_numba_module_snapshot(monkeypatch):
    """The generated module with a loop kernel (the max-pool gradient's), pinned like the
    NumPy and CuPy modules in tests/snapshots/."""
    from test_snapshots import check_snapshot
    monkeypatch.setenv("TENSORC_JIT", "auto")
    pool = "p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   where u < 2, v < 2"
    kern = tc.compile(tc.grad(tc.parse(pool), wrt=["y"]), y=(64, 16, 24, 24),
                      dp=(64, 16, 12, 12), dtype="float32")
    check_snapshot("numba_maxpool_grad", kern.source)


def test_loop_kernels_called_from_many_threads(jit):
    """Numba's workqueue layer refuses parallel loops entered from several threads at
    once; tensorc runs its kernels one at a time, so threads only wait."""
    from concurrent.futures import ThreadPoolExecutor
    kern = tc.compile(DEPTHWISE.format(H=16, W=16), x=(4, 8, 16, 16), k=(8, 3, 3))
    rng = np.random.default_rng(5)
    feeds = [dict(x=rng.standard_normal((4, 8, 16, 16)), k=rng.standard_normal((8, 3, 3)))
             for _ in range(16)]
    expected = [kern(**feed) for feed in feeds]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda feed: kern(**feed), feeds * 4))
    for got, want in zip(results, expected * 4):
        np.testing.assert_array_equal(got, want)


def test_an_unwritable_cache_directory_compiles_in_memory(monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("TENSORC_CACHE_DIR", str(blocker))
    monkeypatch.setenv("TENSORC_JIT", "always")
    source = DEPTHWISE.format(H=5, W=5)
    kern = tc.compile(source, x=(1, 2, 5, 5), k=(2, 3, 3))
    x, k = np.arange(50.0).reshape(1, 2, 5, 5), np.ones((2, 3, 3))
    got = kern(x=x, k=k)
    want = _numpy_path(monkeypatch, lambda: tc.compile(source, x=(1, 2, 5, 5),
                                                       k=(2, 3, 3))(x=x, k=k))
    np.testing.assert_allclose(got, want)
    assert not list(tmp_path.glob("**/tensorc_jit_*.py"))


def _assert_pool_gradient_as_torch(grad, torch, size, window, stride, seed):
    """The max-pool gradient kernel `grad` (of POOL_GRAD) against PyTorch's autograd, on
    distinct values (PyTorch routes ties differently)."""
    out = (size - window) // stride + 1
    rng = np.random.default_rng(seed)
    y = rng.permutation(2 * 3 * size * size).reshape(2, 3, size, size).astype(np.float64)
    dp = rng.standard_normal((2, 3, out, out))
    yt = torch.from_numpy(y).requires_grad_()
    torch.nn.functional.max_pool2d(yt, window, stride).backward(torch.from_numpy(dp))
    np.testing.assert_allclose(grad(y=y, dp=dp), yt.grad.numpy(), rtol=1e-12, atol=1e-12)


POOL_GRAD = "p[n,c,h,w] = max[u,v](y[n,c,{s}*h+u,{s}*w+v])   where u < {k}, v < {k}"


def _pool_program(size, window, stride) -> tuple[tc.Program, dict]:
    """A max-pool's gradient program over 2x3 images of size x size, and its shapes."""
    out = (size - window) // stride + 1
    return tc.grad(tc.parse(POOL_GRAD.format(s=stride, k=window)), wrt=["y"]), \
        dict(y=(2, 3, size, size), dp=(2, 3, out, out))


def _pool_gradient(size, window, stride):
    program, shapes = _pool_program(size, window, stride)
    return tc.compile(program, **shapes)


@pytest.mark.parametrize("size, window, stride, tiles", [
    (8, 2, 2, True),     # the windows tile y: each element stored once, into np.empty
    (9, 2, 2, False),    # a last row and column no window reaches: zero-filled, added into
    (9, 3, 2, False),    # overlapping windows: added into
])
def test_a_max_pool_gradient_stores_each_element_once_where_its_windows_tile(
        size, window, stride, tiles, jit):
    torch = pytest.importorskip("torch")
    grad = _pool_gradient(size, window, stride)
    routing = grad.plan.statements[-1]
    assert routing.loop_nest.tiled is tiles
    assert ("dy = np.empty" in grad.source) is tiles
    assert ("each element stored once (its windows tile dy)" in routing.strategy) is tiles
    _assert_pool_gradient_as_torch(grad, torch, size, window, stride, seed=6)


def test_small_loop_kernels_run_on_one_thread_larger_ones_on_two_and_large_ones_on_all(
        monkeypatch):
    """Threads cost more than they bring below HALVES_MIN_VISITS visited points: such a
    kernel is a plain loop (the plan says so). Up to PARALLEL_MIN_VISITS, two threads each
    call it, compiled for half the batch, on their half (`in_halves`: loops as on one
    thread, which vectorize). Above, `prange`; TENSORC_JIT=always threads every one, so
    that the tests above exercise prange."""
    torch = pytest.importorskip("torch")
    from tensorc.loopnest import HALVES_MIN_VISITS, PARALLEL_MIN_VISITS
    monkeypatch.setenv("TENSORC_JIT", "auto")
    pool = POOL_GRAD.format(s=2, k=2)
    small = tc.compile(pool, y=(32, 16, 24, 24), dtype="float32")  # 295K visits
    halves = tc.compile(pool, y=(16, 64, 56, 56), dtype="float32")  # 3.2M visits
    large = tc.compile(pool, y=(64, 64, 256, 256), dtype="float32")  # 268M: compiled only
    visits = [k.plan.statements[0].loop_nest.visits for k in (small, halves, large)]
    assert visits[0] < HALVES_MIN_VISITS <= visits[1] < PARALLEL_MIN_VISITS <= visits[2]
    assert "on one thread (294,912 points visited)" in small.plan.statements[0].strategy
    assert "on two threads, each over half of n (3,211,264 points visited)" in \
        halves.plan.statements[0].strategy
    for kern in (small, halves):
        assert "@njit(parallel=False" in kern.source and "prange(" not in kern.source
    assert "for row in range(14336):" in halves.source  # 8 images x 64 channels x 28 rows
    assert "_jit.in_halves('compute_p_1', (True, True), np.ascontiguousarray(y), p)" in \
        halves.source
    assert "@njit(parallel=True" in large.source and "on one thread" not in str(large.plan)
    rng = np.random.default_rng(7)
    for kern, shape in ((small, (32, 16, 24, 24)), (halves, (16, 64, 56, 56))):
        y = rng.standard_normal(shape, dtype=np.float32)
        want = torch.nn.functional.max_pool2d(torch.from_numpy(y), 2).numpy()
        np.testing.assert_array_equal(kern(y=y), want)
    monkeypatch.setenv("TENSORC_JIT", "always")
    threaded = tc.compile(pool, y=(64, 16, 24, 24), dtype="float32")
    assert "@njit(parallel=True" in threaded.source


@pytest.mark.parametrize("src, shapes, halved", [
    # a weight shared by both halves, passed whole
    ("y[n,c,h,w] = x[n,c,h+u-1,w+v-1] * k[c,u,v]   where h < 56, w < 56, x: zero",
     dict(x=(16, 64, 56, 56), k=(64, 3, 3)), True),
    # an odd batch does not halve
    ("y[n,c,h,w] = x[n,c,h+u-1,w+v-1] * k[c,u,v]   where h < 56, w < 56, x: zero",
     dict(x=(15, 64, 56, 56), k=(64, 3, 3)), False),
    # x led by n in one read, not in the other: its halves would not hold every read
    ("y[n,c,h,w] = max[u,v](x[n,c,h+u-1,w+v-1]) * x[0,c,h,w]   where u < 3, v < 3, h < 56, "
     "w < 56, x: zero",
     dict(x=(16, 64, 56, 56)), False),
    # n as a number: each half would count from 0
    ("y[n,c,h,w] = max[u,v](x[n,c,h+u-1,w+v-1]) * n   where u < 3, v < 3, h < 56, w < 56, "
     "x: zero",
     dict(x=(16, 64, 56, 56)), False),
])
def test_two_threads_take_halves_only_of_a_leading_batch_index(src, shapes, halved,
                                                                monkeypatch):
    """Values as NumPy's (TENSORC_JIT=off) wherever the kernel runs in halves or not."""
    monkeypatch.setenv("TENSORC_JIT", "auto")
    kern = tc.compile(src, dtype="float64", **shapes)
    nest = kern.plan.statements[0].loop_nest
    assert nest is not None and (nest.halves == "n") == halved, kern.plan
    assert ("_jit.in_halves(" in kern.source) == halved
    rng = np.random.default_rng(8)
    arrays = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    monkeypatch.setenv("TENSORC_JIT", "off")
    want = tc.compile(src, dtype="float64", **shapes)(**arrays)
    np.testing.assert_allclose(kern(**arrays), want, rtol=1e-12, atol=1e-12)


def test_long_sums_with_no_batch_to_halve_share_their_rows_among_threads(monkeypatch):
    """A depthwise weight gradient, dk[c,u,v] summed over n,h,w: n is summed, so no index
    halves the kernel; each point sums 16*56*56 terms (THREADED_REDUCTION_MIN_TERMS or
    more), so its rows (c) run under prange rather than on one thread. Its forward, a sum
    of 9 terms per point, keeps its halves. Values as NumPy's (TENSORC_JIT=off)."""
    from tensorc.loopnest import HALVES_MIN_VISITS
    monkeypatch.setenv("TENSORC_JIT", "auto")
    src = "y[n,c,h,w] = x[n,c,h+u-1,w+v-1] * k[c,u,v]   where h < 56, w < 56, x: zero"
    shapes = dict(x=(16, 64, 56, 56), k=(64, 3, 3), dy=(16, 64, 56, 56))
    both = tc.compile_grad(src, wrt=["x", "k"], dtype="float64", **shapes)
    y_nest, _, dk_nest = (sp.loop_nest for sp in both.plan.statements)
    assert y_nest.halves == "n"
    assert dk_nest.halves is None and not dk_nest.one_thread
    assert dk_nest.visits >= HALVES_MIN_VISITS
    assert "its rows shared among threads (28,901,376 points visited)" in str(both.plan)
    source = _jit_source(both)
    kernel = source[source.index("def compute_dk_3"):]
    assert "for row in prange(64):" in kernel.split("\n\n")[0]
    assert "@njit(parallel=True" in source[:source.index("def compute_dk_3")].rsplit("\n", 2)[-2]
    rng = np.random.default_rng(9)
    arrays = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    monkeypatch.setenv("TENSORC_JIT", "off")
    want = tc.compile_grad(src, wrt=["x", "k"], dtype="float64", **shapes)(**arrays)
    got = both(**arrays)
    for name in ("y", "dx", "dk"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-10)


# ---- a loop kernel computing the statement before it (loopnest.producer_indices) --------

POOL_GEOMETRIES = [(8, 2, 2), (9, 2, 2), (9, 3, 2)]  # tiling, a border no window reaches,
POOL_IDS = ["tiling", "bordered", "overlapping"]     # overlapping windows


@pytest.mark.parametrize("size, window, stride", POOL_GEOMETRIES, ids=POOL_IDS)
def test_a_max_pool_gradient_counts_ties_inside_its_routing_kernel(size, window, stride, jit):
    """The tie counts are computed per window inside the routing kernel, never stored;
    gradients as PyTorch's (distinct values: PyTorch routes ties differently)."""
    torch = pytest.importorskip("torch")
    grad = _pool_gradient(size, window, stride)
    ties, routing = grad.plan.statements[1:]
    name = "compute_dy_3" if routing.loop_nest.tiled else "accumulate_dy_3"
    assert ties.loop_nest is None and ties.computed_in == routing.loop_nest.name == name
    assert ties.strategy == (f"ties[n,c,h,w] computed inside {name}'s loops (statement 3), "
                             "once per point of n,c,h,w, never stored")
    assert "ties[n,c,h,w] computed in its loops once per point of n,c,h,w (sum over u,v in " \
           "registers), never stored" in routing.strategy
    assert routing.loop_nest.parallel[:4] == ("n", "c", "h", "w")  # windows outermost
    assert f"def {name}(dp, y, p, dy):" in grad.source  # no ties argument
    assert "ties = sum_u_v" in grad.source and "ties = np.empty" not in grad.source
    assert "ties_flat" not in grad.source and "compute_ties" not in grad.source
    _assert_pool_gradient_as_torch(grad, torch, size, window, stride, seed=8)


@pytest.mark.parametrize("size, window, stride", POOL_GEOMETRIES, ids=POOL_IDS)
def test_ties_split_the_gradient_equally_as_on_the_numpy_path(size, window, stride, jit,
                                                              monkeypatch):
    grad = _pool_gradient(size, window, stride)
    assert grad.plan.statements[1].computed_in == grad.plan.statements[2].loop_nest.name
    out = (size - window) // stride + 1
    rng = np.random.default_rng(9)
    y = rng.integers(0, 3, (2, 3, size, size)).astype(np.float64)  # most windows have ties
    dp = rng.standard_normal((2, 3, out, out))
    numpy_path = _numpy_path(monkeypatch, lambda: _pool_gradient(size, window, stride))
    assert all(sp.computed_in is None for sp in numpy_path.plan.statements)
    np.testing.assert_allclose(grad(y=y, dp=dp), numpy_path(y=y, dp=dp), rtol=1e-12,
                               atol=1e-12)


def test_a_window_of_equal_values_shares_its_gradient_equally(jit):
    grad = _pool_gradient(4, 2, 2)
    assert grad.plan.statements[1].computed_in == "compute_dy_3"
    y = np.array([[1, 1, 2, 0],
                  [1, 1, 0, 2],
                  [5, 4, 3, 3],
                  [4, 5, 3, 3]], dtype=np.float64)[None, None].repeat(3, 1).repeat(2, 0)
    dp = np.array([[8.0, 6.0], [4.0, 2.0]])[None, None].repeat(3, 1).repeat(2, 0)
    want = np.array([[2, 2, 3, 0],  # four ties share 8; two share 6
                     [2, 2, 0, 3],
                     [2, 0, .5, .5],  # two share 4; four share 2
                     [0, 2, .5, .5]])
    np.testing.assert_array_equal(grad(y=y, dp=dp), np.broadcast_to(want, y.shape))


TIES = "ties[n,c,h,w] = sum[u,v](y[n,c,2*h+u,2*w+v] == p[n,c,h,w])   where u < 2, v < 2\n"
ROUTE = ("dy[n,c,2*h+u,2*w+v] += dp[n,c,h,w]/{ties}*(y[n,c,2*h+u,2*w+v] == p[n,c,h,w])   "
         "where u < 2, v < 2\n")
POOL = dict(y=(2, 3, 8, 8), p=(2, 3, 4, 4), dp=(2, 3, 4, 4), dy=(2, 3, 8, 8))
# (program, shapes, outputs requested or None, the kernel computing t or ties, or None)
PRODUCERS = {
    "read once, at the routing's indices": (TIES + ROUTE.format(ties="ties[n,c,h,w]"), POOL,
                                            None, "compute_dy_2"),
    "read transposed: indices renamed": (TIES + ROUTE.format(ties="ties[n,c,w,h]"), POOL, None,
                                         "compute_dy_2"),
    # the producer's u (3 values) is not the consumer's u (2): renamed u_2
    "an index named as the consumer's, with another range": (
        "t[a,b] = sum[u](x[a,2*b+u])   where u < 3\nz[a,2*b+u] += t[a,b] * x[a,2*b+u]   "
        "where u < 2", dict(x=(3, 13), z=(3, 13)), None, "accumulate_z_2"),
    # the producer sums over b, the consumer reads it at b: its own b renamed b_2
    "a reduction index named as the consumer's outer index": (
        "t[a] = sum[b](x[a,b])\nz[b,c] = t[b] * w[b,c]", dict(x=(5, 7), w=(5, 4)), None,
        "compute_z_2"),
    "also read by a later statement": (TIES + ROUTE.format(ties="ties[n,c,h,w]")
                                       + "most[n,c] = max[h,w](ties[n,c,h,w])", POOL, None, None),
    "a program output": (TIES + ROUTE.format(ties="ties[n,c,h,w]"), POOL, ("ties", "dy"), None),
    "read at two index tuples": (TIES + ROUTE.format(ties="ties[n,c,h,w]*ties[n,c,w,h]"), POOL,
                                 None, None),
    "read inside a reduction over its indices": (
        TIES + "s[n,c] = sum[h,w](ties[n,c,h,w] * p[n,c,h,w])", POOL, None, None),
    # the routing's '+=' into s would change what t reads (the windows overlap)
    "reading what the next statement writes": (
        "s[n,i] = a[n,i]\nt[n,h] = sum[u](s[n,2*h+u])   where u < 3\n"
        "s[n,2*h+u] += t[n,h]   where u < 3", dict(a=(2, 9)), None, None),
}


# ---- border points and rows bound to numbers (BORDER_POINTS) ---------------------------------

DEPTHWISE_ZERO = "y[n,c,h,w] = x[n,c,h+u-1,w+v-1] * k[c,u,v]   where h < 7, w < 9, x: zero"
# (program, shapes, (border points bound, border rows bound, zero-padding checks left))
BORDERS = {
    "3x3 depthwise, zero padding": (DEPTHWISE_ZERO, dict(x=(2, 3, 7, 9), k=(3, 3, 3)),
                                    (True, True, False)),
    # two border columns on each side: two border points each
    "5x5, replicate": ("y[n,h,w] = x[n,h+u-2,w+v-2] * k[u,v]   where h < 6, w < 7, "
                       "x: replicate", dict(x=(2, 6, 7), k=(5, 5)), (True, True, False)),
    # rows split along two indices (d and h): the border rows stay one generic branch
    "3-D depthwise, zero padding": (
        "y[n,c,d,h,w] = x[n,c,d+t-1,h+u-1,w+v-1] * k[c,t,u,v]   where d < 4, h < 5, w < 6, "
        "x: zero", dict(x=(2, 2, 4, 5, 6), k=(2, 3, 3, 3)), (True, False, True)),
    # a window wider than the input: border pieces longer than BORDER_POINTS stay loops
    "wide window, symmetric": ("y[i] = x[i+j-5] * k[j]   where i < 6, x: symmetric",
                               dict(x=(4,), k=(11,)), (False, False, False)),
    "index values at the border": ("y[h,w] = x[h+u-1,w+v-1] * (u + 2*v)   where h < 5, w < 6, "
                                   "u < 3, v < 3, x: zero", dict(x=(5, 6)), (True, True, False)),
}


@pytest.mark.parametrize("name", sorted(BORDERS))
def test_border_points_bound_to_numbers_give_the_numpy_paths_values(name, jit, monkeypatch):
    source, shapes, (points, rows, checks) = BORDERS[name]
    kern = tc.compile(source, **shapes)
    jit_source = kern.source[kern.source.index("@njit(parallel="):]
    assert ("a border point: its reads settled here" in jit_source) is points
    assert ("# a border row" in jit_source) is rows
    assert ("tc_inside(" in jit_source) is checks
    arrays = _inputs(kern, "float64", seed=12)
    want = _numpy_path(monkeypatch, lambda: tc.compile(source, **shapes)(**arrays))
    _close(kern(**arrays), want, 1e-12)


def test_zero_padding_settled_while_rendering_still_multiplies_it(jit):
    """A read outside the tensor is the number 0, still multiplied: 0 * inf is NaN on the
    borders, as in the NumPy path (which multiplies the padded copy)."""
    kern = tc.compile(DEPTHWISE_ZERO, x=(2, 3, 7, 9), k=(3, 3, 3))
    assert "elif h == 0:  # a border row" in kern.source and "REAL(0) * k_flat" in kern.source
    x = np.ones((2, 3, 7, 9))
    k = np.ones((3, 3, 3))
    k[:, 0, 0] = np.inf  # reaches outside at the first row and column only
    y = kern(x=x, k=k)
    assert np.isnan(y[:, :, 0, :]).all() and np.isnan(y[:, :, :, 0]).all()
    assert np.isinf(y[:, :, 1:, 1:]).all()


# (program and shapes, the distinct elements a point reads where its loops run unrolled,
# or None where they stay loops)
UNROLLED = {
    "max-pool gradient, 2x2 windows": (_pool_program(10, 2, 2), 4),
    "max-pool gradient, overlapping 3x3 windows": (_pool_program(10, 3, 2), 9),
    # index values and zero-padded reads, bound to numbers where the loops are unrolled
    "index values and padding": ((tc.parse(
        "t[a,b] = sum[u](x[a,2*b+u-1] * u)   where u < 3, b < 6, x: zero\n"
        "z[a,2*b+u] += t[a,b] * x[a,2*b+u-1] * (u + 1)   where u < 2, x: zero"), dict(x=(3, 12), z=(3, 12))),
        3),
    "max-pool gradient, 5x5 windows: 25 points, loops": (_pool_program(10, 5, 5), None),
}


@pytest.mark.parametrize("name", sorted(UNROLLED))
def test_short_loops_inside_a_producer_kernel_run_unrolled_reading_each_element_once(
        name, jit, monkeypatch):
    (program, shapes), elements = UNROLLED[name]
    kern = tc.compile(program, **shapes)
    function = next(f for f in kern.source.split("@njit(") if "never stored\"\"\"" in f)
    unrolled = "# unrolled: each element read once, before the stores" in function
    assert unrolled is (elements is not None)
    if unrolled:  # the window's elements of y (or x), each read once
        reads = re.findall(r"\b(?:y|x)_flat\[([^\]]+)\]", function)
        assert len(reads) == len(set(reads)) == elements
        assert not re.search(r"for (u|v)\w* in", function)
    rng = np.random.default_rng(11)
    arrays = {n: rng.integers(0, 3, kern.ir.tensors[n].shape).astype(np.float64)
              for n in kern.inputs}  # small integers: ties in most windows
    want = _numpy_path(monkeypatch, lambda: tc.compile(program, **shapes)(**arrays))
    _close(kern(**arrays), want, 1e-12)


# (program, shapes, the updates per point where its reduction is unrolled, or None where
# it stays loops): any reduction over at most UNROLLED_POINTS points, interior included
SHORT_REDUCTIONS = {
    "2x2 max-pool": ("p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   where u < 2, v < 2",
                     dict(y=(2, 3, 8, 10)), 4),
    "3x3 depthwise convolution, interior and borders": (
        DEPTHWISE.format(H=9, W=20), dict(x=(2, 3, 9, 20), k=(3, 3, 3)), 9),
    "5x5 max-pool: 25 points, loops": (
        "p[n,c,h,w] = max[u,v](y[n,c,h+u,w+v])   where u < 5, v < 5", dict(y=(2, 3, 8, 20)),
        None),
}


@pytest.mark.parametrize("name", sorted(SHORT_REDUCTIONS))
def test_short_reductions_are_unrolled_one_update_per_point(name, jit, monkeypatch):
    """A reduction over a window of at most 16 points is written out, one update per point,
    in the interior as at the borders: how far LLVM unrolls loops this short itself (and
    then vectorizes the loop around them) depends on the CPU. NaN and inf propagate as on
    the NumPy path."""
    source, shapes, updates = SHORT_REDUCTIONS[name]
    kern = tc.compile(source, **shapes)
    function = _jit_source(kern).split("@njit(parallel")[1]
    assert bool(re.search(r"for (u|v)\w* in", function)) is (updates is None)
    if updates:  # each accumulator, at every border point and in the interior loops
        accumulators = re.findall(r"^\s+(\w+) = REAL\(", function, re.M)
        assert len(accumulators) == (9 if "x: zero" in source else 1)
        for accumulator in accumulators:
            assert len(re.findall(rf"^\s+{accumulator} (?:\+= |= tc_max\({accumulator}, )",
                                  function, re.M)) == updates
    if "k[c,u,v]" in source:  # the window's numbers folded into k's offset, k[c,1,2] at:
        assert "k_flat[tc_at(c * 9 + 5)]" in function
    arrays = _inputs(kern, "float64", seed=15)
    first = next(iter(arrays))
    arrays[first][0, 1, 2, 3], arrays[first][1, 2, 4, 5] = np.nan, np.inf
    with np.errstate(invalid="ignore"):
        want = _numpy_path(monkeypatch, lambda: tc.compile(source, **shapes)(**arrays))
        got = kern(**arrays)
    assert np.isnan(want).any() and np.isinf(want).any()
    _close(got, want, 1e-12)


@pytest.mark.parametrize("name", sorted(PRODUCERS))
def test_a_producer_is_computed_inside_the_next_kernel_only_where_the_rule_allows(
        name, jit, monkeypatch):
    source, shapes, outputs, inside = PRODUCERS[name]
    shapes = {n: shape for n, shape in shapes.items() if re.search(rf"\b{n}\[", source)}
    build = lambda: tc.Kernel(tc.parse(source), shapes=shapes, outputs=outputs)  # noqa: E731
    kern = build()
    statements = kern.plan.statements
    first = next(sp for sp in statements if sp.statement.target in ("t", "ties"))
    second = statements[first.number + 1]  # (the producer and the statement after it)
    assert (first.computed_in, second.computed_in) == (inside, None), kern.plan
    assert second.loop_nest is not None and (first.loop_nest is None) is (inside is not None)
    assert (f"{first.statement.target} = np.empty" in kern.source) is (inside is None)
    rng = np.random.default_rng(10)
    arrays = {n: rng.integers(0, 3, shapes[n]).astype(np.float64) for n in kern.inputs}
    if "p" in arrays:  # the window maxima, as the adjoint receives them
        arrays["p"] = arrays["y"].reshape(2, 3, 4, 2, 4, 2).max(axis=(3, 5))
    want = _numpy_path(monkeypatch, lambda: build()(**arrays))
    _close(kern(**arrays), want, 1e-12)


def _jit_source(kern) -> str:
    return re.search(r"JIT_SOURCE = r'''(.*?)'''", kern.source, re.S).group(1)


SPLIT = {  # program, shapes, the row loop's interior, its border rows
    # the points (u, v) side by side, one pass of n, h, w for all nine
    "depthwise weight gradient": (
        tc.grad(tc.parse(DEPTHWISE.format(H=12, W=12)), wrt=["k"]),
        dict(x=(2, 3, 12, 12), dy=(2, 3, 12, 12), k=(3, 3, 3)), "for h in range(1, 11)",
        (0, 11)),
    # every read depends on the point (a, b): each point loops over n, i, j on its own
    "window sums, each point on its own": (
        tc.parse("t[c,a,b] = sum[n,i,j](x[n,c,i+a-1,j+b-1])   where a < 3, b < 3, i < 7, "
                 "j < 7, x: zero"), dict(x=(8, 3, 7, 7)), "for i in range(1, 7)", (0, 6)),
}


@pytest.mark.parametrize("name", sorted(SPLIT))
def test_every_reduction_loop_is_split_around_its_interior(name, jit, monkeypatch):
    """At the first row of the window (u or a = 0) the read of row h - 1 leaves x at h = 0;
    at the last, row h + 1 leaves it at the last h. Those rows are bound to their numbers
    and the loop over the others runs without checks, as the loops over w do: no read is
    checked anywhere. Values as the NumPy path's, with an inf in the first row: where the
    padding above x multiplies it, 0 * inf is NaN on both paths."""
    program, shapes, interior, borders = SPLIT[name]
    kern = tc.compile(program, **shapes)
    function = _jit_source(kern).split("@njit(parallel")[1]
    row = interior.split()[1]
    assert "tc_inside" not in function
    for border in borders:
        assert f"# {row} = {border}, a border point" in function
    assert f"{interior}:  # interior: every read in bounds" in function
    rng = np.random.default_rng(13)
    arrays = {n: rng.standard_normal(shape) for n, shape in shapes.items()}
    arrays["dy" if "dy" in arrays else "x"][0, 1, 0, 3] = np.inf
    with np.errstate(invalid="ignore"):
        want = _numpy_path(monkeypatch, lambda: tc.compile(program, **shapes)(**arrays))
        got = kern(**arrays)
    assert np.isnan(want).any() or np.isinf(want).any()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# (program, shapes, the points side by side, or None where each point loops on its own)
SIDE_BY_SIDE = {
    "depthwise weight gradient: 3x3 = 9 points": (
        tc.grad(tc.parse(DEPTHWISE.format(H=12, W=12)), wrt=["k"]),
        dict(x=(2, 3, 12, 12), dy=(2, 3, 12, 12), k=(3, 3, 3)), 9),
    "mean over a window, 2x2 points of a replicate boundary": (
        tc.parse("t[c,a,b] = mean[n,i,j](x[n,c,i+a-1,j+b-1] * y[n,c,i,j])   "
                 "where a < 2, b < 2, x: replicate"), dict(x=(8, 2, 6, 6), y=(8, 2, 6, 6)), 4),
    "5x5 weight gradient: 25 points are too many, the 5 of v run side by side": (
        tc.grad(tc.parse("y[n,c,h,w] = x[n,c,h+u-2,w+v-2] * k[c,u,v]   where h < 12, "
                         "w < 12, x: zero"), wrt=["k"]),
        dict(x=(2, 3, 12, 12), dy=(2, 3, 12, 12), k=(3, 5, 5)), 5),
    "every read depends on the point: each point on its own": (
        tc.parse("t[c,a] = sum[n,i](x[n,c,i+a])   where a < 3, i < 30"), dict(x=(16, 2, 32)),
        None),
    "a short reduction (a depthwise forward's 3x3): the points stay loops": (
        tc.parse(DEPTHWISE.format(H=12, W=12)), dict(x=(2, 3, 12, 12), k=(3, 3, 3)), None),
}


@pytest.mark.parametrize("name", sorted(SIDE_BY_SIDE))
def test_short_trailing_points_of_a_long_reduction_accumulate_side_by_side(
        name, jit, monkeypatch):
    """Up to 16 trailing points of a kernel whose value is one long reduction run side by
    side, an accumulator each, in one pass of the reduction's loops: an element all of
    them read (dy) is loaded once per pass point, not once per point. Values as the NumPy
    path's."""
    program, shapes, points = SIDE_BY_SIDE[name]
    kern = tc.compile(program, **shapes)
    source = _jit_source(kern)
    side_by_side = re.search(r"# the (\d+) points of \S+ side by side", source)
    assert (int(side_by_side.group(1)) if side_by_side else None) == points
    if points:  # an accumulator per point; the shared element loaded into a local first
        assert len(set(re.findall(r"\b(?:sum|mean)(?:_[a-z]\d+)+\b", source))) == points
        shared = "dy" if "dy_flat" in source else "y"
        assert re.search(rf"^\s+{shared}_\w+ = {shared}_flat\[", source, re.M)
        assert not re.search(rf"(sum|mean)_\w+ \+= .*\b{shared}_flat\[", source)
    rng = np.random.default_rng(14)
    arrays = {n: rng.standard_normal(shape) for n, shape in shapes.items()}
    want = _numpy_path(monkeypatch, lambda: tc.compile(program, **shapes)(**arrays))
    _close(kern(**arrays), want, 1e-12)


# ---- loops of 4 to 15 iterations vectorized (jit.SHORT_LOOPS_VECTORIZED) ----------------

def test_only_one_thread_kernels_storing_a_point_per_iteration_are_listed(jit, monkeypatch):
    """A depthwise convolution's input gradient stores a point per iteration of its rows of
    14 (its 3x3 reduction unrolls); its weight gradient reduces over n,h,w (a long
    reduction, which lost when vectorized in short pieces). Threaded kernels are not
    listed: their loops stayed scalar either way."""
    monkeypatch.setenv("TENSORC_JIT", "auto")
    program = tc.grad(tc.parse(DEPTHWISE.format(H=14, W=14)), wrt=["x", "k"])
    shapes = dict(x=(16, 256, 14, 14), k=(256, 3, 3), dy=(16, 256, 14, 14))
    grad = tc.compile(program, dtype="float32", **shapes)
    assert "SHORT_LOOPS_VECTORIZED = ('compute_dx_1',)" in _jit_source(grad)
    assert "def compute_dk_2(" in _jit_source(grad)
    monkeypatch.setenv("TENSORC_JIT", "always")  # every kernel threaded
    threaded = tc.compile(program, dtype="float32", **shapes)
    assert "prange(" in _jit_source(threaded)
    assert "SHORT_LOOPS_VECTORIZED" not in _jit_source(threaded)


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"),
                    reason="reads x86-64 machine code")
def test_listed_kernels_vectorize_rows_of_12_and_other_numba_functions_keep_llvm_default(
        jit, monkeypatch):
    """The max-pool gradient over rows of 12 compiles to packed divisions (dy / ties, several
    at a time); the same function compiled outside tensorc's list, after it, has LLVM's
    default and stays scalar: the threshold is lowered only while a listed kernel
    compiles."""
    import types
    program, _ = _pool_program(24, 2, 2)
    shapes = dict(y=(16, 16, 24, 24), dp=(16, 16, 12, 12))
    rng = np.random.default_rng(12)
    y = rng.integers(0, 3, shapes["y"]).astype(np.float64)  # ties in most windows
    p = y.reshape(16, 16, 12, 2, 12, 2).max(axis=(3, 5))
    dp = rng.standard_normal(shapes["dp"])
    want = _numpy_path(monkeypatch, lambda: tc.compile(program, **shapes)(y=y, dp=dp))
    monkeypatch.setenv("TENSORC_JIT", "auto")  # one thread (2^28 points and more: prange)
    grad = tc.compile(program, **shapes)
    assert "SHORT_LOOPS_VECTORIZED = ('compute_dy_3',)" in _jit_source(grad)
    np.testing.assert_allclose(grad(y=y, dp=dp), want, rtol=1e-12, atol=1e-12)
    from tensorc.backends.jit import load
    (machine_code,) = load(_jit_source(grad)).module.compute_dy_3.inspect_asm().values()
    assert re.search(r"\bv?divpd\b", machine_code), "the row of 12 stayed scalar"
    unlisted = types.ModuleType("not_listed")  # a user's copy, compiled in memory
    exec(_jit_source(grad).replace("SHORT_LOOPS_VECTORIZED", "NOT_LISTED")
         .replace("cache=True", "cache=False"), unlisted.__dict__)
    dy = np.zeros_like(y)
    unlisted.compute_dy_3(dp, y, p, dy)
    np.testing.assert_allclose(dy, want, rtol=1e-12, atol=1e-12)
    (machine_code,) = unlisted.compute_dy_3.inspect_asm().values()
    assert not re.search(r"\bv?divpd\b", machine_code)
    assert re.search(r"\bv?divsd\b", machine_code)


# ---- windows taken over one dimension first (LoopNest.separable_window) ------------------

# (program, shapes, whether its max or min goes over rows first); large enough for loop
# kernels on one thread or in halves (TENSORC_JIT=always would make them prange kernels)
SEPARABLE = {
    "3x3 stride-2 max-pool, replicate": (
        "p[n,c,h,w] = max[u,v](y[n,c,2*h+u-1,2*w+v-1])   where u < 3, v < 3, h < 28, w < 28, "
        "y: replicate", dict(y=(8, 64, 56, 56)), True),
    "3x3 max, zero padding": (
        "p[n,h,w] = max[u,v](y[n,h+u-1,w+v-1])   where u < 3, v < 3, h < 24, w < 26, y: zero",
        dict(y=(64, 24, 26)), True),
    "3x3 stride-3 min, circular, window index first": (
        "p[n,h,w] = min[u,v](y[n,u+h-2,v+3*w-1])   where u < 3, v < 3, h < 64, w < 21, "
        "y: circular", dict(y=(128, 64, 64)), True),
    "4x3 max, no padding, v named first": (
        "p[n,h,w] = max[v,u](y[n,h+u,w+v])   where u < 4, v < 3", dict(y=(64, 27, 26)), True),
    "2x2 max-pool (too few rows)": (
        "p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   where u < 2, v < 2",
        dict(y=(16, 64, 56, 56)), False),
    "a sum (its rounding would change)": (
        "p[n,h,w] = sum[u,v](y[n,h+u,w+v])   where u < 3, v < 3", dict(y=(64, 26, 26)), False),
    "u in the last dimension too (a slanted window)": (
        "p[n,h,w] = max[u,v](y[n,h+u,w+u+v])   where u < 3, v < 3", dict(y=(64, 26, 28)),
        False),
    "a max of a product": (
        "p[n,h,w] = max[u,v](y[n,h+u,w+v] * 2)   where u < 3, v < 3", dict(y=(64, 26, 26)),
        False),
}


@pytest.mark.parametrize("name", sorted(SEPARABLE))
def test_a_window_max_goes_over_its_rows_first_into_a_buffer_where_separable(
        name, jit, monkeypatch):
    source, shapes, separable = SEPARABLE[name]
    monkeypatch.setenv("TENSORC_JIT", "auto")
    kern = tc.compile(source, **shapes)
    assert "Numba loop kernel" in kern.plan.statements[0].strategy, kern.plan
    assert ("first, into a buffer of y's last dimension" in str(kern.plan)) is separable
    kernels = kern.source[kern.source.index("JIT_SOURCE = "):kern.source.index("_jit = ")]
    assert ("= np.empty(" in kernels) is separable
    rng = np.random.default_rng(14)
    y = rng.standard_normal(shapes["y"])
    y.flat[rng.choice(y.size, 3, replace=False)] = [np.nan, np.inf, -np.inf]
    want = _numpy_path(monkeypatch, lambda: tc.compile(source, **shapes)(y=y))
    np.testing.assert_array_equal(kern(y=y), want)


def test_a_pool_over_rows_first_gives_pytorchs_values_and_gradient(jit, monkeypatch):
    """ResNet's 3x3 stride-2 max-pool (replicate reads an element the window holds, as
    PyTorch's -inf padding) against torch, forward and input gradient, on two calls."""
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("TENSORC_JIT", "auto")
    source = ("p[n,c,h,w] = max[u,v](y[n,c,2*h+u-1,2*w+v-1])   where u < 3, v < 3, h < 28, "
              "w < 28, y: replicate")
    kern = tc.compile_grad(source, wrt=["y"], y=(8, 16, 56, 55), dp=(8, 16, 28, 28))
    assert "max over u first" in str(kern.plan)
    from test_snapshots import check_snapshot
    check_snapshot("numba_maxpool_rows_first_grad", kern.source)
    rng = np.random.default_rng(15)
    for _ in range(2):
        y, dp = rng.standard_normal((8, 16, 56, 55)), rng.standard_normal((8, 16, 28, 28))
        got = kern(y=y, dp=dp)
        yt = torch.from_numpy(y).requires_grad_()
        p = torch.nn.functional.max_pool2d(yt, 3, 2, 1)
        p.backward(torch.from_numpy(dp))
        np.testing.assert_array_equal(got["p"], p.detach().numpy())
        np.testing.assert_allclose(got["dy"], yt.grad.numpy(), rtol=1e-12, atol=1e-12)


def _rows_first_program(op, rows, cols, strides, pads, mode, u_first, size):
    """A window max or min over y[n, rows, cols] whose output stays in bounds unpadded."""
    (sh, sw), (ph, pw) = strides, pads
    height = (size[0] + 2 * ph - rows) // sh + 1
    width = (size[1] + 2 * pw - cols) // sw + 1
    over = "u,v" if u_first else "v,u"
    source = (f"p[n,h,w] = {op}[{over}](y[n,{sh}*h+u-{ph},{sw}*w+v-{pw}])   "
              f"where u < {rows}, v < {cols}, h < {height}, w < {width}")
    return source + (f", y: {mode}" if mode else "")


@pytest.mark.skipif(not numba_available(), reason="needs Numba")
def test_rows_first_windows_give_the_numpy_paths_values_for_any_window(jit, monkeypatch):
    """Hypothesis draws windows of 3-5 rows and 2-4 columns, strides, padding under every
    boundary mode, max or min, NaN and infinities among the values; each kernel, rendered
    on one thread (the kernels TENSORC_JIT=always makes run on all), goes over its rows
    first and gives the NumPy path's values exactly."""
    from dataclasses import replace
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from tensorc.backends import jit as backend

    @settings(max_examples=12 * int(os.environ.get("TENSORC_FUZZ_SCALE", "1")),
              deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(op=st.sampled_from(["max", "min"]), rows=st.integers(3, 5),
           cols=st.integers(2, 4), strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
           pads=st.tuples(st.integers(0, 2), st.integers(0, 2)),
           mode=st.sampled_from([None, "zero", "replicate", "circular", "symmetric",
                                 "reflect"]),
           u_first=st.booleans(), seed=st.integers(0, 2 ** 16))
    def check(op, rows, cols, strides, pads, mode, u_first, seed):
        size = (7, 9)
        source = _rows_first_program(op, rows, cols, strides, pads if mode else (0, 0),
                                     mode, u_first, size)
        monkeypatch.setenv("TENSORC_JIT", "always")
        nest = tc.compile(source, y=(3, *size)).plan.statements[0].loop_nest
        nest = replace(nest, one_thread=True)
        assert nest.separable_window == ("u", "v"), source
        module = backend.load(backend.render_numba([nest], "float64"))
        rng = np.random.default_rng(seed)
        y = rng.standard_normal((3, *size))
        y.flat[rng.choice(y.size, 3, replace=False)] = [np.nan, np.inf, -np.inf]
        got = np.empty(nest.shapes["p"])
        getattr(module, nest.name)(y, got)
        want = _numpy_path(monkeypatch, lambda: tc.compile(source, y=y.shape)(y=y))
        np.testing.assert_array_equal(got, want, err_msg=source)
    check()
