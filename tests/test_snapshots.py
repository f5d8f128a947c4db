"""Snapshot tests pin the generated source of a few kernels.

After an intended change to code generation, regenerate with
    TENSORC_UPDATE_SNAPSHOTS=1 python -m pytest tests/test_snapshots.py
and review the diff of tests/snapshots/ like any other change.
"""

import os
import pathlib

import pytest

import tensorc as tc

SNAPSHOTS = pathlib.Path(__file__).parent / "snapshots"

CASES = {
    "matmul": ("C[i,k] = A[i,j] * B[j,k]", dict(A=(3, 4), B=(4, 5))),
    "conv_bias_relu": ("y[n,o,h,w] = relu(x[n,c,h+u,w+v] * k[o,c,u,v] + b[o])",
                       dict(x=(64, 1, 28, 28), k=(16, 1, 5, 5), b=(16,))),
    "conv_strided_reflect": ("y[n,o,h,w] = x[n,c,2*h+2*u-2,2*w+2*v-2] * k[o,c,u,v]   "
                             "where h < 16, w < 16, x: reflect",
                             dict(x=(8, 3, 32, 32), k=(4, 3, 3, 3))),
    "maxpool": ("p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   where u < 2, v < 2",
                dict(y=(8, 16, 24, 24))),
    "softmax": ("m[n] = max[j](z[n,j])\ne[n,j] = exp(z[n,j] - m[n])\n"
                "p[n,j] = e[n,j] / sum[j](e[n,j])", dict(z=(32, 10))),
    "chain": ("out[i,l] = A[i,j] * B[j,k] * C[k,l]", dict(A=(64, 32), B=(32, 8), C=(8, 64))),
    "conv_padded_chunked": ("y[n,o,h,w] = relu(x[n,c,h+u-1,w+v-1] * k[o,c,u,v] + b[o])   "
                            "where h < 48, w < 48, x: zero",
                            dict(x=(8, 32, 48, 48), k=(16, 32, 3, 3), b=(16,))),
    # LeNet-2: rows 8 wide, so im2col copies from a channels-last copy of x (runs of v x c)
    "conv_channels_last": ("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]",
                           dict(x=(64, 16, 12, 12), k=(32, 16, 5, 5))),
    # strided, padded and channels-last: GEMM rows chunked along n, transposed at the end
    "conv_channels_last_chunked": ("y[n,o,h,w] = x[n,c,2*h+u-1,2*w+v-1] * k[o,c,u,v]   "
                                   "where h < 28, w < 28, x: zero",
                                   dict(x=(8, 64, 56, 56), k=(64, 64, 3, 3))),
    # stride 1: read back through the window (gather form, a flipped-kernel convolution)
    "flipped_kernel": ("dx: [N,C,H,W]\ndx[n,c,h+u,w+v] += dy[n,o,h,w] * k[o,c,u,v]",
                       dict(N=2, C=8, H=34, W=34, dy=(2, 8, 32, 32), k=(8, 8, 3, 3))),
    # short rows (8 wide): col2im into a buffer with n innermost, each add over (w, n)
    "col2im_batch_last": ("dx: [N,C,H,W]\ndx[n,c,h+u,w+v] += dy[n,o,h,w] * k[o,c,u,v]",
                          dict(N=8, C=3, H=12, W=12, dy=(8, 4, 10, 10), k=(4, 3, 3, 3))),
    # stride 2: GEMM, then the contribution added back per window offset (col2im)
    "col2im": ("dx: [N,C,H,W]\ndx[n,c,2*h+u,2*w+v] += dy[n,o,h,w] * k[o,c,u,v]",
               dict(N=8, C=3, H=11, W=11, dy=(8, 4, 5, 5), k=(4, 3, 3, 3))),
    # the max-pool gradient: the tie count and the routed gradient, one window offset at a time
    "maxpool_grad": (str(tc.grad(tc.parse("p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   "
                                          "where u < 2, v < 2"), wrt=["y"])),
                     dict(y=(8, 16, 24, 24), dp=(8, 16, 12, 12))),
    # a 15x15 kernel: by FFT (transforms, a complex GEMM per frequency, inverse, crop)
    "fft_large_kernel": ("y[n,o,h,w] = x[n,c,h+u-7,w+v-7] * k[o,c,u,v]   "
                         "where h < 48, w < 40, x: reflect",
                         dict(x=(4, 8, 48, 40), k=(8, 8, 15, 15))),
    "col2im_reflect": ("dx: [N,C,H,W]\n"
                       "dx[n,c,2*h+u-1,2*w+v-1] += dy[n,o,h,w] * k[o,c,u,v]   where dx: reflect",
                       dict(N=2, C=3, H=9, W=9, dy=(2, 4, 5, 5), k=(4, 3, 3, 3))),
}


@pytest.fixture(autouse=True)
def numpy_path(monkeypatch):
    """The NumPy backend's own code, whether or not Numba (loop kernels) is installed; im2col
    rather than shifted GEMMs (tests/test_shifted.py pins those)."""
    monkeypatch.setenv("TENSORC_JIT", "off")
    monkeypatch.setenv("TENSORC_SHIFT", "off")


def check_snapshot(name: str, generated: str) -> None:
    """`generated` equals tests/snapshots/<name>.py (written instead, when updating)."""
    path = SNAPSHOTS / f"{name}.py"
    if os.environ.get("TENSORC_UPDATE_SNAPSHOTS"):
        path.write_text(generated)
    assert path.exists(), f"no snapshot {path}; run with TENSORC_UPDATE_SNAPSHOTS=1"
    assert generated == path.read_text()


@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_source_matches_snapshot(name):
    source, shapes = CASES[name]
    check_snapshot(name, tc.compile(source, **shapes).source)


@pytest.mark.parametrize("name", sorted(CASES))
def test_snapshot_is_a_standalone_module(name, tmp_path):
    """The generated module imports only NumPy (and the standard library) and runs alone."""
    import importlib.util

    import numpy as np
    text = (SNAPSHOTS / f"{name}.py").read_text()
    imports = [line for line in text.splitlines() if line.startswith(("import ", "from "))]
    assert all("numpy" in line or line == "import threading" for line in imports), imports
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    source, shapes = CASES[name]
    kern = tc.compile(source, **shapes)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(kern.ir.tensors[n].shape) for n in kern.ir.inputs]
    got = module.kernel(*arrays)
    want = kern(*arrays)
    if isinstance(want, dict):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    else:
        np.testing.assert_array_equal(got, want)


# The CuPy backend's module: array-level code over `xp` and the loop kernels' CUDA C.
CUPY_CASES = {
    "cupy_maxpool": CASES["maxpool"],
    "cupy_lenet1_bias_relu": CASES["conv_bias_relu"],  # 1 channel, 5x5: a loop kernel
    "cupy_conv_strided_reflect": CASES["conv_strided_reflect"],  # 27 per output: loop kernel
    "cupy_conv_gemm": CASES["conv_channels_last"],  # 400 per output: cuBLAS
    # LeNet-2 with bias and ReLU: cuBLAS, then the epilogue as one loop kernel
    "cupy_conv_gemm_epilogue": ("y[n,o,h,w] = relu(x[n,c,h+u,w+v] * k[o,c,u,v] + b[o])",
                                dict(x=(64, 16, 12, 12), k=(32, 16, 5, 5), b=(32,))),
    "cupy_softmax": CASES["softmax"],
    "cupy_col2im_reflect": CASES["col2im_reflect"],  # atomics, folded by index arithmetic
}


@pytest.mark.parametrize("name", sorted(CUPY_CASES))
def test_generated_cupy_source_matches_snapshot(name):
    source, shapes = CUPY_CASES[name]
    check_snapshot(name, tc.compile(source, backend="cupy", **shapes).source)


@pytest.mark.parametrize("name", sorted(CUPY_CASES))
def test_cupy_snapshot_runs_alone_on_numpy(name, tmp_path):
    """The snapshot module, bound to NumPy and its kernels' lane form, computes what the
    NumPy backend does."""
    import importlib.util

    import numpy as np
    from tensorc.backends.cuda import render_lanes
    from tensorc.backends.cupy import _LaneLauncher, _Special
    path = tmp_path / f"{name}.py"
    path.write_text((SNAPSHOTS / f"{name}.py").read_text())
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    source, shapes = CUPY_CASES[name]
    kern = tc.compile(source, backend="cupy", **shapes)
    nests = [sp.loop_nest for sp in kern.plan.statements if sp.loop_nest is not None]
    module.bind(np, _Special(), _LaneLauncher(render_lanes(nests), kern.plan.dtype))
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(kern.ir.tensors[n].shape) for n in kern.ir.inputs]
    got = module.kernel(*arrays)
    want = tc.compile(source, **shapes)(*arrays)
    if isinstance(want, dict):
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
