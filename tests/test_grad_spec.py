"""tc.grad (SPEC section 2) on every SPEC section 1 example and every language construct.

Each adjoint program is compiled and run on exactly the inputs it reads
(tensorc.check.program_inputs); its gradients are compared with PyTorch autograd in float64
(to 1e-8), or, where PyTorch has no counterpart, with central finite differences of the
forward kernel (whose values test_spec_examples.py checks against PyTorch).

Constructs where an adjoint is easy to get wrong have their own cases: 0-d tensors used
twice ('dt = t; dt += t' must copy t), a reduction over an index that one term does not use
(that term's gradient counts every value of the index), 'y = f(..)' then 'y += ..' (the
derivative of f must not read the final y), and windows under 'x: zero' whose ranges come
from another read.

A non-scalar output `y` is differentiated with a random cotangent `dy`: the reference is
the gradient of sum(y * dy) (plus any scalar outputs, whose cotangent is 1).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tensorc as tc
from tensorc.check import program_inputs
from tensorc.ops import FUNCTIONS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import boundary_position  # noqa: E402

# Run as well through the CuPy backend, emulated on NumPy (tests/conftest.py).
pytestmark = pytest.mark.conformance

RTOL = ATOL = 1e-8


def rng(seed=0):
    return np.random.default_rng(seed)


def T(a, grad=False):
    t = torch.from_numpy(np.array(a, dtype=np.float64))
    return t.requires_grad_(grad)


# ---- helpers ---------------------------------------------------------------------------------

def run_grad(src, wrt, arrays, cotangents=None, of=None):
    """Compile tc.grad(src) and run it on exactly the inputs it reads; {'dx': ...} always."""
    g = tc.grad(src, wrt=wrt) if of is None else tc.grad(src, wrt=wrt, of=of)
    assert isinstance(g, tc.parse("y = x").__class__)
    text = str(g)
    assert tc.parse(text) == g, f"adjoint does not round-trip:\n{text}"
    feed = {**arrays, **(cotangents or {})}
    needed = program_inputs(g)
    missing = [n for n in needed if n not in feed]
    assert not missing, f"adjoint reads unexpected inputs {missing}:\n{text}"
    out = tc.compile(g, dtype="float64")(**{n: feed[n] for n in needed})
    if not isinstance(out, dict):
        assert len(wrt) == 1, f"one array returned for wrt={wrt}:\n{text}"
        out = {f"d{wrt[0]}": out}
    assert set(out) == {f"d{n}" for n in wrt}, (sorted(out), text)
    return out


def torch_grads(fn, arrays, wrt, cotangents=None):
    """Gradients of sum_y <fn(...)[y], dy> (scalars seeded with 1) by torch autograd.

    `fn` takes torch tensors by name and returns one tensor or a dict of outputs.
    """
    tensors = {n: T(a, grad=n in wrt) for n, a in arrays.items()}
    outputs = fn(**tensors)
    cotangents = cotangents or {}
    if not isinstance(outputs, dict):
        assert len(cotangents) <= 1
        outputs = {name[1:]: outputs for name in cotangents} or {"": outputs}
    total = 0
    for name, value in outputs.items():
        if f"d{name}" in cotangents:
            total = total + (value * T(cotangents[f"d{name}"])).sum()
        else:
            assert value.dim() == 0, f"no cotangent for the non-scalar output {name}"
            total = total + value
    got = torch.autograd.grad(total, [tensors[n] for n in wrt], allow_unused=True)
    return {f"d{n}": (np.zeros_like(arrays[n]) if gr is None else gr.detach().numpy())
            for n, gr in zip(wrt, got)}


def assert_grads(got, expected, rtol=RTOL, atol=ATOL):
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for name in expected:
        g = np.asarray(got[name])
        e = np.asarray(expected[name], dtype=np.float64)
        assert g.shape == e.shape, f"{name}: shape {g.shape} != {e.shape}"
        assert g.dtype == np.float64, f"{name}: dtype {g.dtype}"
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=name)


def check_against_torch(src, fn, arrays, wrt=None, cotangent_shapes=None, seed=0, of=None):
    """tc.grad(src) vs torch autograd of `fn` for random cotangents of the given shapes."""
    wrt = list(arrays) if wrt is None else wrt
    r = rng(seed + 1000)
    cotangents = {f"d{n}": r.standard_normal(shape)
                  for n, shape in (cotangent_shapes or {}).items()}
    got = run_grad(src, wrt, arrays, cotangents, of=of)
    expected = torch_grads(fn, arrays, wrt, cotangents)
    assert_grads(got, expected)
    return got


def fd_grads(src, arrays, wrt, cotangents, eps=1e-4):
    """Central differences (Richardson-extrapolated) of sum <y, dy> of the forward kernel."""
    kern = tc.compile(src, dtype="float64")

    def objective(feed):
        out = kern(**feed)
        if not isinstance(out, dict):
            (name,) = [n[1:] for n in cotangents] or ["__scalar__"]
            out = {name: out}
        total = 0.0
        for name, value in out.items():
            value = np.asarray(value)
            cot = cotangents.get(f"d{name}")
            total += float(np.sum(value * cot)) if cot is not None else float(value)
        return total

    grads = {}
    for name in wrt:
        base = np.array(arrays[name], dtype=np.float64)
        grad = np.zeros_like(base)
        for position in np.ndindex(base.shape):
            def diff(h, base=base, position=position, name=name):
                plus, minus = base.copy(), base.copy()
                plus[position] += h
                minus[position] -= h
                return (objective({**arrays, name: plus})
                        - objective({**arrays, name: minus})) / (2 * h)
            grad[position] = (4 * diff(eps / 2) - diff(eps)) / 3
        grads[f"d{name}"] = grad
    return grads


# ---- SPEC section 1 examples, every input -----------------------------------------------------

def test_matrix_product():
    r = rng(1)
    A, B = r.standard_normal((3, 4)), r.standard_normal((4, 5))
    check_against_torch("C[i,k] = A[i,j] * B[j,k]", lambda A, B: A @ B,
                        dict(A=A, B=B), cotangent_shapes={"C": (3, 5)})


@pytest.mark.parametrize("shape_x,shape_k", [((2, 3, 8, 9), (4, 3, 3, 2)),
                                             ((1, 2, 5, 5), (3, 2, 1, 1)),
                                             ((2, 1, 6, 7), (2, 1, 6, 7))])
def test_conv_bias_relu(shape_x, shape_k):
    r = rng(2)
    x, k = r.standard_normal(shape_x), r.standard_normal(shape_k)
    b = r.standard_normal(shape_k[0])
    out_shape = (shape_x[0], shape_k[0], shape_x[2] - shape_k[2] + 1, shape_x[3] - shape_k[3] + 1)
    src = "y[n,o,h,w] = relu(x[n,c,h+u,w+v] * k[o,c,u,v] + b[o])"
    pre = F.conv2d(T(x), T(k), T(b))
    assert pre.abs().min() > 1e-6  # no pre-activation at relu's kink
    check_against_torch(src, lambda x, k, b: F.relu(F.conv2d(x, k, b)),
                        dict(x=x, k=k, b=b), cotangent_shapes={"y": out_shape})


def test_conv_bias_relu_adjoint_defines_every_gradient():
    """The adjoint defines dx, dk, db and reads the forward inputs and dy only."""
    g = tc.grad("y[n,o,h,w] = relu(x[n,c,h+u,w+v] * k[o,c,u,v] + b[o])", wrt=["x", "k", "b"])
    targets = {s.target.tensor for s in g.statements if hasattr(s, "target")}
    assert {"dx", "dk", "db"} <= targets
    assert set(program_inputs(g)) == {"x", "k", "b", "dy"}


@pytest.mark.parametrize("size", [32, 13])
def test_strided_dilated_same_reflect_conv(size):
    r = rng(3)
    x, k = r.standard_normal((2, 3, size, size)), r.standard_normal((4, 3, 3, 3))
    out = (size + 1) // 2
    src = (f"y[n,o,h,w] = x[n,c,2*h+2*u-2,2*w+2*v-2] * k[o,c,u,v]   "
           f"where h < {out}, w < {out}, x: reflect")

    def fn(x, k):
        padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
        return F.conv2d(padded, k, stride=2, dilation=2)[:, :, :out, :out]

    check_against_torch(src, fn, dict(x=x, k=k), cotangent_shapes={"y": (2, 4, out, out)})


@pytest.mark.parametrize("shape", [(2, 3, 8, 10), (1, 2, 9, 7)])
def test_max_pool_2x2(shape):
    y = rng(4).standard_normal(shape)  # continuous values: no ties inside a window
    src = "p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   where u < 2, v < 2"
    out = (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    check_against_torch(src, lambda y: F.max_pool2d(y, 2), dict(y=y),
                        cotangent_shapes={"p": out})


def test_max_pool_with_ties_shares_the_gradient():
    """Ties inside a window share the gradient equally (as torch's amax does)."""
    y = rng(5).integers(0, 2, (1, 2, 4, 6)).astype(np.float64)
    src = "p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   where u < 2, v < 2"

    def fn(y):
        windows = y.reshape(1, 2, 2, 2, 3, 2).permute(0, 1, 2, 4, 3, 5)
        return windows.amax(dim=(4, 5))

    check_against_torch(src, fn, dict(y=y), cotangent_shapes={"p": (1, 2, 2, 3)})


def test_depthwise_conv():
    r = rng(6)
    x, k = r.standard_normal((2, 4, 9, 8)), r.standard_normal((4, 3, 2))
    check_against_torch("y[n,c,h,w] = x[n,c,h+u,w+v] * k[c,u,v]",
                        lambda x, k: F.conv2d(x, k[:, None], groups=4),
                        dict(x=x, k=k), cotangent_shapes={"y": (2, 4, 7, 7)})


@pytest.mark.parametrize("length,taps", [(9, 3), (12, 4), (9, 9), (5, 2), (4, 6)])
def test_circular_conv_1d(length, taps):
    r = rng(7)
    a, f = r.standard_normal(length), r.standard_normal(taps)
    index = torch.tensor([[(i + j) % length for j in range(taps)] for i in range(9)])
    check_against_torch("s[i] = a[i+j] * f[j]   where i < 9, a: circular",
                        lambda a, f: (a[index] * f).sum(1),
                        dict(a=a, f=f), cotangent_shapes={"s": (9,)})


SOFTMAX = """
m[n]   = max[j](z[n,j])
e[n,j] = exp(z[n,j] - m[n])
p[n,j] = e[n,j] / sum[j](e[n,j])
"""

LAYER_NORM = """
mu[n]  = mean[d](a[n,d])
var[n] = mean[d]((a[n,d] - mu[n])^2)
y[n,d] = g[d] * (a[n,d] - mu[n]) / sqrt(var[n] + 1e-5) + b[d]
"""

CROSS_ENTROPY = "loss   = -mean[n](sum[k](t[n,k] * log(p[n,k])))"


def test_softmax_block():
    z = rng(8).standard_normal((4, 7)) * 3
    check_against_torch(SOFTMAX, lambda z: torch.softmax(z, dim=1), dict(z=z),
                        cotangent_shapes={"p": (4, 7)})


def test_softmax_block_with_large_logits():
    z = rng(9).standard_normal((3, 5)) * 5
    z[0] += 300.0
    got = check_against_torch(SOFTMAX, lambda z: torch.softmax(z, dim=1), dict(z=z),
                              cotangent_shapes={"p": (3, 5)})
    assert np.all(np.isfinite(got["dz"]))


def test_layer_norm_block():
    r = rng(10)
    a = r.standard_normal((5, 6)) * 3 + 1
    g, b = r.standard_normal(6), r.standard_normal(6)
    check_against_torch(LAYER_NORM, lambda a, g, b: F.layer_norm(a, (6,), g, b, eps=1e-5),
                        dict(a=a, g=g, b=b), cotangent_shapes={"y": (5, 6)})


def test_cross_entropy_statement_is_a_scalar_loss_without_cotangent():
    r = rng(11)
    p = torch.softmax(T(r.standard_normal((6, 4))), dim=1).numpy()
    t = torch.softmax(T(r.standard_normal((6, 4))), dim=1).numpy()
    g = tc.grad(CROSS_ENTROPY, wrt=["t", "p"])
    assert not any(n.startswith("dloss") for n in program_inputs(g))
    check_against_torch(CROSS_ENTROPY,
                        lambda t, p: -(t * torch.log(p)).sum(dim=1).mean(),
                        dict(t=t, p=p))


def test_softmax_then_cross_entropy():
    r = rng(12)
    z = r.standard_normal((6, 4)) * 2
    labels = np.array([2, 0, 1, 3, 3, 0])
    t = np.eye(4)[labels] * 0.9 + 0.025  # smoothed labels
    check_against_torch(SOFTMAX + CROSS_ENTROPY,
                        lambda z, t: -(t * torch.log_softmax(z, dim=1)).sum(1).mean(),
                        dict(z=z, t=t))


def test_whole_spec_block_as_one_program():
    """Softmax, layer norm and cross-entropy in one program: outputs y (cotangent) and loss."""
    r = rng(13)
    z = r.standard_normal((6, 4))
    t = torch.softmax(T(r.standard_normal((6, 4))), dim=1).numpy()
    a, g, b = r.standard_normal((6, 5)) * 2, r.standard_normal(5), r.standard_normal(5)
    src = SOFTMAX + LAYER_NORM + CROSS_ENTROPY

    def fn(z, t, a, g, b):
        return {"y": F.layer_norm(a, (5,), g, b, eps=1e-5),
                "loss": -(t * torch.log_softmax(z, dim=1)).sum(1).mean()}

    check_against_torch(src, fn, dict(z=z, t=t, a=a, g=g, b=b), cotangent_shapes={"y": (6, 5)})


def test_leaky_relu():
    z = rng(14).standard_normal(20)
    check_against_torch("y[i] = max(0.01*z[i], z[i])", lambda z: F.leaky_relu(z, 0.01),
                        dict(z=z), cotangent_shapes={"y": (20,)})


# ---- boundary modes (the adjoint folds out-of-range reads back) ---------------------------------

MODES = ["zero", "circular", "reflect", "symmetric", "replicate"]


def _gather(length, positions, mode):
    """Index (and mask) of the sample each position reads, per reference.boundary_position."""
    where = [boundary_position(p, length, mode) for p in positions]
    index = torch.tensor([0 if w is None else w for w in where])
    mask = torch.tensor([0.0 if w is None else 1.0 for w in where], dtype=torch.float64)
    return index, mask


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("length,offset,taps,out", [(7, -2, 5, 7), (3, -4, 4, 8), (5, -1, 3, 5)])
def test_boundary_mode_1d(mode, length, offset, taps, out):
    r = rng(15)
    x, f = r.standard_normal(length), r.standard_normal(taps)
    src = f"y[i] = x[i+j{offset:+d}] * f[j]   where i < {out}, x: {mode}"
    positions = [i + j + offset for i in range(out) for j in range(taps)]
    index, mask = _gather(length, positions, mode)

    def fn(x, f):
        return ((x[index] * mask).reshape(out, taps) * f).sum(1)

    check_against_torch(src, fn, dict(x=x, f=f), cotangent_shapes={"y": (out,)})


@pytest.mark.parametrize("mode", MODES)
def test_boundary_mode_2d_strided(mode):
    r = rng(16)
    x, k = r.standard_normal((1, 2, 6, 5)), r.standard_normal((3, 2, 3, 3))
    src = (f"y[n,o,h,w] = x[n,c,2*h+u-1,2*w+v-1] * k[o,c,u,v]   "
           f"where h < 4, w < 3, x: {mode}")
    hi, hm = _gather(6, [2 * h + u - 1 for h in range(4) for u in range(3)], mode)
    wi, wm = _gather(5, [2 * w + v - 1 for w in range(3) for v in range(3)], mode)

    def fn(x, k):
        rows = x[:, :, hi, :] * hm[:, None]
        patches = (rows[:, :, :, wi] * wm).reshape(1, 2, 4, 3, 3, 3)  # n c h u w v
        return torch.einsum("ncHuWv,ocuv->noHW", patches, k)

    check_against_torch(src, fn, dict(x=x, k=k), cotangent_shapes={"y": (1, 3, 4, 3)})


def test_symmetric_mode_against_finite_differences():
    """A second oracle for a mode PyTorch's pad does not have."""
    r = rng(17)
    x, f = r.standard_normal(4), r.standard_normal(4)
    src = "y[i] = x[2*i+j-3] * f[j]   where i < 5, x: symmetric"
    dy = r.standard_normal(5)
    got = run_grad(src, ["x", "f"], dict(x=x, f=f), {"dy": dy})
    assert_grads(got, fd_grads(src, dict(x=x, f=f), ["x", "f"], {"dy": dy}), rtol=1e-8,
                 atol=1e-8)


# ---- every elementwise function ---------------------------------------------------------------

TORCH_FUNCTIONS = {
    "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt,
    "abs": torch.abs, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": F.relu,
    "gelu": F.gelu, "silu": F.silu, "softplus": F.softplus, "elu": F.elu, "erf": torch.erf,
    "sin": torch.sin, "cos": torch.cos, "log1p": torch.log1p, "expm1": torch.expm1,
    "sign": torch.sign, "max": torch.maximum, "min": torch.minimum,
}
POSITIVE_DOMAIN = {"log", "sqrt", "rsqrt"}
UNARY_NAMES = sorted(n for n, f in FUNCTIONS.items() if f.arity == 1)
BINARY_NAMES = sorted(n for n, f in FUNCTIONS.items() if f.arity == 2)


def test_every_function_has_an_oracle():
    assert set(FUNCTIONS) <= set(TORCH_FUNCTIONS), set(FUNCTIONS) - set(TORCH_FUNCTIONS)


def _away_from_kinks(name, shape, seed):
    r = rng(seed)
    if name in POSITIVE_DOMAIN:
        return r.uniform(0.2, 3.0, shape)
    if name == "log1p":
        return r.uniform(-0.7, 3.0, shape)
    x = r.uniform(0.2, 2.5, shape) * r.choice([-1.0, 1.0], shape)  # |x| >= 0.2: no kinks at 0
    return x


@pytest.mark.parametrize("name", UNARY_NAMES)
def test_unary_function(name):
    a = _away_from_kinks(name, (3, 4), 20)
    w = rng(21).standard_normal(4)
    f = TORCH_FUNCTIONS[name]
    check_against_torch(f"y[i,j] = {name}(a[i,j]) * w[j]", lambda a, w: f(a) * w,
                        dict(a=a, w=w), cotangent_shapes={"y": (3, 4)})


@pytest.mark.parametrize("name", UNARY_NAMES)
def test_unary_function_of_a_contraction(name):
    """f of an Einstein sum: y[i] = f(x[i,j]*c[j] + b[i])."""
    r = rng(22)
    x = r.standard_normal((5, 3))
    c = r.standard_normal(3)
    b = _away_from_kinks(name, 5, 23)
    b = b - x @ c  # the argument of f is exactly the kink-free b from above
    f = TORCH_FUNCTIONS[name]
    check_against_torch(f"y[i] = {name}(x[i,j]*c[j] + b[i])",
                        lambda x, c, b: f(x @ c + b), dict(x=x, c=c, b=b),
                        cotangent_shapes={"y": (5,)})


@pytest.mark.parametrize("name", BINARY_NAMES)
def test_binary_function(name):
    r = rng(24)
    a = r.standard_normal((3, 4))
    b = a + r.uniform(0.1, 1.0, (3, 4)) * r.choice([-1.0, 1.0], (3, 4))  # no ties
    w = r.standard_normal(4)
    f = TORCH_FUNCTIONS[name]
    check_against_torch(f"y[i,j] = {name}(a[i,j], b[i,j]) * w[j]",
                        lambda a, b, w: f(a, b) * w, dict(a=a, b=b, w=w),
                        cotangent_shapes={"y": (3, 4)})


@pytest.mark.parametrize("name", BINARY_NAMES)
def test_binary_function_with_broadcast_and_ties(name):
    r = rng(25)
    a = r.standard_normal((3, 4))
    c = r.standard_normal(4)
    a[0] = c  # a whole row of exact ties: the gradient is shared, as in torch
    f = TORCH_FUNCTIONS[name]
    check_against_torch(f"y[i,j] = {name}(a[i,j], c[j])", lambda a, c: f(a, c[None, :]),
                        dict(a=a, c=c), cotangent_shapes={"y": (3, 4)})


def test_binary_function_with_a_literal():
    a = _away_from_kinks("relu", (6,), 26)
    check_against_torch("y[i] = max(0, a[i]) + min(a[i], 0)*0.3",
                        lambda a: F.relu(a) + 0.3 * torch.clamp(a, max=0),
                        dict(a=a), cotangent_shapes={"y": (6,)})


def test_composed_functions():
    x = _away_from_kinks("abs", (4, 5), 27)
    check_against_torch("y[i,j] = tanh(sigmoid(x[i,j]) * exp(-abs(x[i,j])))",
                        lambda x: torch.tanh(torch.sigmoid(x) * torch.exp(-torch.abs(x))),
                        dict(x=x), cotangent_shapes={"y": (4, 5)})


def test_comparison_mask_has_zero_derivative():
    x = _away_from_kinks("relu", (10,), 28)
    check_against_torch("y[i] = (x[i] > 0) * x[i]", lambda x: F.relu(x), dict(x=x),
                        cotangent_shapes={"y": (10,)})


# ---- division and powers ---------------------------------------------------------------------

def test_division():
    r = rng(30)
    a, b = r.standard_normal((3, 4)), r.uniform(0.5, 2.0, 4) * r.choice([-1.0, 1.0], 4)
    check_against_torch("y[i,j] = a[i,j] / b[j]", lambda a, b: a / b, dict(a=a, b=b),
                        cotangent_shapes={"y": (3, 4)})
    # i is summed over the smallest additive term holding its uses: a[i,j]^2
    check_against_torch("y[j] = 1 / b[j] - 2 / (a[i,j]^2 + 1)",
                        lambda a, b: 1 / b - 2 / ((a ** 2).sum(0) + 1),
                        dict(a=a, b=b), cotangent_shapes={"y": (4,)})


def test_power_with_tensor_exponent():
    r = rng(31)
    a, b = r.uniform(0.3, 2.5, 6), r.standard_normal(6)
    check_against_torch("y[i] = a[i]^b[i]", lambda a, b: a ** b, dict(a=a, b=b),
                        cotangent_shapes={"y": (6,)})


@pytest.mark.parametrize("src,fn,positive", [
    ("y[i] = a[i]^2", lambda a: a ** 2, False),
    ("y[i] = a[i]^3", lambda a: a ** 3, False),
    ("y[i] = a[i]^-0.5", lambda a: a ** -0.5, True),
    ("y[i] = a[i]^0.5", lambda a: a ** 0.5, True),
    ("y[i] = a[i]^-1", lambda a: 1 / a, False),
    ("y[i] = 2^a[i]", lambda a: 2.0 ** a, False),
    ("y[i] = (a[i] + 1)^2 - a[i]^2", lambda a: (a + 1) ** 2 - a ** 2, False),
], ids=["square", "cube", "inv-sqrt", "sqrt", "inverse", "base-literal", "paren"])
def test_power_with_literal(src, fn, positive):
    a = rng(32).uniform(0.3, 2.5, 7)
    if not positive:
        a = a * rng(33).choice([-1.0, 1.0], 7)
    check_against_torch(src, fn, dict(a=a), cotangent_shapes={"y": (7,)})


def test_scalar_bare_names():
    r = rng(34)
    x = r.standard_normal(5)
    check_against_torch("y[i] = s * x[i]^2 + t", lambda x, s, t: s * x ** 2 + t,
                        dict(x=x, s=np.float64(1.5), t=np.float64(-2.0)),
                        cotangent_shapes={"y": (5,)})


def test_prelu_learned_slope():
    x = _away_from_kinks("relu", (3, 8), 35)
    check_against_torch("y[i,j] = max(0, x[i,j]) + a * min(0, x[i,j])",
                        lambda x, a: F.prelu(x, a.reshape(1)),
                        dict(x=x, a=np.float64(0.25)), cotangent_shapes={"y": (3, 8)})


# ---- broadcasting ------------------------------------------------------------------------------

def test_outer_product_broadcast():
    r = rng(40)
    a, b = r.standard_normal(3), r.standard_normal(4)
    check_against_torch("y[i,j] = a[i] * b[j]", lambda a, b: torch.outer(a, b), dict(a=a, b=b),
                        cotangent_shapes={"y": (3, 4)})
    check_against_torch("y[i,j] = a[i] + b[j]", lambda a, b: a[:, None] + b[None, :],
                        dict(a=a, b=b), cotangent_shapes={"y": (3, 4)})


def test_linear_layer_with_bias_broadcast():
    r = rng(41)
    x, W, b = r.standard_normal((5, 6)), r.standard_normal((4, 6)), r.standard_normal(4)
    check_against_torch("y[n,o] = x[n,i] * W[o,i] + b[o]", lambda x, W, b: F.linear(x, W, b),
                        dict(x=x, W=W, b=b),
                        cotangent_shapes={"y": (5, 4)})


def test_bias_broadcast_over_image():
    r = rng(42)
    x, b = r.standard_normal((2, 3, 4, 5)), r.standard_normal(3)
    check_against_torch("y[n,o,h,w] = x[n,o,h,w] + b[o]", lambda x, b: x + b[:, None, None],
                        dict(x=x, b=b), cotangent_shapes={"y": (2, 3, 4, 5)})


def test_separately_summed_factor():
    r = rng(43)
    x, y = r.standard_normal(3), r.standard_normal((2, 4))
    check_against_torch("out[b,d] = x[f] * y[d,b]", lambda x, y: x.sum() * y.T,
                        dict(x=x, y=y), cotangent_shapes={"out": (4, 2)})


# ---- tensors used more than once ---------------------------------------------------------------

def test_tensor_used_three_times():
    a = rng(50).standard_normal(6)
    check_against_torch("y[i] = a[i] * a[i] + a[i]", lambda a: a * a + a, dict(a=a),
                        cotangent_shapes={"y": (6,)})


@pytest.mark.parametrize("src,fn,shapes", [
    pytest.param("t = tanh(s)\nu = t*t", lambda s: torch.tanh(s) ** 2, dict(s=()),
                 id="scalar-input"),
    pytest.param("t = tanh(x[i])\nu = t*t", lambda x: torch.tanh(x.sum()) ** 2, dict(x=(3,)),
                 id="scalar-intermediate"),
    pytest.param("t[i] = tanh(x[i])\nu[i] = t[i]*t[i]", lambda x: torch.tanh(x) ** 2,
                 dict(x=(3,)), id="vector-intermediate"),
    pytest.param("t = tanh(x[i])\nu = t^2", lambda x: torch.tanh(x.sum()) ** 2, dict(x=(3,)),
                 id="scalar-intermediate-squared"),
])
def test_intermediate_used_twice(src, fn, shapes):
    r = rng(56)
    arrays = {n: np.asarray(r.uniform(-1, 1, s)) for n, s in shapes.items()}
    check_against_torch(src, fn, arrays,
                        cotangent_shapes={"u": (3,)} if "u[i]" in src else None)


def test_quadratic_form_same_tensor_two_indices():
    r = rng(51)
    x, A = r.standard_normal(4), r.standard_normal((4, 4))
    check_against_torch("q = x[i] * A[i,j] * x[j]", lambda x, A: x @ A @ x, dict(x=x, A=A))


def test_gram_matrix():
    x = rng(52).standard_normal((3, 5))
    check_against_torch("G[i,j] = x[i,k] * x[j,k]", lambda x: x @ x.T, dict(x=x),
                        cotangent_shapes={"G": (3, 3)})


@pytest.mark.parametrize("ranges", [
    pytest.param("", id="ranges-inferred"),
    pytest.param("h < 5, w < 6, ", id="ranges-explicit"),
])
def test_residual_block_with_zero_padding(ranges):
    r = rng(53)
    x, k = r.standard_normal((2, 3, 5, 6)), r.standard_normal((3, 3, 3, 3)) * 0.5
    src = ("y[n,c,h,w] = x[n,c,h,w] + relu(x[n,d,h+u-1,w+v-1] * k[c,d,u,v])   "
           f"where {ranges}x: zero")
    pre = F.conv2d(T(x), T(k), padding=1)
    assert pre.abs().min() > 1e-6
    check_against_torch(src, lambda x, k: x + F.relu(F.conv2d(x, k, padding=1)),
                        dict(x=x, k=k), cotangent_shapes={"y": (2, 3, 5, 6)})


def test_residual_block_linear():
    r = rng(56)
    x, k = r.standard_normal((2, 3, 5, 6)), r.standard_normal((3, 3, 3, 3))
    src = "y[n,c,h,w] = x[n,c,h,w] + x[n,d,h+u-1,w+v-1] * k[c,d,u,v]   where x: zero"
    check_against_torch(src, lambda x, k: x + F.conv2d(x, k, padding=1),
                        dict(x=x, k=k), cotangent_shapes={"y": (2, 3, 5, 6)})


def test_weight_used_in_two_statements():
    r = rng(54)
    x, W = r.standard_normal((5, 4)), r.standard_normal((4, 4))
    src = """
    h[n,j] = tanh(x[n,i] * W[j,i])
    y[n,j] = h[n,i] * W[j,i]
    """
    check_against_torch(src, lambda x, W: torch.tanh(x @ W.T) @ W.T, dict(x=x, W=W),
                        cotangent_shapes={"y": (5, 4)})


def test_input_read_by_two_statements_and_an_intermediate_twice():
    r = rng(55)
    x, w = r.standard_normal((4, 3)), r.standard_normal(3)
    src = """
    h[n] = x[n,i] * w[i]
    y[n,i] = h[n] * x[n,i] + h[n]^2 * w[i]
    """
    check_against_torch(src, lambda x, w: (x @ w)[:, None] * x + ((x @ w) ** 2)[:, None] * w,
                        dict(x=x, w=w), cotangent_shapes={"y": (4, 3)})


# ---- reductions --------------------------------------------------------------------------------

REDUCERS = {
    "sum": lambda t, d: t.sum(dim=d),
    "mean": lambda t, d: t.mean(dim=d),
    "max": lambda t, d: t.amax(dim=d),
    "min": lambda t, d: t.amin(dim=d),
}


REDUCTION_FORMS = {
    "one-axis": ("r[i,k] = {}[j](x[i,j,k])", 1, (3, 4)),
    "two-axes": ("r[j] = {}[i,k](x[i,j,k])", (0, 2), (5,)),
    "all-to-scalar": ("r = {}[i,j,k](x[i,j,k])", (0, 1, 2), None),
}


@pytest.mark.parametrize("form", list(REDUCTION_FORMS))
@pytest.mark.parametrize("reducer", ["sum", "mean"])
def test_sum_mean_reductions(reducer, form):
    """The adjoint of a plain sum/mean broadcasts the cotangent: it reads no input."""
    x = rng(60).standard_normal((3, 5, 4))
    text, dims, out_shape = REDUCTION_FORMS[form]
    red = REDUCERS[reducer]
    check_against_torch(text.format(reducer), lambda x: red(x, dims), dict(x=x),
                        cotangent_shapes={"r": out_shape} if out_shape else None)


@pytest.mark.parametrize("form", list(REDUCTION_FORMS))
@pytest.mark.parametrize("reducer", ["max", "min"])
def test_max_min_reductions(reducer, form):
    x = rng(60).standard_normal((3, 5, 4))
    text, dims, out_shape = REDUCTION_FORMS[form]
    red = REDUCERS[reducer]
    check_against_torch(text.format(reducer), lambda x: red(x, dims), dict(x=x),
                        cotangent_shapes={"r": out_shape} if out_shape else None)


@pytest.mark.parametrize("wrt", [["x", "w"], ["x"]], ids=["wrt-x-w", "wrt-x"])
@pytest.mark.parametrize("reducer", ["sum", "mean"])
def test_sum_mean_of_a_product_with_a_summed_factor(reducer, wrt):
    """With wrt=['x'] alone the adjoint does not read x but needs its shape."""
    r = rng(59)
    x, w = r.standard_normal((3, 4)), r.standard_normal(3)
    red = REDUCERS[reducer]
    check_against_torch(f"r[i] = {reducer}[j](x[i,j]) * w[i]",
                        lambda x, w: red(x, 1) * w, dict(x=x, w=w), wrt=wrt,
                        cotangent_shapes={"r": (3,)})


@pytest.mark.parametrize("reducer", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("src,fn", [
    ("y[i] = {}[k](x[i] + w[k])", lambda red, x, w: red(x[:, None] + w[None, :], 1)),
    ("y[i] = {}[k](x[i]*2 + w[k]^2)", lambda red, x, w: red(2 * x[:, None] + w[None, :] ** 2, 1)),
    ("y[i] = {}[k](tanh(x[i]) - w[k])", lambda red, x, w: red(torch.tanh(x)[:, None] - w, 1)),
], ids=["sum-of-terms", "scaled-terms", "function-term"])
def test_reduction_over_an_index_one_term_does_not_use(reducer, src, fn):
    r = rng(58)
    x, w = r.standard_normal(3), r.standard_normal(4)
    red = REDUCERS[reducer]
    check_against_torch(src.format(reducer), lambda x, w: fn(red, x, w), dict(x=x, w=w),
                        cotangent_shapes={"y": (3,)})


def test_scalar_inside_a_sum_over_an_index():
    w = rng(57).standard_normal(4)
    check_against_torch("y = sum[k](s + w[k])", lambda s, w: (s + w).sum(),
                        dict(s=np.float64(0.5), w=w))


@pytest.mark.parametrize("reducer", list(REDUCERS))
def test_reduction_of_expression_with_broadcast(reducer):
    r = rng(61)
    x, w = r.standard_normal((4, 6)), r.standard_normal(6)
    red = REDUCERS[reducer]
    check_against_torch(f"r[i] = {reducer}[j](x[i,j] * w[j])", lambda x, w: red(x * w, 1),
                        dict(x=x, w=w), cotangent_shapes={"r": (4,)})


@pytest.mark.parametrize("reducer", ["max", "min"])
def test_max_min_reduction_with_ties(reducer):
    x = rng(62).integers(-1, 2, (4, 5)).astype(np.float64)
    red = REDUCERS[reducer]
    check_against_torch(f"r[i] = {reducer}[j](x[i,j])", lambda x: red(x, 1), dict(x=x),
                        cotangent_shapes={"r": (4,)})


@pytest.mark.parametrize("src,fn,out_shape", [
    ("r[i] = max[k](sum[j](x[i,j,k]))", lambda x: x.sum(1).amax(1), (3,)),
    ("r = mean[i](sum[j](mean[k](x[i,j,k])))", lambda x: x.mean(2).sum(1).mean(0), None),
    ("r[k] = sum[i](max[j](x[i,j,k]) - min[j](x[i,j,k]))",
     lambda x: (x.amax(1) - x.amin(1)).sum(0), (4,)),
    ("r = mean[i](max[j](x[i,j,k]) * 0 + min[j,k](x[i,j,k]))",
     lambda x: x.amin(dim=(1, 2)).mean(), None),
], ids=["max-of-sum", "mean-sum-mean", "sum-of-max-minus-min", "mean-of-min"])
def test_nested_reductions(src, fn, out_shape):
    x = rng(63).standard_normal((3, 5, 4))
    check_against_torch(src, fn, dict(x=x), cotangent_shapes={"r": out_shape} if out_shape
                        else None)


@pytest.mark.parametrize("height", [8, 9])
def test_mean_and_average_pool(height):
    y = rng(64).standard_normal((2, 3, height, 6))
    check_against_torch("p[n,c,h,w] = mean[u,v](y[n,c,2*h+u,2*w+v])   where u < 2, v < 2",
                        lambda y: F.avg_pool2d(y, 2), dict(y=y),
                        cotangent_shapes={"p": (2, 3, 4, 3)})


def test_overlapping_max_pool():
    y = rng(65).standard_normal((2, 3, 11, 10))
    check_against_torch("p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   where u < 3, v < 3",
                        lambda y: F.max_pool2d(y, 3, 2), dict(y=y),
                        cotangent_shapes={"p": (2, 3, 5, 4)})


def test_mean_over_a_where_range_against_finite_differences():
    r = rng(66)
    x = r.standard_normal((3, 9))
    src = "s[n] = mean[i](x[n,i]^2)   where i in 2:7"
    ds = r.standard_normal(3)
    got = run_grad(src, ["x"], dict(x=x), {"ds": ds})
    expected = np.zeros_like(x)
    expected[:, 2:7] = 2 * x[:, 2:7] / 5 * ds[:, None]
    assert_grads(got, {"dx": expected})
    assert_grads(got, fd_grads(src, dict(x=x), ["x"], {"ds": ds}))


# ---- multi-statement programs --------------------------------------------------------------------

def test_two_layer_mlp_with_loss():
    r = rng(70)
    x, W1, b1 = r.standard_normal((5, 4)), r.standard_normal((6, 4)), r.standard_normal(6)
    W2, t = r.standard_normal((3, 6)), r.standard_normal((5, 3))
    src = """
    h[n,j] = tanh(x[n,i] * W1[j,i] + b1[j])
    o[n,k] = h[n,j] * W2[k,j]
    loss = mean[n,k]((o[n,k] - t[n,k])^2)
    """

    def fn(x, W1, b1, W2, t):
        return ((torch.tanh(x @ W1.T + b1) @ W2.T - t) ** 2).mean()

    check_against_torch(src, fn, dict(x=x, W1=W1, b1=b1, W2=W2, t=t))


def test_chain_of_matrix_products():
    r = rng(71)
    A, B, C = r.standard_normal((2, 3)), r.standard_normal((3, 4)), r.standard_normal((4, 5))
    src = """
    AB[i,k] = A[i,j] * B[j,k]
    ABC[i,l] = AB[i,k] * C[k,l]
    """
    check_against_torch(src, lambda A, B, C: A @ B @ C, dict(A=A, B=B, C=C),
                        cotangent_shapes={"ABC": (2, 5)})


def test_conv_pool_linear_network():
    r = rng(72)
    x, k = r.standard_normal((2, 1, 8, 8)), r.standard_normal((3, 1, 3, 3))
    W = r.standard_normal((4, 3 * 3 * 3))
    src = """
    c[n,o,h,w] = tanh(x[n,i,h+u,w+v] * k[o,i,u,v])
    p[n,o,h,w] = max[u,v](c[n,o,2*h+u,2*w+v])   where u < 2, v < 2
    z[n,f] = p[n,o,h,w] * W[f,o,h,w]
    """

    def fn(x, k, W):
        p = F.max_pool2d(torch.tanh(F.conv2d(x, k)), 2)
        return p.reshape(2, -1) @ W.reshape(4, -1).T

    check_against_torch(src, fn, dict(x=x, k=k, W=W.reshape(4, 3, 3, 3)),
                        cotangent_shapes={"z": (2, 4)})


def test_gradient_with_respect_to_an_intermediate():
    r = rng(73)
    x, w = r.standard_normal((4, 3)), r.standard_normal(3)
    src = """
    h[n] = x[n,i] * w[i]
    y[n] = exp(h[n] / 4)
    """
    dy = r.standard_normal(4)
    got = run_grad(src, ["h"], dict(x=x, w=w), {"dy": dy})
    h = x @ w
    assert_grads(got, {"dh": dy * np.exp(h / 4) / 4})


# ---- '+=' programs -------------------------------------------------------------------------------

def test_accumulate_into_an_earlier_result():
    r = rng(80)
    a, b, c = r.standard_normal(4), r.standard_normal((4, 3)), r.standard_normal(3)
    src = """
    y[i] = a[i]^2
    y[i] += b[i,j] * c[j]
    """
    check_against_torch(src, lambda a, b, c: a ** 2 + b @ c, dict(a=a, b=b, c=c),
                        cotangent_shapes={"y": (4,)})


def test_accumulate_transposed_convolution():
    r = rng(81)
    x, k = r.standard_normal(3), r.standard_normal(2)
    src = "y: f64[6]\ny[2*i+j] += x[i]*k[j]"  # stride-2 transposed 1-D convolution

    def fn(x, k):
        return F.conv_transpose1d(x[None, None], k[None, None], stride=2)[0, 0]

    check_against_torch(src, fn, dict(x=x, k=k), cotangent_shapes={"y": (6,)})


def test_accumulate_with_dropped_out_of_range_writes():
    r = rng(82)
    x, k = r.standard_normal(5), r.standard_normal(3)
    src = "y: f64[5]\ny[i+j-1] += x[i]*k[j]   where y: zero"

    def fn(x, k):
        full = F.conv_transpose1d(x[None, None], k[None, None])[0, 0]  # length 7
        return full[1:6]

    check_against_torch(src, fn, dict(x=x, k=k), cotangent_shapes={"y": (5,)})


@pytest.mark.parametrize("src,fn", [
    pytest.param("y[i] = exp(a[i])\ny[i] += b[i,j] * c[j]",
                 lambda a, b, c: torch.exp(a) + b @ c, id="exp"),
    pytest.param("y[i] = tanh(a[i])\ny[i] += a[i]", lambda a, b, c: torch.tanh(a) + a,
                 id="tanh-then-self"),
    pytest.param("y[i] = a[i] / c[i]\ny[i] += b[i,j] * c[j]",
                 lambda a, b, c: a / c[:4] + b @ c, id="division"),
    pytest.param("y[i] = a[i]^2\ny[i] += b[i,j] * c[j]",
                 lambda a, b, c: a ** 2 + b @ c, id="square"),
])
def test_accumulate_after_a_nonlinear_assignment(src, fn):
    r = rng(84)
    a, b, c = r.standard_normal(4), r.standard_normal((4, 4)), r.uniform(0.5, 2.0, 4)
    wrt = [n for n in "abc" if f"{n}[" in src]
    check_against_torch(src, fn, dict(a=a, b=b, c=c), wrt=wrt, cotangent_shapes={"y": (4,)})


def test_accumulate_twice_into_a_fresh_tensor():
    r = rng(83)
    a, b = r.standard_normal(4), r.standard_normal(4)
    src = """
    s: f64[4]
    s[i] += a[i] * b[i]
    s[i] += tanh(a[i])
    """
    check_against_torch(src, lambda a, b: a * b + torch.tanh(a), dict(a=a, b=b),
                        cotangent_shapes={"s": (4,)})


# ---- of=, zero gradients, several outputs -------------------------------------------------------

TWO_OUTPUTS = """
h[n,j] = x[n,i] * W[j,i]
y[n,j] = tanh(h[n,j])
z[n] = sum[j](h[n,j]^2) + v[n]
"""


def test_several_outputs_take_all_cotangents():
    r = rng(90)
    x, W, v = r.standard_normal((3, 4)), r.standard_normal((5, 4)), r.standard_normal(3)
    g = tc.grad(TWO_OUTPUTS, wrt=["x", "W", "v"])
    assert {"dy", "dz"} <= set(program_inputs(g))
    check_against_torch(TWO_OUTPUTS,
                        lambda x, W, v: {"y": torch.tanh(x @ W.T),
                                         "z": ((x @ W.T) ** 2).sum(1) + v},
                        dict(x=x, W=W, v=v), cotangent_shapes={"y": (3, 5), "z": (3,)})


def test_of_selects_one_output():
    r = rng(91)
    x, W, v = r.standard_normal((3, 4)), r.standard_normal((5, 4)), r.standard_normal(3)
    g = tc.grad(TWO_OUTPUTS, wrt=["x", "W"], of=["y"])
    assert "dz" not in program_inputs(g)
    check_against_torch(TWO_OUTPUTS, lambda x, W, v: {"y": torch.tanh(x @ W.T)},
                        dict(x=x, W=W, v=v), wrt=["x", "W"], cotangent_shapes={"y": (3, 5)},
                        of=["y"])
    check_against_torch(TWO_OUTPUTS, lambda x, W, v: {"z": ((x @ W.T) ** 2).sum(1) + v},
                        dict(x=x, W=W, v=v), wrt=["x", "W", "v"],
                        cotangent_shapes={"z": (3,)}, of=["z"])


def test_zero_gradient_for_an_input_the_output_does_not_depend_on():
    r = rng(92)
    x, W, v = r.standard_normal((3, 4)), r.standard_normal((5, 4)), r.standard_normal(3)
    dy = r.standard_normal((3, 5))
    got = run_grad(TWO_OUTPUTS, ["x", "v"], dict(x=x, W=W, v=v), {"dy": dy}, of=["y"])
    assert got["dv"].shape == (3,)
    np.testing.assert_array_equal(got["dv"], np.zeros(3))
    expected = torch_grads(lambda x, W, v: torch.tanh(x @ W.T), dict(x=x, W=W, v=v), ["x"],
                           {"dy": dy})
    assert_grads({"dx": got["dx"]}, expected)


def test_zero_gradient_only():
    r = rng(93)
    x, W, v = r.standard_normal((3, 4)), r.standard_normal((5, 4)), r.standard_normal((3,))
    got = run_grad(TWO_OUTPUTS, ["v"], dict(x=x, W=W, v=v), {}, of=["y"])
    np.testing.assert_array_equal(got["dv"], np.zeros(3))


def test_zero_gradient_of_a_matrix_shaped_input():
    r = rng(94)
    a, b = r.standard_normal((2, 3)), r.standard_normal((4, 5))
    src = "y[i] = sum[j](a[i,j])\nz[k,l] = b[k,l] * 2"
    dy = r.standard_normal(2)
    got = run_grad(src, ["a", "b"], dict(a=a, b=b), {"dy": dy}, of=["y"])
    assert got["db"].shape == (4, 5)
    np.testing.assert_array_equal(got["db"], np.zeros((4, 5)))
    assert_grads({"da": got["da"]}, {"da": np.repeat(dy[:, None], 3, axis=1)})


def test_sign_has_zero_gradient():
    x = _away_from_kinks("sign", (5,), 95)
    got = run_grad("y[i] = sign(x[i])", ["x"], dict(x=x), {"dy": rng(96).standard_normal(5)})
    np.testing.assert_array_equal(got["dx"], np.zeros(5))


# ---- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("wrt", [["q"], ["x", "nope"], ["i"]], ids=["unknown", "one-unknown",
                                                                  "index-name"])
def test_wrt_unknown_tensor_is_an_error(wrt):
    with pytest.raises(tc.TensorcError) as info:
        tc.grad("y[i] = x[i,j] * w[j]", wrt=wrt)
    assert wrt[-1] in str(info.value)


def test_empty_wrt_is_an_error():
    with pytest.raises(tc.TensorcError):
        tc.grad("y[i] = x[i,j] * w[j]", wrt=[])


def test_wrt_as_a_bare_string_is_not_split_into_characters():
    """wrt="xw" must not silently mean wrt=["x", "w"]."""
    with pytest.raises(tc.TensorcError):
        tc.grad("y[i] = x[i,j] * w[j]", wrt="xw")


def test_of_unknown_output_is_an_error():
    with pytest.raises(tc.TensorcError):
        tc.grad("y[i] = x[i,j] * w[j]", wrt=["x"], of=["zz"])
    with pytest.raises(tc.TensorcError):
        tc.grad("y[i] = x[i,j] * w[j]", wrt=["x"], of=["x"])


def test_of_an_intermediate_read_later_is_an_error():
    with pytest.raises(tc.TensorcError):
        tc.grad("h[i] = x[i]*2\ny[i] = h[i]^2", wrt=["x"], of=["h"])


def test_grad_of_invalid_source_is_a_tensorc_error():
    with pytest.raises(tc.TensorcError):
        tc.grad("y[i] = x[i", wrt=["x"])
    with pytest.raises(tc.TensorcError):
        tc.grad("y[i] = foo(x[i])", wrt=["x"])
