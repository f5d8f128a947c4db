"""Numerical edge cases against PyTorch and NumPy: overflow, NaN, infinities and dtypes.

What is checked, section by section:

- Softmax, log-softmax and cross-entropy with logits of magnitude 1e4 (positive, negative,
  mixed, with ties at the maximum), written in the language (max-subtracted, log-sum-exp)
  and through tensorc.nn: values and gradients finite and equal to torch's, in float32
  and float64, with no warning. The naive `exp(z)/sum(exp(z))` overflows to inf/nan in
  exactly the places torch and NumPy do.
- Special values: log(0), log(-1), x/0, 0/0, sqrt(-1), rsqrt(0), exp(1000), pow at its
  edges, every elementwise function at 0, -0, +-1, +-1000, +-inf and nan, folded constants,
  and gradients at singular points, elementwise against torch (NaN positions equal).
- Warnings. The generated code is plain NumPy, so it emits NumPy's RuntimeWarnings. The
  rule tested here: an operation that *creates* a NaN or an infinity from finite values
  (log(0), 0/0, exp(1000)) warns exactly when NumPy does on the same expression — so under
  `warnings.simplefilter("error")` it raises where NumPy raises and nowhere else — and a
  NaN that is merely *propagated* (NaN in, NaN out) is silent, as it is in NumPy and torch.
- NaN and inf inputs through contractions (GEMM, einsum), reductions, elementwise max/min,
  pooling, convolutions (valid, padded, strided, dilated, depthwise), and through gradients.
- Dtypes: float16/32/64 programs stay in their dtype through literals, mean, exp,
  comparisons, index values, boundaries, compile_grad, tensorc.nn layers and optimizers;
  mixed floats promote like NumPy; integers and booleans take the other inputs' float dtype
  (float64 when there is none, or `dtype=`); float16 convolutions are within a few float16
  ulps of a float32 torch reference.

Where tensorc differs from torch on purpose or by NumPy semantics, a test pins tensorc's
behaviour and says what torch does (test names say "unlike"). Known bugs are strict xfails:
nn.CrossEntropyLoss loses |z|*eps for large float32 logits and is nan with a -inf logit;
sigmoid/silu/softplus and the max/min/max-pool gradients warn on a NaN input; elu'(+inf) is
nan; erf/gelu turn float16 into float64; a Python float scalar input upcasts float32; a
longdouble input reaches SciPy's TypeError; the declared-dtype check depends on the cache.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tensorc as tc
from tensorc import nn

INF, NAN = math.inf, math.nan
FLOATS = [np.float32, np.float64]
# tolerances of tensorc against torch computed in the same dtype
TOL = {np.float32: {"rtol": 1e-5, "atol": 1e-6}, np.float64: {"rtol": 1e-10, "atol": 1e-12}}


def rng(seed=0):
    return np.random.default_rng(seed)


def torch_of(x: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(np.asarray(x), requires_grad=grad)


def assert_like(actual, expected, rtol=1e-7, atol=0.0, dtype=None):
    """Same shape, NaNs in the same places, the same infinities (with sign), finite values
    close; and the dtype, when given."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    if dtype is not None:
        assert actual.dtype == dtype
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg="NaN positions")
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64),
                               rtol=rtol, atol=atol, equal_nan=True)


@contextmanager
def warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def raises_under_warnings_as_errors(run) -> bool:
    """Whether `run()` raises a RuntimeWarning turned into an error (any other exception
    propagates: a crash is never an acceptable answer)."""
    with warnings_are_errors():
        try:
            run()
        except RuntimeWarning:
            return True
    return False


def run_grad(program: str, wrt: list[str], cotangent_seed: int = 1, **arrays) -> dict:
    """compile_grad of `program` fed `arrays` and, for every cotangent d<output> the kernel
    takes, a random one (returned too, as `cotangent_d<output>`) of the output's shape and
    dtype."""
    forward = tc.compile(program)
    values = forward(**{name: arrays[name] for name in forward.inputs})
    outputs = values if isinstance(values, dict) else {forward.outputs[0]: values}
    kernel = tc.compile_grad(program, wrt=wrt)
    feed, generator = dict(arrays), rng(cotangent_seed)
    for name in kernel.inputs:
        if name not in feed:
            y = np.asarray(outputs[name[1:]])
            feed[name] = generator.standard_normal(y.shape).astype(y.dtype)
    cotangents = {f"cotangent_{name}": feed[name] for name in feed if name not in arrays}
    return {**kernel(**{name: feed[name] for name in kernel.inputs}), **cotangents}


# ==== 1. softmax, log-softmax and cross-entropy at magnitude 1e4 ============================

SOFTMAX = """
m[n] = max[j](z[n,j])
e[n,j] = exp(z[n,j] - m[n])
p[n,j] = e[n,j] / sum[j](e[n,j])
"""
LOG_SOFTMAX = """
m[n] = max[k](z[n,k])
ls[n,k] = z[n,k] - m[n] - log(sum[j](exp(z[n,j] - m[n])))
"""
CROSS_ENTROPY = LOG_SOFTMAX + "loss = -mean[n](sum[k](t[n,k] * ls[n,k]))\n"
NAIVE_SOFTMAX = "p[n,j] = exp(z[n,j]) / sum[k](exp(z[n,k]))"

REGIMES = ["+1e4", "-1e4", "mixed"]
LABELS = np.array([0, 3, 6, 2])


def logits(regime: str, dtype, seed: int = 0) -> np.ndarray:
    """[4, 7] logits around +1e4, around -1e4, or spread over +-2e4 with an exact tie at
    the maximum in row 0 and the labelled class far below the maximum in row 1."""
    z = rng(seed).standard_normal((4, 7))
    if regime == "+1e4":
        z += 1e4
    elif regime == "-1e4":
        z -= 1e4
    else:
        z *= 1e4
        z[0, :4] = [1e4, -1e4, 1e4, 0.0]
        z[1, :4] = [2e4, 0.0, 1.0, -2e4]  # label 3: the loss is ~4e4, its gradient finite
    return z.astype(dtype)


# (program, its output, torch's function): softmax and log-softmax written in the language
SOFTMAX_FORMS = {"softmax": (SOFTMAX, "p", torch.softmax),
                 "log_softmax": (LOG_SOFTMAX, "ls", torch.log_softmax)}


@pytest.mark.parametrize("form", SOFTMAX_FORMS)
@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax_forms_in_the_language_are_stable_and_match_torch(dtype, regime, form):
    program, output, reference = SOFTMAX_FORMS[form]
    z = logits(regime, dtype)
    with warnings_are_errors():
        out = run_grad(program, ["z"], z=z)
    zt = torch_of(z, grad=True)
    expected = reference(zt, dim=1)
    expected.backward(torch_of(out[f"cotangent_d{output}"]))
    assert np.isfinite(out[output]).all() and np.isfinite(out["dz"]).all()
    assert_like(out[output], expected.detach().numpy(), dtype=dtype, **TOL[dtype])
    assert_like(out["dz"], zt.grad.numpy(), dtype=dtype, **TOL[dtype])


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_cross_entropy_in_the_language_is_stable_and_matches_torch(dtype, regime):
    z = logits(regime, dtype)
    t = np.eye(7, dtype=dtype)[LABELS]
    with warnings_are_errors():
        out = tc.compile_grad(CROSS_ENTROPY, wrt=["z"])(z=z, t=t)
    zt = torch_of(z, grad=True)
    loss = F.cross_entropy(zt, torch.tensor(LABELS))
    loss.backward()
    assert np.isfinite(out["loss"]) and np.isfinite(out["dz"]).all()
    assert_like(out["loss"], loss.item(), dtype=dtype, **TOL[dtype])
    assert_like(out["dz"], zt.grad.numpy(), dtype=dtype, **TOL[dtype])


@pytest.mark.parametrize("layer, reference", [
    (nn.Softmax, lambda t: torch.softmax(t, dim=1)),
    (nn.LogSoftmax, lambda t: torch.log_softmax(t, dim=1)),
], ids=["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_nn_softmax_layers_are_stable_and_match_torch(dtype, regime, layer, reference):
    z = logits(regime, dtype)
    dy = rng(1).standard_normal(z.shape).astype(dtype)
    module = layer(dim=1)
    with warnings_are_errors():
        y = module(z)
        dz = module.backward(dy)
    zt = torch_of(z, grad=True)
    yt = reference(zt)
    yt.backward(torch_of(dy))
    assert np.isfinite(y).all() and np.isfinite(dz).all()
    assert_like(y, yt.detach().numpy(), dtype=dtype, **TOL[dtype])
    assert_like(dz, zt.grad.numpy(), dtype=dtype, **TOL[dtype])


@pytest.mark.parametrize("target", ["labels", "probabilities"])
@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_nn_cross_entropy_loss_is_stable_and_matches_torch(dtype, regime, target):
    z = logits(regime, dtype)
    if target == "labels":
        given, torch_target = LABELS, torch.tensor(LABELS)
    else:
        given = np.asarray(torch.softmax(torch.tensor(rng(2).standard_normal(z.shape)), 1),
                           dtype=dtype)
        torch_target = torch_of(given)
    criterion = nn.CrossEntropyLoss()
    with warnings_are_errors():
        loss = criterion(z, given)
        dz = criterion.backward()
    zt = torch_of(z, grad=True)
    loss_t = F.cross_entropy(zt, torch_target)
    loss_t.backward()
    assert math.isfinite(loss) and np.isfinite(dz).all()
    # The loss is good to |z| * eps absolutely (see the xfail below for float32 at 1e4).
    scale = 4 * float(np.finfo(dtype).eps) * float(np.abs(z).max())
    assert loss == pytest.approx(loss_t.item(), rel=TOL[dtype]["rtol"], abs=scale)
    assert_like(dz, zt.grad.numpy(), dtype=dtype, **TOL[dtype])


def test_nn_cross_entropy_is_as_accurate_as_torch_for_large_float32_logits():
    z = logits("+1e4", np.float32)
    truth = F.cross_entropy(torch.tensor(z, dtype=torch.float64), torch.tensor(LABELS)).item()
    torch32 = F.cross_entropy(torch.tensor(z), torch.tensor(LABELS)).item()
    in_language = tc.compile_grad(CROSS_ENTROPY, wrt=["z"])(
        z=z, t=np.eye(7, dtype=np.float32)[LABELS])["loss"]
    assert torch32 == pytest.approx(truth, rel=1e-6)  # what float32 can do
    assert float(in_language) == pytest.approx(truth, rel=1e-6)  # the program in the language
    assert nn.CrossEntropyLoss()(z, LABELS) == pytest.approx(truth, rel=1e-6)


def test_nn_cross_entropy_with_a_masked_minus_inf_logit_is_finite():
    z = np.array([[0.0, -INF, 1.0], [2.0, 1.0, -INF]], np.float32)
    labels = np.array([0, 1])
    criterion = nn.CrossEntropyLoss()
    with np.errstate(all="ignore"):
        loss = criterion(z, labels)
        dz = criterion.backward()
    zt = torch_of(z, grad=True)
    loss_t = F.cross_entropy(zt, torch.tensor(labels))
    loss_t.backward()
    assert_like(dz, zt.grad.numpy(), **TOL[np.float32])  # the gradient is already right
    assert loss == pytest.approx(loss_t.item(), rel=1e-6)


@pytest.mark.parametrize("dtype", FLOATS)
def test_masked_softmax_with_minus_inf_matches_torch(dtype):
    """-inf logits (masks) get probability 0 and a finite gradient; a fully masked row is
    nan (-inf - -inf), as in torch."""
    z = np.array([[0.0, -INF, 1.0], [2.0, 1.0, -INF], [-INF, -INF, -INF]], dtype)
    dy = rng(1).standard_normal(z.shape).astype(dtype)
    for layer, reference in ((nn.Softmax(dim=1), torch.softmax),
                             (nn.LogSoftmax(dim=1), torch.log_softmax)):
        with np.errstate(all="ignore"):
            y = layer(z)
            dz = layer.backward(dy)
        zt = torch_of(z, grad=True)
        yt = reference(zt, dim=1)
        yt.backward(torch_of(dy))
        assert_like(y, yt.detach().numpy(), dtype=dtype, **TOL[dtype])
        assert_like(dz, zt.grad.numpy(), dtype=dtype, **TOL[dtype])
    # the fully masked row is where the only NaN comes from, and NumPy warns about it too
    assert raises_under_warnings_as_errors(lambda: nn.Softmax(dim=1)(z[2:]))
    assert raises_under_warnings_as_errors(lambda: z[2:] - z[2:].max(1, keepdims=True))
    assert not raises_under_warnings_as_errors(lambda: nn.Softmax(dim=1)(z[:2]))


@pytest.mark.parametrize("dtype", FLOATS)
def test_naive_softmax_overflows_exactly_like_torch_and_numpy(dtype):
    """exp(1e4) is inf in both dtypes: inf/inf is nan, finite/inf is 0, and a row whose
    exps all underflow is 0/0 = nan. Values and gradients have NaN where torch has NaN."""
    z = np.array([[1e4, 0.0, 1.0], [-1e4, -1e4 + 1, -1e4], [1.0, 2.0, 3.0]], dtype)
    dp = np.array([[1.0, 2.0, 3.0]] * 3, dtype)
    with np.errstate(all="ignore"):
        out = tc.compile_grad(NAIVE_SOFTMAX, wrt=["z"])(z=z, dp=dp)
        expected_numpy = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    zt = torch_of(z, grad=True)
    pt = torch.exp(zt) / torch.exp(zt).sum(1, keepdim=True)
    pt.backward(torch_of(dp))
    assert np.isnan(out["p"][:2]).any() and np.isfinite(out["p"][2]).all()
    assert_like(out["p"], pt.detach().numpy(), dtype=dtype, **TOL[dtype])
    assert_like(out["p"], expected_numpy, dtype=dtype, **TOL[dtype])
    assert_like(out["dz"], zt.grad.numpy(), dtype=dtype, **TOL[dtype])
    # It is not a crash: with warnings as errors it raises NumPy's overflow warning, like
    # NumPy's own expression does.
    kernel = tc.compile(NAIVE_SOFTMAX)
    with warnings_are_errors(), pytest.raises(RuntimeWarning, match="overflow"):
        kernel(z=z)
    with warnings_are_errors(), pytest.raises(RuntimeWarning, match="overflow"):
        np.exp(z)


def test_cross_entropy_as_log_of_softmax_is_nan_for_large_logits_like_torch():
    """The SPEC's `-sum t*log(p)` form: a probability that underflows to 0 gives
    0 * log(0) = nan in tensorc and in torch alike (use log-sum-exp, as above)."""
    z = logits("mixed", np.float64)
    t = np.eye(7)[LABELS]
    program = SOFTMAX + "loss = -mean[n](sum[k](t[n,k] * log(p[n,k])))\n"
    with np.errstate(all="ignore"):
        loss = tc.compile(program)(z=z, t=t)
    pt = torch.softmax(torch_of(z), dim=1)
    loss_t = -(torch_of(t) * torch.log(pt)).sum(1).mean()
    assert math.isnan(loss) and math.isnan(loss_t.item())


# ==== 2. special values, elementwise ======================================================

# name -> (program, oracle(lib, x)); the oracle runs on a torch tensor with lib=torch, and on
# a NumPy array with lib=np where only NumPy's warnings are wanted (torch-only ones use F)
ELEMENTWISE = {
    "log": ("y[i] = log(x[i])", lambda lib, x: lib.log(x)),
    "sqrt": ("y[i] = sqrt(x[i])", lambda lib, x: lib.sqrt(x)),
    "rsqrt": ("y[i] = rsqrt(x[i])", lambda lib, x: 1 / lib.sqrt(x)),
    "exp": ("y[i] = exp(x[i])", lambda lib, x: lib.exp(x)),
    "reciprocal": ("y[i] = 1 / x[i]", lambda lib, x: 1 / x),
    "x/0": ("y[i] = x[i] / 0", lambda lib, x: x / 0),
    "x/x": ("y[i] = x[i] / x[i]", lambda lib, x: x / x),
    "x-x": ("y[i] = x[i] - x[i]", lambda lib, x: x - x),
    "x*0": ("y[i] = x[i] * 0", lambda lib, x: x * 0),
    "tanh": ("y[i] = tanh(x[i])", lambda lib, x: lib.tanh(x)),
    "sigmoid": ("y[i] = sigmoid(x[i])", lambda lib, x: torch.sigmoid(torch_of(x))),
    "softplus": ("y[i] = softplus(x[i])", lambda lib, x: F.softplus(torch_of(x))),
    "silu": ("y[i] = silu(x[i])", lambda lib, x: F.silu(torch_of(x))),
    "elu": ("y[i] = elu(x[i])", lambda lib, x: F.elu(torch_of(x))),
    "gelu": ("y[i] = gelu(x[i])", lambda lib, x: F.gelu(torch_of(x))),
    "erf": ("y[i] = erf(x[i])", lambda lib, x: torch.erf(torch_of(x))),
    "relu": ("y[i] = relu(x[i])", lambda lib, x: torch.relu(torch_of(x))),
    "abs": ("y[i] = abs(x[i])", lambda lib, x: lib.abs(x)),
    "log1p": ("y[i] = log1p(x[i])", lambda lib, x: lib.log1p(x)),
    "expm1": ("y[i] = expm1(x[i])", lambda lib, x: lib.expm1(x)),
    "sin": ("y[i] = sin(x[i])", lambda lib, x: lib.sin(x)),
    "cos": ("y[i] = cos(x[i])", lambda lib, x: lib.cos(x)),
    "x^2": ("y[i] = x[i]^2", lambda lib, x: x ** 2),
    "x^3": ("y[i] = x[i]^3", lambda lib, x: x ** 3),
    "x^0.5": ("y[i] = x[i]^0.5", lambda lib, x: x ** 0.5),
    "x^-1": ("y[i] = x[i]^-1", lambda lib, x: x ** -1.0),
    "x^0": ("y[i] = x[i]^0", lambda lib, x: x ** 0),
    "x^(1/3)": ("y[i] = x[i]^(1/3)", lambda lib, x: x ** (1 / 3)),
    "2^x": ("y[i] = 2^x[i]", lambda lib, x: 2 ** x),
    "max(x,0)": ("y[i] = max(x[i], 0)", lambda lib, x: torch.clamp_min(torch_of(x), 0)
                 if lib is torch else np.maximum(x, 0)),
    "min(x,0)": ("y[i] = min(x[i], 0)", lambda lib, x: torch.clamp_max(torch_of(x), 0)
                 if lib is torch else np.minimum(x, 0)),
    "x>0": ("y[i] = x[i] > 0", lambda lib, x: (x > 0) * 1.0),
    "x==x": ("y[i] = x[i] == x[i]", lambda lib, x: (~lib.isnan(x)) * 1.0),  # 0 at NaN only
}
# Normal floats only: torch flushes float32 subnormals in some functions (log1p(1e-45) = 0).
SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, -8.0, 2.0, 88.8, 89.0, 1000.0, -1000.0,
           1e30, -1e30, INF, -INF, NAN]
# torch's float32 gelu(+inf) is nan (tensorc: inf, as torch float64): pinned below.
NOT_COMPARED = {("gelu", INF)}


@pytest.mark.parametrize("name", list(ELEMENTWISE))
@pytest.mark.parametrize("dtype", FLOATS)
def test_elementwise_special_values_match_torch(dtype, name):
    program, oracle = ELEMENTWISE[name]
    x = np.array([v for v in SPECIAL if (name, v) not in NOT_COMPARED], dtype)
    with np.errstate(all="ignore"):
        y = tc.compile(program)(x=x)
    expected = oracle(torch, torch_of(x))
    expected = expected.numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert_like(y, expected.astype(dtype), dtype=dtype, **TOL[dtype])


def test_exp_of_1000_in_float32_is_inf_with_numpys_overflow_warning():
    x = np.array([1000.0, 88.0, 89.0, -1000.0], np.float32)
    kernel = tc.compile("y[i] = exp(x[i])")
    with np.errstate(over="ignore"):
        y = kernel(x=x)
    assert y.dtype == np.float32
    assert_like(y, torch.exp(torch_of(x)).numpy(), rtol=1e-6)
    assert y[0] == INF and y[1] < INF and y[2] == INF and y[3] == 0


@pytest.mark.parametrize("dtype", FLOATS)
def test_pow_with_array_exponents_matches_torch(dtype):
    pairs = [(0, -1), (-0.0, -1), (0, 0), (NAN, 0), (1, NAN), (-8, 1 / 3), (-2, 3), (-2, 2),
             (-2, 0.5), (INF, 0), (-INF, 3), (-INF, -1), (0, -INF), (2, INF), (0.5, -INF),
             (-1, INF), (-1, NAN), (0, 0.5), (-0.0, 3), (-0.0, -3), (INF, -0.5), (10, 400),
             (10, -400)]
    a = np.array([p[0] for p in pairs], dtype)
    b = np.array([p[1] for p in pairs], dtype)
    with np.errstate(all="ignore"):
        y = tc.compile("y[i] = a[i]^b[i]")(a=a, b=b)
    assert_like(y, (torch_of(a) ** torch_of(b)).numpy(), dtype=dtype, **TOL[dtype])


# constant expressions are folded at compile time, computed as the generated code would
FOLDED = {"log(0)": -INF, "log(-1)": NAN, "1/0": INF, "-1/0": -INF, "1/-0.0": -INF,
          "0/0": NAN, "sqrt(-1)": NAN, "rsqrt(0)": INF, "exp(1000)": INF, "exp(-1000)": 0.0,
          "0^-1": INF, "(-8)^(1/3)": NAN, "0^0": 1.0, "2^1024": INF, "log(0)*0": NAN,
          "-0.0": -0.0}


@pytest.mark.parametrize("constant", list(FOLDED))
@pytest.mark.parametrize("dtype", FLOATS)
def test_folded_constants_take_ieee_values_without_warnings(dtype, constant):
    x = np.array([1.0, -2.0], dtype)
    with warnings_are_errors():  # folding happens at compile time, with no Python error
        y = tc.compile(f"y[i] = x[i] * 0 + {constant}")(x=x)
    expected = x * dtype(0) + dtype(FOLDED[constant])
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(np.signbit(y), np.signbit(expected))


def test_a_literal_beyond_float64_is_a_parse_error():
    with pytest.raises(tc.ParseError, match="too large for a float64"):
        tc.compile("y[i] = x[i] * 1e400")


# Operations that create a NaN or an infinity from finite inputs: (program, oracle, input).
CREATING = {
    "log(0)": ("log", 0.0), "log(-1)": ("log", -1.0), "1/0": ("reciprocal", 0.0),
    "0/0": ("x/x", 0.0), "sqrt(-1)": ("sqrt", -1.0), "rsqrt(0)": ("rsqrt", 0.0),
    "rsqrt(-0)": ("rsqrt", -0.0), "exp(1000)": ("exp", 1000.0), "0^-1": ("x^-1", 0.0),
    "(-8)^(1/3)": ("x^(1/3)", -8.0), "log1p(-1)": ("log1p", -1.0),
    "inf-inf": ("x-x", INF), "inf*0": ("x*0", INF), "inf/inf": ("x/x", INF),
}


@pytest.mark.parametrize("case", list(CREATING))
@pytest.mark.parametrize("dtype", FLOATS)
def test_creating_nan_or_inf_gives_torchs_value_and_warns_only_where_numpy_does(dtype, case):
    name, value = CREATING[case]
    program, oracle = ELEMENTWISE[name]
    x = np.array([value, 1.0], dtype)
    kernel = tc.compile(program)
    with np.errstate(all="ignore"):
        y = kernel(x=x)
    assert not np.isfinite(y[0]) and np.isfinite(y[1])
    assert_like(y, oracle(torch, torch_of(x)).numpy(), dtype=dtype, **TOL[dtype])
    assert raises_under_warnings_as_errors(lambda: kernel(x=x)) == \
        raises_under_warnings_as_errors(lambda: oracle(np, x))


# Programs fed a vector with a NaN (or inf) among positive values. `extra`: other inputs.
PROPAGATING = {
    "exp": ("y[i] = exp(x[i])", {}), "log": ("y[i] = log(x[i])", {}),
    "sqrt": ("y[i] = sqrt(x[i])", {}), "rsqrt": ("y[i] = rsqrt(x[i])", {}),
    "tanh": ("y[i] = tanh(x[i])", {}), "relu": ("y[i] = relu(x[i])", {}),
    "abs": ("y[i] = abs(x[i])", {}), "gelu": ("y[i] = gelu(x[i])", {}),
    "elu": ("y[i] = elu(x[i])", {}), "x^2": ("y[i] = x[i]^2", {}),
    "x^0.5": ("y[i] = x[i]^0.5", {}), "1/x": ("y[i] = 1 / x[i]", {}),
    "max(x,0)": ("y[i] = max(x[i], 0)", {}), "x>0": ("y[i] = (x[i] > 0) * x[i]", {}),
    "sigmoid": ("y[i] = sigmoid(x[i])", {}), "silu": ("y[i] = silu(x[i])", {}),
    "softplus": ("y[i] = softplus(x[i])", {}),
    "sum": ("y = sum[i](x[i])", {}), "mean": ("y = mean[i](x[i])", {}),
    "max[i]": ("y = max[i](x[i])", {}), "min[i]": ("y = min[i](x[i])", {}),
    "gemm": ("y[k] = x[j] * w[j,k]", {"w": np.ones((6, 3))}),
    "conv": ("y[i] = x[i+u] * w[u]  where u < 3", {"w": np.ones(3)}),
    "max-pool": ("y[i] = max[u](x[2*i+u])  where u < 2", {}),
    "avg-pool": ("y[i] = mean[u](x[2*i+u])  where u < 2", {}),
    "softmax": ("m = max[i](x[i])\ne[i] = exp(x[i] - m)\ny[i] = e[i] / sum[j](e[j])", {}),
    "logsumexp": ("m = max[i](x[i])\ny = m + log(sum[i](exp(x[i] - m)))", {}),
}
WARNS_ON_NAN = {
    "max[i]": "the gradient of max/min reductions and max-pool divides by the number of "
              "ties, 0 when the maximum is NaN: 0/0 warns 'invalid value encountered in divide'",
}
WARNS_ON_NAN.update({"min[i]": WARNS_ON_NAN["max[i]"], "max-pool": WARNS_ON_NAN["max[i]"]})


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, raises=RuntimeWarning,
                                               reason=WARNS_ON_NAN[name]))
    if name in WARNS_ON_NAN else name for name in PROPAGATING])
def test_a_nan_input_propagates_silently_through_forward_and_gradient(name):
    program, extra = PROPAGATING[name]
    x = np.array([0.5, NAN, 1.0, 2.0, 3.0, 0.25])
    with warnings_are_errors():
        out = run_grad(program, ["x"], x=x, **extra)
    assert np.isnan(out["y"]).any()


# ==== 3. NaN and inf through contractions, reductions, pooling, convolutions ==============

def _forward_cases():
    """name -> f(bad) returning (tensorc result, torch result)."""
    g = rng(3)
    a, b = g.standard_normal((3, 4)), g.standard_normal((4, 5))
    x2 = g.standard_normal((3, 5))
    image, kernel = g.standard_normal((2, 2, 7, 7)), g.standard_normal((3, 2, 3, 3))
    depthwise = g.standard_normal((2, 3, 3))

    def poisoned(array, *where):
        def make(bad):
            out = array.copy()
            for index in where:
                out[index] = bad
            return out
        return make

    A = poisoned(a, (1, 2))
    X = poisoned(x2, (1, 2), (2, 0))
    IMAGE = poisoned(image, (0, 1, 3, 2), (1, 0, 0, 6))
    pair_a = np.array([0.0, 1.0, 0.0, 2.0, 0.0, -1.0])
    pair_b = np.array([1.0, 0.0, 0.0, 3.0, -0.0, 5.0])

    def pair(bad):
        first, second = pair_a.copy(), pair_b.copy()
        first[[0, 2]], second[[1, 2]] = bad, bad
        return first, second

    cases = {
        "gemm": lambda bad: (tc.compile("C[i,k] = A[i,j] * B[j,k]")(A=A(bad), B=b),
                             torch_of(A(bad)) @ torch_of(b)),
        "einsum": lambda bad: (tc.einsum("ij,jk->ik", A(bad), b),
                               torch.einsum("ij,jk->ik", torch_of(A(bad)), torch_of(b))),
        "batched gemm": lambda bad: (
            tc.compile("C[n,i,k] = A[n,i,j] * B[j,k]")(A=np.stack([A(bad), a]), B=b),
            torch_of(np.stack([A(bad), a])) @ torch_of(b)),
        "sum": lambda bad: (tc.compile("y[i] = sum[j](x[i,j])")(x=X(bad)),
                            torch_of(X(bad)).sum(1)),
        "implicit sum": lambda bad: (tc.compile("y[i] = x[i,j]")(x=X(bad)),
                                     torch_of(X(bad)).sum(1)),
        "mean": lambda bad: (tc.compile("y[i] = mean[j](x[i,j])")(x=X(bad)),
                             torch_of(X(bad)).mean(1)),
        "max[j]": lambda bad: (tc.compile("y[i] = max[j](x[i,j])")(x=X(bad)),
                               torch_of(X(bad)).amax(1)),
        "min[j]": lambda bad: (tc.compile("y[i] = min[j](x[i,j])")(x=X(bad)),
                               torch_of(X(bad)).amin(1)),
        "max[i,j]": lambda bad: (tc.compile("y = max[i,j](x[i,j])")(x=X(bad)),
                                 torch_of(X(bad)).amax()),
        "max(a,b)": lambda bad: (tc.compile("y[i] = max(a[i], b[i])")(*pair(bad)),
                                 torch.maximum(*map(torch_of, pair(bad)))),
        "min(a,b)": lambda bad: (tc.compile("y[i] = min(a[i], b[i])")(*pair(bad)),
                                 torch.minimum(*map(torch_of, pair(bad)))),
        "max-pool": lambda bad: (
            tc.compile("p[n,c,h,w] = max[u,v](x[n,c,2*h+u,2*w+v])  where u < 2, v < 2")(
                x=IMAGE(bad)), F.max_pool2d(torch_of(IMAGE(bad)), 2)),
        "max-pool overlapping": lambda bad: (
            tc.compile("p[n,c,h,w] = max[u,v](x[n,c,h+u,w+v])  where u < 3, v < 3")(
                x=IMAGE(bad)), F.max_pool2d(torch_of(IMAGE(bad)), 3, stride=1)),
        "avg-pool": lambda bad: (
            tc.compile("p[n,c,h,w] = mean[u,v](x[n,c,2*h+u,2*w+v])  where u < 2, v < 2")(
                x=IMAGE(bad)), F.avg_pool2d(torch_of(IMAGE(bad)), 2)),
        "conv": lambda bad: (
            tc.compile("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]")(x=IMAGE(bad), k=kernel),
            F.conv2d(torch_of(IMAGE(bad)), torch_of(kernel))),
        "conv zero-padded": lambda bad: (
            tc.compile("y[n,o,h,w] = x[n,c,h+u-1,w+v-1] * k[o,c,u,v]  "
                       "where h < 7, w < 7, x: zero")(x=IMAGE(bad), k=kernel),
            F.conv2d(torch_of(IMAGE(bad)), torch_of(kernel), padding=1)),
        "conv reflect-padded": lambda bad: (
            tc.compile("y[n,o,h,w] = x[n,c,h+u-1,w+v-1] * k[o,c,u,v]  "
                       "where h < 7, w < 7, x: reflect")(x=IMAGE(bad), k=kernel),
            F.conv2d(F.pad(torch_of(IMAGE(bad)), (1, 1, 1, 1), mode="reflect"),
                     torch_of(kernel))),
        "conv strided": lambda bad: (
            tc.compile("y[n,o,h,w] = x[n,c,2*h+u,2*w+v] * k[o,c,u,v]")(x=IMAGE(bad), k=kernel),
            F.conv2d(torch_of(IMAGE(bad)), torch_of(kernel), stride=2)),
        "conv dilated": lambda bad: (
            tc.compile("y[n,o,h,w] = x[n,c,h+2*u,w+2*v] * k[o,c,u,v]")(x=IMAGE(bad), k=kernel),
            F.conv2d(torch_of(IMAGE(bad)), torch_of(kernel), dilation=2)),
        "conv depthwise": lambda bad: (
            tc.compile("y[n,c,h,w] = x[n,c,h+u,w+v] * k[c,u,v]")(x=IMAGE(bad)[:, :2],
                                                                 k=depthwise[:2]),
            F.conv2d(torch_of(IMAGE(bad)[:, :2]), torch_of(depthwise[:2, None]), groups=2)),
        "conv with a bad weight": lambda bad: (
            tc.compile("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]")(
                x=image, k=poisoned(kernel, (1, 0, 1, 1))(bad)),
            F.conv2d(torch_of(image), torch_of(poisoned(kernel, (1, 0, 1, 1))(bad)))),
    }
    return cases


FORWARD_CASES = _forward_cases()


@pytest.mark.parametrize("case", list(FORWARD_CASES))
@pytest.mark.parametrize("bad", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
def test_nan_and_inf_inputs_propagate_like_torch(bad, case):
    with np.errstate(all="ignore"):
        got, expected = FORWARD_CASES[case](bad)
    assert_like(got, expected.numpy(), rtol=1e-10, atol=1e-12)


def _gradient_cases():
    """name -> f(bad) returning a list of (tensorc gradient, torch gradient)."""
    g = rng(4)
    a, b, dc = g.standard_normal((3, 4)), g.standard_normal((4, 2)), g.standard_normal((3, 2))
    x2, d2 = g.standard_normal((3, 5)), g.standard_normal(3)
    image, kernel = g.standard_normal((1, 2, 6, 6)), g.standard_normal((3, 2, 3, 3))
    dimage, dpool = g.standard_normal((1, 3, 6, 6)), g.standard_normal((1, 2, 3, 3))
    logits_, dp = g.standard_normal((3, 4)), g.standard_normal((3, 4))

    def with_bad(array, bad, *where):
        out = array.copy()
        for index in where:
            out[index] = bad
        return out

    def gemm(bad):
        A = with_bad(a, bad, (0, 1))
        out = tc.compile_grad("C[i,k] = A[i,j] * B[j,k]", wrt=["A", "B"])(A=A, B=b, dC=dc)
        At, Bt = torch_of(A, True), torch_of(b, True)
        (At @ Bt).backward(torch_of(dc))
        return [(out["dA"], At.grad), (out["dB"], Bt.grad)]

    def conv_of(x, dy):
        out = tc.compile_grad("y[n,o,h,w] = x[n,c,h+u-1,w+v-1] * k[o,c,u,v]  "
                              "where h < 6, w < 6, x: zero", wrt=["x", "k"])(
            x=x, k=kernel, dy=dy)
        xt, kt = torch_of(x, True), torch_of(kernel, True)
        F.conv2d(xt, kt, padding=1).backward(torch_of(dy))
        return [(out["dx"], xt.grad), (out["dk"], kt.grad)]

    def conv(bad):
        return conv_of(with_bad(image, bad, (0, 1, 3, 2)), dimage)

    def conv_bad_cotangent(bad):
        return conv_of(image, with_bad(dimage, bad, (0, 2, 0, 0)))

    def softmax(bad):
        z = with_bad(logits_, bad, (1, 2))
        out = tc.compile_grad(SOFTMAX, wrt=["z"])(z=z, dp=dp)
        zt = torch_of(z, True)
        torch.softmax(zt, 1).backward(torch_of(dp))
        return [(out["dz"], zt.grad)]

    def reduction(op):
        def case(bad):
            x = with_bad(x2, bad, (1, 2))
            out = tc.compile_grad(f"y[i] = {op}[j](x[i,j])", wrt=["x"])(x=x, dy=d2)
            xt = torch_of(x, True)
            {"sum": xt.sum, "mean": xt.mean, "max": xt.amax, "min": xt.amin}[op](1).backward(
                torch_of(d2))
            return [(out["dx"], xt.grad)]
        return case

    def pool(op):
        def case(bad):
            x = with_bad(image[:, :, :6, :6], bad, (0, 0, 1, 1), (0, 1, 4, 5))
            out = tc.compile_grad(f"p[n,c,h,w] = {op}[u,v](x[n,c,2*h+u,2*w+v])  "
                                  "where u < 2, v < 2", wrt=["x"])(x=x, dp=dpool)
            xt = torch_of(x, True)
            windows = xt.reshape(1, 2, 3, 2, 3, 2)  # the oracle: torch's amax/mean of windows
            reduce = {"max": windows.amax, "mean": windows.mean}[op]
            reduce(dim=(3, 5)).backward(torch_of(dpool))
            return [(out["dx"], xt.grad)]
        return case

    return {"gemm": gemm, "conv": conv, "conv, bad cotangent": conv_bad_cotangent,
            "softmax": softmax, "sum": reduction("sum"), "mean": reduction("mean"),
            "max": reduction("max"), "min": reduction("min"), "max-pool": pool("max"),
            "avg-pool": pool("mean")}


GRADIENT_CASES = _gradient_cases()


@pytest.mark.parametrize("case", list(GRADIENT_CASES))
@pytest.mark.parametrize("bad", [NAN, INF], ids=["nan", "inf"])
def test_nan_and_inf_propagate_through_gradients_like_torch(bad, case):
    with np.errstate(all="ignore"):
        pairs = GRADIENT_CASES[case](bad)
    for got, expected in pairs:
        assert_like(got, expected.numpy(), rtol=1e-10, atol=1e-12)


def test_max_pool_gradient_of_a_window_holding_nan_is_nan_unlike_max_pool2d():
    """tensorc routes a max's cotangent to the elements equal to the maximum, shared among
    ties, like torch.amax: no element equals a NaN maximum, so the window's gradient is
    0/0 = nan. F.max_pool2d instead sends the whole cotangent to the NaN element."""
    x = rng(5).standard_normal((1, 1, 4, 4))
    x[0, 0, 1, 1] = NAN
    dp = np.ones((1, 1, 2, 2))
    with np.errstate(invalid="ignore"):
        dx = tc.compile_grad("p[n,c,h,w] = max[u,v](x[n,c,2*h+u,2*w+v])  where u < 2, v < 2",
                             wrt=["x"])(x=x, dp=dp)["dx"][0, 0]
    xt = torch_of(x, True)
    F.max_pool2d(xt, 2).backward(torch_of(dp))
    pooled = xt.grad.numpy()[0, 0]
    assert np.isnan(dx[:2, :2]).all()
    assert pooled[1, 1] == 1 and (pooled[:2, :2].sum() == 1)  # torch: all to the NaN
    np.testing.assert_array_equal(dx[2:], pooled[2:])
    np.testing.assert_array_equal(dx[:, 2:], pooled[:, 2:])


def test_relu_and_elementwise_max_gradients_at_nan_are_zero_unlike_torch():
    """relu'(a) = (a > 0) and max'(a, b) = (a > b) + (a == b)/2 are 0 at a NaN, so the
    cotangent stops there; torch passes it through (relu: dy; maximum: dy to both)."""
    x = np.array([NAN, 1.0, -1.0, INF])
    relu = tc.compile_grad("y[i] = relu(x[i])", wrt=["x"])(x=x, dy=np.ones(4))
    np.testing.assert_array_equal(relu["dx"], [0.0, 1.0, 0.0, 1.0])
    xt = torch_of(x, True)
    torch.relu(xt).backward(torch.ones(4, dtype=torch.float64))
    np.testing.assert_array_equal(relu["dx"][1:], xt.grad.numpy()[1:])  # torch: dx[0] = 1
    a, b = np.array([NAN, 1.0, NAN, 2.0]), np.array([1.0, NAN, NAN, 2.0])
    both = tc.compile_grad("y[i] = max(a[i], b[i])", wrt=["a", "b"])(a=a, b=b, dy=np.ones(4))
    np.testing.assert_array_equal(both["da"], [0, 0, 0, 0.5])  # torch: [1, 1, 1, 0.5]
    np.testing.assert_array_equal(both["db"], [0, 0, 0, 0.5])  # torch: [1, 1, 1, 0.5]
    assert np.isnan(both["y"][:3]).all()  # the value itself propagates, as np.maximum does


def test_abs_gradient_and_sign_at_nan_are_nan_unlike_torch():
    """tensorc follows NumPy (np.sign(nan) = nan); torch.sign(nan) and abs'(nan) are 0."""
    x = np.array([NAN, -2.0, 0.0, 3.0])
    out = tc.compile_grad("y[i] = abs(x[i])", wrt=["x"])(x=x, dy=np.ones(4))
    assert_like(out["dx"], [NAN, -1.0, 0.0, 1.0])
    assert_like(tc.compile("y[i] = sign(x[i])")(x=x), np.sign(x))


@pytest.mark.parametrize("dtype", FLOATS)
def test_gelu_of_inf_is_inf(dtype):
    """gelu(+inf) = +inf (torch float64 agrees; torch's float32 kernel gives nan) and
    gelu(-inf) = -inf * 0 = nan in tensorc and torch alike."""
    x = np.array([INF, -INF, 5.0], dtype)
    with np.errstate(invalid="ignore"):
        y = tc.compile("y[i] = gelu(x[i])")(x=x)
    assert y[0] == INF and np.isnan(y[1]) and np.isfinite(y[2])
    assert_like(y, F.gelu(torch_of(x.astype(np.float64))).numpy().astype(dtype), rtol=1e-6)


# name -> (expression in x[i], torch function, values left out of the comparison)
GRADIENT_FUNCTIONS = {
    **{name: (f"{name}(x[i])", function, ()) for name, function in [
        ("sqrt", torch.sqrt), ("log", torch.log), ("rsqrt", torch.rsqrt), ("abs", torch.abs),
        ("relu", torch.relu), ("exp", torch.exp), ("tanh", torch.tanh),
        ("sigmoid", torch.sigmoid), ("softplus", F.softplus), ("silu", F.silu),
        ("gelu", F.gelu), ("erf", torch.erf), ("log1p", torch.log1p), ("expm1", torch.expm1)]},
    "elu": ("elu(x[i])", F.elu, (INF,)),  # elu'(+inf): see the xfail below
    # d/dx x^0.5 at -0 is +-inf by a sign convention, and at -inf (where the value is nan)
    # torch says nan and tensorc 0.5 * (-inf)^-0.5 = 0: not compared
    "x^0.5": ("x[i]^0.5", lambda t: t ** 0.5, (-0.0, -INF)),
    "x^2": ("x[i]^2", lambda t: t ** 2, ()),
    "x^3": ("x[i]^3", lambda t: t ** 3, ()),
    "x^-1": ("x[i]^-1", lambda t: t ** -1, ()),
    "2^x": ("2^x[i]", lambda t: 2 ** t, ()),
    "x/0": ("x[i] / 0", lambda t: t / 0, ()),
    "max(x,0)": ("max(x[i], 0)", lambda t: torch.maximum(t, torch.zeros_like(t)), ()),
}
SINGULAR = [0.0, -0.0, 1.0, -1.0, 50.0, -50.0, 1000.0, -1000.0, INF, -INF]


def _identical(a: float, b: float) -> bool:
    return a == b and math.copysign(1, a) == math.copysign(1, b)


@pytest.mark.parametrize("name", list(GRADIENT_FUNCTIONS))
@pytest.mark.parametrize("dtype", FLOATS)
def test_gradients_at_singular_points_match_torch(dtype, name):
    expression, function, skipped = GRADIENT_FUNCTIONS[name]
    x = np.array([v for v in SINGULAR if not any(_identical(v, s) for s in skipped)], dtype)
    with np.errstate(all="ignore"):
        dx = tc.compile_grad(f"y[i] = {expression}", wrt=["x"])(x=x, dy=np.ones_like(x))["dx"]
    xt = torch_of(x, True)
    function(xt).backward(torch.ones_like(xt))
    # elu'(-50) = exp(-50) comes out as expm1(-50) + 1 = 0: an absolute error below eps
    assert_like(dx, xt.grad.numpy(), dtype=dtype, rtol=TOL[dtype]["rtol"],
                atol=np.finfo(dtype).eps)


def test_elu_gradient_at_plus_inf_is_one():
    with np.errstate(invalid="ignore"):
        out = tc.compile_grad("y[i] = elu(x[i])", wrt=["x"])(x=np.array([INF, 2.0]),
                                                             dy=np.ones(2))
    np.testing.assert_array_equal(out["dx"], [1.0, 1.0])


# ==== 4. dtype rules ======================================================================

DTYPE_PROGRAMS = {
    "literals": "y[n,j] = 0.5*x[n,j] + 1e-5 - 3.141592653589793",
    "mean": "y[n] = mean[j](x[n,j])",
    "exp": "y[n,j] = exp(x[n,j]) - 1",
    "comparison": "y[n,j] = (x[n,j] > 1) * x[n,j] + (x[n,j] <= 1)",
    "index values": "y[n,j] = x[n,j] * j + n + (j <= n)",
    "powers": "y[n,j] = x[n,j]^2 + x[n,j]^0.5 + 2^x[n,j] + x[n,j]^-1",
    "sum": "y = sum[n,j](x[n,j])",
    "max": "y[n] = max[j](x[n,j]) + min[j](x[n,j])",
    "softmax": SOFTMAX.replace("z", "x"),
    "layer norm": "mu[n] = mean[d](x[n,d])\nvar[n] = mean[d]((x[n,d] - mu[n])^2)\n"
                  "y[n,d] = (x[n,d] - mu[n]) / sqrt(var[n] + 1e-5)",
    "gemm": "y[n,m] = x[n,j] * x[m,j]",
    "conv": "y[n,i] = x[n,i+u] * x[0,u]  where u < 3",
    "pool": "y[n,i] = max[u](x[n,2*i+u])  where u < 2",
    "reflect": "y[n,i] = x[n,i-1] + x[n,i+1]  where i < 6, x: reflect",
    "functions": "y[n,j] = sigmoid(x[n,j]) + tanh(x[n,j]) + rsqrt(x[n,j]) + softplus(x[n,j])"
                 " + silu(x[n,j]) + elu(x[n,j]) + log(x[n,j]) + abs(x[n,j]) + relu(x[n,j])"
                 " + log1p(x[n,j]) + expm1(x[n,j]) + sin(x[n,j]) + max(x[n,j], 0.1)",
    "erf": "y[n,j] = erf(x[n,j])",
    "gelu": "y[n,j] = gelu(x[n,j])",
}


def _dtype_cases():
    for dtype in (np.float16, np.float32, np.float64):
        for name in DTYPE_PROGRAMS:
            yield pytest.param(dtype, name, id=f"{np.dtype(dtype).name}-{name}")


@pytest.mark.parametrize("dtype, name", list(_dtype_cases()))
def test_programs_and_their_gradients_keep_the_input_dtype(dtype, name):
    program = DTYPE_PROGRAMS[name]
    x64 = rng(6).uniform(0.5, 2.0, (4, 6))
    x = x64.astype(dtype)
    with warnings_are_errors():
        out = run_grad(program, ["x"], x=x)
        reference = tc.compile(program)(x=x.astype(np.float64))  # same values, in float64
    assert {n: np.asarray(v).dtype for n, v in out.items()} == \
        {n: np.dtype(dtype) for n in out}
    result = out[next(n for n in out if not n.startswith(("dx", "cotangent_")))]
    tolerance = {np.float16: 4e-3, np.float32: 1e-6, np.float64: 1e-12}[dtype]
    np.testing.assert_allclose(result, reference, rtol=tolerance, atol=tolerance)


def test_float16_conv_and_its_gradients_are_within_float16_accuracy_of_float32_torch():
    g = rng(7)
    x = g.standard_normal((2, 8, 12, 12)).astype(np.float16)
    k = (g.standard_normal((16, 8, 3, 3)) / np.sqrt(72)).astype(np.float16)
    b = g.standard_normal(16).astype(np.float16)
    dy = g.standard_normal((2, 16, 12, 12)).astype(np.float16)
    program = "y[n,o,h,w] = x[n,c,h+u-1,w+v-1] * k[o,c,u,v] + b[o]  where h < 12, w < 12, x: zero"
    with warnings_are_errors():
        out = tc.compile_grad(program, wrt=["x", "k", "b"])(x=x, k=k, b=b, dy=dy)
    xt, kt, bt = (torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (x, k, b))
    yt = F.conv2d(xt, kt, bt, padding=1)
    yt.backward(torch.tensor(dy, dtype=torch.float32))
    eps16 = float(np.finfo(np.float16).eps)  # 2^-10
    for name, expected in (("y", yt.detach()), ("dx", xt.grad), ("dk", kt.grad),
                           ("db", bt.grad)):
        got, expected = out[name], expected.numpy()
        assert got.dtype == np.float16 and np.isfinite(got).all()
        # a float16 result is within a few float16 ulps of the largest value (measured ~0.5)
        assert np.abs(got.astype(np.float32) - expected).max() <= 4 * eps16 * np.abs(
            expected).max(), name


def test_float16_mean_accumulates_accurately_and_sum_overflows_to_inf_like_torch():
    x = np.ones((2, 70000), np.float16)
    assert_like(tc.compile("y[i] = mean[j](x[i,j])")(x=x), torch_of(x).mean(1).numpy(),
                dtype=np.float16)
    with np.errstate(over="ignore"):
        total = tc.compile("y[i] = sum[j](x[i,j])")(x=x)
    assert_like(total, torch_of(x).sum(1).numpy(), dtype=np.float16)  # 70000 > 65504: inf


def test_float16_literals_are_cast_to_float16_like_numpy_unlike_torch():
    """A literal is a value of the compute dtype: in float16, 1e-8 is 0 and 70000 is inf
    (with NumPy's cast-overflow warning), as NumPy does; torch keeps Python scalars at
    float32 precision (60000 * 1e-8 = 6e-4, 60000 / 70000 = 0.857)."""
    x = np.array([60000.0, 1.0], np.float16)
    small, big = tc.compile("y[i] = x[i] * 1e-8"), tc.compile("y[i] = x[i] / 70000")
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(small(x=x), x * 1e-8)
        np.testing.assert_array_equal(big(x=x), x / 70000)
        np.testing.assert_array_equal(big(x=x), [0.0, 0.0])
    assert raises_under_warnings_as_errors(lambda: big(x=x))
    assert raises_under_warnings_as_errors(lambda: x / 70000)
    assert float(torch_of(x)[0] * 1e-8) > 0  # what torch does instead


def test_a_literal_too_large_for_float32_overflows_with_numpys_warning():
    x = np.ones(2, np.float32)
    kernel = tc.compile("y[i] = x[i] * 1e39")
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(kernel(x=x), [INF, INF])
    np.testing.assert_array_equal((torch_of(x) * 1e39).numpy(), [INF, INF])
    assert raises_under_warnings_as_errors(lambda: kernel(x=x))
    assert raises_under_warnings_as_errors(lambda: x * 1e39)


@pytest.mark.parametrize("dtypes, expected", [
    (("float16", "float32"), "float32"), (("float16", "float64"), "float64"),
    (("float32", "float64"), "float64"), (("float16", "float16"), "float16"),
    (("float16", "float32", "float64"), "float64"),
], ids=lambda v: "+".join(v) if isinstance(v, tuple) else v)
def test_mixed_float_inputs_promote_like_numpy(dtypes, expected):
    names = "abc"[:len(dtypes)]
    program = "y[i] = " + " * ".join(f"{n}[i]" for n in names)
    arrays = {n: np.full(3, 1.5, d) for n, d in zip(names, dtypes)}
    out = tc.compile(program)(**arrays)
    assert out.dtype == np.dtype(expected) == np.result_type(*dtypes)
    assert tc.compile_grad(program, wrt=["a"])(**arrays, dy=np.ones(3, expected))["da"].dtype \
        == np.dtype(expected)


@pytest.mark.parametrize("floating", ["float16", "float32", "float64", None])
@pytest.mark.parametrize("integral", ["bool", "int8", "uint8", "int32", "int64", "uint64"])
def test_integer_and_bool_inputs_take_the_float_dtype_of_the_others(integral, floating):
    """Not NumPy's promotion (int64 with float32 would be float64): integers are converted
    to the floating inputs' dtype, or to float64 when no input is floating."""
    x = np.array([1, 0, 1], dtype=integral)
    if floating is None:
        out = tc.compile("y[i] = x[i] / 2 + (x[i] > 0)")(x=x)
        expected = np.dtype("float64")
    else:
        s = np.array(1.5, dtype=floating)
        out = tc.compile("y[i] = x[i] / 2 * s + (x[i] > 0)")(x=x, s=s)
        expected = np.dtype(floating)
    assert out.dtype == expected
    np.testing.assert_array_equal(out, x.astype(np.float64) / 2 * (1.5 if floating else 1)
                                  + (x > 0))


def test_integers_converted_to_float32_round_like_a_float32_cast():
    big = np.array([2 ** 24 + 1, 2 ** 53 + 1], np.int64)
    out = tc.compile("y[i] = x[i] * s")(x=big, s=np.float32(1))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, big.astype(np.float32))
    assert np.result_type(np.int64, np.float32) == np.float64  # NumPy would keep more digits
    with np.errstate(over="ignore"):  # and to float16, 70000 is inf
        assert tc.compile("y[i] = x[i] * s")(x=np.array([70000]), s=np.float16(1))[0] == INF


def test_compile_dtype_applies_only_when_no_input_is_floating():
    kernel = tc.compile("y[i] = 2 * x[i]", dtype="float32")
    assert kernel(x=np.arange(3)).dtype == np.float32
    assert kernel(x=np.arange(3, dtype=np.float16)).dtype == np.float16
    assert kernel(x=np.arange(3.0)).dtype == np.float64  # dtype= does not convert floats
    index_only = "m[i,j] = j <= i  where i < 3, j < 3"
    assert tc.compile(index_only)().dtype == np.float64
    assert tc.compile(index_only, dtype="float16")().dtype == np.float16


def test_declared_float_dtypes_are_strict_not_converted():
    kernel = tc.compile("x: f32[N]\ny[i] = 2 * x[i]")
    assert kernel(x=np.ones(3, np.float32)).dtype == np.float32
    for given in (np.float64, np.float16):
        with pytest.raises(tc.DtypeError, match="declared f32"):
            kernel(x=np.ones(3, given))


def _outcome(kernel, x):
    try:
        return kernel(x=x).dtype.name
    except tc.DtypeError:
        return "DtypeError"


def test_integer_input_to_a_declared_float32_tensor_does_not_depend_on_the_cache():
    program = "x: f32[N]\ny[i] = 2 * x[i] + 0.25  # only in this test"
    cold = _outcome(tc.compile(program), np.ones(3, np.int64))
    tc.compile(program)(x=np.ones(3, np.float32))
    warm = _outcome(tc.compile(program), np.ones(3, np.int64))
    assert cold == warm


def test_comparisons_are_zero_one_in_the_compute_dtype():
    x = np.array([NAN, -1.0, 0.0, 2.0], np.float16)
    out = tc.compile("y[i] = x[i] > 0\nz[i] = x[i] != x[i]")(x=x)
    assert out["y"].dtype == out["z"].dtype == np.float16
    np.testing.assert_array_equal(out["y"], [0, 0, 0, 1])
    np.testing.assert_array_equal(out["z"], [1, 0, 0, 0])  # NaN != NaN


def test_a_numpy_float64_scalar_promotes_a_float32_program_like_numpy():
    x = np.ones(3, np.float32)
    out = tc.compile("y[i] = x[i] * s")(x=x, s=np.float64(0.5))
    assert out.dtype == (x * np.float64(0.5)).dtype == np.float64


def test_a_python_float_scalar_keeps_a_float32_program_float32():
    x = np.ones(3, np.float32)
    assert (x * 0.5).dtype == np.float32
    assert tc.compile("y[i] = x[i] * s")(x=x, s=0.5).dtype == np.float32


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="longdouble is float64 here")
def test_a_longdouble_input_is_rejected_with_a_dtype_error():
    """tensorc computes in float16, float32 or float64; longdouble is not silently kept."""
    x = np.ones(3, np.longdouble)
    for source in ("y[i] = exp(x[i])", "y[i] = gelu(x[i])"):
        with pytest.raises(tc.DtypeError, match="float16, float32 or float64"):
            tc.compile(source)(x=x)


# ---- tensorc.nn --------------------------------------------------------------------------

def _model(dtype, activation):
    nn.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.LayerNorm(8), activation(), nn.PReLU(),
        nn.Dropout(0.25), nn.Linear(8, 5)).to(dtype)


OPTIMIZERS = {
    "SGD": lambda ps: nn.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True),
    "Adam": lambda ps: nn.Adam(ps, lr=1e-3, weight_decay=1e-2),
    "AdamW-amsgrad": lambda ps: nn.AdamW(ps, lr=1e-3, amsgrad=True),
}


@pytest.mark.parametrize("dtype, optimizer, activation", [
    ("float32", "SGD", nn.GELU), ("float32", "Adam", nn.GELU),
    ("float32", "AdamW-amsgrad", nn.Tanh), ("float64", "Adam", nn.GELU),
    ("float16", "SGD", nn.Tanh), ("float16", "SGD", nn.GELU),
], ids=lambda v: v.__name__ if isinstance(v, type) else v)
def test_nn_training_steps_keep_the_model_dtype(dtype, optimizer, activation):
    model = _model(dtype, activation)
    criterion, opt = nn.CrossEntropyLoss(), OPTIMIZERS[optimizer](model.parameters())
    x = rng(8).standard_normal((3, 2, 8, 8)).astype(dtype)
    with warnings_are_errors():
        for _ in range(2):
            y = model(x)
            loss = criterion(y, np.array([0, 1, 4]))
            opt.zero_grad()
            dloss = criterion.backward()
            dx = model.backward(dloss)
            opt.step()
    assert math.isfinite(loss)
    arrays = {"output": y, "dloss": dloss, "dx": dx}
    arrays.update({f"{n}.data": p.data for n, p in model.named_parameters()})
    arrays.update({f"{n}.grad": p.grad for n, p in model.named_parameters()})
    arrays.update({f"buffer {m}.{n}": b for m, module in model.named_modules()
                   for n, b in module._buffers.items() if b.dtype.kind == "f"})
    arrays.update({f"state {i}.{k}": v for i, state in enumerate(opt.state.values())
                   for k, v in state.items() if isinstance(v, np.ndarray)})
    assert {n: a.dtype.name for n, a in arrays.items()} == {n: dtype for n in arrays}


def test_a_float32_layer_given_float64_or_integer_inputs():
    """The layer computes in NumPy's promotion of input and parameters: float64 inputs give
    float64 outputs (parameter gradients are stored in the parameter's float32); integer
    inputs are converted to the parameters' float32."""
    nn.manual_seed(0)
    layer = nn.Linear(4, 3)
    assert layer(np.ones((2, 4))).dtype == np.float64
    assert layer.backward(np.ones((2, 3))).dtype == np.float64
    assert layer.weight.grad.dtype == np.float32
    assert layer(np.ones((2, 4), dtype=np.int64)).dtype == np.float32


def test_float16_adam_step_is_exactly_torchs_including_eps_underflow():
    """eps = 1e-8 is 0 in float16, so a zero gradient gives 0/0 = nan and a tiny one
    (g^2 underflows) x/0 = -inf, in torch.optim.Adam as in tensorc.nn.Adam."""
    grad = np.array([0.0, 1e-3, 1.0, -0.5], np.float16)
    parameter = nn.Parameter(np.ones(4, np.float16))
    parameter.grad = grad.copy()
    with np.errstate(all="ignore"):
        nn.Adam([parameter], lr=1e-3).step()
    reference = torch.ones(4, dtype=torch.float16, requires_grad=True)
    reference.grad = torch_of(grad)
    torch.optim.Adam([reference], lr=1e-3, foreach=False).step()
    assert parameter.data.dtype == np.float16
    assert_like(parameter.data, reference.detach().numpy())
    assert np.isnan(parameter.data[0]) and parameter.data[1] == -INF
