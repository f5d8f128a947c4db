"""Parameter, Module and Sequential: the containers every layer is built from."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import ShapeError

__all__ = ["Parameter", "Module", "Sequential", "InputShapeError", "StateDictError"]


class InputShapeError(ShapeError, ValueError):
    """A layer was given an input of the wrong rank or size (a TensorcError and a ValueError)."""


class StateDictError(ShapeError, ValueError):
    """A state dict (or .npz file) whose names or shapes do not match the model."""


class Parameter:
    """A trainable array: `.data` holds the value, `.grad` the accumulated gradient (or None)."""

    def __init__(self, data: Any, dtype: Any = None) -> None:
        self.data = np.array(data, dtype=dtype)
        self.grad: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def accumulate(self, gradient: np.ndarray) -> None:
        """Add a gradient (reshaped to the parameter's shape): values used twice sum up."""
        gradient = np.asarray(gradient).reshape(self.data.shape)
        if self.grad is None:
            self.grad = gradient.astype(self.data.dtype, copy=True)
        else:
            self.grad += gradient

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of layers and models.

    Subclasses set attributes: a `Parameter` is registered as a parameter, a `Module` as a
    child, and `register_buffer` registers a non-trained array (running statistics) that is
    saved with the parameters. `forward(*inputs)` computes the output and remembers what
    `backward(grad_output)` needs; `backward` accumulates the parameters' gradients and
    returns the gradient of the input (a tuple for several inputs).
    """

    # Whether the module is an activation f with max(f(a), f(b)) == f(max(a, b)) and the
    # same gradient, ties included (ReLU), or a max-pool: Sequential may swap the pair.
    commutes_with_max = False
    takes_window_max = False

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---- registration ----
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            if isinstance(value, (Parameter, Module)):
                raise TypeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                                "before setting parameters or submodules")
            object.__setattr__(self, name, value)
            return
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: np.ndarray) -> None:
        """A non-trained array that belongs to the model state (saved and loaded)."""
        value = np.asarray(value)
        object.__setattr__(self, name, value)
        self._buffers[name] = value

    def _set_buffer(self, name: str, value: np.ndarray) -> None:
        object.__setattr__(self, name, value)
        self._buffers[name] = value

    # ---- traversal ----
    def children(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        seen: set[int] = set()
        for module_name, module in self.named_modules(prefix):
            for name, parameter in module._parameters.items():
                if id(parameter) not in seen:  # a parameter shared by two layers counts once
                    seen.add(id(parameter))
                    yield (f"{module_name}.{name}" if module_name else name), parameter

    def parameters(self) -> list[Parameter]:
        return [parameter for _, parameter in self.named_parameters()]

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for module_name, module in self.named_modules(prefix):
            for name, buffer in module._buffers.items():
                yield (f"{module_name}.{name}" if module_name else name), buffer

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # ---- modes, gradients, dtype ----
    def train(self, mode: bool = True) -> Module:
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for parameter in self.parameters():
            parameter.grad = None

    def to(self, dtype: Any) -> Module:
        """Convert every parameter and floating buffer to `dtype` (in place); returns self."""
        dtype = np.dtype(dtype)
        for parameter in self.parameters():
            parameter.data = parameter.data.astype(dtype)
            parameter.grad = None
        for module in self.modules():
            for name, buffer in list(module._buffers.items()):
                if buffer.dtype.kind == "f":
                    module._set_buffer(name, buffer.astype(dtype))
        return self

    # ---- calling ----
    def __call__(self, *inputs: Any) -> Any:
        return self.forward(*inputs)

    def forward(self, *inputs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def backward(self, grad_output: Any, input_grad: bool = True) -> Any:
        """Accumulate parameter gradients; return the input's gradient (None if not asked)."""
        raise NotImplementedError(f"{type(self).__name__} does not define backward")

    # ---- state ----
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Parameters and buffers by dotted name, as copies (PyTorch's names and layouts)."""
        state: OrderedDict[str, np.ndarray] = OrderedDict()
        for name, parameter in self.named_parameters():
            state[name] = parameter.data.copy()
        for name, buffer in self.named_buffers():
            state[name] = np.array(buffer, copy=True)
        return state

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Copy arrays into the parameters and buffers, checking names and shapes.

        Values keep each parameter's dtype. Accepts anything array-like (torch tensors via
        `.detach().numpy()` or NumPy arrays).
        """
        own_parameters = dict(self.named_parameters())
        buffer_owners = {}  # dotted name -> (module, buffer name)
        for module_name, module in self.named_modules():
            for name in module._buffers:
                buffer_owners[f"{module_name}.{name}" if module_name else name] = (module, name)
        expected = set(own_parameters) | set(buffer_owners)
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if unexpected:
                parts.append(f"unexpected {', '.join(unexpected)}")
            raise StateDictError(f"state dict does not match {type(self).__name__}: "
                                 + "; ".join(parts)
                                 + f" (the model has: {', '.join(sorted(expected))})")
        for name, value in state.items():
            if name not in expected:
                continue
            value = _as_array(value)
            if name in own_parameters:
                target = own_parameters[name].data
            else:
                module, buffer_name = buffer_owners[name]
                target = module._buffers[buffer_name]
            if value.shape != target.shape:
                raise StateDictError(f"'{name}' has shape {value.shape} in the state dict but "
                                     f"{target.shape} in the model")
            if name in own_parameters:
                own_parameters[name].data = value.astype(target.dtype, copy=True)
            else:
                module, buffer_name = buffer_owners[name]
                module._set_buffer(buffer_name, value.astype(target.dtype, copy=True))

    def save(self, path: str) -> None:
        """Write the state dict to an .npz file (plain arrays, no pickle)."""
        np.savez(path, **self.state_dict())

    def load(self, path: str, strict: bool = True) -> None:
        """Read a state dict written by `save` (np.load with allow_pickle=False)."""
        with np.load(path, allow_pickle=False) as archive:
            self.load_state_dict({name: archive[name] for name in archive.files}, strict)

    # ---- printing ----
    def summary(self, input_shape: tuple[int, ...], *, batch_size: int | None = 1,
                show: bool = False) -> str:
        """Per layer: output shape, parameters, FLOPs and receptive field, as a table.

        `input_shape` excludes the batch dimension (`batch_size`, 1 by default; with
        `batch_size=None` the first entry of `input_shape` is the batch). Printed when
        `show`. `tensorc.nn.summarize` returns the same figures as data.
        """
        from .summary import summary
        return summary(self, input_shape, batch_size=batch_size, show=show)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        head = f"{type(self).__name__}({self.extra_repr()})"
        programs = getattr(self, "programs", None) or {}
        lines = [head]
        for variant, program in programs.items():
            if len(programs) > 1:
                lines.append(f"    # {variant}")
            lines += ["    " + line for line in program.splitlines()]
        for name, child in self._modules.items():
            child_text = repr(child).splitlines()
            lines.append(f"  ({name}): {child_text[0]}")
            lines += ["  " + line for line in child_text[1:]]
        return "\n".join(lines)


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse (reverse-mode)."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for index, module in enumerate(modules):
            if not isinstance(module, Module):
                raise TypeError(f"Sequential takes Modules; argument {index} is "
                                f"{type(module).__name__}")
            setattr(self, str(index), module)

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> Sequential:
        setattr(self, str(len(self._modules)), module)
        return self

    def run_order(self) -> list[Module]:
        """The modules in the order forward runs them. A ReLU directly before a max-pool runs
        after it instead: the max of ReLUs is the ReLU of the max, with the same gradient
        (ties included, and zero for a window of non-positive values either way), and the
        ReLU then touches a quarter of the elements after a 2x2 pool (a LeNet training step
        0.5-1 ms quicker, of 13)."""
        modules, order = list(self._modules.values()), []
        while modules:
            if len(modules) > 1 and modules[0].commutes_with_max \
                    and modules[1].takes_window_max:
                order += [modules[1], modules[0]]
                modules = modules[2:]
            else:
                order.append(modules.pop(0))
        return order

    def forward(self, x: Any) -> Any:
        for module in self.run_order():
            x = module(x)
        return x

    def backward(self, grad_output: Any, input_grad: bool = True) -> Any:
        modules = self.run_order()
        for position in range(len(modules) - 1, -1, -1):
            grad_output = modules[position].backward(grad_output, input_grad or position > 0)
        return grad_output
