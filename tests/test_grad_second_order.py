"""Second order: tc.grad of an adjoint program gives Hessian-vector products, checked
against PyTorch's double backward on a small CNN loss (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tensorc as tc
from tensorc.check import program_inputs

# Run as well through the CuPy backend, emulated on NumPy (tests/conftest.py).
pytestmark = pytest.mark.conformance

# conv -> tanh -> fully connected -> log-softmax cross-entropy, averaged over the batch
CNN_LOSS = """
z[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]
a[n,o,h,w] = tanh(z[n,o,h,w] + b[o])
s[n,j] = a[n,o,h,w] * W[j,o,h,w]
m[n] = max[j](s[n,j])
e[n,j] = exp(s[n,j] - m[n])
l[n] = m[n] + log(sum[j](e[n,j]))
loss = -mean[n](sum[j](t[n,j] * (s[n,j] - l[n])))
"""


def torch_loss(x, k, b, W, t):
    a = torch.tanh(F.conv2d(x, k) + b[None, :, None, None])
    s = torch.einsum("nohw,johw->nj", a, W)
    return -(t * torch.log_softmax(s, 1)).sum(1).mean()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return dict(x=rng.standard_normal((3, 2, 6, 6)), k=rng.standard_normal((3, 2, 3, 3)) * 0.5,
                b=rng.standard_normal(3) * 0.1, W=rng.standard_normal((4, 3, 4, 4)) * 0.3,
                t=np.eye(4)[[1, 3, 0]])


def test_gradient_matches_torch(data):
    out = tc.compile(tc.grad(CNN_LOSS, wrt=["k", "b", "W"]), dtype="float64")(
        **{n: data[n] for n in ("x", "k", "b", "W", "t")})
    leaves = {n: torch.tensor(data[n], requires_grad=n in "kbW") for n in data}
    grads = torch.autograd.grad(torch_loss(**leaves), [leaves[n] for n in ("k", "b", "W")])
    for name, want in zip(("k", "b", "W"), grads):
        np.testing.assert_allclose(out[f"d{name}"], want.numpy(), rtol=1e-10, atol=1e-12)


def test_hessian_vector_product_matches_torch_double_backward(data):
    first = tc.grad(CNN_LOSS, wrt=["k", "W"])
    second = tc.grad(first, wrt=["k", "W"], of=["dk", "dW"])  # cotangents ddk, ddW = v
    text = str(second)
    assert "ddk" in text and "ddW" in text and "dk2" in text, text
    rng = np.random.default_rng(1)
    v = {"k": rng.standard_normal(data["k"].shape), "W": rng.standard_normal(data["W"].shape)}
    arrays = {**data, "ddk": v["k"], "ddW": v["W"]}
    out = tc.compile(second, dtype="float64")(**{n: arrays[n] for n in program_inputs(second)})

    leaves = {n: torch.tensor(data[n], requires_grad=n in "kW") for n in data}
    gk, gW = torch.autograd.grad(torch_loss(**leaves), (leaves["k"], leaves["W"]),
                                 create_graph=True)
    dot = (gk * torch.tensor(v["k"])).sum() + (gW * torch.tensor(v["W"])).sum()
    hk, hW = torch.autograd.grad(dot, (leaves["k"], leaves["W"]))
    np.testing.assert_allclose(out["dk2"], hk.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(out["dW2"], hW.numpy(), rtol=1e-9, atol=1e-11)


def test_second_order_of_a_strided_padded_convolution(data):
    """The second derivative of sum(conv(x, k)^2) in k is linear in v: check it exactly."""
    src = ("y[n,o,h,w] = x[n,c,2*h+u-1,2*w+v-1] * k[o,c,u,v]   where h < 3, w < 3, x: zero\n"
           "loss = sum[n,o,h,w](y[n,o,h,w]^2)")
    second = tc.grad(tc.grad(src, wrt=["k"]), wrt=["k"], of=["dk"])
    rng = np.random.default_rng(2)
    x, k, vk = rng.standard_normal((2, 2, 6, 6)), rng.standard_normal((3, 2, 3, 3)), \
        rng.standard_normal((3, 2, 3, 3))
    arrays = dict(x=x, k=k, ddk=vk)
    out = tc.compile(second, dtype="float64")(**{n: arrays[n] for n in program_inputs(second)})
    X, K = torch.tensor(x), torch.tensor(k, requires_grad=True)
    (g,) = torch.autograd.grad((F.conv2d(X, K, stride=2, padding=1) ** 2).sum(), K,
                               create_graph=True)
    (h,) = torch.autograd.grad((g * torch.tensor(vk)).sum(), K)
    got = out["dk2"] if isinstance(out, dict) else out
    np.testing.assert_allclose(got, h.numpy(), rtol=1e-9, atol=1e-11)
