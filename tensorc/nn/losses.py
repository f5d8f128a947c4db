"""Losses: softmax cross-entropy and mean squared error, each a program with its gradient.

A loss's forward runs `tc.compile_grad(program, wrt=[prediction])`: one kernel returns
the scalar loss and its gradient with respect to the prediction (a scalar output needs no
cotangent), so `backward()` returns that gradient without running anything.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import Kernel, compile_grad
from .module import InputShapeError, Module

__all__ = ["Loss", "CrossEntropyLoss", "MSELoss"]


class Loss(Module):
    """Base class: `loss = criterion(prediction, target)` (a float); `criterion.backward()`
    returns d loss / d prediction."""

    program = ""
    prediction = "z"
    #: program inputs that are copies of the prediction (their gradients add to its own)
    copies: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.programs = {"forward": self.program}
        self._kernel: Kernel | None = None
        self._gradient: np.ndarray | None = None

    def feed(self, prediction: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def forward(self, prediction: Any, target: Any) -> float:
        prediction = np.asarray(prediction)
        arrays = self.feed(prediction, np.asarray(target))
        if self._kernel is None:
            self._kernel = compile_grad(self.program, wrt=[self.prediction, *self.copies])
        results = self._kernel(**{name: arrays[name] for name in self._kernel.inputs})
        gradient = results[f"d{self.prediction}"]
        for name in self.copies:
            gradient = gradient + results[f"d{name}"]
        self._gradient = gradient.reshape(prediction.shape)
        return float(results["loss"])

    def backward(self, grad_output: Any = 1.0, input_grad: bool = True) -> np.ndarray | None:
        if self._gradient is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        if not input_grad:
            return None
        return self._gradient if np.all(np.asarray(grad_output) == 1) \
            else self._gradient * grad_output


class CrossEntropyLoss(Loss):
    """Mean softmax cross-entropy of logits [N, K] against integer labels [N] or class
    probabilities / one-hot rows [N, K] (torch.nn.CrossEntropyLoss)."""

    # log-softmax is (z - m) - log(sum exp(z - m)): subtracting m first keeps it exact for
    # large logits (lse - z would lose |z| * eps). The target term reads zt, z where the
    # target weight is nonzero and 0 elsewhere, so that a masked (-inf) logit of another
    # class costs 0 * finite rather than 0 * inf = nan; its gradient is added to z's.
    program = ("m[n] = max[k](z[n,k])\n"
               "ls[n] = log(sum[k](exp(z[n,k] - m[n])))\n"
               "loss = mean[n](sum[k](t[n,k] * (ls[n] - (zt[n,k] - m[n]))))")
    copies = ("zt",)

    def feed(self, prediction: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
        if prediction.ndim != 2:
            raise InputShapeError(f"CrossEntropyLoss expects logits [N, K], got {prediction.shape}")
        n, k = prediction.shape
        dtype = prediction.dtype if prediction.dtype.kind == "f" else np.float64
        if target.ndim == 1 and target.dtype.kind in "iub":
            if target.shape[0] != n:
                raise InputShapeError(f"CrossEntropyLoss: {n} rows of logits but {target.shape[0]} "
                                      "labels")
            if n and (target.min() < 0 or target.max() >= k):
                raise InputShapeError(f"CrossEntropyLoss: labels must be in 0..{k - 1}, got "
                                      f"values from {target.min()} to {target.max()}")
            onehot = np.zeros((n, k), dtype=dtype)
            onehot[np.arange(n), target] = 1
            target = onehot
        elif target.shape != prediction.shape:
            raise InputShapeError(f"CrossEntropyLoss: targets are integer labels [N] or "
                                  f"probabilities {list(prediction.shape)}, got {target.shape} "
                                  f"({target.dtype})")
        target = target.astype(dtype, copy=False)
        return {"z": prediction, "t": target, "zt": np.where(target != 0, prediction, 0)}


class MSELoss(Loss):
    """Mean of squared differences over all elements (torch.nn.MSELoss)."""

    program = "loss = mean[i]((z[i] - t[i])^2)"

    def feed(self, prediction: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
        if target.shape != prediction.shape:
            raise InputShapeError(f"MSELoss: prediction {prediction.shape} and target "
                                  f"{target.shape} differ")
        dtype = prediction.dtype if prediction.dtype.kind == "f" else np.float64
        return {"z": prediction.reshape(-1), "t": target.reshape(-1).astype(dtype, copy=False)}
