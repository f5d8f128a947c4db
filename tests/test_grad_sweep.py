"""Gradients of the convolution / pooling sweep, each compared with PyTorch autograd in float64.

Every case of tests/test_conv_sweep.py (the same programs, shapes and inputs: its CASES list,
built by its program builders) is differentiated with ``tc.grad`` with respect to every
input it reads (input, weights, bias), the adjoint program is compiled, and its gradients
for a random cotangent ``d<output>`` are compared with ``torch.autograd.grad`` of a
differentiable PyTorch version of the case's oracle:

- boundary modes: ``F.pad(mode=...)`` then the unpadded convolution; ``symmetric`` by index
  gathering (``index_select`` with the indices of ``np.pad(np.arange(n), mode="symmetric")``)
  so autograd sees it;
- max pooling: PyTorch routes the gradient to the first arg-max, tensorc shares it between
  ties; the inputs are continuous random data, so there are no ties between distinct
  samples (a replicate boundary repeats one sample, and either rule gives that sample the
  whole gradient).

The differentiable oracle of a case is derived from the sweep's own oracle: the builder that
made it (its qualified name) and the parameters it captured (geometry, groups, activation,
pooling op...). Its forward value is checked against the sweep's oracle first, so both
oracles are known to compute the same function.

A few tests at the end check the printed adjoint of a plain and a strided convolution.
"""

from __future__ import annotations

import inspect
import os
import sys
import zlib
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_conv_sweep as sweep  # noqa: E402
from test_conv_sweep import (  # noqa: E402
    ACTIVATIONS, AVGPOOL, CASES, CONV, IDS, MAXPOOL, ORACLE_MODE, Case, Geometry,
)

import tensorc as tc  # noqa: E402
from tensorc import syntax as S  # noqa: E402
from tensorc.check import program_inputs  # noqa: E402

# Run as well through the CuPy backend, emulated on NumPy (tests/conftest.py).
pytestmark = pytest.mark.conformance

TOL = 1e-8  # relative to the largest |gradient| of each tensor
FORWARD_TOL = 1e-9  # the differentiable oracle against the sweep's oracle

Tensors = dict[str, torch.Tensor]

# ---------------------------------------------------------------------------
# differentiable oracles
# ---------------------------------------------------------------------------


def pad_t(x: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """x padded as the boundary mode says: F.pad, or index gathering for 'symmetric'."""
    pads = geo.pads()
    if geo.mode is None or not any(lo or hi for lo, hi in pads):
        return x
    mode = ORACLE_MODE[geo.mode]
    if mode == "symmetric":
        lead = x.ndim - geo.dim
        for axis, (lo, hi) in enumerate(pads):
            size = x.shape[lead + axis]
            index = np.pad(np.arange(size), (lo, hi), mode="symmetric")
            x = torch.index_select(x, lead + axis, torch.from_numpy(index))
        return x
    flat = [amount for lo_hi in reversed(pads) for amount in lo_hi]  # last axis first
    if mode == "constant":
        return F.pad(x, flat, mode="constant", value=0.0)
    return F.pad(x, flat, mode=mode)


def crop_t(y: torch.Tensor, geo: Geometry) -> torch.Tensor:
    return y[(Ellipsis,) + tuple(slice(0, o) for o in geo.out)]


def conv_t(x: torch.Tensor, weight: torch.Tensor, geo: Geometry, bias=None,
           groups: int = 1) -> torch.Tensor:
    y = CONV[geo.dim](pad_t(x, geo), weight, bias, stride=geo.stride, dilation=geo.dilation,
                      groups=groups)
    return crop_t(y, geo)


def conv_oracle(geo: Geometry) -> Callable[[Tensors], torch.Tensor]:
    return lambda a: conv_t(a["x"], a["k"], geo)


def grouped_oracle(geo: Geometry, groups: int, cin: int, cout: int, interleaved: bool):
    def oracle(a):
        x = a["x"]
        if interleaved:  # group g's channels contiguous, as PyTorch expects
            x = x[:, [g + groups * c for g in range(groups) for c in range(cin)]]
        weight = a["k"].reshape((groups * cout, cin) + geo.kernel)
        y = conv_t(x, weight, geo, groups=groups)
        return y.reshape((sweep.N, groups, cout) + y.shape[2:])
    return oracle


def depthwise_oracle(geo: Geometry, multiplier: int | None, channels: int):
    def oracle(a):
        y = conv_t(a["x"], a["k"].reshape((-1, 1) + geo.kernel), geo, groups=channels)
        if multiplier is not None:
            y = y.reshape((sweep.N, channels, multiplier) + y.shape[2:])
        return y
    return oracle


def pointwise_oracle(geo: Geometry, dim: int):
    def oracle(a):
        weight = a["k"].reshape(a["k"].shape + (1,) * dim)
        return conv_t(a["x"], weight, geo, bias=a.get("b"))
    return oracle


def epilogue_oracle(geo: Geometry, act: str):
    return lambda a: ACTIVATIONS[act](conv_t(a["x"], a["k"], geo, bias=a["b"]))


def pool_oracle(geo: Geometry, op: str, dim: int):
    def oracle(a):
        x = a["x"]
        if op == "max":
            return MAXPOOL[dim](x, geo.kernel, geo.stride, padding=geo.pad, dilation=geo.dilation)
        if op == "min":
            return -MAXPOOL[dim](-x, geo.kernel, geo.stride, padding=geo.pad,
                                 dilation=geo.dilation)
        assert set(geo.dilation) == {1}
        return AVGPOOL[dim](x, geo.kernel, geo.stride, padding=geo.pad, count_include_pad=True)
    return oracle


def global_pool_oracle(op: str, axes: tuple[int, ...]):
    if op == "mean":
        return lambda a: a["x"].mean(dim=axes)
    return lambda a: torch.amax(a["x"], dim=axes)


def _conv_relu_pool(a):
    y = torch.relu(F.conv2d(a["x"], a["k"], a["b"]))
    return F.max_pool2d(y, 2, 2)


def _conv1d_avgpool(a):
    y = F.conv1d(F.pad(a["x"], (1, 1), mode="reflect"), a["k"])
    return F.avg_pool1d(y, 3, 2)


def _conv_conv(a):
    y = F.conv2d(F.pad(a["x"], (1, 1, 1, 1), mode="circular"), a["k"], stride=2)
    y = F.pad(y, (1, 1, 1, 1), mode="replicate")
    return torch.relu(F.conv2d(y, a["q"]))


def _global_avg_head(a):
    y = torch.relu(F.conv2d(a["x"], a["k"], padding=1))
    return y.mean(dim=(2, 3))


CHAINS = {"_conv_relu_pool": _conv_relu_pool, "_conv1d_avgpool": _conv1d_avgpool,
          "_conv_conv": _conv_conv, "_global_avg_head": _global_avg_head}


def torch_oracle(case: Case) -> Callable[[Tensors], torch.Tensor]:
    """The differentiable twin of case.oracle, from the builder and parameters it captured."""
    fn = case.oracle
    builder = fn.__qualname__.split(".")[0]
    captured = dict(inspect.getclosurevars(fn).nonlocals)
    if fn.__defaults__:  # `geo=geo` bound as a default argument
        captured["geo"] = fn.__defaults__[0]
    if builder in CHAINS:
        return CHAINS[builder]
    if builder == "conv_case":
        return conv_oracle(captured["geo"])
    if builder == "grouped_case":
        return grouped_oracle(captured["geo"], captured["groups"], captured["cin"],
                              captured["cout"], captured["interleaved"])
    if builder == "depthwise_case":
        return depthwise_oracle(captured["geo"], captured["multiplier"], captured["channels"])
    if builder == "pointwise_case":
        return pointwise_oracle(captured["geo"], captured["geo"].dim)
    if builder == "epilogue_case":
        return epilogue_oracle(captured["geo"], captured["act"])
    if builder == "pool_case":
        return pool_oracle(captured["geo"], captured["op"], captured["dim"])
    if builder == "global_pool_case":
        return global_pool_oracle(captured["op"], captured["axes"])
    raise AssertionError(f"no differentiable oracle for sweep builder {builder!r} "
                         f"(case {case.id}); add one to test_grad_sweep.py")


# ---------------------------------------------------------------------------
# running an adjoint program
# ---------------------------------------------------------------------------


def output_name(src: str) -> str:
    statements = [s for s in tc.parse(src).statements if isinstance(s, S.Assignment)]
    return statements[-1].target.tensor


def run_adjoint(gprog: S.Program, arrays: dict[str, np.ndarray],
                wrt: list[str]) -> dict[str, np.ndarray]:
    """Compile the adjoint and call it with the arrays it reads; {"dx": ..., ...}."""
    needed = program_inputs(gprog)
    missing = [name for name in needed if name not in arrays]
    assert not missing, f"the adjoint reads {missing}, which are neither inputs nor dy"
    kernel = tc.compile(gprog, dtype="float64")
    out = kernel(**{name: arrays[name] for name in needed})
    if isinstance(out, np.ndarray):
        assert len(wrt) == 1, f"one array returned for {len(wrt)} gradients"
        out = {f"d{wrt[0]}": out}
    return out


def assert_gradient_close(got: np.ndarray, want: np.ndarray, context: str) -> None:
    assert got.shape == want.shape, f"shape {got.shape} != PyTorch {want.shape}" + context
    scale = float(np.abs(want).max()) or 1.0
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL * scale, err_msg=context)


# ---------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------

# Cases that fail, with the minimal reproducer in the reason (strict: they must keep failing).
XFAIL: dict[str, str] = {}  # none today; a failing case goes here with a minimal reproducer


def _params():
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=XFAIL[case.id])] if case.id in XFAIL else []
        yield pytest.param(case, id=case.id, marks=marks)


def test_every_sweep_case_has_a_differentiable_oracle():
    assert len(CASES) >= 100 and len(set(IDS)) == len(IDS)
    for case in CASES:
        torch_oracle(case)


@pytest.mark.parametrize("case", list(_params()))
def test_grad_sweep(case: Case):
    arrays = case.inputs()
    wrt = program_inputs(tc.parse(case.src))
    assert set(wrt) == set(arrays), (wrt, sorted(arrays))
    cotangent = "d" + output_name(case.src)
    context = f"\nprogram:\n{case.src}\nshapes: {case.shapes}\nwrt: {wrt}"

    tensors = {name: torch.tensor(value, requires_grad=True) for name, value in arrays.items()}
    y = torch_oracle(case)(tensors)
    np.testing.assert_allclose(y.detach().numpy(), case.oracle(arrays), rtol=FORWARD_TOL,
                               atol=FORWARD_TOL, err_msg="differentiable oracle" + context)
    rng = np.random.default_rng(zlib.crc32(("grad-" + case.id).encode()))
    dy = rng.standard_normal(tuple(y.shape))
    wants = torch.autograd.grad(y, [tensors[name] for name in wrt], torch.from_numpy(dy))

    gprog = tc.grad(case.src, wrt=wrt)
    context += f"\nadjoint:\n{gprog}"
    got = run_adjoint(gprog, {**arrays, cotangent: dy}, wrt)
    assert set(got) == {f"d{name}" for name in wrt}, sorted(got)  # the gradients, nothing else
    for name, want in zip(wrt, wants):
        assert_gradient_close(got[f"d{name}"], want.numpy(), f"\ngradient d{name}" + context)


# ---------------------------------------------------------------------------
# the printed adjoint of a convolution
# ---------------------------------------------------------------------------

PLAIN = "y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]"
STRIDED = "y[n,o,h,w] = x[n,c,2*h+u-1,2*w+v-1] * k[o,c,u,v]   where h < 3, w < 3, x: zero"


def test_plain_conv_adjoint_text():
    text = str(tc.grad(PLAIN, wrt=["x", "k"]))
    assert "dx[n,c,h+u,w+v] += dy[n,o,h,w]*k[o,c,u,v]" in text, text
    assert "dk[o,c,u,v] = dy[n,o,h,w]*x[n,c,h+u,w+v]" in text, text
    assert "where" not in text, text  # the 'valid' ranges still infer


def test_strided_padded_conv_adjoint_text():
    text = str(tc.grad(STRIDED, wrt=["x", "k"]))
    assert ("dx[n,c,2*h+u-1,2*w+v-1] += dy[n,o,h,w]*k[o,c,u,v]   where h < 3, w < 3, dx: zero"
            in text), text
    assert "dk[o,c,u,v] = dy[n,o,h,w]*x[n,c,2*h+u-1,2*w+v-1]   where h < 3, w < 3, x: zero" \
        in text, text


def test_adjoint_text_wrt_one_tensor():
    text = str(tc.grad(STRIDED, wrt=["k"]))
    assert "dk[o,c,u,v] = dy[n,o,h,w]*x[n,c,2*h+u-1,2*w+v-1]" in text, text
    assert "dx" not in text, text
    reflect = str(tc.grad(STRIDED.replace("x: zero", "x: reflect"), wrt=["x"]))
    assert "dx[n,c,2*h+u-1,2*w+v-1] += dy[n,o,h,w]*k[o,c,u,v]" in reflect, reflect
    assert "dx: reflect" in reflect and "dk" not in reflect, reflect


@pytest.mark.parametrize("src", [PLAIN, STRIDED, STRIDED.replace("x: zero", "x: symmetric")],
                         ids=["plain", "strided-zero", "strided-symmetric"])
def test_adjoint_text_round_trips(src):
    g = tc.grad(src, wrt=["x", "k"])
    assert tc.parse(str(g)) == g
    assert str(tc.parse(str(g))) == str(g)


def test_adjoint_returns_only_the_gradients():
    src = "y[n,w] = x[n,w+v] * k[v]\np[n,w] = y[n,2*w]"
    rng = np.random.default_rng(0)
    x, k, dp = rng.standard_normal((2, 7)), rng.standard_normal(3), rng.standard_normal((2, 3))
    g = tc.grad(src, wrt=["x"])
    arrays = {"x": x, "k": k, "dp": dp}
    out = tc.compile(g, dtype="float64")(**{name: arrays[name] for name in program_inputs(g)})
    want = np.zeros((2, 7))
    for v in range(3):
        want[:, v:v + 5:2] += dp * k[v]
    got = out["dx"] if isinstance(out, dict) else out
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)  # the values are right
    assert isinstance(out, np.ndarray), sorted(out)  # one gradient: one array
