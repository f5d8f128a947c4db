"""The CuPy backend, checked as far as a machine without a GPU honestly allows.

- Rendering: plan and source (Python and CUDA C) without CuPy or a device.
- Errors: a clear BackendError when CuPy or a device is missing; `import tensorc` never
  imports CuPy.
- Program logic: the generated module run with NumPy as its namespace and each CUDA kernel
  in its NumPy lane form (emulate_on_numpy), against the NumPy backend and against the
  plain-loop reference evaluator (tests/reference.py).
- CUDA C: every kernel source compiled to an sm_90 cubin by NVRTC, and by nvcc where present.
- On a GPU (marked gpu, skipped here): the same programs on the device.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tensorc as tc
from tensorc.backends.cuda import nest_name
from tensorc.backends.cupy import compile_cubin, cuda_source, emulate_on_numpy, nvrtc_available

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import evaluate  # noqa: E402

# Programs whose statements take each path of the GPU plan: (source, input shapes).
PROGRAMS = {
    "max_pool": ("y[n,c,h,w] = max[u,v](x[n,c,2*h+u,2*w+v])   where u < 2, v < 2",
                 dict(x=(2, 3, 8, 8))),
    "avg_pool_overlapping": ("y[n,c,h,w] = mean[u,v](x[n,c,2*h+u,2*w+v])   where u < 3, v < 3",
                             dict(x=(2, 2, 9, 9))),
    "depthwise_zero": ("y[n,c,h,w] = x[n,c,h+u-1,w+v-1] * k[c,u,v]   "
                       "where h < 8, w < 8, x: zero", dict(x=(2, 4, 8, 8), k=(4, 3, 3))),
    "lenet1_bias_relu": ("y[n,o,h,w] = relu(x[n,c,h+u,w+v] * k[o,c,u,v] + b[o])",
                         dict(x=(2, 1, 12, 12), k=(6, 1, 5, 5), b=(6,))),
    "strided_dilated_reflect": ("y[n,o,h,w] = x[n,c,2*h+2*u-2,2*w+2*v-2] * k[o,c,u,v]   "
                                "where h < 6, w < 6, x: reflect",
                                dict(x=(2, 2, 12, 12), k=(3, 2, 3, 3))),
    "circular_1d": ("y[i] = x[i+j-3] * k[j]   where i < 10, x: circular",
                    dict(x=(10,), k=(7,))),
    "symmetric_wide": ("y[i] = x[i+j-5] * k[j]   where i < 6, x: symmetric",
                       dict(x=(4,), k=(11,))),
    "replicate_2d": ("y[h,w] = x[h+u-2,w+v-2] * k[u,v]   where h < 5, w < 5, x: replicate",
                     dict(x=(5, 5), k=(5, 5))),
    "softmax": ("m[n] = max[j](z[n,j])\ne[n,j] = exp(z[n,j] - m[n])\n"
                "p[n,j] = e[n,j] / sum[j](e[n,j])", dict(z=(4, 10))),
    "layer_norm": ("mu[n] = mean[d](a[n,d])\nvar[n] = mean[d]((a[n,d] - mu[n])^2)\n"
                   "y[n,d] = g[d] * (a[n,d] - mu[n]) / sqrt(var[n] + 1e-5) + b[d]",
                   dict(a=(3, 8), g=(8,), b=(8,))),
    "functions": ("y[i] = sigmoid(x[i]) + tanh(x[i]) * gelu(x[i]) - silu(x[i]) + softplus(x[i])"
                  " + elu(x[i]) + erf(x[i]) + sin(x[i]) * cos(x[i]) + expm1(x[i]) / 3"
                  " + sign(x[i]) + abs(x[i]) ^ 1.5 + max(x[i], 0.25) - min(x[i], -0.25)"
                  " + (x[i] > 0) + log1p(abs(x[i])) + rsqrt(1 + x[i]^2) + i",
                  dict(x=(16,))),
    "accumulate_through_windows": ("dx: [12]\ndx[2*i+j] += dy[i] * k[j]",
                                   dict(dy=(5,), k=(3,))),
    "accumulate_folded_reflect": ("dx: [8]\ndx[i+j-2] += dy[i] * k[j]   where dx: reflect",
                                  dict(dy=(8,), k=(5,))),
    "gemm_conv": ("y[n,o,h,w] = relu(x[n,c,h+u,w+v] * k[o,c,u,v] + b[o])",
                  dict(x=(2, 16, 8, 8), k=(32, 16, 3, 3), b=(32,))),
    "matmul_chain": ("out[i,l] = A[i,j] * B[j,k] * C[k,l]", dict(A=(16, 32), B=(32, 8),
                                                               C=(8, 16))),
    "full_reduction": ("s = sum[i,j](x[i,j] * x[i,j])", dict(x=(100, 100))),
}

# Gradients of programs whose adjoints take the loop-kernel paths (atomics, folding).
GRADIENTS = {
    "max_pool": ("y[n,c,h,w] = max[u,v](x[n,c,2*h+u,2*w+v])   where u < 2, v < 2",
                 ["x"], dict(x=(2, 3, 8, 8))),
    "depthwise_reflect": ("y[n,c,h,w] = x[n,c,h+u-1,w+v-1] * k[c,u,v]   "
                          "where h < 6, w < 6, x: reflect", ["x", "k"],
                          dict(x=(2, 3, 6, 6), k=(3, 3, 3))),
    "strided_conv": ("y[n,o,h,w] = x[n,c,2*h+u,2*w+v] * k[o,c,u,v]", ["x", "k"],
                     dict(x=(2, 2, 9, 9), k=(3, 2, 3, 3))),
    "softmax_cross_entropy": ("m[n] = max[j](z[n,j])\ne[n,j] = exp(z[n,j] - m[n])\n"
                              "p[n,j] = e[n,j] / sum[j](e[n,j])\n"
                              "loss = -mean[n](sum[j](t[n,j] * log(p[n,j])))",
                              ["z"], dict(z=(4, 6), t=(4, 6))),
}


def gradient_inputs(source, wrt, shapes, dtype="float64", seed=2):
    """The inputs of compile_grad(source, wrt): the forward's inputs and, for each output,
    its cotangent d<output>, shaped like it."""
    tensors = tc.compile(source, dtype=dtype, **shapes).ir.tensors
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(shapes[n] if n in shapes else tensors[n[1:]].shape)
            .astype(dtype) for n in tc.compile_grad(source, wrt=wrt).inputs}


def _inputs(kern, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(kern.ir.tensors[n].shape).astype(dtype)
            for n in kern.ir.inputs}


def _close(got, want, rtol, atol):
    if isinstance(want, dict):
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=atol, err_msg=key)
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


# ---- rendering and errors, no device ----------------------------------------------------

def test_plan_and_source_render_without_a_device():
    source, shapes = PROGRAMS["lenet1_bias_relu"]
    kern = tc.compile(source, backend="cupy", **shapes)
    assert "CUDA loop kernel compute_y_1" in str(kern.plan)
    assert 'extern "C" __global__ void compute_y_1(' in kern.source
    assert "def kernel(x, k, b):" in kern.source
    assert "launch('compute_y_1', 768, x, k, b, y)" in kern.source
    # the loop variables are the program's indices
    assert "const int o = thread / 64 % 6;" in kern.source
    assert "for (int u = 0; u < 5; ++u) {" in kern.source


def test_gemm_statements_stay_on_cublas_and_poor_gemms_become_loop_kernels():
    strategies = {}
    for name in ("gemm_conv", "matmul_chain", "depthwise_zero", "lenet1_bias_relu",
                 "full_reduction", "max_pool"):
        source, shapes = PROGRAMS[name]
        strategies[name] = tc.compile(source, backend="cupy", **shapes).plan.statements[0].strategy
    assert "cuBLAS" in strategies["gemm_conv"] and "cuBLAS" in strategies["matmul_chain"]
    assert strategies["depthwise_zero"].startswith("CUDA loop kernel")
    assert "GEMM-poor (contracts 25 elements" in strategies["lenet1_bias_relu"]
    assert "tree reductions" in strategies["full_reduction"]
    assert "no GEMM" in strategies["max_pool"]
    # a large sum the CPU runs as GEMVs with ones stays CuPy's tree reduction
    bias_grad = tc.compile("db[o] = dy[n,o,h,w]", dtype="float32", dy=(64, 16, 24, 24),
                           backend="cupy").plan.statements[0].strategy
    assert "axis reduction" in bias_grad and "GEMV" not in bias_grad, bias_grad


def test_a_gemms_bias_and_activation_become_one_epilogue_kernel():
    source, shapes = PROGRAMS["gemm_conv"]
    kern = tc.compile(source, backend="cupy", **shapes)
    gemm, epilogue = kern.plan.statements
    assert gemm.loop_nest is None and "cuBLAS" in gemm.strategy
    # the GEMM's result stays in the order the GEMM produces it; the epilogue reads it so
    assert gemm.statement.text.startswith("y_gemm[n,h,w,o] = sum[c,u,v]")
    assert epilogue.statement.text == "y[n,o,h,w] = relu((y_gemm[n,h,w,o] + b[o]))"
    assert "epilogue of the GEMM above" in epilogue.strategy
    assert kern.source.split("y_gemm = ")[1].split("\n")[0].endswith(".reshape(2, 6, 6, 32)")
    assert "xp.maximum" not in kern.source  # relu is in the CUDA kernel


# Tensors and indices named like C keywords, CUDA built-ins and the modules' own names.
HOSTILE_NAMES = ("y[int,thread] = relu(xp[int,thread+float-1] * launch[float] + tc_load[int]) "
                 "+ max[real](numpy[int,real])   where thread < 6, xp: reflect")


def test_names_that_collide_with_c_python_or_the_module_are_renamed():
    shapes = dict(xp=(3, 6), launch=(3,), tc_load=(3,), numpy=(3, 4))
    kern = tc.compile(HOSTILE_NAMES, backend="cupy", **shapes)
    assert "const int int_ = thread / 6;" in kern.cuda
    assert "const int thread_ = thread % 6;" in kern.cuda
    assert "def kernel(xp_, launch_, tc_load, numpy_):" in kern.source
    arrays = _inputs(kern)
    with emulate_on_numpy():
        got = kern(*arrays.values())
    np.testing.assert_allclose(got, tc.compile(HOSTILE_NAMES, **shapes)(*arrays.values()),
                               rtol=1e-12)
    if nvrtc_available():
        compile_cubin(kern.cuda)


def test_import_and_render_without_cupy_then_a_clear_error_on_call():
    code = (
        "import sys; sys.modules['cupy'] = None  # as if CuPy were not installed\n"
        "import tensorc as tc\n"
        "assert 'cupy' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "k = tc.compile('y[i] = relu(x[i])', backend='cupy', x=(4,))\n"
        "assert '__global__' in k.source\n"
        "try:\n"
        "    k(x=[1.0, -1.0, 2.0, -2.0])\n"
        "except tc.BackendError as e:\n"
        "    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "needs CuPy, which is not installed" in result.stdout
    assert "pip install 'tensorc[cuda12]'" in result.stdout


def test_import_tensorc_does_not_import_cupy():
    result = subprocess.run([sys.executable, "-c", "import sys, tensorc; print('cupy' in sys.modules)"],
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_no_device_is_a_clear_error():
    pytest.importorskip("cupy")
    from conftest import gpu_missing
    if gpu_missing() is None:
        pytest.skip("a GPU is present")
    kern = tc.compile("y[i] = relu(x[i])", backend="cupy", x=(4,))
    with pytest.raises(tc.BackendError, match="needs a CUDA device"):
        kern(x=np.ones(4))


# ---- the program logic, emulated on NumPy ------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_emulated_module_matches_the_numpy_backend(name, dtype):
    source, shapes = PROGRAMS[name]
    kern = tc.compile(source, backend="cupy", dtype=dtype, **shapes)
    arrays = _inputs(kern, dtype=dtype)
    want = tc.compile(source, dtype=dtype, **shapes)(**arrays)
    with emulate_on_numpy(), np.errstate(all="ignore"):
        got = kern(**arrays)
    tolerance = 1e-12 if dtype == "float64" else 2e-5
    _close(got, want, tolerance, tolerance)


# The reference evaluator refuses '+=' outside the target (it does not fold boundaries).
@pytest.mark.parametrize("name", sorted(set(PROGRAMS) - {"accumulate_folded_reflect"}))
def test_emulated_module_matches_the_reference_evaluator(name):
    source, shapes = PROGRAMS[name]
    kern = tc.compile(source, backend="cupy", dtype="float64", **shapes)
    arrays = _inputs(kern, seed=1)
    with emulate_on_numpy():
        got = kern(**arrays)
    expected = evaluate(kern.ir, arrays)
    for output in kern.outputs:
        value = got[output] if isinstance(got, dict) else got
        np.testing.assert_allclose(value, expected[output], rtol=1e-10, atol=1e-10)


def test_float16_kernels_compute_in_float32():
    source, shapes = PROGRAMS["depthwise_zero"]
    kern = tc.compile(source, backend="cupy", dtype="float16", **shapes)
    arrays = _inputs(kern, dtype="float16")
    with emulate_on_numpy():
        got = kern(**arrays)
    assert got.dtype == np.float16
    want = tc.compile(source, dtype="float32", **shapes)(
        **{n: a.astype(np.float32) for n, a in arrays.items()})
    np.testing.assert_allclose(got, want.astype(np.float16), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("name", sorted(GRADIENTS))
def test_emulated_gradients_match_the_numpy_backend(name):
    source, wrt, shapes = GRADIENTS[name]
    kern = tc.compile_grad(source, wrt=wrt, backend="cupy", dtype="float64")
    arrays = gradient_inputs(source, wrt, shapes)
    want = tc.compile_grad(source, wrt=wrt, dtype="float64")(**arrays)
    with emulate_on_numpy():
        got = kern(**arrays)
    _close(got, want, 1e-10, 1e-10)
    assert any(sp.loop_nest is not None and sp.statement.accumulate
               for sp in kern.plan.statements) or name == "softmax_cross_entropy"


# ---- the CUDA C, compiled without a device ------------------------------------------------

def _cuda_sources():
    for name, (source, shapes) in sorted(PROGRAMS.items()):
        for dtype in ("float16", "float32", "float64"):
            yield f"{name}-{dtype}", source, shapes, dtype, None
    for name, (source, wrt, shapes) in sorted(GRADIENTS.items()):
        for dtype in ("float32", "float64"):
            yield f"grad-{name}-{dtype}", source, shapes, dtype, wrt


def _cuda_of(source, shapes, dtype, wrt):
    if wrt is None:
        kern = tc.compile(source, backend="cupy", dtype=dtype, **shapes)
    else:
        kern = tc.compile_grad(source, wrt=wrt, backend="cupy", dtype=dtype)
        with emulate_on_numpy():
            kern(**gradient_inputs(source, wrt, shapes, dtype))  # specializes
    return cuda_source(kern.plan)


CUDA_CASES = list(_cuda_sources())


@pytest.mark.skipif(not nvrtc_available(), reason="NVRTC (cuda-bindings) is not installed")
@pytest.mark.parametrize("case", CUDA_CASES, ids=[c[0] for c in CUDA_CASES])
def test_cuda_source_compiles_to_a_cubin_with_nvrtc(case):
    _, source, shapes, dtype, wrt = case
    cuda = _cuda_of(source, shapes, dtype, wrt)
    if not cuda:
        pytest.skip("no loop kernel in this program")
    assert len(compile_cubin(cuda, "sm_90")) > 0


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on this machine")
def test_cuda_sources_compile_with_nvcc(tmp_path):
    files = []
    for name, source, shapes, dtype, wrt in CUDA_CASES:
        if dtype != "float32" and not name.startswith("depthwise"):
            continue  # nvcc is slow: every program once, one in every dtype
        cuda = _cuda_of(source, shapes, dtype, wrt)
        if cuda:
            path = tmp_path / f"{name}.cu"
            path.write_text(cuda)
            files.append(str(path))
    assert len(files) >= 10
    result = subprocess.run(["nvcc", "-cubin", "-arch=sm_90", "-std=c++17", "-odir",
                             str(tmp_path), *files], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(tmp_path.glob("*.cubin"))) == len(files)


def test_a_cuda_compile_error_carries_nvrtcs_log():
    if not nvrtc_available():
        pytest.skip("NVRTC (cuda-bindings) is not installed")
    with pytest.raises(tc.BackendError, match="undefined"):
        compile_cubin('extern "C" __global__ void f() { undefined_name(); }')


# ---- on a GPU ------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_on_the_device_matches_the_numpy_backend(name, dtype):
    import cupy
    source, shapes = PROGRAMS[name]
    kern = tc.compile(source, backend="cupy", dtype=dtype, **shapes)
    arrays = _inputs(kern, dtype=dtype)
    want = tc.compile(source, dtype=dtype, **shapes)(**arrays)
    got = kern(**{n: cupy.asarray(a) for n, a in arrays.items()})
    got = {k: cupy.asnumpy(v) for k, v in got.items()} if isinstance(got, dict) \
        else cupy.asnumpy(got)
    tolerance = 1e-10 if dtype == "float64" else 1e-4
    _close(got, want, tolerance, tolerance)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(GRADIENTS))
def test_gradients_on_the_device_match_the_numpy_backend(name):
    import cupy
    source, wrt, shapes = GRADIENTS[name]
    arrays = gradient_inputs(source, wrt, shapes)
    want = tc.compile_grad(source, wrt=wrt, dtype="float64")(**arrays)
    got = tc.compile_grad(source, wrt=wrt, backend="cupy", dtype="float64")(
        **{n: cupy.asarray(a) for n, a in arrays.items()})
    _close({k: cupy.asnumpy(v) for k, v in got.items()}, want, 1e-10, 1e-10)


# ---- hostile programs ----------------------------------------------------------------------

import test_hostile_inputs as hostile  # noqa: E402

# What the CUDA C may contain besides identifiers derived from user names: C and CUDA
# words, math functions, the prelude's helpers and its one-letter parameters.
_CUDA_WORDS = set("""
extern C __global__ __device__ __forceinline__ __restrict__ const storage real typedef float void define
double unsigned short int long bool template typename I for if return asm h f x p n q r v a b
blockIdx blockDim threadIdx gridDim thread atomicAdd __int_as_float
exp log sqrt tanh fabs fmax erf sin cos log1p expm1 pow
""".split())
_CUDA_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DERIVED = re.compile(r"(sum|mean|max|min)_[A-Za-z0-9_]+|t(_[0-9]+)?|"
                      r"(compute|accumulate)_[A-Za-z0-9_]+_[0-9]+")


def check_cuda_identifiers(cuda: str, user_names: set[str]) -> None:
    """Every identifier of the CUDA C (outside comments and the prelude's PTX strings) is a
    C or CUDA word, a helper, a name derived from a validated user name, or generated."""
    renamed = {nest_name(name) for name in user_names}
    for line in cuda.splitlines():
        code = line.split("//")[0]
        if "asm(" in code:
            code = re.sub(r'"[^"]*"', "", code)
        code = re.sub(r"\b0x[0-9a-fA-F]+\b|\b[0-9][0-9.]*(e[+-]?[0-9]+)?", "", code)  # numbers
        assert '"' not in code.replace('extern "C"', ""), line
        for word in _CUDA_IDENTIFIER.findall(code):
            ok = word in _CUDA_WORDS or word.startswith(("tc_", "TC_")) or word in renamed \
                or re.sub(r"_[0-9]+\Z", "", word) in renamed or _DERIVED.fullmatch(word)
            assert ok, f"identifier {word!r} in: {line.strip()}"
    for line in cuda.splitlines():
        if "//" in line:
            assert "\n" not in line and "*/" not in line and "/*" not in line, line


@pytest.mark.parametrize("text, shapes, oracle, expect, compile_kwargs", hostile.HOSTILE)
def test_hostile_program_on_the_cupy_backend(text, shapes, oracle, expect, compile_kwargs):
    """The hostile programs of tests/test_hostile_inputs.py: refused alike, or computed
    alike (emulated), with CUDA C that holds user text only as validated identifiers and
    compiles."""
    arrays = hostile._arrays(shapes)
    try:
        with np.errstate(all="ignore"):
            want = tc.compile(text, **compile_kwargs)(**arrays)
    except tc.TensorcError as error:
        with pytest.raises(type(error)), emulate_on_numpy():
            tc.compile(text, backend="cupy", **compile_kwargs)(**arrays)
        return
    kern = tc.compile(text, backend="cupy", **compile_kwargs)
    with emulate_on_numpy(), np.errstate(all="ignore"):
        got = kern(**arrays)
    hostile._assert_matches(got, want)
    user_names = set(kern.ir.tensors) | {i for s in kern.plan.program.statements
                                         for i in s.ranges} | set(kern.plan.program.tensors)
    check_cuda_identifiers(kern.cuda, user_names)
    if kern.cuda and nvrtc_available() and len(kern.cuda) < 200_000:
        compile_cubin(kern.cuda)


def test_the_cuda_identifier_check_rejects_what_no_renderer_writes():
    kern = tc.compile("y[i] = relu(x[i])", backend="cupy", x=(4,))
    check_cuda_identifiers(kern.cuda, {"x", "y", "i"})
    for injected in ['system("rm -rf /");', "evil_function(y);", "y[i] = x[i]; goto end;"]:
        with pytest.raises(AssertionError):
            check_cuda_identifiers(kern.cuda.replace("y[thread] =", injected + " y[thread] ="),
                                   {"x", "y", "i"})
