"""ProgramModule: a layer whose forward is a tensorc program and whose backward is its adjoint.

A layer names the program inputs that come from its call arguments (`inputs`, e.g. "x")
and registers a Parameter under the same name for every learned program input
("weight", "bias", a PReLU slope). `forward` compiles the program once per layer (the
kernel then specializes and caches per input shape); `backward` compiles
`tc.grad(program, wrt=...)` — the adjoint tensorc derives in the language — and runs it
on the saved inputs and the cotangent `d<output>`. No gradient formula is written here.
The results forward returned are kept too: the adjoint reads them instead of recomputing
the statements that defined them (a max-pool's output, say).

Layers that see their input through a reshape (elementwise layers see a flat vector,
grouped convolutions a [N, G, C/G, ...] view) override `feed`; since feeds are reshapes,
gradients are reshaped back to the arguments' and parameters' shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import Kernel, parse
from .. import syntax as S
from .. import grad as derive_gradient
from ..check import structure
from ..errors import TensorcError
from ..plan import KeptWindow
from . import init as initializers
from .module import InputShapeError, Module, Parameter

__all__ = ["ProgramModule", "Program"]


class ProgramModule(Module):
    """Base class of layers defined by a tensorc program (`self.program`)."""

    #: program input names fed by forward's positional arguments, in order
    inputs: tuple[str, ...] = ("x",)
    #: the program output returned by forward (None: the program's only output)
    output: str | None = None

    def __init__(self, program: str | Mapping[str, str]) -> None:
        super().__init__()
        # One program, or one per variant (BatchNorm: "train" and "eval"); see `variant`.
        self.programs = {"forward": program} if isinstance(program, str) else dict(program)
        # syntax errors surface when the layer is built
        self._parsed = {name: parse(text) for name, text in self.programs.items()}
        self._kernels: dict[tuple, Kernel] = {}
        self._output_names: dict[str, str] = {}
        self._saved: tuple | None = None

    @property
    def program(self) -> str:
        """The program forward runs now (the active variant's)."""
        return self.programs[self.variant()]

    def variant(self) -> str:
        """Which of `programs` forward runs (overridden by layers with train/eval variants)."""
        return next(iter(self.programs))

    def extra_outputs(self, variant: str) -> tuple[str, ...]:
        """Program results the forward kernel also returns (batch statistics, say)."""
        return ()

    # ---- hooks for subclasses ----
    def check_inputs(self, *xs: np.ndarray) -> None:
        """Raise InputShapeError when an argument has the wrong rank or size."""

    def sizes(self, *xs: np.ndarray) -> dict[str, int]:
        """Values of size names the program uses in `where` clauses (e.g. Ho, Wo)."""
        return {}

    def feed(self, *xs: np.ndarray) -> dict[str, np.ndarray]:
        """Every program input by name: the arguments, parameters and buffers (or reshapes)."""
        arrays = {name: x for name, x in zip(self.inputs, xs)}
        arrays.update({name: p.data for name, p in self._parameters.items()})
        arrays.update(self._buffers)
        return arrays

    def output_shape(self, y: np.ndarray, *xs: np.ndarray) -> tuple[int, ...]:
        """The shape forward returns for the program's output `y` (a reshape of it)."""
        return y.shape

    def after_forward(self, results: dict[str, np.ndarray], *xs: np.ndarray) -> None:
        """Receives the extra outputs (running statistics are updated here)."""

    # ---- kernels ----
    def kernel(self, variant: str, wrt: tuple[str, ...] | None, sizes: Mapping[str, int],
               windows: tuple[KeptWindow, ...] = ()) -> Kernel:
        """The forward kernel (wrt None) or the adjoint kernel for `wrt`, built once.

        In training, the forward kernel also returns the im2col copies it makes of its
        inputs' windows (Kernel keep_windows), and the adjoint kernel is given them
        (`windows`): a convolution's weight gradient reads the copy its forward made."""
        keep = wrt is None and self.training
        key = (variant, wrt, tuple(sorted(sizes.items())), keep, windows)
        kernel = self._kernels.get(key)
        if kernel is None:
            program = self._parsed[variant]
            extra = self.extra_outputs(variant)
            if wrt is not None:
                adjoint = derive_gradient(program, wrt=list(wrt))
                kept = (self.output_name(variant),) + extra
                kernel = Kernel(without_definitions(adjoint, kept), sizes=dict(sizes),
                                windows=windows)
            else:  # extra: results that later statements also read
                kernel = Kernel(program, sizes=dict(sizes), keep_windows=keep,
                                outputs=(self.output_name(variant),) + extra if extra else None)
            self._kernels[key] = kernel
        return kernel

    def output_name(self, variant: str | None = None) -> str:
        """The program result forward returns: `output`, or the program's only output."""
        if self.output is not None:
            return self.output
        variant = variant or self.variant()
        name = self._output_names.get(variant)
        if name is None:
            outputs = structure(self._parsed[variant]).outputs  # what its kernel returns
            if len(outputs) != 1:
                raise TensorcError(f"{type(self).__name__}: the program defines {len(outputs)} "
                                   f"outputs ({', '.join(outputs)}); set `output` to the one "
                                   "forward returns")
            name = self._output_names[variant] = outputs[0]
        return name

    def adjoint(self, wrt: Sequence[str] | None = None) -> str:
        """The derived adjoint program (as text) for `wrt` (default: inputs and parameters)."""
        wrt = list(wrt) if wrt is not None else [*self.inputs, *self._trained_names()]
        return str(derive_gradient(self._parsed[self.variant()], wrt=wrt))

    def _trained_names(self) -> list[str]:
        return list(self._parameters)

    # ---- forward and backward ----
    def forward(self, *xs: Any) -> Any:
        if len(xs) != len(self.inputs):
            raise TypeError(f"{type(self).__name__} takes {len(self.inputs)} input(s) "
                            f"({', '.join(self.inputs)}), got {len(xs)}")
        xs = tuple(np.asarray(x) for x in xs)
        self.check_inputs(*xs)
        variant = self.variant()
        sizes = self.sizes(*xs)
        feed = self.feed(*xs)
        kernel = self.kernel(variant, None, sizes)
        results = kernel(**{name: feed[name] for name in kernel.inputs})
        if isinstance(results, dict):
            y = results[self.output_name(variant)]
            self.after_forward(results, *xs)
        else:
            y = results
            results = {self.output_name(variant): y}
        self._saved = (variant, xs, feed, sizes, results, kernel.kept_windows)
        return y.reshape(self.output_shape(y, *xs))

    def backward(self, grad_output: Any, input_grad: bool = True) -> Any:
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        variant, xs, feed, sizes, results, windows = self._saved
        program_shape = results[self.output_name(variant)].shape
        wrt = tuple((list(self.inputs) if input_grad else []) + self._trained_names())
        if not wrt:
            return None
        grad_output = np.asarray(grad_output)
        if grad_output.size != int(np.prod(program_shape)):
            raise InputShapeError(f"{type(self).__name__}.backward: the output gradient has "
                                  f"shape {grad_output.shape}, but the output had "
                                  f"{int(np.prod(program_shape))} elements")
        arrays = {**feed, **results,
                  f"d{self.output_name(variant)}": grad_output.reshape(program_shape)}
        kernel = self.kernel(variant, wrt, sizes, windows)
        results = kernel(**{name: arrays[name] for name in kernel.inputs})
        if not isinstance(results, dict):
            results = {f"d{wrt[0]}": results}
        for name in self._trained_names():
            self._parameters[name].accumulate(results[f"d{name}"])
        if not input_grad:
            return None
        grads = tuple(results[f"d{name}"].reshape(x.shape) for name, x in zip(self.inputs, xs))
        return grads[0] if len(grads) == 1 else grads


def without_definitions(program: S.Program, given: Sequence[str]) -> S.Program:
    """`program` with the statements that define `given` tensors removed, so that they become
    inputs: an adjoint fed the forward results it would otherwise recompute. Only a tensor
    defined by one plain `=` is dropped; anything else is left to be computed."""
    definitions: dict[str, list[S.Assignment]] = {}
    for statement in program.statements:
        if isinstance(statement, S.Assignment):
            definitions.setdefault(statement.target.tensor, []).append(statement)
    dropped = {name for name in given if len(definitions.get(name, ())) == 1
               and not definitions[name][0].accumulate}
    if not dropped:
        return program
    return S.Program(tuple(s for s in program.statements
                           if not (isinstance(s, S.Assignment) and s.target.tensor in dropped)),
                     program.source, program.filename)


Initializer = Callable[..., np.ndarray]


class Program(ProgramModule):
    """A layer from any program string, with named parameters and their initializers.

        layer = nn.Program("y[n,o] = tanh(x[n,i] * w[o,i] + b[o])",
                           params={"w": ((8, 4), "xavier_uniform"), "b": ((8,), "zeros")})

    `params` maps program names to an array, a Parameter, or `(shape, initializer)` where
    the initializer is a name from `tensorc.nn.init.INITIALIZERS` or a callable
    `f(shape, rng=..., dtype=...)`. `constants` are program inputs that are not trained
    (saved as buffers), `sizes` the values of size names in `where` clauses, and `inputs`
    the names fed by the call's arguments.
    """

    def __init__(self, program: str, params: Mapping[str, Any] | None = None, *,
                 inputs: str | Sequence[str] = "x", output: str | None = None,
                 constants: Mapping[str, Any] | None = None,
                 sizes: Mapping[str, int] | None = None,
                 dtype: Any = "float32", rng: Any = None) -> None:
        super().__init__(program)
        self.inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
        self.output = output
        self._sizes = dict(sizes or {})
        generator = initializers.generator(rng)
        for name, spec in (params or {}).items():
            if isinstance(spec, Parameter):
                parameter = spec
            elif isinstance(spec, tuple) and len(spec) == 2 and \
                    (isinstance(spec[1], str) or callable(spec[1])):
                shape, how = spec
                shape = (shape,) if isinstance(shape, int) else tuple(shape)
                if isinstance(how, str):
                    if how not in initializers.INITIALIZERS:
                        raise ValueError(f"unknown initializer {how!r} for '{name}'; choose one "
                                         f"of {', '.join(initializers.INITIALIZERS)}")
                    how = initializers.INITIALIZERS[how]
                parameter = Parameter(how(shape, rng=generator, dtype=dtype))
            else:
                parameter = Parameter(np.asarray(spec, dtype=dtype))
            setattr(self, name, parameter)
        for name, value in (constants or {}).items():
            value = np.asarray(value)  # floating constants take the layer's dtype
            self.register_buffer(name, value.astype(dtype) if value.dtype.kind == "f" else value)
        self.output_name()  # fail now if the output is ambiguous

    def sizes(self, *xs: np.ndarray) -> dict[str, int]:
        return dict(self._sizes)

    def extra_repr(self) -> str:
        shapes = ", ".join(f"{n}: {list(p.shape)}" for n, p in self._parameters.items())
        return f"inputs={list(self.inputs)}" + (f", params={{{shapes}}}" if shapes else "")
