"""Golden error messages: position, source line, caret and a suggestion, nothing internal."""

import numpy as np
import pytest

import tensorc as tc

GOLDEN = [
    # (program, shapes, error class, full message)
    ("y[i] = x[i", {}, tc.ParseError,
     "<program>:1:11: unexpected end of input; expected ')', '*', '+', ',', '-', ']'\n"
     "y[i] = x[i\n"
     "          ^"),
    ("y[i] = x[i*j]", {}, tc.ParseError,
     "<program>:1:10: an index expression must be affine: this multiplies two indices; "
     "write integer multiples such as '2*h + u'\n"
     "y[i] = x[i*j]\n"
     "         ^^^"),
    ("y[i] = @x[i]", {}, tc.ParseError,
     "<program>:1:8: unexpected character '@'; expected '(', '-', a name, a number, "
     "sum/mean/max/min\n"
     "y[i] = @x[i]\n"
     "       ^"),
    ("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,v,v]", {"x": (1, 3, 8, 8), "k": (4, 3, 3, 3)},
     tc.RangeError,
     "<program>:1:22: index 'u' has no range: it appears only inside 'h+u'; add 'where u < ...' "
     "or use 'u' whole in a dimension\n"
     "y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,v,v]\n"
     "                     ^"),
    ("C[i,k] = A[i,j] * B[j,k]", {"A": (3, 4), "B": (5, 6)}, tc.ShapeError,
     "<program>:1:19: conflicting sizes for index 'j': 4 in 'A[i,j]' but 5 in 'B[j,k]'\n"
     "C[i,k] = A[i,j] * B[j,k]\n"
     "                  ^^^^^^"),
    ("y[i] = relux(x[i])", {"x": (3,)}, tc.NameResolutionError,
     "<program>:1:8: unknown function 'relux'; did you mean 'relu'?; functions: abs, cos, elu, "
     "erf, exp, expm1, gelu, log, log1p, max, min, relu, rsqrt, sigmoid, sign, silu, sin, "
     "softplus, sqrt, tanh\n"
     "y[i] = relux(x[i])\n"
     "       ^^^^^"),
    ("y[i] = k[i,j]", {"k": (3,)}, tc.RankError,
     "<program>:1:8: 'k' has 1 dimensions (shape [3]) but is indexed with 2\n"
     "y[i] = k[i,j]\n"
     "       ^^^^^^"),
    ("y[o,h] = x[h+u-1] * k[o,u]", {"x": (8,), "k": (2, 3)}, tc.BoundsError,
     "<program>:1:10: 'x[h+u-1]' reads position -1 of 'x' dim 0 at h = 0; add a boundary mode "
     "('where x: zero') or a range such as 'where h in 1:...'\n"
     "y[o,h] = x[h+u-1] * k[o,u]\n"
     "         ^^^^^^^^"),
    ("y[h] = x[h+u] * k[u]   where h < 8", {"x": (8,), "k": (3,)}, tc.BoundsError,
     "<program>:1:8: 'x[h+u]' can leave the bounds of 'x': dim 0 is read at 0..9 but has size 8 "
     "(with h in 0:8, u in 0:3); add a boundary mode such as 'where x: zero', or narrow the "
     "range\n"
     "y[h] = x[h+u] * k[u]   where h < 8\n"
     "       ^^^^^^"),
    ("y[i] = x[i]   where x: refelct", {"x": (3,)}, tc.NameResolutionError,
     "<program>:1:24: unknown boundary mode 'refelct'; did you mean 'reflect'? (modes: circular, "
     "cyclic, edge, hold, reflect, replicate, symmetric, wrap, zero, zeros)\n"
     "y[i] = x[i]   where x: refelct\n"
     "                       ^^^^^^^"),
    ("x: f32[N]\ny[i] = x[i]", {"x": (3,)}, None, None),  # fine; dtype checked at call time
    ("y[i] = x[i]\ny[i] = x[i] + 1", {"x": (3,)}, tc.NameResolutionError,
     "<program>:2:1: 'y' is already defined on line 1; give this result another name, or use "
     "'+=' to accumulate into it\n"
     "y[i] = x[i] + 1\n"
     "^^^^"),
    ("y[i] = z[i]\nz[i] = x[i]", {"x": (3,)}, tc.NameResolutionError,
     "<program>:1:8: 'z' is used before it is defined (on line 2); move its definition above "
     "this line\n"
     "y[i] = z[i]\n"
     "       ^^^^"),
    ("y[x] = x[x]", {"x": (3,)}, tc.NameResolutionError,
     "<program>:1:10: 'x' is a tensor and cannot also be an index; rename one of them\n"
     "y[x] = x[x]\n"
     "         ^"),
    ("y[i] = x[i] + j[i]", {"x": (3,), "j": (3, 3)}, tc.RankError, None),
    ("y[i] = 1.0", {}, tc.RangeError,
     "<program>:1:3: index 'i' has no range: no tensor on the right-hand side is indexed by it; "
     "add 'where i < ...'\n"
     "y[i] = 1.0\n"
     "  ^"),
    ("y[i] = x[i]   where i < 0", {"x": (3,)}, tc.RangeError, None),
    ("y[i] = max(x[i])", {"x": (3,)}, tc.NameResolutionError,
     "<program>:1:8: 'max' takes 2 arguments, got 1; to reduce, name the indices: max[j](...)\n"
     "y[i] = max(x[i])\n"
     "       ^^^^^^^^^"),
]


@pytest.mark.parametrize("source, shapes, kind, message", GOLDEN,
                         ids=[g[0].splitlines()[0][:30] for g in GOLDEN])
def test_golden_error(source, shapes, kind, message):
    if kind is None:
        tc.compile(source, **shapes)
        return
    with pytest.raises(kind) as caught:
        tc.compile(source, **shapes)
    assert isinstance(caught.value, tc.TensorcError)
    if message is not None:
        assert str(caught.value) == message
    text = str(caught.value)
    assert text.startswith("<program>:"), text
    assert "\n" in text and "^" in text.splitlines()[-1]


def test_multiline_error_points_at_the_right_line():
    source = "m[n] = max[j](z[n,j])\ne[n,j] = exp(z[n,j] - q[n])\n"
    with pytest.raises(tc.ShapeError) as caught:
        tc.compile(source, z=(2, 3))
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("<program>:2:23: no shape for input 'q'")
    assert lines[1] == "e[n,j] = exp(z[n,j] - q[n])"
    assert lines[2] == " " * 22 + "^^^^"


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_an_unexpected_end_of_line_points_just_past_the_lines_text(newline):
    """With Windows line ends too: the carriage return is not a column of the line."""
    with pytest.raises(tc.ParseError) as caught:
        tc.parse(f"y[i] = x[i]{newline}z{newline}")
    lines = str(caught.value).splitlines()
    assert lines[0] == ("<program>:2:2: unexpected end of line; expected "
                        "'+=', ':', '=', '['")
    assert lines[1].rstrip() == "z" and lines[2] == " ^"


def test_file_name_appears_in_errors():
    with pytest.raises(tc.ParseError) as caught:
        tc.parse("y[i] = x[i\n", filename="layer.tc")
    assert str(caught.value).startswith("layer.tc:1:")


def test_call_errors_name_the_tensor_and_dimension():
    kern = tc.compile("y[n,o] = x[n,c] * w[o,c]", x=(2, 3), w=(4, 3))
    with pytest.raises(tc.CallError, match="missing input 'w'"):
        kern(x=np.ones((2, 3)))
    with pytest.raises(tc.CallError, match="unexpected input 'z'"):
        kern(x=np.ones((2, 3)), w=np.ones((4, 3)), z=1)
    with pytest.raises(tc.RankError) as caught:
        kern(x=np.ones((2, 3, 1)), w=np.ones((4, 3)))
    assert "'x' has 3 dimensions" in str(caught.value) and "^" in str(caught.value)
    with pytest.raises(tc.ShapeError) as caught:
        kern(x=np.ones((2, 5)), w=np.ones((4, 3)))
    assert "'x' dimension 1 has size 5" in str(caught.value)


def test_lazy_kernel_reports_conflicting_call_shapes_with_a_caret():
    kern = tc.compile("C[i,k] = A[i,j] * B[j,k]")
    with pytest.raises(tc.ShapeError) as caught:
        kern(A=np.ones((2, 3)), B=np.ones((4, 5)))
    assert "conflicting sizes for index 'j'" in str(caught.value)
    assert str(caught.value).splitlines()[1] == "C[i,k] = A[i,j] * B[j,k]"


def test_declared_dtype_mismatch():
    kern = tc.compile("x: f32[N]\ny[i] = 2 * x[i]")
    with pytest.raises(tc.DtypeError) as caught:
        kern(x=np.ones(3, dtype=np.float64))
    assert "declared f32" in str(caught.value)
    assert kern(x=np.ones(3, dtype=np.float32)).dtype == np.float32


def test_declared_size_conflict():
    with pytest.raises(tc.ShapeError, match="size 'N' is 3"):
        tc.compile("x: [N]\nz: [N]\ny[i] = x[i] + z[i]", x=(3,), z=(4,))


def test_source_shown_for_shapes_of_unused_tensors():
    with pytest.raises(tc.ShapeError, match="does not use"):
        tc.compile("y[i] = x[i]", x=(3,), xx=(3,))
