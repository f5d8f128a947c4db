"""Activations: elementwise programs on a flat view of the input, softmax, GLU, Maxout, PReLU."""

from __future__ import annotations

from typing import Any

import numpy as np

from .module import InputShapeError, Parameter
from .program import ProgramModule

__all__ = [
    "Elementwise", "ReLU", "LeakyReLU", "PReLU", "ELU", "SiLU", "Swish", "GELU", "Mish",
    "Sigmoid", "Tanh", "Softplus", "Softmax", "LogSoftmax", "GLU", "Maxout",
]


def _number(value: float) -> str:
    return repr(float(value))


class Elementwise(ProgramModule):
    """A program `y[i] = f(x[i])` applied to the input seen as a flat vector (any shape)."""

    def __init__(self, expression: str) -> None:
        """`expression` is the right-hand side in terms of `x[i]`, e.g. "relu(x[i])"."""
        super().__init__(f"y[i] = {expression}")

    def feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {**super().feed(x), "x": x.reshape(-1)}

    def output_shape(self, y: np.ndarray, x: np.ndarray) -> tuple[int, ...]:
        return x.shape


class ReLU(Elementwise):
    commutes_with_max = True  # relu(x) is x or 0: ties among the values stay ties

    def __init__(self) -> None:
        super().__init__("relu(x[i])")


class LeakyReLU(Elementwise):
    """x for x > 0, negative_slope * x otherwise."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        self.negative_slope = negative_slope
        slope = _number(negative_slope)
        super().__init__(f"max({slope}*x[i], x[i])" if 0 <= negative_slope <= 1
                         else f"relu(x[i]) - {slope}*relu(-x[i])")

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class PReLU(ProgramModule):
    """max(x, 0) + a * min(x, 0) with a learned slope `weight`: one scalar (the default), or
    one per channel (dimension 1) when num_parameters > 1."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, *,
                 dtype: Any = "float32") -> None:
        self.num_parameters = num_parameters
        if num_parameters == 1:
            program = "y[i] = max(x[i], 0) + weight * min(x[i], 0)"
        else:
            program = "y[n,c,s] = max(x[n,c,s], 0) + weight[c] * min(x[n,c,s], 0)"
        super().__init__(program)
        self.weight = Parameter(np.full(num_parameters, init, dtype=dtype))

    def check_inputs(self, x: np.ndarray) -> None:
        if self.num_parameters > 1 and (x.ndim < 2 or x.shape[1] != self.num_parameters):
            raise InputShapeError(f"PReLU({self.num_parameters}) expects inputs [N, "
                                  f"{self.num_parameters}, ...], got {x.shape}")

    def feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self.num_parameters == 1:
            return {"x": x.reshape(-1), "weight": self.weight.data.reshape(())}
        return {"x": x.reshape(x.shape[0], x.shape[1], -1), "weight": self.weight.data}

    def output_shape(self, y: np.ndarray, x: np.ndarray) -> tuple[int, ...]:
        return x.shape

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}"


class ELU(Elementwise):
    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha
        super().__init__("elu(x[i])" if alpha == 1 else
                         f"relu(x[i]) + {_number(alpha)}*expm1(min(x[i], 0))")

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class SiLU(Elementwise):
    """x * sigmoid(x), also called Swish."""

    def __init__(self) -> None:
        super().__init__("silu(x[i])")


Swish = SiLU


class GELU(Elementwise):
    """x * Phi(x) (approximate='none', the erf form) or its tanh approximation."""

    def __init__(self, approximate: str = "none") -> None:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate is 'none' or 'tanh', not {approximate!r}")
        self.approximate = approximate
        super().__init__("gelu(x[i])" if approximate == "none" else
                         "0.5*x[i]*(1 + tanh(0.7978845608028654*(x[i] + 0.044715*x[i]^3)))")


class Mish(Elementwise):
    def __init__(self) -> None:
        super().__init__("x[i] * tanh(softplus(x[i]))")


class Sigmoid(Elementwise):
    def __init__(self) -> None:
        super().__init__("sigmoid(x[i])")


class Tanh(Elementwise):
    def __init__(self) -> None:
        super().__init__("tanh(x[i])")


class Softplus(Elementwise):
    def __init__(self) -> None:
        super().__init__("softplus(x[i])")


class _AlongDim(ProgramModule):
    """A program on the input seen as [A, K, B], K being dimension `dim` (a reshape)."""

    def __init__(self, program: str, dim: int) -> None:
        super().__init__(program)
        self.dim = dim

    def _split(self, x: np.ndarray) -> tuple[int, int, int]:
        if x.ndim == 0:
            raise InputShapeError(f"{type(self).__name__} needs at least one dimension")
        dim = self.dim % x.ndim
        return int(np.prod(x.shape[:dim])), x.shape[dim], int(np.prod(x.shape[dim + 1:]))

    def feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"x": x.reshape(self._split(x))}

    def output_shape(self, y: np.ndarray, x: np.ndarray) -> tuple[int, ...]:
        return x.shape

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Softmax(_AlongDim):
    """exp(x) / sum(exp(x)) along `dim`, computed stably (the maximum is subtracted)."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__("m[a,b] = max[k](x[a,k,b])\n"
                         "e[a,k,b] = exp(x[a,k,b] - m[a,b])\n"
                         "y[a,k,b] = e[a,k,b] / sum[k](e[a,k,b])", dim)


class LogSoftmax(_AlongDim):
    def __init__(self, dim: int = -1) -> None:
        super().__init__("m[a,b] = max[k](x[a,k,b])\n"
                         "y[a,k,b] = x[a,k,b] - m[a,b] - log(sum[k](exp(x[a,k,b] - m[a,b])))",
                         dim)


class GLU(_AlongDim):
    """First half * sigmoid(second half) along `dim` (torch.nn.GLU)."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__("y[a,j,b] = x[a,0,j,b] * sigmoid(x[a,1,j,b])", dim)

    def check_inputs(self, x: np.ndarray) -> None:
        if x.ndim == 0 or x.shape[self.dim % x.ndim] % 2:
            raise InputShapeError(f"GLU(dim={self.dim}) halves dimension {self.dim}, which must "
                                  f"be even; got input {x.shape}")

    def feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        before, size, after = self._split(x)
        return {"x": x.reshape(before, 2, size // 2, after)}

    def output_shape(self, y: np.ndarray, x: np.ndarray) -> tuple[int, ...]:
        dim = self.dim % x.ndim
        return x.shape[:dim] + (x.shape[dim] // 2,) + x.shape[dim + 1:]


class Maxout(ProgramModule):
    """The maximum over groups of `pieces` consecutive channels.

    [N, C*pieces, ...] -> [N, C, ...]
    """

    def __init__(self, pieces: int) -> None:
        super().__init__("y[n,c,s] = max[j](x[n,c,j,s])")
        self.pieces = pieces

    def check_inputs(self, x: np.ndarray) -> None:
        if x.ndim < 2 or x.shape[1] % self.pieces:
            raise InputShapeError(f"Maxout({self.pieces}) needs [N, C, ...] with C a multiple of "
                                  f"{self.pieces}, got {x.shape}")

    def feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"x": x.reshape(x.shape[0], x.shape[1] // self.pieces, self.pieces, -1)}

    def output_shape(self, y: np.ndarray, x: np.ndarray) -> tuple[int, ...]:
        return (x.shape[0], x.shape[1] // self.pieces) + x.shape[2:]

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"
