"""tensorc.nn containers: parameters, state dicts, .npz save/load, train/eval modes, dtypes,
printing, initializers, and the errors a user sees for wrong inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tensorc as tc
from tensorc import nn


def small_cnn(rng=0):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Dropout(0.5, rng=rng), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3, rng=rng))


def test_parameters_names_and_counts_follow_pytorch():
    model = small_cnn()
    names = [name for name, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "6.weight", "6.bias"]
    assert model.num_parameters() == 4 * 9 + 4 + 4 + 4 + 64 * 3 + 3
    state = model.state_dict()
    assert {"1.running_mean", "1.running_var", "1.num_batches_tracked"} <= set(state)
    reference = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                    torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Dropout(0.5),
                                    torch.nn.Flatten(), torch.nn.Linear(64, 3))
    assert set(state) == set(reference.state_dict())
    for name, value in reference.state_dict().items():
        assert state[name].shape == tuple(value.shape), name


def test_default_dtype_is_float32_and_to_converts():
    model = small_cnn()
    assert all(p.dtype == np.float32 for p in model.parameters())
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    assert model(x).dtype == np.float32
    model.to("float64")
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert model[1].running_mean.dtype == np.float64
    assert model[1].num_batches_tracked.dtype == np.int64
    assert model(x.astype(np.float64)).dtype == np.float64


def test_save_and_load_round_trip(tmp_path):
    model = small_cnn(rng=0)
    x = np.random.default_rng(1).standard_normal((4, 1, 8, 8)).astype(np.float32)
    model(x)  # updates the running statistics
    path = tmp_path / "model.npz"
    model.save(str(path))
    with np.load(path, allow_pickle=False) as archive:  # plain arrays, no pickled objects
        assert set(archive.files) == set(model.state_dict())
    other = small_cnn(rng=5)
    assert not np.allclose(other[0].weight.data, model[0].weight.data)
    other.load(str(path))
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[name], value)
    model.eval()
    other.eval()
    np.testing.assert_array_equal(model(x), other(x))


def test_load_state_dict_errors_name_the_mismatch():
    model = small_cnn()
    state = model.state_dict()
    del state["0.bias"]
    state["extra"] = np.zeros(1)
    with pytest.raises(nn.StateDictError, match=r"missing 0\.bias.*unexpected extra"):
        model.load_state_dict(state)
    state = model.state_dict()
    state["6.weight"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"'6\.weight' has shape \(2, 2\)"):
        model.load_state_dict(state)


def test_load_state_dict_from_torch():
    reference = torch.nn.Linear(4, 2)
    layer = nn.Linear(4, 2)
    layer.load_state_dict(reference.state_dict())
    np.testing.assert_allclose(layer.weight.data, reference.weight.detach().numpy())


def test_train_and_eval_modes_reach_every_layer():
    model = small_cnn()
    assert all(m.training for m in model.modules())
    model.eval()
    assert not any(m.training for m in model.modules())
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    first, second = model(x), model(x)
    np.testing.assert_array_equal(first, second)  # no dropout, running statistics
    assert "running_mean" in model[1].program and model[4](x) is not None
    model.train()
    assert all(m.training for m in model.modules())
    assert "mu[c] = mean[n,s](x[n,c,s])" in model[1].program


def test_every_layer_shows_its_program():
    text = repr(small_cnn())
    assert "y[n,o,h,w] = x[n,c,h+u-1,w+v-1] * weight[o,c,u,v] + bias[o]   where h < Ho, w < Wo, x: zero" in text
    assert "max[u,v](x[n,c,2*h+u,2*w+v])" in text
    assert "# train" in text and "# eval" in text  # BatchNorm's two programs
    assert "y[i] = x[i] * mask[i] / 0.5" in text
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, padding_mode="reflect")
    assert conv.program == ("y[n,o,h,w] = x[n,c,2*h+u-1,2*w+v-1] * weight[o,c,u,v] + bias[o]"
                            "   where h < Ho, w < Wo, x: reflect")
    assert str(tc.parse(conv.program))  # a valid program
    assert "dx[n,c,2*h+u-1,2*w+v-1] +=" in conv.adjoint()


def test_backward_accumulates_until_zero_grad():
    layer = nn.Linear(3, 2, rng=0).to("float64")
    x = np.ones((4, 3))
    layer(x)
    layer.backward(np.ones((4, 2)))
    once = layer.weight.grad.copy()
    layer.backward(np.ones((4, 2)))
    np.testing.assert_allclose(layer.weight.grad, 2 * once)
    layer.zero_grad()
    assert layer.weight.grad is None


def test_first_layer_skips_the_input_gradient():
    model = nn.Sequential(nn.Linear(3, 2, rng=0), nn.ReLU())
    model(np.ones((2, 3)))
    assert model.backward(np.ones((2, 2)), input_grad=False) is None
    assert model[0].weight.grad is not None


def test_backward_reads_the_forward_output_instead_of_recomputing_it():
    """A max-pool's adjoint reads the pooled output; the layer feeds it the one its forward
    returned, so the backward kernel computes no max of its own, and agrees with torch."""
    pool = nn.MaxPool2d(2).to("float64")
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    y = pool(x)
    dx = pool.backward(np.ones_like(y))
    (kernel,) = [k for key, k in pool._kernels.items() if key[1] is not None]
    assert "y" in kernel.inputs and "max over" not in str(kernel.plan)
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(xt, 2).sum().backward()
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12)


# ---- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("layer, shape, message", [
    (nn.Conv2d(3, 8, 3), (2, 4, 8, 8), r"Conv2d\(3, 8\) expects inputs of shape \[N, C, H, W\] with C = 3, got \(2, 4, 8, 8\)"),
    (nn.Conv2d(3, 8, 3), (2, 3, 8), r"expects inputs of shape \[N, C, H, W\]"),
    (nn.Conv2d(3, 8, 5), (2, 3, 4, 4), "too small for kernel"),
    (nn.Linear(5, 2), (4, 3), r"Linear\(5, 2\) expects inputs of shape \[\.\.\., 5\], got \(4, 3\)"),
    (nn.MaxPool2d(2), (4, 3), "expects inputs with 4 dimensions"),
    (nn.BatchNorm2d(3), (2, 4, 5, 5), r"BatchNorm2d\(3\) expects inputs"),
    (nn.LayerNorm(6), (2, 5), r"ending in \[6\]"),
    (nn.GLU(), (2, 5), "must be even"),
])
def test_wrong_input_shapes_raise_clear_errors(layer, shape, message):
    with pytest.raises(nn.InputShapeError, match=message) as info:
        layer(np.zeros(shape))
    assert isinstance(info.value, tc.TensorcError) and isinstance(info.value, ValueError)


def test_loss_target_errors():
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.2"):
        nn.CrossEntropyLoss()(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="3 labels"):
        nn.CrossEntropyLoss()(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="differ"):
        nn.MSELoss()(np.zeros((2, 3)), np.zeros((3, 2)))


def test_program_errors_are_tensorc_errors():
    with pytest.raises(tc.TensorcError):
        nn.Program("y[n,o] = x[n,i] * w[o,i", params={"w": np.zeros((2, 2))})
    with pytest.raises(tc.TensorcError, match="outputs"):
        nn.Program("a[i] = x[i]\nb[i] = x[i]")


def test_backward_before_forward_is_an_error():
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Linear(2, 2).backward(np.zeros((1, 2)))


# ---- losses ------------------------------------------------------------------------------

def test_cross_entropy_with_labels_and_probabilities_matches_torch():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 5)) * 3
    labels = rng.integers(0, 5, size=6)
    probabilities = rng.dirichlet(np.ones(5), size=6)
    for target in (labels, probabilities, np.eye(5)[labels]):
        criterion = nn.CrossEntropyLoss()
        zt = torch.from_numpy(logits).requires_grad_(True)
        expected = torch.nn.functional.cross_entropy(zt, torch.from_numpy(target))
        expected.backward()
        assert math.isclose(criterion(logits, target), expected.item(), rel_tol=1e-12)
        np.testing.assert_allclose(criterion.backward(), zt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_mse_matches_torch():
    rng = np.random.default_rng(0)
    prediction, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    zt = torch.from_numpy(prediction).requires_grad_(True)
    expected = torch.nn.functional.mse_loss(zt, torch.from_numpy(target))
    expected.backward()
    criterion = nn.MSELoss()
    assert math.isclose(criterion(prediction, target), expected.item(), rel_tol=1e-12)
    np.testing.assert_allclose(criterion.backward(), zt.grad.numpy(), rtol=1e-12)


# ---- initializers ------------------------------------------------------------------------

def torch_bound(function, shape, **options):
    """The largest |value| torch's initializer can draw, from torch's own fan and gain."""
    fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    if function == "kaiming_uniform":
        gain = torch.nn.init.calculate_gain(options.get("nonlinearity", "leaky_relu"),
                                            options.get("a", 0))
        return gain * math.sqrt(3.0 / fan_in)
    return options.get("gain", 1.0) * math.sqrt(6.0 / (fan_in + fan_out))


@pytest.mark.parametrize("name, options", [
    ("kaiming_uniform", {}), ("kaiming_uniform", {"a": math.sqrt(5)}),
    ("kaiming_uniform", {"nonlinearity": "relu"}), ("xavier_uniform", {}),
    ("xavier_uniform", {"gain": 2.0}),
])
def test_uniform_initializers_have_torch_bounds(name, options):
    shape = (64, 32, 3, 3)
    values = nn.init.INITIALIZERS[name](shape, rng=0, dtype="float64", **options)
    bound = torch_bound(name, shape, **options)
    assert values.shape == shape
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.99 * bound


@pytest.mark.parametrize("name, torch_init, options", [
    ("kaiming_normal", torch.nn.init.kaiming_normal_, {"nonlinearity": "relu"}),
    ("kaiming_normal", torch.nn.init.kaiming_normal_, {"mode": "fan_out"}),
    ("xavier_normal", torch.nn.init.xavier_normal_, {}),
])
def test_normal_initializers_have_torch_std(name, torch_init, options):
    shape = (128, 64, 3, 3)
    ours = nn.init.INITIALIZERS[name](shape, rng=0, dtype="float64", **options)
    theirs = torch_init(torch.empty(shape, dtype=torch.float64), **options).numpy()
    assert abs(ours.std() / theirs.std() - 1) < 0.02
    assert abs(ours.mean()) < 0.01 * theirs.std() * 10


def test_default_linear_and_conv_init_match_pytorch_ranges():
    """PyTorch's defaults draw weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    torch.manual_seed(0)
    for ours, theirs in [(nn.Linear(300, 200, rng=0), torch.nn.Linear(300, 200)),
                         (nn.Conv2d(16, 32, 5, rng=0), torch.nn.Conv2d(16, 32, 5))]:
        fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(theirs.weight)
        bound = 1 / math.sqrt(fan_in)
        for name in ("weight", "bias"):
            a = getattr(ours, name).data
            b = getattr(theirs, name).detach().numpy()
            assert a.shape == b.shape and a.dtype == b.dtype
            assert np.abs(a).max() <= bound * (1 + 1e-6) and np.abs(b).max() <= bound * (1 + 1e-6)
        weight = ours.weight.data
        assert np.abs(weight).max() > 0.99 * bound
        assert abs(weight.std() / theirs.weight.detach().numpy().std() - 1) < 0.05


def test_manual_seed_makes_layers_reproducible():
    nn.manual_seed(3)
    first = nn.Linear(4, 4).weight.data
    nn.manual_seed(3)
    np.testing.assert_array_equal(nn.Linear(4, 4).weight.data, first)


def test_sequential_runs_a_relu_before_a_max_pool_after_it_with_the_same_gradients():
    """max(relu(a), relu(b)) == relu(max(a, b)): Sequential pools first and applies the
    ReLU to a quarter of the elements. Outputs and input gradients equal the declared
    order's exactly, on data full of ties, zeros and all-negative windows."""
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.ReLU(), nn.ReLU(), nn.MaxPool2d(2),
                          nn.ReLU(), nn.AvgPool2d(2), nn.LeakyReLU(), nn.MaxPool2d(1))
    assert [type(m).__name__ for m in model.run_order()] == [
        "MaxPool2d", "ReLU", "ReLU", "MaxPool2d", "ReLU", "ReLU", "AvgPool2d", "LeakyReLU",
        "MaxPool2d"]
    assert [type(m).__name__ for m in model] == [  # printing and state keep the declared order
        "ReLU", "MaxPool2d", "ReLU", "ReLU", "MaxPool2d", "ReLU", "AvgPool2d", "LeakyReLU",
        "MaxPool2d"]
    pair = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2, padding=1)).to("float64")
    relu, pool = nn.ReLU().to("float64"), nn.MaxPool2d(2, padding=1).to("float64")
    rng = np.random.default_rng(10)
    x = rng.integers(-2, 3, size=(2, 3, 7, 7)).astype(np.float64)
    y = pair(x)
    np.testing.assert_array_equal(y, pool(relu(x)))
    dy = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(pair.backward(dy), relu.backward(pool.backward(dy)))
    # and PyTorch's, where no window holds a tie
    x = rng.permutation(2 * 3 * 7 * 7).reshape(2, 3, 7, 7) - 40.0
    xt = torch.from_numpy(x).requires_grad_()
    yt = torch.nn.functional.max_pool2d(torch.relu(xt), 2, padding=1)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(pair(x), yt.detach().numpy())
    np.testing.assert_allclose(pair.backward(dy), xt.grad.numpy(), rtol=1e-12, atol=0)
