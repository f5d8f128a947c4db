"""Wrong calls get a clear TensorcError or a correct result.

Missing, extra and misnamed arrays, positional misuse, wrong ranks, sizes that contradict
each other or the declarations, malformed shapes and sizes given to tc.compile,
non-contiguous, read-only and byte-swapped inputs, inputs that alias each other or the
output, object arrays, 0-d arrays, lists and other array-likes, and torch tensors given to
a NumPy kernel. Errors must be of the right class, name the offending array and say how to
fix the call; results are compared with NumPy. (tests/test_kernel.py and
tests/test_errors.py cover the basic cases; this file covers the rest.)
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest
import torch

import tensorc as tc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import SAME_CONV, conv_zero_pad  # noqa: E402

rng = np.random.default_rng(0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", PendingDeprecationWarning)
    MATRIX = np.matrix([1.0, 2.0, 3.0])  # always 2-D

LINEAR = "y[n,o] = x[n,i] * weight[o,i] + bias[o]"


def linear_arrays():
    return {"x": rng.standard_normal((2, 3)), "weight": rng.standard_normal((4, 3)),
            "bias": rng.standard_normal(4)}


def linear_oracle(x, weight, bias):
    return x @ weight.T + bias


# ---- missing, extra, misnamed ------------------------------------------------------------

def test_several_missing_inputs_are_all_named_with_the_full_list():
    kern = tc.compile(LINEAR)
    with pytest.raises(tc.CallError) as caught:
        kern(x=np.ones((2, 3)))
    message = str(caught.value)
    assert "missing inputs 'weight', 'bias'" in message
    assert "the program's inputs: x, weight, bias" in message


def test_a_misnamed_input_is_reported_as_missing_and_unexpected():
    kern = tc.compile(LINEAR)
    arrays = linear_arrays()
    arrays["X"] = arrays.pop("x")
    with pytest.raises(tc.CallError) as caught:
        kern(**arrays)
    message = str(caught.value)
    assert "missing input 'x'" in message and "unexpected input 'X'" in message
    assert "x, weight, bias" in message  # the valid names: the fix


def test_an_extra_input_is_refused_even_when_all_inputs_are_there():
    kern = tc.compile(LINEAR)
    with pytest.raises(tc.CallError, match=r"unexpected inputs 'y', 'dy' \(the program's "
                                           r"inputs: x, weight, bias\)"):
        kern(**linear_arrays(), y=np.ones((2, 4)), dy=np.ones((2, 4)))


def test_a_misspelled_input_gets_a_suggestion():
    kern = tc.compile(LINEAR)
    arrays = linear_arrays()
    arrays["weigth"] = arrays.pop("weight")
    with pytest.raises(tc.CallError, match="did you mean 'weight'"):
        kern(**arrays)


@pytest.mark.parametrize("given, wanted", [("\u0430", "a"), ("\ufb01", "fi"), ("\uff41", "a")],
                         ids=["cyrillic", "ligature", "fullwidth"])
def test_a_look_alike_keyword_is_shown_so_that_it_can_be_told_apart(given, wanted):
    kern = tc.compile(f"y[i] = {wanted}[i] * 2")
    with pytest.raises(tc.CallError) as caught:
        kern(**{given: np.ones(2)})
    message = str(caught.value)
    assert f"'{wanted}'" in message
    assert ascii(given)[1:-1] in message or f"U+{ord(given):04X}" in message


def test_python_keyword_normalization_reaches_the_right_input():
    # Python applies NFKC to keyword names written in source: 'ﬁ=' is 'fi='
    kern = tc.compile("y[i] = fi[i] * 2")
    namespace = {"kern": kern, "np": np}
    exec("result = kern(\ufb01=np.arange(3.0))", namespace)  # noqa: S102 - Python's NFKC
    np.testing.assert_array_equal(namespace["result"], 2 * np.arange(3.0))


# ---- positional arguments ---------------------------------------------------------------

def test_positional_arguments_follow_the_inputs_order_and_mix_with_keywords():
    kern = tc.compile(LINEAR)
    assert kern.inputs == ("x", "weight", "bias")
    a = linear_arrays()
    want = linear_oracle(**a)
    np.testing.assert_allclose(kern(a["x"], a["weight"], a["bias"]), want, rtol=1e-12)
    np.testing.assert_allclose(kern(a["x"], a["weight"], bias=a["bias"]), want, rtol=1e-12)
    np.testing.assert_allclose(kern(a["x"], bias=a["bias"], weight=a["weight"]), want,
                               rtol=1e-12)


def test_too_many_positional_arrays():
    kern = tc.compile(LINEAR)
    with pytest.raises(tc.CallError, match=r"takes 3 inputs \(x, weight, bias\), got 4 "
                                           "positional"):
        kern(*linear_arrays().values(), np.ones(4))


def test_positional_arrays_for_a_kernel_without_inputs():
    kern = tc.compile("mask[i,j] = j <= i   where i < 3, j < 3")
    with pytest.raises(tc.CallError, match="takes 0 inputs"):
        kern(np.ones(3))
    with pytest.raises(tc.CallError, match="unexpected input 'x'"):
        kern(x=np.ones(3))
    np.testing.assert_array_equal(kern(), np.tril(np.ones((3, 3))))


def test_a_positional_array_and_a_keyword_for_a_later_input_twice():
    kern = tc.compile(LINEAR)
    a = linear_arrays()
    with pytest.raises(tc.CallError, match="'weight' is given both by position and by name"):
        kern(a["x"], a["weight"], weight=a["weight"], bias=a["bias"])


def test_positional_order_is_the_order_of_first_use_for_an_eager_kernel():
    kern = tc.compile("y[i] = b[i] - a[i]", a=(3,), b=(3,))
    assert kern.inputs == ("b", "a")
    np.testing.assert_array_equal(kern(np.full(3, 5.0), np.ones(3)), np.full(3, 4.0))


# ---- ranks -------------------------------------------------------------------------------

@pytest.mark.parametrize("value, rank", [(np.float64(2.0), 0), (np.array(2.0), 0),
                                         (np.ones((3, 1)), 2), (MATRIX, 2),
                                         (np.ones((1, 3, 1)), 3)],
                         ids=["numpy-scalar", "0-d", "column", "matrix", "3-d"])
def test_wrong_rank_for_a_vector_input(value, rank):
    kern = tc.compile("y[i] = a[i] + b[i]")
    with pytest.raises(tc.RankError) as caught:
        kern(a=value, b=np.ones(3))
    message = str(caught.value)
    assert f"'a' has {rank} dimensions" in message and "indexed with 1" in message
    assert message.splitlines()[-1].strip().startswith("^")


def test_a_vector_for_a_scalar_input_says_how_to_index_it():
    kern = tc.compile("y[i] = a[i] * s")
    with pytest.raises(tc.RankError, match=r"'s' has 1 dimensions .*index it, as in s\[i\]"):
        kern(a=np.ones(2), s=np.ones(2))


@pytest.mark.parametrize("scalar", [3.0, 3, np.float64(3.0), np.array(3.0), np.float32(3.0),
                                    torch.tensor(3.0, dtype=torch.float64)],
                         ids=["float", "int", "numpy-scalar", "0-d", "float32", "torch-0-d"])
def test_scalars_and_0_d_arrays_for_a_scalar_input(scalar):
    out = tc.compile("y[i] = a[i] * s")(a=np.arange(3.0), s=scalar)
    np.testing.assert_array_equal(out, np.arange(3.0) * 3)


# ---- sizes that contradict each other or the declarations ---------------------------------

def test_sizes_contradicting_a_declared_size_name_at_call_time():
    kern = tc.compile("x: [N]\nz: [N]\ny[i] = x[i] * z[i]")
    with pytest.raises(tc.ShapeError) as caught:
        kern(x=np.ones(3), z=np.ones(4))
    message = str(caught.value)
    assert "size 'N' is 3" in message and "z dim 0 has size 4" in message


def test_a_size_given_to_compile_contradicting_a_call():
    kern = tc.compile("x: [N, 2]\ny[i] = sum[j](x[i,j])", N=3)
    np.testing.assert_array_equal(kern(x=np.ones((3, 2))), np.full(3, 2.0))
    with pytest.raises(tc.ShapeError, match="size 'N' is 3"):
        kern(x=np.ones((4, 2)))
    with pytest.raises(tc.ShapeError, match="x dim 1 is declared as 2 but has size 5"):
        kern(x=np.ones((3, 5)))


def test_a_size_given_to_compile_contradicting_a_shape_given_to_compile():
    with pytest.raises(tc.ShapeError, match="size 'N' is 4 .* x dim 0 has size 3"):
        tc.compile("x: [N]\ny[i] = x[i]", x=(3,), N=4)


def test_a_declared_rank_contradicting_the_array():
    kern = tc.compile("x: [N, M]\ny[i] = sum[j](x[i,j])")
    with pytest.raises(tc.RankError, match="'x' is declared with 2 dimensions but was given "
                                           r"shape \(3,\)"):
        kern(x=np.ones(3))


def test_a_window_larger_than_its_input():
    kern = tc.compile("y[i] = x[i+u] * k[u]")
    with pytest.raises(tc.RangeError, match="'x' dim 0 has size 2, too small for the window"):
        kern(x=np.ones(2), k=np.ones(5))


def test_an_eager_kernel_called_with_another_size_for_its_second_input():
    kern = tc.compile(LINEAR, x=(2, 3), weight=(4, 3), bias=(4,))
    a = linear_arrays()
    with pytest.raises(tc.ShapeError, match="'bias' dimension 0 has size 5 but the kernel was "
                                            r"compiled for 4 \(shape \(4,\)\)"):
        kern(x=a["x"], weight=a["weight"], bias=np.ones(5))


@pytest.mark.parametrize("output_shape", [(4,), (3, 1)], ids=["size", "rank"])
def test_a_contradicting_shape_for_a_defined_tensor(output_shape):
    with pytest.raises(tc.TensorcError, match="y"):
        tc.compile("y[i] = x[i] * 2", x=(3,), y=output_shape)


def test_an_accumulation_target_whose_declared_size_is_missing():
    kern = tc.compile("acc: [N]\nacc[i] += x[i]")
    with pytest.raises(tc.ShapeError, match="N"):
        kern(x=np.ones(3))




@pytest.mark.parametrize("shape", [
    ("abc",),
    "12",
    (3.5, 2),
    {"a": 1},
    ((3,), 2), 3.0, None,
], ids=["letters", "digit-string", "float-size", "dict", "nested", "float", "none"])
def test_malformed_shapes_given_to_compile(shape):
    with pytest.raises(tc.TensorcError, match="shape"):
        tc.compile("y[i,j] = x[i,j]", x=shape)


@pytest.mark.parametrize("how", ["shape", "size"])
def test_a_negative_size_given_to_compile(how):
    with pytest.raises((tc.ShapeError, tc.CallError), match="negative"):
        if how == "shape":
            tc.compile("y[i] = x[i]", x=(-1,))
        else:
            tc.compile("x: [N]\ny[i] = x[i]", N=-1)


def test_a_numpy_integer_size_given_to_compile():
    kern = tc.compile("x: [N]\ny[i] = x[i] * 2", N=np.int64(3))
    np.testing.assert_array_equal(kern(x=np.ones(3)), np.full(3, 2.0))


def test_a_numpy_type_as_compile_dtype():
    kern = tc.compile("y[i] = x[i] * 2", dtype=np.float32, x=(3,))
    assert kern(x=np.ones(3, np.float32)).dtype == np.float32


# ---- memory layout -----------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["reversed", "fortran", "broadcast", "byteswapped",
                                    "overlapping-windows", "read-only-strided"])
def test_unusual_memory_layouts(layout):
    base = rng.standard_normal((3, 4))
    if layout == "reversed":
        x = base[::-1, ::-1]
    elif layout == "fortran":
        x = np.asfortranarray(base)
    elif layout == "broadcast":  # zero strides, read-only
        x = np.broadcast_to(base[:1], (3, 4))
    elif layout == "byteswapped":
        x = base.astype(">f8")
    elif layout == "overlapping-windows":  # rows share memory
        flat = rng.standard_normal(6)
        x = np.lib.stride_tricks.as_strided(flat, (3, 4), (8, 8), writeable=False)
    else:
        big = rng.standard_normal((6, 9))
        big.setflags(write=False)
        x = big[::2, 1::2]
    keep = np.array(x)
    w = rng.standard_normal((5, 4))
    out = tc.compile("y[n,o] = relu(x[n,i] * w[o,i])\nz[n] = sum[i](exp(x[n,i]))")(x=x, w=w)
    np.testing.assert_allclose(out["y"], np.maximum(keep @ w.T, 0), rtol=1e-12)
    np.testing.assert_allclose(out["z"], np.exp(keep).sum(1), rtol=1e-12)
    np.testing.assert_array_equal(x, keep)


@pytest.mark.parametrize("layout", ["transposed", "channels-last", "read-only"])
def test_unusual_layouts_into_a_zero_padded_convolution(layout):
    base = rng.standard_normal((2, 5, 6, 3))
    x = {"transposed": rng.standard_normal((2, 3, 6, 5)).transpose(0, 1, 3, 2),
         "channels-last": base.transpose(0, 3, 1, 2),
         "read-only": np.array(base.transpose(0, 3, 1, 2))}[layout]
    if layout == "read-only":
        x.setflags(write=False)
    k = rng.standard_normal((4, 3, 3, 3))
    np.testing.assert_allclose(tc.compile(SAME_CONV)(x=x, k=k), conv_zero_pad(x, k),
                               rtol=1e-12, atol=1e-12)


# ---- aliasing ----------------------------------------------------------------------------

def test_the_same_array_for_two_inputs():
    a = rng.standard_normal((3, 4))
    keep = a.copy()
    gram = tc.compile("C[i,k] = A[i,j] * B[k,j]")(A=a, B=a)
    np.testing.assert_allclose(gram, keep @ keep.T, rtol=1e-12)
    both = tc.compile("y[i,j] = relu(a[i,j]) + exp(b[i,j])")(a=a, b=a)
    np.testing.assert_allclose(both, np.maximum(keep, 0) + np.exp(keep), rtol=1e-12)
    np.testing.assert_array_equal(a, keep)


def test_an_input_that_is_an_overlapping_view_of_another():
    x = rng.standard_normal(10)
    keep = x.copy()
    kern = tc.compile("y[i] = a[i] * b[i] - a[i]")
    np.testing.assert_allclose(kern(a=x[:-1], b=x[1:]), keep[:-1] * keep[1:] - keep[:-1],
                               rtol=1e-12)
    np.testing.assert_allclose(kern(a=x[::2], b=x[::-2]), keep[::2] * keep[::-2] - keep[::2],
                               rtol=1e-12)
    np.testing.assert_array_equal(x, keep)


PROGRAMS_WITH_IN_PLACE_WORK = [
    ("y[i,j] = relu(x[i,j]) + 1", {"x": (3, 4)}),
    ("y[i] = exp(-sum[j](x[i,j]^2))", {"x": (3, 4)}),
    ("y[i] = x[i]\ny[i] += x[i] * 2", {"x": (5,)}),
    ("dx: [N]\ndx[h+u-1] += dy[h] * k[u]   where h < 5, dx: reflect", {"dy": (5,), "k": (3,)}),
    ("y[n,o,h,w] = gelu(x[n,c,h+u-1,w+v-1] * k[o,c,u,v])   where h < 4, w < 4, x: zero",
     {"x": (1, 2, 4, 4), "k": (3, 2, 3, 3)}),
    ("p[n,h] = max[u](x[n,2*h+u])   where u < 2", {"x": (2, 8)}),
]


@pytest.mark.parametrize("text, shapes", PROGRAMS_WITH_IN_PLACE_WORK,
                         ids=["relu", "exp-sum", "accumulate", "fold", "conv-gelu", "pool"])
def test_inputs_are_never_written_and_results_never_alias_inputs_or_buffers(text, shapes):
    kern = tc.compile(text, N=5) if "[N]" in text else tc.compile(text)
    first = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    kept = {name: a.copy() for name, a in first.items()}
    result = kern(**first)
    result_copy = np.array(result)
    for name, a in first.items():
        np.testing.assert_array_equal(a, kept[name], err_msg=f"input '{name}' was modified")
        assert not np.shares_memory(result, a)
    # a second call (same thread, same specialization, same scratch buffers) must leave the
    # first call's result alone
    second = kern(**{name: rng.standard_normal(shape) for name, shape in shapes.items()})
    assert not np.shares_memory(result, second)
    np.testing.assert_array_equal(result, result_copy)


def test_several_outputs_never_alias_each_other():
    out = tc.compile("y[i] = x[i]\nz[i] = x[i] * 1\nw[i] = x[i]")(x=np.ones(3))
    assert not np.shares_memory(out["y"], out["z"])
    assert not np.shares_memory(out["y"], out["w"])
    out["y"][...] = 7
    np.testing.assert_array_equal(out["w"], np.ones(3))




def test_accumulating_into_an_input():
    kern = tc.compile("acc[i] += acc[i]")
    assert kern.inputs == ("acc",)
    acc = np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(kern(acc=acc), 2 * acc)


def test_accumulating_into_an_input_that_aliases_another_input():
    kern = tc.compile("acc[i] += x[i] * acc[i]")
    a = np.array([1.0, 2.0, 3.0])
    keep = a.copy()
    got = kern(acc=a, x=a)
    np.testing.assert_array_equal(a, keep)
    np.testing.assert_array_equal(got, keep + keep * keep)


def test_accumulating_into_a_scalar_input():
    got = tc.compile("s += x[i] * s")(x=np.array([1.0, 2.0, 3.0]), s=2.0)
    np.testing.assert_array_equal(got, 2.0 + 6.0 * 2.0)


# ---- what is passed as an array ----------------------------------------------------------

@pytest.mark.parametrize("value", [[1.0, 2.0, 3.0], (1, 2, 3), range(1, 4),
                                   np.array([1, 2, 3], dtype=np.int8), np.array([1, 2, 3], np.uint64),
                                   memoryview(np.array([1.0, 2.0, 3.0]))],
                         ids=["list", "tuple", "range", "int8", "uint64", "memoryview"])
def test_array_likes_are_converted(value):
    out = tc.compile("y[i] = a[i] * 2")(a=value)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [2.0, 4.0, 6.0])


def test_nested_lists_give_a_matrix():
    out = tc.compile("C[i,k] = A[i,j] * B[j,k]")(A=[[1, 2], [3, 4]], B=[[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(out, [[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize("value, dtype_text", [
    (np.array([1.0, 2.0], dtype=object), "object"), (None, "object"), ({1, 2}, "object"),
    ("ab", "<U2"), (b"ab", "|S2"), (np.ones(2, dtype="M8[s]"), "datetime64"),
    (np.ones(2, dtype="f8,f8"), "f0"), (np.ones(2, dtype=np.complex64), "complex64"),
], ids=["object-array", "none", "set", "str", "bytes", "datetime", "structured", "complex"])
def test_non_numeric_arrays_are_refused_by_name(value, dtype_text):
    kern = tc.compile("y[i] = a[i] + b[i]")
    with pytest.raises(tc.DtypeError) as caught:
        kern(a=value, b=np.ones(2))
    message = str(caught.value)
    assert "input 'a' has dtype" in message and dtype_text in message
    assert "float16, float32 or float64" in message




def test_a_ragged_list():
    with pytest.raises(tc.CallError, match="'a'"):
        tc.compile("y[i,j] = a[i,j] * 2")(a=[[1.0, 2.0], [3.0]])


def test_empty_arrays():
    np.testing.assert_array_equal(tc.compile("y[i] = a[i] * 2")(a=np.ones(0)), np.ones(0))
    out = tc.compile("C[i,k] = A[i,j] * B[j,k]")(A=np.ones((3, 0)), B=np.ones((0, 2)))
    np.testing.assert_array_equal(out, np.zeros((3, 2)))


def test_non_finite_values_pass_through():
    a = np.array([np.nan, np.inf, -np.inf, 1.0])
    np.testing.assert_array_equal(tc.compile("y[i] = a[i] * 2")(a=a), a * 2)


# ---- torch tensors into a NumPy kernel ---------------------------------------------------

def test_torch_tensors_are_read_as_arrays():
    kern = tc.compile(LINEAR)
    a = linear_arrays()
    tensors = {name: torch.from_numpy(v) for name, v in a.items()}
    out = kern(**tensors)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out, linear_oracle(**a), rtol=1e-12)


def test_torch_float32_non_contiguous_and_integer_tensors():
    kern = tc.compile("y[i] = a[i] * b[i]")
    strided = torch.arange(12, dtype=torch.float32).reshape(3, 4).T[1]  # stride 4
    assert not strided.is_contiguous()
    out = kern(a=strided, b=torch.ones(3))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [1.0, 5.0, 9.0])
    out = kern(a=strided, b=torch.arange(3))  # int64 tensor: converted to float32
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [0.0, 5.0, 18.0])


@pytest.mark.parametrize("make", [lambda: torch.ones(3, requires_grad=True),
                                  lambda: torch.ones(3, dtype=torch.bfloat16)],
                         ids=["requires-grad", "bfloat16"])
def test_torch_tensors_numpy_cannot_read(make):
    kern = tc.compile("y[i] = a[i] * 2")
    try:
        out = kern(a=make())
    except tc.TensorcError as error:
        assert "'a'" in str(error)
        return
    np.testing.assert_array_equal(out, np.full(3, 2.0))
