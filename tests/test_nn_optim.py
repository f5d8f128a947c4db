"""tensorc.nn optimizers against torch.optim: the same gradients for several steps must
give the same parameters (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tensorc import nn

CASES = [
    (nn.SGD, torch.optim.SGD, dict(lr=0.1)),
    (nn.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    (nn.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3)),
    (nn.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True)),
    (nn.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    (nn.Adam, torch.optim.Adam, dict(lr=0.01)),
    (nn.Adam, torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    (nn.Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True)),
    (nn.AdamW, torch.optim.AdamW, dict(lr=0.01)),
    (nn.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
]


@pytest.mark.parametrize("ours, theirs, options", CASES,
                         ids=[f"{c[0].__name__}-{c[2]}" for c in CASES])
def test_optimizer_matches_torch(ours, theirs, options):
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (5,), ()]
    values = [rng.standard_normal(s) for s in shapes]
    params = [nn.Parameter(v.copy()) for v in values]
    tensors = [torch.tensor(v, requires_grad=True) for v in values]
    optimizer, reference = ours(params, **options), theirs(tensors, **options)
    for step in range(6):
        gradients = [rng.standard_normal(s) for s in shapes]
        optimizer.zero_grad()
        reference.zero_grad()
        for p, t, g in zip(params, tensors, gradients):
            if step == 3 and p.shape == (5,):
                continue  # a parameter without a gradient is skipped on both sides
            p.accumulate(g)
            t.grad = torch.from_numpy(g.copy())
        optimizer.step()
        reference.step()
        for p, t in zip(params, tensors):
            np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_optimizer_errors():
    with pytest.raises(ValueError, match="empty"):
        nn.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        nn.SGD([nn.Parameter(np.zeros(2))], lr=0.1, nesterov=True)
