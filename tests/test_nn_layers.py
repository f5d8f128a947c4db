"""tensorc.nn layers against torch.nn: forward, input gradient and parameter gradients.

Each case builds the torch module, copies its parameters (and buffers) into the tensorc
layer through load_state_dict, runs both in float64 on the same input and the same random
cotangent, and compares the output, dx and every parameter's gradient to 1e-8. The
tensorc gradients come from the adjoint programs tensorc derives (ProgramModule.backward).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tensorc import nn

# Run as well through the CuPy backend, emulated on NumPy (tests/conftest.py).
pytestmark = pytest.mark.conformance

TOL = 1e-8


def rng(seed=0):
    return np.random.default_rng(seed)


def compare(layer, module, x, *, seed=1, check_input_grad=True, load=True):
    """Run `layer` (tensorc) and `module` (torch) on x; compare output and gradients.

    With load=True the torch module's state is first copied into the layer.
    """
    module = module.double()
    if load:
        layer.to("float64")
        layer.load_state_dict({k: v.detach().numpy() for k, v in module.state_dict().items()})
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = module(xt)
    y = layer(x)
    assert y.shape == tuple(yt.shape)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=TOL, atol=TOL)
    dy = rng(seed).standard_normal(y.shape)
    module.zero_grad()
    yt.backward(torch.from_numpy(dy))
    layer.zero_grad()
    dx = layer.backward(dy)
    if check_input_grad:
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=TOL, atol=TOL)
    torch_params = dict(module.named_parameters())
    own = dict(layer.named_parameters())
    assert set(own) == set(torch_params)
    for name, parameter in own.items():
        np.testing.assert_allclose(parameter.grad, torch_params[name].grad.numpy(),
                                   rtol=TOL, atol=TOL, err_msg=name)
    return y


def image(shape, seed=0):
    return rng(seed).standard_normal(shape)


# ---- Linear and convolutions ------------------------------------------------------------

def test_linear():
    compare(nn.Linear(7, 5), torch.nn.Linear(7, 5), image((4, 7)))


def test_linear_without_bias_on_3d_input():
    compare(nn.Linear(6, 3, bias=False), torch.nn.Linear(6, 3, bias=False), image((2, 4, 6)))


CONV2D_CASES = [
    dict(),
    dict(stride=2),
    dict(padding=1),
    dict(padding=2, dilation=2),
    dict(stride=2, padding=1),
    dict(padding=(1, 2), stride=(1, 2)),
    dict(padding="same"),
    dict(padding=1, padding_mode="reflect"),
    dict(padding=1, padding_mode="replicate"),
    dict(padding=1, padding_mode="circular"),
    dict(padding=2, stride=2, dilation=2, padding_mode="reflect"),
    dict(groups=2),
    dict(groups=2, padding=1, stride=2),
    dict(bias=False),
]


@pytest.mark.parametrize("options", CONV2D_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_conv2d(options):
    compare(nn.Conv2d(4, 6, 3, **options), torch.nn.Conv2d(4, 6, 3, **options), image((2, 4, 9, 10)))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_conv2d_same_even_kernel():
    compare(nn.Conv2d(2, 3, 4, padding="same"), torch.nn.Conv2d(2, 3, 4, padding="same"),
            image((2, 2, 7, 7)))


def test_conv2d_depthwise_and_multiplier():
    layer = nn.Conv2d(4, 4, 3, groups=4, padding=1)
    assert "weight[c,u,v]" in layer.program
    compare(layer, torch.nn.Conv2d(4, 4, 3, groups=4, padding=1), image((2, 4, 8, 8)))
    compare(nn.Conv2d(3, 6, 3, groups=3), torch.nn.Conv2d(3, 6, 3, groups=3), image((2, 3, 8, 8)))


def test_conv2d_1x1():
    compare(nn.Conv2d(5, 7, 1), torch.nn.Conv2d(5, 7, 1), image((2, 5, 6, 6)))


def test_conv2d_symmetric_padding_matches_numpy_pad():
    layer = nn.Conv2d(2, 3, 3, padding=2, padding_mode="symmetric")
    module = torch.nn.Conv2d(2, 3, 3)  # valid convolution of the np.pad(symmetric) input
    x = image((2, 2, 6, 7))
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="symmetric")
    layer.to("float64")
    module = module.double()
    layer.load_state_dict({k: v.detach().numpy() for k, v in module.state_dict().items()})
    np.testing.assert_allclose(layer(x), module(torch.from_numpy(padded)).detach().numpy(),
                               rtol=TOL, atol=TOL)


@pytest.mark.parametrize("options", [dict(), dict(stride=2, padding=2, dilation=2),
                                     dict(padding=1, padding_mode="circular"), dict(groups=2)])
def test_conv1d(options):
    compare(nn.Conv1d(4, 6, 3, **options), torch.nn.Conv1d(4, 6, 3, **options), image((2, 4, 17)))


@pytest.mark.parametrize("options", [dict(), dict(stride=2, padding=1)])
def test_conv3d(options):
    compare(nn.Conv3d(2, 3, 3, **options), torch.nn.Conv3d(2, 3, 3, **options), image((2, 2, 6, 5, 7)))


# ---- pooling -----------------------------------------------------------------------------

@pytest.mark.parametrize("options", [dict(kernel_size=2), dict(kernel_size=3, stride=2),
                                     dict(kernel_size=3, stride=2, padding=1),
                                     dict(kernel_size=2, stride=1, dilation=2)])
def test_maxpool2d(options):
    compare(nn.MaxPool2d(**options), torch.nn.MaxPool2d(**options), image((2, 3, 9, 8)))


@pytest.mark.parametrize("options", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1)])
def test_avgpool2d(options):
    compare(nn.AvgPool2d(**options), torch.nn.AvgPool2d(**options), image((2, 3, 9, 8)))


def test_pool1d():
    compare(nn.MaxPool1d(3, 2, 1), torch.nn.MaxPool1d(3, 2, 1), image((2, 3, 11)))
    compare(nn.AvgPool1d(2), torch.nn.AvgPool1d(2), image((2, 3, 11)))


def test_global_avg_pool():
    module = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    compare(nn.GlobalAvgPool(), module, image((3, 4, 5, 6)))


def test_flatten():
    compare(nn.Flatten(), torch.nn.Flatten(), image((2, 3, 4, 5)))
    compare(nn.Flatten(1, 2), torch.nn.Flatten(1, 2), image((2, 3, 4, 5)))


# ---- activations -------------------------------------------------------------------------

ACTIVATIONS = [
    (nn.ReLU, torch.nn.ReLU, {}),
    (nn.LeakyReLU, torch.nn.LeakyReLU, {}),
    (nn.LeakyReLU, torch.nn.LeakyReLU, {"negative_slope": 0.2}),
    (nn.LeakyReLU, torch.nn.LeakyReLU, {"negative_slope": 1.5}),
    (nn.ELU, torch.nn.ELU, {}),
    (nn.ELU, torch.nn.ELU, {"alpha": 0.7}),
    (nn.SiLU, torch.nn.SiLU, {}),
    (nn.GELU, torch.nn.GELU, {}),
    (nn.GELU, torch.nn.GELU, {"approximate": "tanh"}),
    (nn.Mish, torch.nn.Mish, {}),
    (nn.Sigmoid, torch.nn.Sigmoid, {}),
    (nn.Tanh, torch.nn.Tanh, {}),
    (nn.Softplus, torch.nn.Softplus, {}),
    (nn.Softmax, torch.nn.Softmax, {"dim": -1}),
    (nn.Softmax, torch.nn.Softmax, {"dim": 1}),
    (nn.LogSoftmax, torch.nn.LogSoftmax, {"dim": 1}),
    (nn.GLU, torch.nn.GLU, {"dim": 1}),
    (nn.GLU, torch.nn.GLU, {}),
    (nn.PReLU, torch.nn.PReLU, {}),
    (nn.PReLU, torch.nn.PReLU, {"num_parameters": 4, "init": 0.1}),
]


@pytest.mark.parametrize("ours, theirs, options", ACTIVATIONS,
                         ids=[f"{a[0].__name__}-{a[2]}" for a in ACTIVATIONS])
def test_activation(ours, theirs, options):
    x = image((3, 4, 2, 6))
    x[x == 0] = 0.5  # keep away from kinks
    compare(ours(**options), theirs(**options), x)


def test_prelu_slope_is_learned_by_sgd():
    layer = nn.PReLU().to("float64")
    optimizer = nn.SGD(layer.parameters(), lr=0.5)
    x = -np.abs(image((64,))) - 0.1
    target = 0.1 * x  # the slope that fits is 0.1
    loss_function = nn.MSELoss()
    for _ in range(100):
        optimizer.zero_grad()
        loss_function(layer(x), target)
        layer.backward(loss_function.backward())
        optimizer.step()
    assert abs(layer.weight.data[0] - 0.1) < 1e-6


def test_maxout():
    x = image((2, 6, 3))
    layer = nn.Maxout(3).to("float64")
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = xt.reshape(2, 2, 3, 3).amax(dim=2)
    y = layer(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=TOL)
    dy = image(y.shape, 1)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=TOL, atol=TOL)


# ---- dropout -----------------------------------------------------------------------------

def test_dropout_train_uses_a_mask_and_eval_is_identity():
    layer = nn.Dropout(0.25, rng=0)
    x = image((50, 40))
    y = layer(x)
    mask = layer.last_mask
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert abs(1 - mask.mean() - 0.25) < 0.03
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = xt * torch.from_numpy(mask) / 0.75
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=TOL)
    dy = image(y.shape, 1)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=TOL)
    layer.eval()
    assert layer(x) is x or np.array_equal(layer(x), x)
    np.testing.assert_array_equal(layer.backward(dy), dy)


# ---- normalization -----------------------------------------------------------------------

def test_layer_norm():
    compare(nn.LayerNorm(6), torch.nn.LayerNorm(6), image((3, 4, 6)))
    compare(nn.LayerNorm((4, 6)), torch.nn.LayerNorm((4, 6)), image((3, 4, 6)))
    compare(nn.LayerNorm(6, elementwise_affine=False),
            torch.nn.LayerNorm(6, elementwise_affine=False), image((3, 6)))


def test_layer_norm_with_trained_parameters():
    module = torch.nn.LayerNorm(5)
    with torch.no_grad():
        module.weight.normal_()
        module.bias.normal_()
    compare(nn.LayerNorm(5), module, image((4, 5)))


def test_rms_norm():
    module = torch.nn.RMSNorm(6, eps=1e-6)
    with torch.no_grad():
        module.weight.normal_()
    compare(nn.RMSNorm(6, eps=1e-6), module, image((3, 4, 6)))


@pytest.mark.parametrize("ours, theirs, shape", [
    (nn.BatchNorm2d, torch.nn.BatchNorm2d, (4, 3, 5, 6)),
    (nn.BatchNorm1d, torch.nn.BatchNorm1d, (8, 3)),
    (nn.BatchNorm1d, torch.nn.BatchNorm1d, (4, 3, 7)),
])
def test_batch_norm_train_and_eval_with_running_statistics(ours, theirs, shape):
    module = theirs(3, momentum=0.3).double()
    with torch.no_grad():
        module.weight.normal_()
        module.bias.normal_()
    layer = ours(3, momentum=0.3)
    # several training steps from the same start: outputs, gradients and the running
    # statistics (updated by each step independently on both sides) agree
    for step in range(4):
        x = image(shape, seed=step) * (step + 1) + step
        compare(layer, module, x, seed=10 + step, load=step == 0)
        assert int(layer.num_batches_tracked) == step + 1
        for name in ("running_mean", "running_var"):
            np.testing.assert_allclose(getattr(layer, name), getattr(module, name).numpy(),
                                       rtol=TOL, atol=TOL, err_msg=name)
    assert not np.allclose(layer.running_var, 1)
    # eval mode: the running statistics are used, and gradients flow through them as constants
    module.eval()
    layer.eval()
    assert "running_mean" in layer.program
    compare(layer, module, image(shape, seed=99), load=False)
    np.testing.assert_allclose(layer.running_mean, module.running_mean.numpy(), rtol=TOL)


def test_batch_norm_cumulative_average_without_momentum():
    module = torch.nn.BatchNorm2d(2, momentum=None).double()
    layer = nn.BatchNorm2d(2, momentum=None).to("float64")
    for step in range(3):
        x = image((3, 2, 4, 4), seed=step) + step
        module(torch.from_numpy(x))
        layer(x)
    np.testing.assert_allclose(layer.running_var, module.running_var.numpy(), rtol=TOL)
    np.testing.assert_allclose(layer.running_mean, module.running_mean.numpy(), rtol=TOL)


# ---- residual, custom programs -----------------------------------------------------------

class TorchResidual(torch.nn.Module):
    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return torch.relu(self.body(x) + (self.shortcut(x) if self.shortcut is not None else x))


def test_residual_block():
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.BatchNorm2d(3),
                               torch.nn.ReLU(), torch.nn.Conv2d(3, 3, 3, padding=1))
    ours = nn.Residual(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                                     nn.Conv2d(3, 3, 3, padding=1)), activation="relu")
    compare(ours, TorchResidual(body), image((2, 3, 6, 6)))


def test_residual_with_projection_shortcut():
    body = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)
    shortcut = torch.nn.Conv2d(3, 5, 1, stride=2)
    ours = nn.Residual(nn.Conv2d(3, 5, 3, stride=2, padding=1), shortcut=nn.Conv2d(3, 5, 1, stride=2),
                       activation="relu")
    compare(ours, TorchResidual(body, shortcut), image((2, 3, 8, 8)))


class TorchTanhLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8, 4, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(8, dtype=torch.float64))

    def forward(self, x):
        return torch.tanh(x @ self.w.T + self.b)


def test_custom_program_layer():
    layer = nn.Program("y[n,o] = tanh(x[n,i] * w[o,i] + b[o])",
                       params={"w": ((8, 4), "xavier_uniform"), "b": ((8,), "zeros")}, rng=0)
    assert layer.w.shape == (8, 4) and np.all(layer.b.data == 0)
    assert "tanh(x[n,i] * w[o,i] + b[o])" in repr(layer)
    assert "dw[o,i]" in layer.adjoint()
    compare(layer, TorchTanhLayer(), image((5, 4)))


def test_custom_program_with_sizes_and_constants():
    # a 1-D 'same' convolution with a fixed (not trained) smoothing kernel and a learned gain
    layer = nn.Program("y[n,i] = g * x[n,i+j-1] * f[j]   where i < L, x: replicate",
                       params={"g": 2.0}, constants={"f": [0.25, 0.5, 0.25]}, sizes={"L": 6},
                       dtype="float64")
    x = image((2, 6))
    xt = torch.from_numpy(x).requires_grad_(True)
    g = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    padded = torch.nn.functional.pad(xt[:, None], (1, 1), mode="replicate")[:, 0]
    yt = g * (0.25 * padded[:, :-2] + 0.5 * padded[:, 1:-1] + 0.25 * padded[:, 2:])
    np.testing.assert_allclose(layer(x), yt.detach().numpy(), rtol=TOL)
    dy = image((2, 6), 1)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=TOL)
    np.testing.assert_allclose(layer.g.grad, g.grad.numpy(), rtol=TOL)
    assert "f" in layer.state_dict() and "f" not in dict(layer.named_parameters())
