"""Training with tensorc.nn: the LeNet of issue 4 trained side by side with PyTorch, the
minibatch iterator and the fit() loop."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch

from tensorc import nn


def lenet_tensorc():
    return nn.Sequential(
        nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def lenet_torch():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))


def test_lenet_trains_like_pytorch():
    """Same initial weights, same batches, float64, SGD with momentum: 50 losses agree."""
    torch.manual_seed(0)
    reference = lenet_torch().double()
    model = lenet_tensorc().to("float64")
    model.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})
    rng = np.random.default_rng(0)
    images = rng.standard_normal((80, 1, 28, 28))
    labels = rng.integers(0, 10, size=80)
    optimizer = nn.SGD(model.parameters(), lr=0.02, momentum=0.9)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.02, momentum=0.9)
    loss_function, reference_loss = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    ours, theirs = [], []
    start = time.perf_counter()
    batches = [batch for epoch in range(5) for batch in
               nn.minibatches(images, labels, batch_size=8, seed=epoch)]
    assert len(batches) == 50
    for xb, yb in batches:
        loss, _ = nn.train_step(model, loss_function, optimizer, xb, yb)
        ours.append(loss)
        reference_optimizer.zero_grad()
        torch_loss = reference_loss(reference(torch.from_numpy(xb)), torch.from_numpy(yb))
        torch_loss.backward()
        reference_optimizer.step()
        theirs.append(torch_loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert ours[-1] < ours[0]  # it learned something (memorizing 80 random labels)
    for name, parameter in model.named_parameters():
        np.testing.assert_allclose(parameter.data, reference.state_dict()[name].numpy(),
                                   rtol=1e-6, atol=1e-9, err_msg=name)
    assert time.perf_counter() - start < 60


def test_minibatches_cover_every_sample_once_and_are_reproducible():
    x = np.arange(10)
    y = np.arange(10) * 2
    batches = list(nn.minibatches(x, y, batch_size=3, seed=1))
    assert [len(b[0]) for b in batches] == [3, 3, 3, 1]
    seen = np.concatenate([b[0] for b in batches])
    assert sorted(seen) == list(range(10))
    assert all(np.array_equal(b[1], 2 * b[0]) for b in batches)
    again = np.concatenate([b[0] for b in nn.minibatches(x, y, batch_size=3, seed=1)])
    np.testing.assert_array_equal(seen, again)
    assert [len(b[0]) for b in nn.minibatches(x, batch_size=3, drop_last=True)] == [3, 3, 3]
    ordered = np.concatenate([b[0] for b in nn.minibatches(x, batch_size=4, shuffle=False)])
    np.testing.assert_array_equal(ordered, x)
    with pytest.raises(ValueError, match="differ in length"):
        list(nn.minibatches(x, y[:5]))


def test_fit_learns_a_separable_problem_and_prints_progress():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 2)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = nn.Sequential(nn.Linear(2, 16, rng=0), nn.Tanh(), nn.Linear(16, 2, rng=1))
    stream = io.StringIO()
    history = nn.fit(model, nn.CrossEntropyLoss(), nn.Adam(model.parameters(), lr=0.05), x, y,
                     epochs=5, batch_size=20, validation=(x, y), stream=stream)
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history["loss"]) == 5 and history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] > 0.95
    text = stream.getvalue()
    assert text.count("\n") == 5 and "epoch 5/5" in text and "val_acc" in text and "10/10" in text
    assert model.parameters()[0].data.dtype == np.float32
    assert nn.evaluate(model, nn.CrossEntropyLoss(), x, y)["accuracy"] > 0.95


def test_fit_with_mse_regression():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3))
    y = x @ np.array([[1.0], [-2.0], [0.5]])
    model = nn.Linear(3, 1, rng=0).to("float64")
    history = nn.fit(model, nn.MSELoss(), nn.SGD(model.parameters(), lr=0.1), x, y, epochs=20,
                     batch_size=16, verbose=False)
    assert set(history) == {"loss"}
    assert history["loss"][-1] < 1e-3
