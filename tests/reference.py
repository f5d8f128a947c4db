"""A plain-loop reference evaluator for tensorc's checked IR.

Written independently of tensorc's planner and backends: every statement is evaluated
element by element in Python floats, looping with itertools.product over the target
indices and over each reduction's indices, reading arrays through the affine maps and
applying boundary modes by hand. It is slow on purpose and meant for tiny shapes.

    checked = tc.check(tc.parse(src), {"x": (3, 4), "k": (2,)})
    results = evaluate(checked, {"x": x, "k": k})   # every tensor the program defines
"""

from __future__ import annotations

import itertools
import math
from typing import Mapping

import numpy as np

from tensorc.ir import Apply, CheckedProgram, Constant, IndexValue, Read, Reduce

__all__ = ["evaluate", "boundary_position", "FUNCTIONS", "SAME_CONV", "conv_zero_pad",
           "SMALL_CNN", "small_cnn_inputs"]

INF = float("inf")
NAN = float("nan")


# ---- boundary modes ------------------------------------------------------------------------

def boundary_position(position: int, size: int, mode: str | None) -> int | None:
    """The in-range position a read at `position` takes its value from; None means 0.0."""
    if 0 <= position < size:
        return position
    if mode is None:
        raise IndexError(f"position {position} outside 0:{size} without a boundary mode")
    if mode == "zero":
        return None
    if mode == "circular":
        return position % size
    if mode == "replicate":
        return min(max(position, 0), size - 1)
    if mode == "symmetric":  # ... 1 0 | 0 1 2 | 2 1 ...: period 2*size
        q = position % (2 * size)
        return q if q < size else 2 * size - 1 - q
    if mode == "reflect":  # ... 2 1 | 0 1 2 | 1 0 ...: period 2*(size-1)
        if size == 1:
            return 0
        period = 2 * (size - 1)
        q = position % period
        return q if q < size else period - q
    raise ValueError(f"unknown boundary mode {mode!r}")


# ---- scalar arithmetic with IEEE results instead of Python exceptions ------------------------

def _exp(a: float) -> float:
    try:
        return math.exp(a)
    except OverflowError:
        return INF


def _log(a: float) -> float:
    if math.isnan(a) or a < 0:
        return NAN
    if a == 0:
        return -INF
    return math.log(a)


def _sqrt(a: float) -> float:
    if math.isnan(a) or a < 0:
        return NAN
    return math.sqrt(a)


def _div(a: float, b: float) -> float:
    try:
        return a / b
    except ZeroDivisionError:
        if a == 0 or math.isnan(a):
            return NAN
        return math.copysign(INF, a) * math.copysign(1.0, b)


def _pow(a: float, b: float) -> float:
    try:
        return math.pow(a, b)
    except OverflowError:
        return INF if a > 0 or float(b).is_integer() and int(b) % 2 == 0 else -INF
    except (ValueError, ZeroDivisionError):
        if a == 0 and b < 0:
            return INF
        return NAN


def _sigmoid(a: float) -> float:
    if a >= 0:
        return 1.0 / (1.0 + _exp(-a))
    e = _exp(a)
    return e / (1.0 + e)


def _softplus(a: float) -> float:
    if math.isnan(a):
        return NAN
    return max(a, 0.0) + math.log1p(_exp(-abs(a)))


def _gelu(a: float) -> float:
    return 0.5 * a * (1.0 + math.erf(a / math.sqrt(2.0)))


def _elu(a: float) -> float:
    return a if a > 0 else math.expm1(a)


def _sign(a: float) -> float:
    if math.isnan(a):
        return NAN
    return float((a > 0) - (a < 0))


def _maximum(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return NAN
    return a if a >= b else b


def _minimum(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return NAN
    return a if a <= b else b


def _log1p(a: float) -> float:
    if math.isnan(a) or a < -1:
        return NAN
    if a == -1:
        return -INF
    return math.log1p(a)


def _expm1(a: float) -> float:
    try:
        return math.expm1(a)
    except OverflowError:
        return INF


def _tanh(a: float) -> float:
    return math.tanh(a)


FUNCTIONS = {
    # arithmetic and comparisons, by the names Apply nodes carry
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": _div,
    "pow": _pow,
    "neg": lambda a: -a,
    "lt": lambda a, b: float(a < b),
    "le": lambda a, b: float(a <= b),
    "gt": lambda a, b: float(a > b),
    "ge": lambda a, b: float(a >= b),
    "eq": lambda a, b: float(a == b),
    "ne": lambda a, b: float(a != b),
    # the language's functions
    "exp": _exp,
    "log": _log,
    "sqrt": _sqrt,
    "rsqrt": lambda a: _div(1.0, _sqrt(a)),
    "abs": abs,
    "tanh": _tanh,
    "sigmoid": _sigmoid,
    "relu": lambda a: a if a > 0 or math.isnan(a) else 0.0,
    "gelu": _gelu,
    "silu": lambda a: a * _sigmoid(a),
    "softplus": _softplus,
    "elu": _elu,
    "erf": math.erf,
    "sin": math.sin,
    "cos": math.cos,
    "log1p": _log1p,
    "expm1": _expm1,
    "sign": _sign,
    "max": _maximum,
    "min": _minimum,
}


def _sum(values: list[float]) -> float:
    """A correctly rounded sum of finite values; IEEE semantics once infinities appear."""
    try:
        return math.fsum(values)
    except (OverflowError, ValueError):
        return sum(values)


# ---- evaluation ----------------------------------------------------------------------------

def _position(index_map, env: Mapping[str, int]) -> int:
    return index_map.offset + sum(coefficient * env[name] for name, coefficient in index_map.terms)


class _StatementEvaluator:
    def __init__(self, ranges: Mapping[str, int], arrays: Mapping[str, np.ndarray]) -> None:
        self.ranges = ranges
        self.arrays = arrays

    def value(self, expr, env: dict[str, int]) -> float:
        if isinstance(expr, Constant):
            return float(expr.value)
        if isinstance(expr, IndexValue):
            return float(env[expr.index] + expr.start)
        if isinstance(expr, Read):
            array = self.arrays[expr.tensor]
            if not expr.maps:
                return float(array[()])
            where = []
            for index_map, size in zip(expr.maps, array.shape):
                position = boundary_position(_position(index_map, env), size, expr.boundary)
                if position is None:
                    return 0.0
                where.append(position)
            return float(array[tuple(where)])
        if isinstance(expr, Apply):
            function = FUNCTIONS[expr.op]
            return float(function(*(self.value(arg, env) for arg in expr.args)))
        if isinstance(expr, Reduce):
            return self.reduce(expr, env)
        raise TypeError(f"unknown IR node {expr!r}")

    def reduce(self, expr: Reduce, env: dict[str, int]) -> float:
        names = expr.indices
        saved = {name: env[name] for name in names if name in env}  # a shadowed outer index
        values = []
        for combination in itertools.product(*(range(self.ranges[name]) for name in names)):
            env.update(zip(names, combination))
            values.append(self.value(expr.body, env))
        for name in names:
            env.pop(name, None)
        env.update(saved)
        if expr.op == "sum":
            return _sum(values)
        if expr.op == "mean":
            return _sum(values) / len(values)
        if expr.op == "max":
            result = values[0]
            for v in values[1:]:
                result = _maximum(result, v)
            return result
        if expr.op == "min":
            result = values[0]
            for v in values[1:]:
                result = _minimum(result, v)
            return result
        raise ValueError(f"unknown reduction {expr.op!r}")


def evaluate(program: CheckedProgram, arrays: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Evaluate every statement of a checked program; returns each defined tensor by name.

    `arrays` holds the program's inputs (scalars may be Python numbers). Statements run in
    order, so later statements read earlier results; a `+=` statement adds into the
    target (which starts at zero unless an earlier statement defined it).
    """
    values: dict[str, np.ndarray] = {
        name: np.array(value, dtype=np.float64) for name, value in arrays.items()}
    defined: dict[str, np.ndarray] = {}
    for statement in program.statements:
        shape = tuple(program.tensors[statement.target].shape)
        if statement.accumulate and statement.target in values:
            out = np.array(values[statement.target], dtype=np.float64, copy=True)
        else:
            out = np.zeros(shape, dtype=np.float64)
        if out.shape != shape:
            raise AssertionError(f"{statement.target}: shape {out.shape} != {shape}")
        targets = list(dict.fromkeys(n for m in statement.target_maps for n in m.indices()))
        evaluator = _StatementEvaluator(statement.ranges, values)
        for combination in itertools.product(*(range(statement.ranges[n]) for n in targets)):
            env = dict(zip(targets, combination))
            value = evaluator.value(statement.value, env)
            position = tuple(_position(m, env) for m in statement.target_maps)
            inside = all(0 <= p < s for p, s in zip(position, shape))
            if statement.accumulate:
                if not inside:
                    if statement.target_boundary == "zero":
                        continue  # out-of-range contributions are dropped
                    raise IndexError(f"'+=' writes {position} outside {shape}")
                out[position] += value
            else:
                if not inside:
                    raise IndexError(f"'=' writes {position} outside {shape}")
                out[position] = value
        values[statement.target] = out
        defined[statement.target] = out
    return defined


# ---- a NumPy oracle for the 'same' convolution several suites call ------------------------

SAME_CONV = ("x: [N, C, H, W]\n"
             "y[n,o,h,w] = x[n,c,h+u-1,w+v-1] * k[o,c,u,v]   where h < H, w < W, x: zero")


def conv_zero_pad(x, k):
    """'same' 3x3 cross-correlation with zero padding, as SAME_CONV computes it."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    return np.einsum("nchwuv,ocuv->nohw", windows, k)


# A small CNN's squared-error loss for gradient tests: a 'same' 3x3 convolution with bias
# and ReLU, 2x2 max-pooling, a dense layer. Format with S, the image size (even).
SMALL_CNN = """
y[n,o,h,w] = relu(x[n,c,h+u-1,w+v-1] * k[o,c,u,v] + b[o])   where h < {S}, w < {S}, x: zero
p[n,o,h,w] = max[u,v](y[n,o,2*h+u,2*w+v])   where u < 2, v < 2
z[n,j] = p[n,o,h,w] * W[j,o,h,w]
loss = sum[n,j]((z[n,j] - t[n,j]) ^ 2)
"""


def small_cnn_inputs(rng, batch: int, channels: int, size: int, filters: int,
                     classes: int) -> dict:
    """Random inputs for SMALL_CNN.format(S=size)."""
    return dict(x=rng.standard_normal((batch, channels, size, size)),
                k=rng.standard_normal((filters, channels, 3, 3)),
                b=rng.standard_normal(filters),
                W=rng.standard_normal((classes, filters, size // 2, size // 2)),
                t=rng.standard_normal((batch, classes)))
