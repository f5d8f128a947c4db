"""Kernel: specialization, caching, dtype rules, outputs, and what calls may pass."""

import numpy as np
import pytest

import tensorc as tc

rng = np.random.default_rng(0)


def test_same_program_and_shapes_reuse_the_cached_module():
    first = tc.compile("C[i,k] = A[i,j] * B[j,k]", A=(3, 4), B=(4, 5))
    second = tc.compile("C[i,k]   =   A[i,j]*B[j,k]  # same program", A=(3, 4), B=(4, 5))
    assert first.source is second.source
    other = tc.compile("C[i,k] = A[i,j] * B[j,k]", A=(3, 4), B=(4, 6))
    assert other.source is not first.source


def test_lazy_kernel_specializes_per_call():
    kern = tc.compile("C[i,k] = A[i,j] * B[j,k]")
    with pytest.raises(tc.TensorcError, match="no shapes yet"):
        kern.source
    for n in (2, 3):
        a, b = rng.standard_normal((n, 4)), rng.standard_normal((4, n + 1))
        np.testing.assert_allclose(kern(A=a, B=b), a @ b, rtol=1e-12)
        assert kern.ir.tensors["C"].shape == (n, n + 1)


def test_float32_stays_float32_and_float16_works():
    x32 = rng.standard_normal((4, 5)).astype(np.float32)
    kern = tc.compile("y[i] = sum[j](exp(x[i,j]) * 0.5) + 1e-5")
    assert kern(x=x32).dtype == np.float32
    y16 = kern(x=x32.astype(np.float16))
    assert y16.dtype == np.float16
    np.testing.assert_allclose(y16, (np.exp(x32) * 0.5).sum(1) + 1e-5, rtol=1e-2)


def test_mixed_float_inputs_promote_like_numpy():
    kern = tc.compile("y[i] = a[i] + b[i]")
    out = kern(a=np.ones(3, np.float32), b=np.ones(3, np.float64))
    assert out.dtype == np.float64


def test_integer_inputs_are_converted_and_complex_rejected():
    kern = tc.compile("y[i] = x[i] / 2")
    out = kern(x=np.arange(4))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, np.arange(4) / 2)
    assert tc.compile("y[i] = x[i] * s")(x=np.arange(3, dtype=np.int32),
                                          s=np.float32(2)).dtype == np.float32
    with pytest.raises(tc.DtypeError, match="complex"):
        kern(x=np.ones(3, dtype=complex))


def test_outputs_are_sinks_returned_as_a_dict_when_several():
    program = """
    m[n] = max[j](z[n,j])
    e[n,j] = exp(z[n,j] - m[n])
    s[n] = sum[j](e[n,j])
    p[n,j] = e[n,j] / s[n]
    logz[n] = m[n] + log(s[n])
    """
    z = rng.standard_normal((3, 4))
    out = tc.compile(program)(z=z)
    assert set(out) == {"p", "logz"}
    np.testing.assert_allclose(out["logz"], np.log(np.exp(z).sum(1)), rtol=1e-12)
    np.testing.assert_allclose(out["p"], np.exp(z) / np.exp(z).sum(1, keepdims=True),
                               rtol=1e-12)


def test_inputs_are_never_modified_or_aliased():
    x = rng.standard_normal((3, 4))
    keep = x.copy()
    y = tc.compile("y[i,j] = x[i,j]")(x=x)
    assert not np.shares_memory(x, y)
    y[...] = 0
    np.testing.assert_array_equal(x, keep)
    t = tc.compile("t[j,i] = x[i,j]")(x=x)
    np.testing.assert_array_equal(t, x.T)
    assert not np.shares_memory(x, t)


def test_non_contiguous_and_read_only_inputs():
    base = rng.standard_normal((6, 8, 5))
    x = base[::2, 1::2].transpose(1, 0, 2)  # strided, transposed view
    x.setflags(write=False)
    k = rng.standard_normal((3, 5, 2))
    kern = tc.compile("y[i,j,o] = x[i+u,j,c] * k[u,c,o]")
    want = sum(np.einsum("ijc,co->ijo", x[u:u + x.shape[0] - 2], k[u]) for u in range(3))
    np.testing.assert_allclose(kern(x=x, k=k), want, rtol=1e-12)


def test_positional_arguments_in_input_order():
    kern = tc.compile("y[i] = a[i] - b[i]")
    assert kern.inputs == ("a", "b")
    np.testing.assert_array_equal(kern(np.ones(2), np.zeros(2)), np.ones(2))
    with pytest.raises(tc.CallError, match="both by position and by name"):
        kern(np.ones(2), a=np.ones(2))


def test_scalar_output_is_a_zero_dimensional_array():
    out = tc.compile("s = a[i] * b[i]")(a=np.ones(3), b=np.full(3, 2.0))
    assert isinstance(out, np.ndarray) and out.shape == () and out == 6.0


def test_sizes_from_declarations():
    kern = tc.compile("x: f64[N, 3]\ny[i] = sum[j](x[i,j])", N=4)
    assert kern.ir.tensors["x"].shape == (4, 3)
    np.testing.assert_allclose(kern(x=np.ones((4, 3))), np.full(4, 3.0))


def test_a_declared_size_used_as_a_value_is_a_constant_not_an_input():
    kern = tc.compile("x: [N]\ny[i] = x[i] / N")
    assert kern.inputs == ("x",)
    np.testing.assert_allclose(kern(x=np.arange(4.0)), np.arange(4.0) / 4)


def test_accumulation_into_an_affine_target_matches_a_loop():
    kern = tc.compile("dx: [N]\ndx[2*h+u] += dy[h] * k[u]", N=9)
    dy, k = rng.standard_normal(4), rng.standard_normal(3)
    want = np.zeros(9)
    for h in range(4):
        for u in range(3):
            want[2 * h + u] += dy[h] * k[u]
    np.testing.assert_allclose(kern(dy=dy, k=k), want, rtol=1e-12)


def test_accumulation_with_zero_boundary_drops_out_of_range():
    kern = tc.compile("dx: [N]\ndx[h+u-1] += dy[h] * k[u]   where h < 5, dx: zero", N=5)
    dy, k = rng.standard_normal(5), rng.standard_normal(3)
    want = np.zeros(5)
    for h in range(5):
        for u in range(3):
            if 0 <= h + u - 1 < 5:
                want[h + u - 1] += dy[h] * k[u]
    np.testing.assert_allclose(kern(dy=dy, k=k), want, rtol=1e-12)


def test_index_values_and_comparisons():
    kern = tc.compile("mask[i,j] = j <= i   where i < 4, j < 4")
    np.testing.assert_array_equal(kern(), np.tril(np.ones((4, 4))))
    causal = tc.compile("y[i] = sum[j]((j <= i) * x[j])   where i < 5")
    x = rng.standard_normal(5)
    np.testing.assert_allclose(causal(x=x), np.cumsum(x), rtol=1e-12)


def test_python_keywords_and_module_names_as_tensor_names():
    kern = tc.compile("lambda[i] = np[i] * DTYPE[i] + kernel[i]")
    a, b, c = np.ones(2), np.full(2, 2.0), np.full(2, 3.0)
    np.testing.assert_array_equal(kern(np=a, DTYPE=b, kernel=c), a * b + c)
    assert "def kernel(np_, DTYPE_, kernel_)" in kern.source


def test_unknown_backend():
    with pytest.raises(tc.BackendError, match="unknown backend"):
        tc.compile("y[i] = x[i]", backend="tpu")
