"""Linear, convolution, pooling, normalization, dropout, flatten and residual layers.

Each layer writes its program once, at construction, and keeps it readable: sizes that
depend on the input (the output size of a padded convolution) are size names in `where`
clauses (`where h < Ho`), bound when the kernel is compiled for an input shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ops import canonical_mode
from . import init
from .module import InputShapeError, Module, Parameter
from .program import ProgramModule

__all__ = [
    "Linear", "Conv1d", "Conv2d", "Conv3d", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d",
    "GlobalAvgPool", "Flatten", "Dropout", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "LayerNorm", "RMSNorm", "Residual",
]


def _number(value: float) -> str:
    """A float as program text (1e-05, 0.1)."""
    return repr(float(value))


def _tuple(value: int | Sequence[int], count: int, what: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        return (int(value),) * count
    value = tuple(int(v) for v in value)
    if len(value) != count:
        raise ValueError(f"{what} needs {count} value(s), got {value}")
    return value


def _shape_text(shape: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _window_access(position: str, offset: str, stride: int, dilation: int, pad: int) -> str:
    """The affine read `stride*position + dilation*offset - pad`."""
    text = (f"{stride}*{position}" if stride != 1 else position) + "+" + \
        (f"{dilation}*{offset}" if dilation != 1 else offset)
    return text + (f"-{pad}" if pad > 0 else "")


# Index names: positions of the output and offsets within the window, per spatial rank.
_POSITIONS = {1: ("l",), 2: ("h", "w"), 3: ("d", "h", "w")}
_OFFSETS = {1: ("u",), 2: ("u", "v"), 3: ("t", "u", "v")}
_SIZE_NAMES = {1: ("Lo",), 2: ("Ho", "Wo"), 3: ("Do", "Ho", "Wo")}

# PyTorch's padding_mode names and tensorc's boundary modes (with their aliases).
_TORCH_MODES = {"zeros": "zero"}


def _boundary_mode(mode: str) -> str:
    canonical = canonical_mode(_TORCH_MODES.get(mode, mode))
    if canonical is None:
        raise ValueError(f"unknown padding mode {mode!r}; choose one of zeros, zero, reflect, "
                         "replicate, circular, symmetric")
    return canonical


def _output_length(length: int, kernel: int, stride: int, dilation: int,
                   pad_low: int, pad_high: int) -> int:
    return (length + pad_low + pad_high - dilation * (kernel - 1) - 1) // stride + 1


# ---- Linear ---------------------------------------------------------------------------------

class Linear(ProgramModule):
    """y = x W^T + b over the last dimension (any leading dimensions, seen as one batch)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 dtype: Any = "float32", rng: Any = None) -> None:
        program = "y[n,o] = x[n,i] * weight[o,i]" + (" + bias[o]" if bias else "")
        super().__init__(program)
        self.in_features, self.out_features = in_features, out_features
        generator = init.generator(rng)
        self.weight = Parameter(init.default_weight((out_features, in_features), rng=generator,
                                                    dtype=dtype))
        if bias:
            self.bias = Parameter(init.default_bias((out_features,), in_features, rng=generator,
                                                    dtype=dtype))

    def check_inputs(self, x: np.ndarray) -> None:
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise InputShapeError(f"Linear({self.in_features}, {self.out_features}) expects "
                                  f"inputs of shape [..., {self.in_features}], got {x.shape}")

    def feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {**super().feed(x), "x": x.reshape(-1, self.in_features)}

    def output_shape(self, y: np.ndarray, x: np.ndarray) -> tuple[int, ...]:
        return x.shape[:-1] + (self.out_features,)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}"
                + ("" if "bias" in self._parameters else ", bias=False"))


# ---- convolutions ---------------------------------------------------------------------------

class _ConvNd(ProgramModule):
    dims = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] | str = 0,
                 dilation: int | Sequence[int] = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", *, dtype: Any = "float32", rng: Any = None) -> None:
        dims = self.dims
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.kernel_size = _tuple(kernel_size, dims, "kernel_size")
        self.stride = _tuple(stride, dims, "stride")
        self.dilation = _tuple(dilation, dims, "dilation")
        if isinstance(padding, str):
            if padding == "valid":
                pads = [(0, 0)] * dims
            elif padding == "same":
                if any(s != 1 for s in self.stride):
                    raise ValueError("padding='same' needs stride 1 (as in PyTorch)")
                pads = []
                for k, d in zip(self.kernel_size, self.dilation):
                    total = d * (k - 1)
                    pads.append((total // 2, total - total // 2))
            else:
                raise ValueError(f"padding is an int, a tuple, 'valid' or 'same', not {padding!r}")
        else:
            pads = [(p, p) for p in _tuple(padding, dims, "padding")]
        self.padding = padding if isinstance(padding, str) else tuple(p for p, _ in pads)
        self._pads = tuple(pads)
        self.padding_mode = padding_mode
        mode = _boundary_mode(padding_mode)
        self._layout = ("depthwise" if groups == in_channels == out_channels and groups > 1
                        else "grouped" if groups > 1 else "dense")
        super().__init__(self._make_program(mode, bias))
        generator = init.generator(rng)
        weight_shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = Parameter(init.default_weight(weight_shape, rng=generator, dtype=dtype))
        if bias:
            fan_in = init.fans(weight_shape)[0]
            self.bias = Parameter(init.default_bias((out_channels,), fan_in, rng=generator,
                                                    dtype=dtype))

    def _make_program(self, mode: str, bias: bool) -> str:
        positions, offsets = _POSITIONS[self.dims], _OFFSETS[self.dims]
        reads = [_window_access(p, u, s, d, low)
                 for p, u, s, d, (low, _) in zip(positions, offsets, self.stride, self.dilation,
                                                 self._pads)]
        space, window = ",".join(positions), ",".join(offsets)
        if self._layout == "dense":
            value = f"x[n,c,{','.join(reads)}] * weight[o,c,{window}]"
            target, bias_read = f"y[n,o,{space}]", "bias[o]"
        elif self._layout == "depthwise":
            value = f"x[n,c,{','.join(reads)}] * weight[c,{window}]"
            target, bias_read = f"y[n,c,{space}]", "bias[c]"
        else:  # groups: x seen as [N, G, C/G, ...], weight as [G, O/G, C/G, ...]
            value = f"x[n,g,c,{','.join(reads)}] * weight[g,o,c,{window}]"
            target, bias_read = f"y[n,g,o,{space}]", "bias[g,o]"
        if bias:
            value += f" + {bias_read}"
        where = [f"{p} < {name}" for p, name, (low, high) in
                 zip(positions, _SIZE_NAMES[self.dims], self._pads) if low or high]
        if where:
            where.append(f"x: {mode}")
        return f"{target} = {value}" + (f"   where {', '.join(where)}" if where else "")

    def _output_spatial(self, x: np.ndarray) -> tuple[int, ...]:
        return tuple(_output_length(n, k, s, d, low, high) for n, k, s, d, (low, high) in
                     zip(x.shape[2:], self.kernel_size, self.stride, self.dilation, self._pads))

    def check_inputs(self, x: np.ndarray) -> None:
        name = type(self).__name__
        expected = "[N, C, " + ", ".join(n[0].upper() for n in _SIZE_NAMES[self.dims]) + "]"
        if x.ndim != self.dims + 2 or x.shape[1] != self.in_channels:
            raise InputShapeError(f"{name}({self.in_channels}, {self.out_channels}) expects inputs "
                                  f"of shape {expected} with C = {self.in_channels}, got {x.shape}")
        if any(n < 1 for n in self._output_spatial(x)):
            raise InputShapeError(f"{name}: input {x.shape} is too small for kernel "
                                  f"{self.kernel_size} (dilation {self.dilation}, padding "
                                  f"{self.padding}): the output would be empty")

    def sizes(self, x: np.ndarray) -> dict[str, int]:
        return {name: n for name, n, (low, high) in
                zip(_SIZE_NAMES[self.dims], self._output_spatial(x), self._pads) if low or high}

    def feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        arrays = super().feed(x)
        groups = self.groups
        if self._layout == "depthwise":
            arrays["weight"] = self.weight.data.reshape((self.out_channels,) + self.kernel_size)
        elif self._layout == "grouped":
            arrays["x"] = x.reshape((x.shape[0], groups, -1) + x.shape[2:])
            arrays["weight"] = self.weight.data.reshape(
                (groups, self.out_channels // groups) + self.weight.shape[1:])
            if "bias" in arrays:
                arrays["bias"] = arrays["bias"].reshape(groups, -1)
        return arrays

    def output_shape(self, y: np.ndarray, x: np.ndarray) -> tuple[int, ...]:
        return (x.shape[0], self.out_channels) + self._output_spatial(x)

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if any(s != 1 for s in self.stride):
            text += f", stride={self.stride}"
        if self.padding not in (0, (0,) * self.dims, "valid"):
            text += f", padding={self.padding}"
        if any(d != 1 for d in self.dilation):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if "bias" not in self._parameters:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        return text


class Conv1d(_ConvNd):
    """1-D convolution (cross-correlation) on [N, C, L], PyTorch's arguments and layout."""
    dims = 1


class Conv2d(_ConvNd):
    """2-D convolution on [N, C, H, W]: stride, dilation, padding under any boundary mode
    (padding_mode 'zeros', 'reflect', 'replicate', 'circular' or 'symmetric'), groups."""
    dims = 2


class Conv3d(_ConvNd):
    """3-D convolution on [N, C, D, H, W]."""
    dims = 3


# ---- pooling --------------------------------------------------------------------------------

class _PoolNd(ProgramModule):
    dims = 2
    reduction = "max"

    @property
    def takes_window_max(self) -> bool:
        return self.reduction == "max"

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1) -> None:
        dims = self.dims
        self.kernel_size = _tuple(kernel_size, dims, "kernel_size")
        self.stride = _tuple(stride if stride is not None else kernel_size, dims, "stride")
        self.padding = _tuple(padding, dims, "padding")
        self.dilation = _tuple(dilation, dims, "dilation")
        for k, p, d in zip(self.kernel_size, self.padding, self.dilation):
            if p > k // 2:
                raise ValueError(f"padding {self.padding} must be at most half the kernel size "
                                 f"{self.kernel_size} (as in PyTorch)")
            if self.reduction == "max" and p and d != 1:
                raise ValueError("max pooling with both padding and dilation is not supported")
        positions, offsets = _POSITIONS[dims], _OFFSETS[dims]
        reads = [_window_access(p, u, s, d, pad) for p, u, s, d, pad in
                 zip(positions, offsets, self.stride, self.dilation, self.padding)]
        where = [f"{u} < {k}" for u, k in zip(offsets, self.kernel_size)]
        where += [f"{p} < {name}" for p, name, pad in
                  zip(positions, _SIZE_NAMES[dims], self.padding) if pad]
        if any(self.padding):
            # Max pooling pads with -inf in PyTorch; with a window no wider than twice the
            # padding, replicating the edge gives the same maximum (the edge is in the window).
            where.append("x: replicate" if self.reduction == "max" else "x: zero")
        program = (f"y[n,c,{','.join(positions)}] = {self.reduction}[{','.join(offsets)}]"
                   f"(x[n,c,{','.join(reads)}])   where {', '.join(where)}")
        super().__init__(program)

    def _output_spatial(self, x: np.ndarray) -> tuple[int, ...]:
        return tuple(_output_length(n, k, s, d, p, p) for n, k, s, d, p in
                     zip(x.shape[2:], self.kernel_size, self.stride, self.dilation, self.padding))

    def check_inputs(self, x: np.ndarray) -> None:
        if x.ndim != self.dims + 2:
            raise InputShapeError(f"{type(self).__name__} expects inputs with {self.dims + 2} "
                                  f"dimensions [N, C, ...], got {x.shape}")
        if any(n < 1 for n in self._output_spatial(x)):
            raise InputShapeError(f"{type(self).__name__}: input {x.shape} is smaller than the "
                                  f"window {self.kernel_size}")

    def sizes(self, x: np.ndarray) -> dict[str, int]:
        return {name: n for name, n, pad in
                zip(_SIZE_NAMES[self.dims], self._output_spatial(x), self.padding) if pad}

    def extra_repr(self) -> str:
        text = f"kernel_size={self.kernel_size}, stride={self.stride}"
        if any(self.padding):
            text += f", padding={self.padding}"
        if any(d != 1 for d in self.dilation):
            text += f", dilation={self.dilation}"
        return text


class MaxPool1d(_PoolNd):
    dims, reduction = 1, "max"


class MaxPool2d(_PoolNd):
    """Max pooling (floor mode); padding replicates the edge, which equals PyTorch's -inf
    padding because the window always contains the edge sample."""
    dims, reduction = 2, "max"


class AvgPool1d(_PoolNd):
    dims, reduction = 1, "mean"

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0) -> None:
        super().__init__(kernel_size, stride, padding)


class AvgPool2d(_PoolNd):
    """Average pooling; padding counts as zeros (PyTorch's count_include_pad=True)."""
    dims, reduction = 2, "mean"

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0) -> None:
        super().__init__(kernel_size, stride, padding)


class GlobalAvgPool(ProgramModule):
    """[N, C, *spatial] -> [N, C]: the mean over all spatial positions."""

    def __init__(self) -> None:
        super().__init__("y[n,c] = mean[s](x[n,c,s])")

    def check_inputs(self, x: np.ndarray) -> None:
        if x.ndim < 3:
            raise InputShapeError(f"GlobalAvgPool expects [N, C, ...spatial], got {x.shape}")

    def feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"x": x.reshape(x.shape[0], x.shape[1], -1)}


class Flatten(Module):
    """Flattens dimensions start_dim..end_dim into one (a reshape: no program, no copy)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim
        self._input_shape: tuple[int, ...] | None = None

    def forward(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        start = self.start_dim % x.ndim
        end = self.end_dim % x.ndim
        if start > end:
            raise InputShapeError(f"Flatten({self.start_dim}, {self.end_dim}) cannot flatten an "
                                  f"input of shape {x.shape}")
        self._input_shape = x.shape
        return x.reshape(x.shape[:start] + (-1,) + x.shape[end + 1:])

    def backward(self, grad_output: Any, input_grad: bool = True) -> Any:
        if self._input_shape is None:
            raise RuntimeError("Flatten.backward called before forward")
        return np.asarray(grad_output).reshape(self._input_shape) if input_grad else None

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


# ---- dropout --------------------------------------------------------------------------------

class Dropout(ProgramModule):
    """Zeroes each element with probability p in training and scales the rest by 1/(1-p);
    the identity in eval mode. The random 0/1 mask is a program input (`last_mask`)."""

    def __init__(self, p: float = 0.5, *, rng: Any = None) -> None:
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability p must be in [0, 1), got {p}")
        super().__init__(f"y[i] = x[i] * mask[i] / {_number(1 - p)}")
        self.p = p
        self._rng = rng
        self.last_mask: np.ndarray | None = None
        self._identity = False

    def forward(self, x: Any) -> Any:
        x = np.asarray(x)
        self._identity = not self.training or self.p == 0
        if self._identity:
            return x
        generator = init.generator(self._rng)
        self.last_mask = (generator.random(x.shape) >= self.p).astype(
            x.dtype if x.dtype.kind == "f" else np.float64)
        return super().forward(x)

    def feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"x": x.reshape(-1), "mask": self.last_mask.reshape(-1)}

    def output_shape(self, y: np.ndarray, x: np.ndarray) -> tuple[int, ...]:
        return x.shape

    def backward(self, grad_output: Any, input_grad: bool = True) -> Any:
        if self._identity:
            return np.asarray(grad_output) if input_grad else None
        return super().backward(grad_output, input_grad)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# ---- normalization --------------------------------------------------------------------------

class _BatchNorm(ProgramModule):
    dims = 2

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *,
                 dtype: Any = "float32") -> None:
        eps_text = _number(eps)
        scale = " * weight[c] + bias[c]" if affine else ""
        # The input is seen as [N, C, S]: every spatial position is one more sample.
        programs = {"train": (
            "mu[c] = mean[n,s](x[n,c,s])\n"
            "var[c] = mean[n,s]((x[n,c,s] - mu[c])^2)\n"
            f"y[n,c,s] = (x[n,c,s] - mu[c]) / sqrt(var[c] + {eps_text}){scale}")}
        if track_running_stats:
            programs["eval"] = (f"y[n,c,s] = (x[n,c,s] - running_mean[c]) / "
                                f"sqrt(running_var[c] + {eps_text}){scale}")
        super().__init__(programs)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=dtype))
            self.bias = Parameter(np.zeros(num_features, dtype=dtype))
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))

    def variant(self) -> str:
        return "train" if self.training or not self.track_running_stats else "eval"

    def extra_outputs(self, variant: str) -> tuple[str, ...]:
        return ("mu", "var") if variant == "train" else ()

    def check_inputs(self, x: np.ndarray) -> None:
        ranks = (2, 3) if self.dims == 1 else (self.dims + 2,)
        if x.ndim not in ranks or x.shape[1] != self.num_features:
            raise InputShapeError(f"{type(self).__name__}({self.num_features}) expects inputs "
                                  f"with {' or '.join(map(str, ranks))} dimensions [N, C, ...] "
                                  f"and C = {self.num_features}, got {x.shape}")
        if self.training and x.size // x.shape[1] < 2:
            raise InputShapeError(f"{type(self).__name__}: batch statistics need more than one "
                                  f"value per channel, got input {x.shape}")

    def feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        arrays = {"x": x.reshape(x.shape[0], x.shape[1], -1)}
        arrays.update({name: p.data for name, p in self._parameters.items()})
        if self.variant() == "eval":
            arrays["running_mean"] = self.running_mean
            arrays["running_var"] = self.running_var
        return arrays

    def output_shape(self, y: np.ndarray, x: np.ndarray) -> tuple[int, ...]:
        return x.shape

    def after_forward(self, results: dict[str, np.ndarray], x: np.ndarray) -> None:
        if not (self.training and self.track_running_stats):
            return
        count = x.size // x.shape[1]
        self._set_buffer("num_batches_tracked", self.num_batches_tracked + 1)
        factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                  else self.momentum)
        unbiased = results["var"] * (count / (count - 1))
        dtype = self.running_mean.dtype
        self._set_buffer("running_mean", ((1 - factor) * self.running_mean
                                          + factor * results["mu"]).astype(dtype))
        self._set_buffer("running_var", ((1 - factor) * self.running_var
                                         + factor * unbiased).astype(dtype))

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalization of [N, C] or [N, C, L]."""
    dims = 1


class BatchNorm2d(_BatchNorm):
    """Batch normalization of [N, C, H, W]: batch statistics in training (updating the
    running mean and the unbiased running variance with PyTorch's momentum), the running
    statistics in eval mode."""
    dims = 2


class BatchNorm3d(_BatchNorm):
    dims = 3


class LayerNorm(ProgramModule):
    """Normalizes over the last dimensions (`normalized_shape`), as torch.nn.LayerNorm."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, *,
                 dtype: Any = "float32") -> None:
        self.normalized_shape = _tuple(normalized_shape, 1, "normalized_shape") \
            if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
        self.eps = eps
        scale = (" * weight[d]" if elementwise_affine else "") + \
            (" + bias[d]" if elementwise_affine and bias else "")
        super().__init__(
            "mu[n] = mean[d](x[n,d])\n"
            "var[n] = mean[d]((x[n,d] - mu[n])^2)\n"
            f"y[n,d] = (x[n,d] - mu[n]) / sqrt(var[n] + {_number(eps)}){scale}")
        if elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dtype=dtype))
            if bias:
                self.bias = Parameter(np.zeros(self.normalized_shape, dtype=dtype))

    def check_inputs(self, x: np.ndarray) -> None:
        k = len(self.normalized_shape)
        if x.ndim < k or x.shape[x.ndim - k:] != self.normalized_shape:
            raise InputShapeError(f"LayerNorm({list(self.normalized_shape)}) expects inputs "
                                  f"ending in {_shape_text(self.normalized_shape)}, got {x.shape}")

    def feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        size = math.prod(self.normalized_shape)
        arrays = {"x": x.reshape(-1, size)}
        arrays.update({name: p.data.reshape(size) for name, p in self._parameters.items()})
        return arrays

    def output_shape(self, y: np.ndarray, x: np.ndarray) -> tuple[int, ...]:
        return x.shape

    def extra_repr(self) -> str:
        return f"{list(self.normalized_shape)}, eps={self.eps}"


class RMSNorm(ProgramModule):
    """x / sqrt(mean(x^2) + eps) * weight over the last dimensions (torch.nn.RMSNorm).
    eps=None takes the machine epsilon of `dtype`, as PyTorch does for the input's dtype."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float | None = None,
                 elementwise_affine: bool = True, *, dtype: Any = "float32") -> None:
        self.normalized_shape = (int(normalized_shape),) \
            if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
        self.eps = float(np.finfo(np.dtype(dtype)).eps) if eps is None else eps
        scale = " * weight[d]" if elementwise_affine else ""
        super().__init__(f"r[n] = rsqrt(mean[d](x[n,d]^2) + {_number(self.eps)})\n"
                         f"y[n,d] = x[n,d] * r[n]{scale}")
        if elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dtype=dtype))

    check_inputs = LayerNorm.check_inputs
    feed = LayerNorm.feed
    output_shape = LayerNorm.output_shape

    def extra_repr(self) -> str:
        return f"{list(self.normalized_shape)}, eps={self.eps}"


# ---- residual -------------------------------------------------------------------------------

class _Merge(ProgramModule):
    """y = f + s (optionally through an activation), elementwise on flat views."""

    inputs = ("f", "s")

    def __init__(self, activation: str | None) -> None:
        total = "f[i] + s[i]"
        super().__init__(f"y[i] = {activation}({total})" if activation else f"y[i] = {total}")

    def check_inputs(self, f: np.ndarray, s: np.ndarray) -> None:
        if f.shape != s.shape:
            raise InputShapeError(f"Residual: the body's output {f.shape} and the shortcut's "
                                  f"{s.shape} differ; give a shortcut that maps the input to "
                                  "the body's output shape")

    def feed(self, f: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
        return {"f": f.reshape(-1), "s": s.reshape(-1)}

    def output_shape(self, y: np.ndarray, f: np.ndarray, s: np.ndarray) -> tuple[int, ...]:
        return f.shape


class Residual(Module):
    """y = activation(body(x) + shortcut(x)); the shortcut is the identity by default.

    The sum is the program `y[i] = f[i] + s[i]`; backward sends its two gradients through
    the body and the shortcut and adds them, as for any tensor used twice.
    """

    def __init__(self, body: Module, shortcut: Module | None = None,
                 activation: str | None = None) -> None:
        super().__init__()
        self.body = body
        if shortcut is not None:
            self.shortcut = shortcut
        self.merge = _Merge(activation)

    def forward(self, x: Any) -> Any:
        x = np.asarray(x)
        shortcut = self._modules.get("shortcut")
        return self.merge(self.body(x), shortcut(x) if shortcut is not None else x)

    def backward(self, grad_output: Any, input_grad: bool = True) -> Any:
        grad_body, grad_shortcut = self.merge.backward(grad_output)
        dx = self.body.backward(grad_body, input_grad)
        shortcut = self._modules.get("shortcut")
        if shortcut is not None:
            grad_shortcut = shortcut.backward(grad_shortcut, input_grad)
        return dx + grad_shortcut if input_grad else None
