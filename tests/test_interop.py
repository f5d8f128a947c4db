"""tensorc.interop: compiled programs as torch autograd functions and modules, checked
against the same computation written in PyTorch (values, gradients, gradcheck, training)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tensorc import TensorcError
from tensorc.errors import BackendError, CallError, DtypeError
from tensorc.interop import TorchFunction, TorchModule, to_numpy, to_torch

CONV = "y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]"
CONV_SAME = ("y[n,o,h,w] = relu(x[n,c,h+u-1,w+v-1] * k[o,c,u,v] + b[o])"
             "   where h < H, w < W, x: zero")
MATMUL = "C[i,k] = A[i,j] * B[j,k]"
DENSE_TANH = "y[n,o] = tanh(x[n,i] * w[o,i] + b[o])"
MAX_POOL = "p[n,c,h,w] = max[u,v](x[n,c,2*h+u,2*w+v])   where u < 2, v < 2"
CROSS_ENTROPY = """
m[n]   = max[j](z[n,j])
e[n,j] = exp(z[n,j] - m[n])
p[n,j] = e[n,j] / sum[j](e[n,j])
loss   = -mean[n](sum[k](t[n,k] * log(p[n,k])))
"""
TWO_OUTPUTS = """
y[i,k] = tanh(A[i,j] * B[j,k])
r = sum[i,j](A[i,j] * A[i,j])
"""


def randn(*shape: int, dtype: torch.dtype = torch.float64, grad: bool = False,
          seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=generator).requires_grad_(grad)


# ---- forward values against PyTorch --------------------------------------------------------

def test_conv2d_forward_matches_torch_and_float32_stays_float32():
    x, k = randn(2, 3, 9, 8, dtype=torch.float32), randn(4, 3, 3, 3, dtype=torch.float32, seed=1)
    y = TorchFunction(CONV)(x, k)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, F.conv2d(x, k), rtol=1e-5, atol=1e-5)


def test_same_conv_with_bias_relu_and_size_names():
    x, k, b = randn(2, 3, 8, 8), randn(5, 3, 3, 3, seed=1), randn(5, seed=2)
    y = TorchFunction(CONV_SAME, H=8, W=8)(x=x, k=k, b=b)
    torch.testing.assert_close(y, F.relu(F.conv2d(x, k, b, padding=1)))


def test_matmul_forward_by_position_and_by_name():
    a, b = randn(5, 4), randn(4, 3, seed=1)
    matmul = TorchFunction(MATMUL)
    assert matmul.inputs == ("A", "B")
    torch.testing.assert_close(matmul(a, b), a @ b)
    torch.testing.assert_close(matmul(a, B=b), a @ b)
    torch.testing.assert_close(matmul(B=b, A=a), a @ b)


def test_max_pool_forward_matches_torch():
    x = randn(2, 3, 8, 6)
    torch.testing.assert_close(TorchFunction(MAX_POOL)(x), F.max_pool2d(x, 2))


def test_cross_entropy_scalar_output_matches_torch():
    z, labels = randn(6, 5), torch.tensor([0, 4, 2, 2, 1, 3])
    loss = TorchFunction(CROSS_ENTROPY)(z=z, t=F.one_hot(labels, 5))
    assert loss.shape == ()
    torch.testing.assert_close(loss, F.cross_entropy(z, labels))


def test_non_contiguous_views_give_correct_results():
    base = randn(4, 6)
    a = base.t()                        # a transposed view
    b = randn(8, 3, seed=1)[::2]        # every other row: strided
    assert not a.is_contiguous() and not b.is_contiguous()
    torch.testing.assert_close(TorchFunction(MATMUL)(a, b), a @ b)
    x = randn(2, 8, 8, 3, seed=2).permute(0, 3, 1, 2)  # channels-last memory
    k = randn(4, 3, 3, 3, seed=3)
    torch.testing.assert_close(TorchFunction(CONV)(x, k), F.conv2d(x, k))


def test_several_outputs_come_back_as_a_dict():
    a, b = randn(3, 4), randn(4, 2, seed=1)
    results = TorchFunction(TWO_OUTPUTS)(a, b)
    assert set(results) == {"y", "r"}
    torch.testing.assert_close(results["y"], torch.tanh(a @ b))
    torch.testing.assert_close(results["r"], (a * a).sum())


# ---- gradients ----------------------------------------------------------------------------

@pytest.mark.parametrize("program, shapes, sizes", [
    (CONV, [(2, 2, 5, 5), (3, 2, 3, 3)], {}),
    (CONV_SAME, [(1, 2, 4, 4), (3, 2, 3, 3), (3,)], {"H": 4, "W": 4}),
    (DENSE_TANH, [(4, 3), (2, 3), (2,)], {}),
    (MAX_POOL, [(2, 2, 4, 6)], {}),
    ("loss = mean[n](sum[d]((x[n,d] - t[n,d])^2))", [(3, 4), (3, 4)], {}),
], ids=["conv", "same-conv-relu", "dense-tanh", "max-pool", "mse-scalar"])
def test_gradcheck(program, shapes, sizes):
    function = TorchFunction(program, **sizes)
    # random inputs: no ties in max, no relu input at exactly 0
    inputs = tuple(randn(*shape, grad=True, seed=i) for i, shape in enumerate(shapes))
    assert torch.autograd.gradcheck(function, inputs)


def test_gradgradcheck_second_derivatives():
    a, b = randn(3, 4, grad=True), randn(4, 2, grad=True, seed=1)
    assert torch.autograd.gradgradcheck(TorchFunction("y[i,k] = tanh(A[i,j] * B[j,k])"), (a, b))


def test_gradcheck_with_several_outputs_and_unused_ones():
    function = TorchFunction(TWO_OUTPUTS)
    a, b = randn(3, 4, grad=True), randn(4, 2, grad=True, seed=1)
    assert torch.autograd.gradcheck(lambda a, b: tuple(function(a, b).values()), (a, b))
    # only y is used: backward gets no cotangent for r, and A's gradient is y's alone
    function(a, b)["y"].sum().backward()
    expected_a, expected_b = torch.autograd.grad(torch.tanh(a @ b).sum(), (a, b))
    torch.testing.assert_close(a.grad, expected_a)
    torch.testing.assert_close(b.grad, expected_b)


def test_conv_gradients_match_torch_autograd():
    x, k, b = (randn(2, 3, 6, 6, grad=True), randn(4, 3, 3, 3, grad=True, seed=1),
               randn(4, grad=True, seed=2))
    cotangent = randn(2, 4, 6, 6, seed=3)
    y = TorchFunction(CONV_SAME, H=6, W=6)(x, k, b)
    got = torch.autograd.grad(y, (x, k, b), cotangent)
    reference = F.relu(F.conv2d(x, k, b, padding=1))
    expected = torch.autograd.grad(reference, (x, k, b), cotangent)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_pool_and_loss_gradients_match_torch_autograd():
    x = randn(2, 3, 6, 4, grad=True)
    cotangent = randn(2, 3, 3, 2, seed=1)
    got, = torch.autograd.grad(TorchFunction(MAX_POOL)(x), x, cotangent)
    expected, = torch.autograd.grad(F.max_pool2d(x, 2), x, cotangent)
    torch.testing.assert_close(got, expected)

    z, labels = randn(6, 5, grad=True), torch.tensor([0, 4, 2, 2, 1, 3])
    loss = TorchFunction(CROSS_ENTROPY)(z=z, t=F.one_hot(labels, 5))
    (2.5 * loss).backward()  # a scalar output's cotangent (2.5) scales its gradient
    expected, = torch.autograd.grad(2.5 * F.cross_entropy(z, labels), z)
    torch.testing.assert_close(z.grad, expected)


def test_backward_derives_only_the_gradients_needed():
    function = TorchFunction(CONV)
    x, k = randn(1, 2, 5, 5, grad=True), randn(3, 2, 3, 3, seed=1)
    function(x, k).sum().backward()
    assert x.grad is not None and k.grad is None
    assert [wrt for wrt, _ in function._adjoints] == [("x",)]
    assert "dk" not in function.adjoint(["x"])
    assert "dx[n,c,h+u,w+v] += dy[n,o,h,w]*k[o,c,u,v]" in function.adjoint(["x"])


def test_float32_gradients_stay_float32_and_mixed_dtypes_are_cast_back():
    a = randn(3, 4, dtype=torch.float32, grad=True)
    b = randn(4, 2, dtype=torch.float64, grad=True, seed=1)
    y = TorchFunction(MATMUL)(a, b)
    assert y.dtype == torch.float64  # NumPy/torch promotion
    y.sum().backward()
    assert a.grad.dtype == torch.float32 and b.grad.dtype == torch.float64
    torch.testing.assert_close(a.grad, (torch.ones(3, 2, dtype=torch.float64) @ b.T).float())


def test_python_number_takes_the_tensors_dtype():
    x = randn(5, dtype=torch.float32, grad=True)
    y = TorchFunction("y[i] = max(a * x[i], x[i])")(x=x, a=0.1)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, F.leaky_relu(x, 0.1))


# ---- no copies ----------------------------------------------------------------------------

def test_tensors_and_arrays_are_exchanged_without_copies():
    t = randn(4, 6)
    for view in (t, t.t(), t[:, ::2]):
        array = to_numpy(view)
        assert np.shares_memory(array, t.detach().numpy())
        assert array.strides == tuple(s * view.element_size() for s in view.stride())
    array = np.arange(12.0).reshape(3, 4)
    assert to_torch(array).data_ptr() == array.ctypes.data
    assert to_torch(array.T).data_ptr() == array.ctypes.data
    readonly = np.broadcast_to(np.arange(3.0), (2, 3))  # copied: torch could write through it
    torch.testing.assert_close(to_torch(readonly), torch.from_numpy(np.array(readonly)))


def test_forward_output_is_a_fresh_tensor_even_for_an_identity_program():
    x = randn(4)
    y = TorchFunction("y[i] = x[i]")(x)
    torch.testing.assert_close(y, x)
    y.add_(1.0)
    assert not torch.equal(y, x)


# ---- torch.nn.Module ----------------------------------------------------------------------

def test_module_trains_like_the_native_torch_module():
    torch.manual_seed(0)
    native = torch.nn.Linear(3, 2)
    layer = TorchModule(DENSE_TANH, {"w": native.weight.detach().clone(),
                                     "b": native.bias.detach().clone()})
    assert [name for name, _ in layer.named_parameters()] == ["w", "b"]
    x = torch.randn(16, 3)
    target = torch.tanh(x @ torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.8, -1.0]]).T)
    ours = torch.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9)
    theirs = torch.optim.SGD(native.parameters(), lr=0.5, momentum=0.9)
    losses = []
    for _ in range(5):
        for optimizer in (ours, theirs):
            optimizer.zero_grad()
        loss = F.mse_loss(layer(x), target)
        loss.backward()
        F.mse_loss(torch.tanh(native(x)), target).backward()
        torch.testing.assert_close(layer.w.grad, native.weight.grad)
        torch.testing.assert_close(layer.b.grad, native.bias.grad)
        ours.step()
        theirs.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    torch.testing.assert_close(layer.w, native.weight)
    assert layer.w.dtype == torch.float32


def test_conv_module_gradients_match_nn_conv2d():
    torch.manual_seed(0)
    native = torch.nn.Conv2d(2, 3, 3, padding=1)
    layer = TorchModule(CONV_SAME.replace("relu", ""), {"k": native.weight.detach().clone(),
                                                        "b": native.bias.detach().clone()},
                        H=5, W=5)
    x = torch.randn(2, 2, 5, 5)
    layer(x=x).square().sum().backward()
    native(x).square().sum().backward()
    torch.testing.assert_close(layer.k.grad, native.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.b.grad, native.bias.grad, rtol=1e-4, atol=1e-4)


def test_module_initializers_constants_and_printing():
    layer = TorchModule("y[n,o] = s * tanh(x[n,i] * w[o,i] + b[o])",
                        {"w": ((4, 3), "xavier_uniform"), "b": ((4,), torch.nn.init.ones_)},
                        constants={"s": torch.tensor(2.0)}, rng=0)
    assert layer.inputs == ("x",)
    assert layer.w.shape == (4, 3) and layer.w.dtype == torch.float32
    bound = (6 / 7) ** 0.5
    assert 0 < layer.w.abs().max() <= bound
    torch.testing.assert_close(layer.b.data, torch.ones(4))
    assert [name for name, _ in layer.named_buffers()] == ["s"]
    x = torch.randn(5, 3)
    torch.testing.assert_close(layer(x), 2 * torch.tanh(x @ layer.w.T + layer.b))
    text = str(layer)
    assert "y[n,o] = s*tanh(x[n,i]*w[o,i] + b[o])" in text
    assert "inputs=['x'], parameters={w: [4, 3], b: [4]}" in text
    assert "dw[o,i]" in layer.adjoint()
    parameter = torch.nn.Parameter(torch.zeros(4, 3))
    assert TorchModule(DENSE_TANH, {"w": parameter, "b": torch.zeros(4)}).w is parameter


# ---- errors -------------------------------------------------------------------------------

def error_text(call) -> str:
    with pytest.raises(TensorcError) as caught:
        call()
    return str(caught.value)


def test_missing_extra_and_doubled_inputs_are_call_errors():
    matmul, a, b = TorchFunction(MATMUL), randn(2, 2), randn(2, 2)
    assert error_text(lambda: matmul(a)) == \
        "missing input 'B' (the program's inputs: A, B)"
    assert error_text(lambda: matmul(a, b=b)) == (
        "missing input 'B'; unexpected input 'b'; did you mean 'B'? "
        "(the program's inputs: A, B)")
    assert "given both by position and by name" in error_text(lambda: matmul(a, b, A=a))
    assert "takes 2 inputs (A, B), got 3" in error_text(lambda: matmul(a, b, b))
    with pytest.raises(CallError, match=r"input 'B' is a list; pass a torch.Tensor"):
        matmul(a, [[1.0, 2.0], [3.0, 4.0]])


def test_shape_errors_from_the_kernel_reach_the_user():
    text = error_text(lambda: TorchFunction(MATMUL)(randn(2, 3), randn(4, 2)))
    assert "j" in text and "3" in text and "4" in text


def test_device_errors_never_copy_to_the_cpu():
    matmul = TorchFunction(MATMUL)
    meta = torch.empty(2, 2, device="meta")
    with pytest.raises(BackendError, match=r"input 'A' is on device 'meta'.*CPU tensors"):
        matmul(meta, meta)
    with pytest.raises(CallError, match=r"different devices \('A' on meta, 'B' on cpu\)"):
        matmul(meta, randn(2, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="this PyTorch has no CUDA device")
def test_cuda_tensors_run_the_cupy_backend_and_pass_gradcheck():
    conv = TorchFunction("y[n,o,h,w] = x[n,c,h+u-1,w+v-1] * k[o,c,u,v]   "
                         "where h < H, w < W, x: zero", H=8, W=8)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, device="cuda", requires_grad=True)
    k = torch.randn(4, 3, 3, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    y = conv(x, k)
    assert y.device.type == "cuda"
    assert torch.allclose(y, torch.nn.functional.conv2d(x, k, padding=1))
    assert torch.autograd.gradcheck(conv, (x, k))


def test_dtype_errors():
    matmul = TorchFunction(MATMUL)
    complex_a = torch.ones(2, 2, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(DtypeError, match=r"'A' requires a gradient but has dtype torch.complex64"):
        matmul(complex_a, randn(2, 2))
    half_a = torch.ones(2, 2, dtype=torch.bfloat16)
    with pytest.raises(DtypeError, match=r"'A' has dtype torch.bfloat16.*A.float\(\)"):
        matmul(half_a, half_a)


def test_construction_errors():
    with pytest.raises(CallError, match=r"integer values of size names"):
        TorchFunction(MATMUL, A=3)
    with pytest.raises(CallError, match=r"outputs: 'D' is not computed"):
        TorchFunction(MATMUL, outputs=["D"])
    with pytest.raises(CallError, match=r"'bias' is not an input of the program; did you mean "
                                        r"'b'\?"):
        TorchModule(DENSE_TANH, {"w": torch.zeros(2, 3), "bias": torch.zeros(2)})
    with pytest.raises(CallError, match=r"'b' are fed by nothing"):
        TorchModule(DENSE_TANH, {"w": torch.zeros(2, 3)}, inputs=["x"])
    with pytest.raises(CallError, match=r"unknown initializer 'xavier' for 'w'; did you mean"):
        TorchModule(DENSE_TANH, {"w": ((2, 3), "xavier"), "b": torch.zeros(2)})
    layer = TorchModule(DENSE_TANH, {"w": torch.zeros(2, 3), "b": torch.zeros(2)})
    with pytest.raises(CallError, match=r"'w' is a parameter or constant of the module"):
        layer(torch.zeros(1, 3), w=torch.zeros(2, 3))


def test_importing_tensorc_does_not_import_torch():
    code = "import sys, tensorc, tensorc.nn; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
