"""PyTorch interop: a compiled tensorc program as a torch.autograd.Function or nn.Module.

    import torch
    from tensorc.interop import TorchFunction, TorchModule

    conv = TorchFunction("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]")
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    y = conv(x, k)                          # or conv(x=x, k=k); a [2, 4, 6, 6] tensor
    y.square().sum().backward()             # x.grad, k.grad from the derived adjoint
    torch.autograd.gradcheck(conv, (x, k))  # True

    layer = TorchModule("y[n,o] = tanh(x[n,i] * w[o,i] + b[o])",
                        {"w": ((8, 4), "xavier_uniform"), "b": torch.zeros(8)})
    print(layer)                            # the program, the inputs and the parameters
    out = layer(torch.randn(16, 4))         # w and b are torch.nn.Parameters

Forward runs the compiled kernel on NumPy views of the tensors (`np.from_dlpack`, no
copy; non-contiguous views are read through their strides) and hands its results back
through DLPack too (`torch.from_dlpack`, no copy). Backward runs the adjoint program that
`tensorc.grad` derives, only for the inputs that need a gradient, and is itself such a
function, so second derivatives work where tensorc can differentiate the adjoint again.
Kernels are compiled once per set of differentiated inputs and specialize (and cache) per
shape and dtype. CUDA tensors run the CuPy backend instead, exchanged with CuPy through
DLPack (no copy); without CuPy or a device that is a BackendError, never a silent copy to
the CPU.

`import tensorc` never imports torch; this module does, when it is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

try:
    import torch
except ImportError:  # pragma: no cover - exercised only without torch
    raise ImportError("tensorc.interop needs PyTorch, which is not installed; install it "
                      "with 'pip install torch' (the rest of tensorc works without it)") from None

from . import syntax as S
from .adjoint import Adjoint, derive_adjoint
from .check import program_inputs, structure
from .errors import BackendError, CallError, DtypeError, TensorcError, did_you_mean
from .kernel import Kernel, bind_inputs
from .parser import parse

__all__ = ["TorchFunction", "TorchModule", "to_numpy", "to_cupy", "to_torch"]


# ---- tensors <-> arrays, through DLPack -----------------------------------------------------

def _shareable(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's data as DLPack can export it: detached, lazy conjugation and negation
    applied (DLPack has no flags for them)."""
    tensor = tensor.detach()
    if tensor.is_conj():
        tensor = tensor.resolve_conj()
    if tensor.is_neg():
        tensor = tensor.resolve_neg()
    return tensor


def to_numpy(tensor: torch.Tensor, name: str = "tensor") -> np.ndarray:
    """A NumPy view of a CPU tensor's memory (no copy; strides are kept)."""
    if tensor.device.type != "cpu":
        raise _device_error(name, tensor.device)
    try:
        return np.from_dlpack(_shareable(tensor))
    except (BufferError, RuntimeError, TypeError) as error:
        raise DtypeError(f"input '{name}' has dtype {tensor.dtype}, which NumPy cannot share "
                         f"({error}); tensorc computes with float16, float32 or float64: "
                         f"convert it, e.g. {name}.float()") from None


def to_cupy(tensor: torch.Tensor, name: str = "tensor") -> Any:
    """A CuPy view of a CUDA tensor's memory (no copy)."""
    from .backends.cupy import device_namespace
    cupy = device_namespace()
    try:
        return cupy.from_dlpack(_shareable(tensor))
    except (BufferError, RuntimeError, TypeError) as error:
        raise DtypeError(f"input '{name}' has dtype {tensor.dtype}, which CuPy cannot share "
                         f"({error}); convert it, e.g. {name}.float()") from None


def to_torch(array: Any) -> torch.Tensor:
    """A tensor on an array's memory: a CPU tensor for NumPy (no copy, unless the array is
    read-only), a CUDA tensor for CuPy (no copy)."""
    if type(array).__module__.startswith("cupy"):
        return torch.from_dlpack(array)
    array = np.asarray(array)
    if not array.flags.writeable:  # a broadcast view, say: torch would write through it
        array = array.copy()
    try:
        return torch.from_dlpack(array)
    except (BufferError, RuntimeError, TypeError):  # a layout DLPack cannot describe
        return torch.from_numpy(np.array(array))


def _device_error(name: str, device: torch.device) -> BackendError:
    return BackendError(f"input '{name}' is on device '{device}'; tensorc runs CPU tensors "
                        f"(NumPy backend) and CUDA tensors (CuPy backend): move the tensors "
                        f"with {name}.cpu()")


# ---- the autograd function ------------------------------------------------------------------

class _ProgramFunction(torch.autograd.Function):
    """Forward: the compiled program. Backward: the compiled adjoint (itself differentiable).

    Arguments are the TorchFunction, then one tensor per program input in its order.
    """

    @staticmethod
    def forward(ctx: Any, function: TorchFunction, *tensors: torch.Tensor) -> tuple:
        on_gpu = any(t.device.type == "cuda" for t in tensors)
        share = to_cupy if on_gpu else to_numpy
        arrays = {name: share(t, name) for name, t in zip(function.inputs, tensors)}
        results = function.run(arrays, on_gpu)
        if on_gpu:
            from .backends.cupy import device_namespace
            may_share_memory = device_namespace().may_share_memory
        else:
            may_share_memory = np.may_share_memory
        outputs: list[torch.Tensor] = []
        seen = list(arrays.values())
        for name in function.outputs:
            array = results[name] if on_gpu else np.asarray(results[name])
            # A result must not alias an input or another result: torch would not know.
            if any(may_share_memory(array, other) for other in seen):
                array = array.copy()
            seen.append(array)
            outputs.append(to_torch(array))
        ctx.function = function
        ctx.set_materialize_grads(False)  # unused outputs give None: no adjoint for them
        ctx.save_for_backward(*tensors)
        return tuple(outputs)

    @staticmethod
    def backward(ctx: Any, *cotangents: torch.Tensor | None) -> tuple:
        function: TorchFunction = ctx.function
        tensors = ctx.saved_tensors
        wrt = tuple(name for name, needed in zip(function.inputs, ctx.needs_input_grad[1:])
                    if needed)
        if not wrt or all(c is None for c in cotangents):
            return (None,) * (1 + len(tensors))
        saved = dict(zip(function.inputs, tensors))
        gradients = function.gradients(saved, dict(zip(function.outputs, cotangents)), wrt)
        return (None, *(gradients[name].to(saved[name].dtype) if name in gradients else None
                        for name in function.inputs))


class TorchFunction:
    """A tensorc program callable on torch tensors, differentiable by torch.autograd.

        f = TorchFunction("C[i,k] = A[i,j] * B[j,k]")
        C = f(A, B)          # positionally in `f.inputs` order, or by name: f(A=A, B=B)

    One output gives a tensor, several a dict by name (as a Kernel does). `sizes` are the
    values of size names in `where` clauses (`where h < H`: `TorchFunction(src, H=16)`);
    `outputs` picks the results returned (default: the program's outputs).
    """

    def __init__(self, program: str | S.Program, outputs: Sequence[str] | None = None,
                 **sizes: int) -> None:
        self.program = parse(program) if isinstance(program, str) else program
        if not isinstance(self.program, S.Program):
            raise TensorcError(f"TorchFunction takes tensorc source or a Program, not "
                               f"{type(program).__name__}")
        program_structure = structure(self.program)
        self.inputs: tuple[str, ...] = tuple(program_inputs(self.program))
        for name, value in sizes.items():
            if name in self.inputs or isinstance(value, bool) or not isinstance(value, int):
                raise CallError(f"TorchFunction({name}={value!r}): keyword arguments are the "
                                "integer values of size names in 'where' clauses (H=16); "
                                "tensor shapes come from the tensors at each call")
        self.sizes = dict(sizes)
        self.outputs: tuple[str, ...] = (tuple(outputs) if outputs is not None
                                         else program_structure.outputs)
        defined = {item.target for item in program_structure.statements}
        for name in self.outputs:
            if name not in defined:
                raise CallError(f"outputs: '{name}' is not computed by the program"
                                f"{did_you_mean(name, defined)}")
        self.scalar_outputs = frozenset(item.target for item in program_structure.statements
                                        if item.target in self.outputs and not item.target_maps)
        # specializes (and caches) per shapes and dtype at each call
        self.kernel = Kernel(self.program, sizes=self.sizes, outputs=self.outputs)
        self.device_kernel = Kernel(self.program, "cupy", sizes=self.sizes, outputs=self.outputs)
        self._adjoints: dict[tuple, tuple[TorchFunction, Adjoint]] = {}

    def __repr__(self) -> str:
        return f"<tensorc.interop.TorchFunction inputs={list(self.inputs)}:\n{self.program}>"

    # ---- calling ----
    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        results = self.apply(self.bind(args, kwargs))
        return results[self.outputs[0]] if len(self.outputs) == 1 else results

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Every program input by name, from positional and keyword arguments; checked."""
        values = bind_inputs(self.inputs, tuple(args), kwargs, "the program", "tensors")
        return _as_tensors(values)

    def apply(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the autograd function on checked tensors by name; results by name."""
        results = _ProgramFunction.apply(self, *(tensors[name] for name in self.inputs))
        return dict(zip(self.outputs, results))

    def run(self, arrays: Mapping[str, Any], on_gpu: bool = False) -> dict[str, Any]:
        """The compiled kernel on NumPy arrays (or the CuPy backend's on CuPy arrays);
        results by name."""
        results = (self.device_kernel if on_gpu else self.kernel)(**arrays)
        return results if isinstance(results, dict) else {self.outputs[0]: results}

    # ---- gradients ----
    def adjoint(self, wrt: Sequence[str] | None = None, of: Sequence[str] | None = None) -> str:
        """The adjoint program backward runs (default: with respect to every input)."""
        return str(self._adjoint(tuple(wrt or self.inputs), tuple(of or self.outputs))[1].program)

    def _adjoint(self, wrt: tuple[str, ...], of: tuple[str, ...]) -> tuple[TorchFunction, Adjoint]:
        """The adjoint of the outputs `of` with respect to `wrt`, derived and compiled once."""
        key = (wrt, of)
        if key not in self._adjoints:
            adjoint = derive_adjoint(self.program, list(wrt), list(of))
            function = TorchFunction(adjoint.program, tuple(adjoint.gradients[n] for n in wrt),
                                     **self.sizes)
            self._adjoints[key] = (function, adjoint)
        return self._adjoints[key]

    def gradients(self, saved: Mapping[str, torch.Tensor],
                  cotangents: Mapping[str, torch.Tensor | None],
                  wrt: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Vector-Jacobian products for `wrt`, given the inputs and the outputs' cotangents.

        Non-scalar outputs take their cotangents as adjoint inputs (`dy`) and share one
        adjoint; tc.grad seeds a scalar output (a loss) with 1, so each scalar output gets its
        own adjoint, scaled by its cotangent. Outputs without a cotangent are left out.
        """
        used = [name for name in self.outputs if cotangents.get(name) is not None]
        tensor_outputs = tuple(n for n in used if n not in self.scalar_outputs)
        groups = [(tensor_outputs, None)] if tensor_outputs else []
        groups += [((n,), cotangents[n]) for n in used if n in self.scalar_outputs]
        total: dict[str, torch.Tensor] = {}
        for of, scale in groups:
            function, adjoint = self._adjoint(wrt, of)
            feed = {**saved, **{adjoint.cotangents[n]: cotangents[n] for n in of
                                if n in adjoint.cotangents}}
            results = function.apply({name: feed[name] for name in function.inputs})
            for name in wrt:
                gradient = results[adjoint.gradients[name]]
                if scale is not None:
                    gradient = gradient * scale
                total[name] = gradient if name not in total else total[name] + gradient
        return total


def _as_tensors(values: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Inputs as tensors on one supported device; Python numbers take the tensors' dtype."""
    tensors = {n: v for n, v in values.items() if isinstance(v, torch.Tensor)}
    for name, value in values.items():
        if name in tensors:
            continue
        if not isinstance(value, (int, float, bool)):
            raise CallError(f"input '{name}' is a {type(value).__name__}; pass a torch.Tensor "
                            "(or a Python number for a scalar input)")
    if any(t.device.type == "cuda" for t in tensors.values()):
        from .backends.cupy import device_namespace
        device_namespace()  # first: CuPy or a device missing says so
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        where = ", ".join(f"'{n}' on {t.device}" for n, t in tensors.items())
        raise CallError(f"the inputs are on different devices ({where}); put them all on one "
                        "device, e.g. with .cpu()")
    for name, tensor in tensors.items():
        if tensor.device.type not in ("cpu", "cuda"):
            raise _device_error(name, tensor.device)
        if tensor.requires_grad and not tensor.is_floating_point():
            raise DtypeError(f"input '{name}' requires a gradient but has dtype {tensor.dtype}; "
                             "tensorc differentiates float16, float32 and float64 tensors only")
    floating = [t.dtype for t in tensors.values() if t.is_floating_point()]
    dtype = floating[0] if floating else torch.get_default_dtype()
    for other in floating[1:]:
        dtype = torch.promote_types(dtype, other)
    device = next(iter(devices)) if devices else None
    return {name: tensors[name] if name in tensors else
            torch.tensor(value, dtype=dtype, device=device) for name, value in values.items()}


# ---- the module -----------------------------------------------------------------------------

class TorchModule(torch.nn.Module):
    """A torch.nn.Module whose forward is a tensorc program and whose backward its adjoint.

        layer = TorchModule("y[n,o] = tanh(x[n,i] * w[o,i] + b[o])",
                            {"w": ((8, 4), "xavier_uniform"), "b": ((8,), "zeros")})

    `parameters` maps program inputs to a tensor, a torch.nn.Parameter, or `(shape, init)`
    where init names an initializer of `tensorc.nn.init.INITIALIZERS` (seeded by `rng`) or
    is a callable filling a tensor in place (`torch.nn.init.orthogonal_`). `constants` are
    program inputs that are not trained (buffers). forward takes the remaining inputs
    (`inputs`, default: in program order), positionally or by name. `sizes` as TorchFunction.
    """

    def __init__(self, program: str | S.Program, parameters: Mapping[str, Any] | None = None, *,
                 inputs: Sequence[str] | str | None = None,
                 constants: Mapping[str, Any] | None = None,
                 outputs: Sequence[str] | None = None, dtype: torch.dtype = torch.float32,
                 rng: Any = None, **sizes: int) -> None:
        super().__init__()
        self.function = TorchFunction(program, outputs, **sizes)
        parameters, constants = dict(parameters or {}), dict(constants or {})
        program_names = set(self.function.inputs)
        for name in [*parameters, *constants]:
            if name not in program_names:
                raise CallError(f"'{name}' is not an input of the program"
                                f"{did_you_mean(name, program_names)} (its inputs: "
                                f"{', '.join(self.function.inputs)})")
        both = sorted(parameters.keys() & constants.keys())
        if both:
            raise CallError(f"'{both[0]}' is given both as a parameter and as a constant")
        for name, spec in parameters.items():
            if not isinstance(spec, torch.nn.Parameter):
                spec = torch.nn.Parameter(_initial_value(name, spec, dtype, rng))
            self._register(name, spec)
        for name, value in constants.items():
            self._register(name, torch.as_tensor(value), buffer=True)
        fed = set(parameters) | set(constants)
        if inputs is None:
            inputs = tuple(n for n in self.function.inputs if n not in fed)
        self.inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
        for name in self.inputs:
            if name not in program_names or name in fed:
                why = "is a parameter or constant" if name in fed else "is not a program input"
                raise CallError(f"inputs: '{name}' {why}; forward's inputs are the program "
                                f"inputs that are not parameters or constants: "
                                f"{', '.join(n for n in self.function.inputs if n not in fed)}")
        unfed = [n for n in self.function.inputs if n not in fed and n not in self.inputs]
        if unfed:
            raise CallError(f"program input{'s' if len(unfed) > 1 else ''} "
                            f"{', '.join(repr(n) for n in unfed)} "
                            "are fed by nothing: add them to `inputs`, `parameters` or `constants`")

    def _register(self, name: str, value: torch.Tensor, buffer: bool = False) -> None:
        try:
            if buffer:
                self.register_buffer(name, value)
            else:
                self.register_parameter(name, value)
        except KeyError:
            raise CallError(f"program input '{name}' clashes with an attribute of "
                            "torch.nn.Module; rename it in the program") from None

    @property
    def program(self) -> str:
        return str(self.function.program)

    def adjoint(self, wrt: Sequence[str] | None = None) -> str:
        """The derived adjoint program (default: with respect to inputs and parameters)."""
        return self.function.adjoint(wrt or [*self.inputs, *dict(self.named_parameters())])

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        values = dict(kwargs)
        if len(args) > len(self.inputs):
            raise CallError(f"{type(self).__name__} takes {len(self.inputs)} input(s) "
                            f"({', '.join(self.inputs)}), got {len(args)} positional tensors")
        for name, value in zip(self.inputs, args):
            if name in values:
                raise CallError(f"'{name}' is given both by position and by name")
            values[name] = value
        for name in values:
            if name not in self.inputs:
                owned = "a parameter or constant of the module" \
                    if name in self.function.inputs else "not an input of the program"
                raise CallError(f"'{name}' is {owned}; forward takes {', '.join(self.inputs)}")
        own = {name: getattr(self, name) for name in self.function.inputs
               if name not in self.inputs}
        return self.function(**values, **own)

    def extra_repr(self) -> str:
        shapes = ", ".join(f"{n}: {list(p.shape)}" for n, p in self.named_parameters(recurse=False))
        program = "\n".join("  " + line for line in str(self.function.program).splitlines())
        return f"program:\n{program}\ninputs={list(self.inputs)}, parameters={{{shapes}}}"


def _initial_value(name: str, spec: Any, dtype: torch.dtype, rng: Any) -> torch.Tensor:
    """A parameter's first value: a tensor (kept), or (shape, initializer name or callable)."""
    if isinstance(spec, torch.Tensor):
        return spec.detach()  # shares memory, as torch.nn.Parameter(tensor) does
    if isinstance(spec, tuple) and len(spec) == 2 and \
            (isinstance(spec[1], str) or callable(spec[1])):
        shape, how = spec
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if isinstance(how, str):
            from .nn import init as initializers  # the table tensorc.nn layers use
            if how not in initializers.INITIALIZERS:
                raise CallError(f"unknown initializer {how!r} for '{name}'"
                                f"{did_you_mean(how, set(initializers.INITIALIZERS))} "
                                f"(choose one of {', '.join(initializers.INITIALIZERS)}, or "
                                "pass a callable such as torch.nn.init.normal_)")
            array = initializers.INITIALIZERS[how](shape, rng=initializers.generator(rng),
                                                   dtype=str(dtype).removeprefix("torch."))
            return torch.from_numpy(array)
        tensor = torch.empty(shape, dtype=dtype)
        with torch.no_grad():
            filled: Callable[..., Any] = how
            filled(tensor)
        return tensor
    try:
        return torch.as_tensor(np.asarray(spec), dtype=dtype)
    except (TypeError, ValueError):
        raise CallError(f"parameter '{name}': expected a tensor or (shape, initializer), "
                        f"not {spec!r}") from None
