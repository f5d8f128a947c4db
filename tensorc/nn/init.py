"""Initializers: Kaiming (He) and Xavier (Glorot), with PyTorch's fans, gains and defaults.

Every initializer takes a shape and returns a new array; `rng` is a numpy Generator, a
seed, or None for the package's generator (reseed it with `manual_seed`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "manual_seed", "generator", "fans", "calculate_gain", "uniform", "normal", "zeros", "ones",
    "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "default_weight",
    "default_bias", "INITIALIZERS",
]

_GENERATOR = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Reseed the generator layers use when they are given no `rng`."""
    global _GENERATOR
    _GENERATOR = np.random.default_rng(seed)


def generator(rng: Any = None) -> np.random.Generator:
    if rng is None:
        return _GENERATOR
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) as PyTorch computes them: [out, in, *kernel] weights."""
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a weight with at least 2 dimensions, "
                         f"got shape {tuple(shape)}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (torch.nn.init.calculate_gain)."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                        "conv_transpose2d", "conv_transpose3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unknown nonlinearity '{nonlinearity}'; expected linear, sigmoid, tanh, "
                     "relu, leaky_relu, selu or a conv name")


def uniform(shape: tuple[int, ...], low: float = 0.0, high: float = 1.0, *, rng: Any = None,
            dtype: Any = "float32") -> np.ndarray:
    return generator(rng).uniform(low, high, size=shape).astype(dtype)


def normal(shape: tuple[int, ...], mean: float = 0.0, std: float = 1.0, *, rng: Any = None,
           dtype: Any = "float32") -> np.ndarray:
    return generator(rng).normal(mean, std, size=shape).astype(dtype)


def zeros(shape: tuple[int, ...], *, rng: Any = None, dtype: Any = "float32") -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


def ones(shape: tuple[int, ...], *, rng: Any = None, dtype: Any = "float32") -> np.ndarray:
    return np.ones(shape, dtype=dtype)


def _fan(shape: tuple[int, ...], mode: str) -> int:
    fan_in, fan_out = fans(shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode is 'fan_in' or 'fan_out', not {mode!r}")
    return fan_in if mode == "fan_in" else fan_out


def kaiming_uniform(shape: tuple[int, ...], a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", *, rng: Any = None,
                    dtype: Any = "float32") -> np.ndarray:
    """U(-b, b) with b = gain * sqrt(3 / fan) (He et al. 2015)."""
    bound = math.sqrt(3.0) * calculate_gain(nonlinearity, a) / math.sqrt(_fan(shape, mode))
    return uniform(shape, -bound, bound, rng=rng, dtype=dtype)


def kaiming_normal(shape: tuple[int, ...], a: float = 0.0, mode: str = "fan_in",
                   nonlinearity: str = "leaky_relu", *, rng: Any = None,
                   dtype: Any = "float32") -> np.ndarray:
    """N(0, std^2) with std = gain / sqrt(fan)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(shape, mode))
    return normal(shape, 0.0, std, rng=rng, dtype=dtype)


def xavier_uniform(shape: tuple[int, ...], gain: float = 1.0, *, rng: Any = None,
                   dtype: Any = "float32") -> np.ndarray:
    """U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out)) (Glorot and Bengio 2010)."""
    fan_in, fan_out = fans(shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform(shape, -bound, bound, rng=rng, dtype=dtype)


def xavier_normal(shape: tuple[int, ...], gain: float = 1.0, *, rng: Any = None,
                  dtype: Any = "float32") -> np.ndarray:
    fan_in, fan_out = fans(shape)
    return normal(shape, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), rng=rng, dtype=dtype)


def default_weight(shape: tuple[int, ...], *, rng: Any = None,
                   dtype: Any = "float32") -> np.ndarray:
    """PyTorch's default for Linear and Conv weights: kaiming_uniform with a = sqrt(5),
    that is U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return kaiming_uniform(shape, a=math.sqrt(5.0), rng=rng, dtype=dtype)


def default_bias(shape: tuple[int, ...], fan_in: int, *, rng: Any = None,
                 dtype: Any = "float32") -> np.ndarray:
    """PyTorch's default for Linear and Conv biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return uniform(shape, -bound, bound, rng=rng, dtype=dtype)


INITIALIZERS: dict[str, Callable[..., np.ndarray]] = {
    "zeros": zeros, "ones": ones, "uniform": uniform, "normal": normal,
    "kaiming_uniform": kaiming_uniform, "kaiming_normal": kaiming_normal,
    "he_uniform": kaiming_uniform, "he_normal": kaiming_normal,
    "xavier_uniform": xavier_uniform, "xavier_normal": xavier_normal,
    "glorot_uniform": xavier_uniform, "glorot_normal": xavier_normal,
    "default": default_weight,
}
