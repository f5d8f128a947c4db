"""The Dask backend: programs on chunked arrays.

The conformance suite runs on it too (`pytest -m conformance --dask-chunked`, every input cut
into two chunks per dimension). Here: boundary modes with chunks that cut through windows,
pads longer than an axis (where Dask's pad differs from NumPy's), the plan's chunking,
halos and bytes-moved estimate (checked by hand), data-parallel gradients (partial results
over batch chunks), laziness, and the errors.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import tensorc as tc
from reference import SMALL_CNN, small_cnn_inputs

da = pytest.importorskip("dask.array")

MODES = ("zero", "circular", "reflect", "symmetric", "replicate")


def _run_both(src: str, arrays: dict, chunks: dict, **sizes):
    """(dask result computed, NumPy backend result) for the same inputs."""
    kern = tc.compile(src, backend="dask", **sizes)
    chunked = {n: da.from_array(a, chunks=chunks[n]) if n in chunks else a
               for n, a in arrays.items()}
    result = kern(**chunked)
    want = tc.compile(src, **sizes)(**arrays)
    return kern, result, want


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunks", [(1, 2, 3, 4, 2), (2, 1, 4, 2, 5)])
def test_3d_convolution_with_each_boundary_mode(mode, chunks):
    """A 3-D convolution with an asymmetric window (3x4x3, offsets -1,-2,-1): chunks of the
    spatial axes (and of the summed channels) cut through its windows."""
    rng = np.random.default_rng(0)
    src = ("y[n,o,d,h,w] = x[n,c,d+a-1,h+u-2,w+v-1] * k[o,c,a,u,v]   "
           f"where d < 6, h < 7, w < 5, x: {mode}")
    arrays = dict(x=rng.standard_normal((2, 3, 6, 7, 5)), k=rng.standard_normal((2, 3, 3, 4, 3)))
    kern, result, want = _run_both(src, arrays, dict(x=chunks))
    assert isinstance(result, da.Array)
    np.testing.assert_allclose(result.compute(), want, rtol=1e-12, atol=1e-12)
    w_halo = "1/1" if chunks[4] < 5 else "0/0"  # w is cut only by the first chunking
    assert f"halo (low/high per dimension): x 0/0 0/0 1/1 2/1 {w_halo}" in str(kern.plan)


@pytest.mark.parametrize("mode", MODES)
def test_pads_longer_than_the_axis(mode):
    """Dask's pad repeats a reflection differently from NumPy's once a pad is longer than
    the axis: the backend gathers those positions as numpy.pad would."""
    rng = np.random.default_rng(1)
    src = f"y[n,h] = x[n,h+u-6] * k[u]   where h < 4, x: {mode}"
    arrays = dict(x=rng.standard_normal((3, 4)), k=rng.standard_normal(13))
    _, result, want = _run_both(src, arrays, dict(x=(2, 3)))
    np.testing.assert_allclose(result.compute(), want, rtol=1e-12, atol=1e-12)


def test_plan_states_blocks_halo_and_bytes_moved():
    """y[h] = x[h+u], x in chunks of 4: a block ends where its windows' centres (h+1) cross
    a chunk boundary: [0,3), [3,7), [7,10), reading [0,5), [3,9), [7,12): 1, 1+1 and 1
    elements from neighbouring chunks, 4 float64 = 32 B."""
    x, k = np.arange(12.0), np.array([1.0, -2.0, 0.5])
    kern, result, want = _run_both("y[h] = x[h+u] * k[u]", dict(x=x, k=k), dict(x=4))
    np.testing.assert_allclose(result.compute(), want)
    plan = kern.plan.appendix.program.last[0]
    assert plan.blocks == {"h": [0, 3, 7, 10]} and plan.tasks == 3
    assert plan.halos == {"x": [(0, 2)], "k": [(0, 0)]}
    assert plan.moved_bytes == 32
    assert "3 block tasks, y cut along h (3); halo (low/high per dimension): x 0/2; " \
        "about 32 B moved between workers" in str(kern.plan)


def test_contractions_run_as_dask_einsum_in_the_planned_order():
    rng = np.random.default_rng(2)
    arrays = dict(A=rng.standard_normal((20, 30)), B=rng.standard_normal((30, 5)),
                  C=rng.standard_normal((5, 25)))
    kern, result, want = _run_both("out[i,l] = A[i,j] * B[j,k] * C[k,l]", arrays,
                                   dict(A=(7, 10), B=(10, 5), C=(5, 9)))
    np.testing.assert_allclose(result.compute(), want, rtol=1e-12)
    assert "dask.array.einsum per pairwise step" in str(kern.plan)


def test_data_parallel_gradients():
    """A small CNN's loss and gradients with the batch in 4 chunks: the weight gradients are
    partial results per chunk of n, combined by a tree reduction, equal to one process's."""
    src = SMALL_CNN.format(S=8)
    arrays = small_cnn_inputs(np.random.default_rng(3), batch=16, channels=2, size=8,
                              filters=3, classes=4)
    chunks = dict(x=(4, 2, 8, 8), t=(4, 4))
    kern = tc.compile_grad(src, wrt=["k", "b", "W"], backend="dask")
    got = kern(**{n: da.from_array(a, chunks=chunks[n]) if n in chunks else a
                  for n, a in arrays.items()})
    want = tc.compile_grad(src, wrt=["k", "b", "W"])(**arrays)
    import dask
    computed = dict(zip(got, dask.compute(*got.values())))
    for name in ("loss", "dk", "db", "dW"):
        np.testing.assert_allclose(computed[name], want[name], rtol=1e-10, atol=1e-10,
                                   err_msg=name)
    text = str(kern.plan)
    lines = [line for line in text.splitlines() if "partial results over" in line
             and "chunks of n, combined by a tree reduction" in line]
    assert len(lines) >= 2, text  # dk and db (dW runs as dask.array.einsum)


def test_numpy_inputs_and_scalars():
    """NumPy arrays are chunked automatically, Python numbers stay scalars; the result is
    a lazy dask array."""
    kern = tc.compile("y[i] = s * x[i] + 1", backend="dask")
    result = kern(x=np.arange(5.0), s=2.0)
    assert isinstance(result, da.Array)
    np.testing.assert_allclose(result.compute(), 2 * np.arange(5.0) + 1)


def test_source_is_the_numpy_code_each_block_runs():
    kern = tc.compile("y[i] = x[i+u] * k[u]", backend="dask", x=(10,), k=(3,))
    assert kern.source.startswith('"""Generated by tensorc for the Dask backend')
    assert "def kernel(x, k):" in kern.source
    assert "not called yet" in str(kern.plan)


def test_missing_dask_names_the_extra(monkeypatch):
    kern = tc.compile("y[i] = 2 * x[i]", backend="dask", x=(3,))
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(tc.BackendError, match=r"tensorc\[dask\]"):
        kern(x=np.ones(3))


def test_unknown_backend_lists_dask():
    with pytest.raises(tc.BackendError, match="numpy, cupy, dask"):
        tc.compile("y[i] = x[i]", backend="spark")


@pytest.mark.parametrize("src,shapes,chunks", [
    ("y[n,o,h,w] = x[n,c,h+u-1,w+v-1] * k[o,c,u,v]   where h < 11, w < 9, x: reflect",
     dict(x=(4, 3, 11, 9), k=(5, 3, 3, 3)), dict(x=(2, 3, 4, 5))),
    ("p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   where u < 2, v < 2",
     dict(y=(4, 3, 12, 10)), dict(y=(2, 3, 5, 3))),
    ("y[n,c,h,w] = x[n,c,h+u-1,w+v-1] * k[c,u,v]   where h < 8, w < 8, x: zero",
     dict(x=(2, 4, 8, 8), k=(4, 3, 3)), dict(x=(1, 2, 3, 8))),
])
def test_cupy_chunks_run_the_cupy_backends_blocks(src, shapes, chunks):
    """Chunks that are CuPy arrays run each block with the CuPy backend's module (cuBLAS,
    CUDA loop kernels). Without a GPU: emulated on NumPy, each CUDA kernel in its lane form,
    as the CuPy backend's own tests do."""
    from tensorc.backends import dask as dask_backend
    from tensorc.backends.cupy import emulate_on_numpy
    rng = np.random.default_rng(4)
    arrays = {n: rng.standard_normal(s) for n, s in shapes.items()}
    want = tc.compile(src)(**arrays)
    kern = tc.compile(src, backend="dask")
    with emulate_on_numpy():
        result = kern(**{n: da.from_array(a, chunks=chunks.get(n, a.shape))
                         for n, a in arrays.items()}).compute(scheduler="threads")
    np.testing.assert_allclose(result, want, rtol=1e-12, atol=1e-12)
    devices = [k for k in dask_backend._SOURCES.values() if k.lanes is not None]
    assert devices and all("xp." in k.source for k in devices)


def test_a_volume_larger_than_this_machine_plans_per_block():
    """32 GiB of output on a machine with less: the whole-program plan that `kern.plan`
    prints is not held to one process's memory checks (no process runs it whole)."""
    n = 2048
    src = ("y[d,h,w] = x[d+a-1,h+u-1,w+v-1] * k[a,u,v]   "
           f"where d < {n}, h < {n}, w < {n}, x: reflect")
    x = da.zeros((n,) * 3, chunks=256, dtype=np.float32)
    from tensorc.budget import physical_memory
    if physical_memory() < 2 * n ** 3 * 4:  # x and y: the NumPy backend refuses at once
        with pytest.raises(tc.TensorcError, match="more than this machine"):
            tc.compile(src, x=(n, n, n), k=(3, 3, 3), dtype="float32")
    y = tc.compile(src, backend="dask")(x=x + 1, k=np.ones((3, 3, 3), np.float32))
    np.testing.assert_array_equal(y[:2, 100:102, -2:].compute(), np.full((2, 2, 2), 27.0))


def test_a_large_plain_sum_runs_as_a_tree(monkeypatch):
    """A plain sum keeps NumPy's order in one task, unless that task would read more than
    PLAIN_SUM_TASK_BYTES: then partial sums per chunk and a tree."""
    from tensorc.backends import dask as dask_backend
    x = np.random.default_rng(5).standard_normal((40, 30))
    src = "s[j] = sum[i](x[i,j])"
    kern, result, want = _run_both(src, dict(x=x), dict(x=(10, 30)))
    np.testing.assert_allclose(result.compute(), want, rtol=1e-12)
    assert "partial results" not in str(kern.plan)
    monkeypatch.setattr(dask_backend, "PLAIN_SUM_TASK_BYTES", 1000)
    kern, result, want = _run_both(src, dict(x=x), dict(x=(10, 30)))
    np.testing.assert_allclose(result.compute(), want, rtol=1e-12)
    assert "partial results over 4 chunks of i, combined by a tree reduction" in str(kern.plan)


@pytest.mark.parametrize("op", ["max", "min"])
def test_a_max_summed_through_a_window_is_not_split(op, monkeypatch):
    """y[k+l] += max[i](x[k,i]) sums several maxima into each element: a max of partial
    results per chunk of i would be a max of sums. Partial maxima stay for a plain target,
    and a large task does not split the windowed one either."""
    from tensorc.backends import dask as dask_backend
    x = np.random.default_rng(6).standard_normal((4, 8))
    reduced = getattr(x, op)(axis=1)
    want = np.zeros(6)
    for k in range(4):
        for l in range(3):
            want[k + l] += reduced[k]
    src = f"y[k+l] += {op}[i](x[k,i])   where l < 3, y: zero"
    for task_bytes in (dask_backend.PLAIN_SUM_TASK_BYTES, 0):
        monkeypatch.setattr(dask_backend, "PLAIN_SUM_TASK_BYTES", task_bytes)
        kern, result, numpy_result = _run_both(src, dict(x=x), dict(x=(2, 4)), y=(6,),
                                               x=x.shape)
        np.testing.assert_allclose(result.compute(), want, rtol=1e-12)
        np.testing.assert_allclose(numpy_result, want, rtol=1e-12)
        assert "partial results" not in str(kern.plan)
    kern, result, _ = _run_both(f"y[k] = {op}[i](x[k,i])", dict(x=x), dict(x=(2, 4)))
    np.testing.assert_allclose(result.compute(), reduced, rtol=1e-12)
    assert "partial results over 2 chunks of i" in str(kern.plan)
