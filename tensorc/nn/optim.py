"""Optimizers with torch.optim's exact update rules: SGD (momentum, dampening, Nesterov,
weight decay), Adam and AdamW (optionally AMSGrad)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from .module import Parameter

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


class Optimizer:
    """Holds parameters and per-parameter state; `step()` updates `.data` in place."""

    def __init__(self, parameters: Iterable[Parameter], lr: float) -> None:
        self.parameters = list(parameters)
        if not self.parameters:
            raise ValueError("the optimizer got an empty parameter list")
        if not all(isinstance(p, Parameter) for p in self.parameters):
            raise TypeError("optimizers take tensorc.nn Parameters (model.parameters())")
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        self.lr = lr
        self.state: dict[int, dict[str, np.ndarray | int]] = {}

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    def step(self) -> None:
        for parameter in self.parameters:
            if parameter.grad is not None:
                self._update(parameter, self.state.setdefault(id(parameter), {}))

    def _update(self, parameter: Parameter, state: dict) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """torch.optim.SGD: g = grad + wd*p; buf = g (first step) else momentum*buf + (1-dampening)*g;
    g = g + momentum*buf (Nesterov) or buf; p -= lr*g."""

    def __init__(self, parameters: Iterable[Parameter], lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(parameters, lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and zero dampening")
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    def _update(self, parameter: Parameter, state: dict) -> None:
        gradient = parameter.grad
        if self.weight_decay:
            gradient = gradient + self.weight_decay * parameter.data
        if self.momentum:
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = np.array(gradient, copy=True)
            else:
                buffer *= self.momentum
                buffer += (1 - self.dampening) * gradient if self.dampening else gradient
            gradient = gradient + self.momentum * buffer if self.nesterov else buffer
        parameter.data -= self.lr * gradient


class Adam(Optimizer):
    """torch.optim.Adam (L2 weight decay added to the gradient), optionally AMSGrad."""

    decoupled = False

    def __init__(self, parameters: Iterable[Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        super().__init__(parameters, lr)
        self.betas, self.eps, self.weight_decay, self.amsgrad = betas, eps, weight_decay, amsgrad

    def _update(self, parameter: Parameter, state: dict) -> None:
        beta1, beta2 = self.betas
        gradient = parameter.grad
        if self.weight_decay:
            if self.decoupled:
                parameter.data *= 1 - self.lr * self.weight_decay
            else:
                gradient = gradient + self.weight_decay * parameter.data
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(parameter.data)
            state["exp_avg_sq"] = np.zeros_like(parameter.data)
            if self.amsgrad:
                state["max_exp_avg_sq"] = np.zeros_like(parameter.data)
        state["step"] += 1
        step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        exp_avg += (1 - beta1) * (gradient - exp_avg)  # torch's lerp
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * gradient * gradient
        step_size = self.lr / (1 - beta1 ** step)
        correction2_sqrt = math.sqrt(1 - beta2 ** step)
        if self.amsgrad:
            np.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            denominator = np.sqrt(state["max_exp_avg_sq"]) / correction2_sqrt + self.eps
        else:
            denominator = np.sqrt(exp_avg_sq) / correction2_sqrt + self.eps
        parameter.data -= step_size * exp_avg / denominator


class AdamW(Adam):
    """torch.optim.AdamW: weight decay is decoupled (p *= 1 - lr*wd before the Adam step)."""

    decoupled = True

    def __init__(self, parameters: Iterable[Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False) -> None:
        super().__init__(parameters, lr, betas, eps, weight_decay, amsgrad)
