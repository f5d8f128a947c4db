"""Kernel: a compiled program, specialized and cached by shapes, dtypes and backend."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from . import syntax as S
from .adjoint import derive_adjoint
from .budget import memory_budget
from .check import DTYPES, check, program_inputs
from .errors import (
    BackendError, CallError, DtypeError, RankError, ShapeError, TensorcError, did_you_mean,
)
from .ir import CheckedProgram
from .backends.blas import available as blas_available
from .backends.jit import cpu_modes
from .backends.numpy import execute_module
from .loopnest import plan_for_backend
from .parser import parse, recursion_headroom
from .plan import (KeptWindow, ProgramPlan, fft_mode, keep_windows, plan_program, share_windows,
                   shift_mode)

__all__ = ["Kernel", "compile", "compile_grad", "BACKENDS"]

BACKENDS = ("numpy", "cupy", "dask")


@dataclass(frozen=True)
class Specialization:
    """Everything compiled for one set of input shapes and one dtype."""

    program: CheckedProgram
    plan: ProgramPlan
    source: str
    function: Callable[..., Any]


_CACHE: dict[tuple, Specialization] = {}
_CACHE_LOCK = threading.Lock()


def _render(plan: ProgramPlan, backend: str) -> str:
    if backend == "numpy":
        from .backends.numpy import render_module
        return render_module(plan)
    if backend == "dask":
        from .backends.dask import render_dask_module
        return render_dask_module(plan)
    from .backends.cupy import render_module
    return render_module(plan)


class _DeviceFunction:
    """A CuPy-backend module's kernel, bound to its array library at the first call (a
    machine without CuPy or a device can still compile and read it). The emulation on
    NumPy that tests use gets a module of its own."""

    def __init__(self, source: str, plan: ProgramPlan) -> None:
        self.source, self.plan = source, plan
        self.bound: dict[bool, Callable[..., Any]] = {}
        self.lock = threading.Lock()

    def __call__(self, *arrays: Any) -> Any:
        from .backends.cupy import bind_module, emulating
        mode = emulating()
        function = self.bound.get(mode)
        if function is None:
            with self.lock:
                function = self.bound.get(mode)
                if function is None:
                    function = bind_module(execute_module(self.source, "cupy"), self.plan)
                    self.bound[mode] = function
        return function(*arrays)


def _load(source: str, backend: str, plan: ProgramPlan) -> Callable[..., Any]:
    if backend == "cupy":
        return _DeviceFunction(source, plan)
    return execute_module(source, backend)["kernel"]


def _specialize(program: S.Program, program_text: str, backend: str,
                shapes: dict[str, tuple[int, ...]], sizes: dict[str, int], dtype: str,
                dtypes: dict[str, str], outputs: tuple[str, ...] | None = None,
                keep: bool = False, windows: tuple[KeptWindow, ...] = ()) -> Specialization:
    budget = memory_budget()  # plans (im2col chunks) depend on it
    jit, pack = cpu_modes(backend == "numpy")  # (Dask's blocks decide their own)
    fft = fft_mode()
    # shifted GEMMs call NumPy's BLAS directly (backends/blas.py), where it can be
    shift = shift_mode() if backend == "numpy" and blas_available(dtype) else "off"
    key = (program_text, backend, tuple(sorted(shapes.items())), tuple(sorted(sizes.items())),
           dtype, outputs, budget, jit, pack, fft, shift, keep, windows)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    with _CACHE_LOCK:  # one builder per key; others wait and then reuse its result
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        import numpy as np
        given = tuple(w for w in windows if backend == "numpy" and w.name in shapes)
        for window in given:
            if shapes[window.name] != window.shape:
                raise ShapeError(f"'{window.name}' has shape {shapes[window.name]}, but the "
                                 f"window it keeps, {window}, has shape {window.shape}; pass "
                                 f"the '{window.name}' the forward kernel returned with it, or "
                                 "build this kernel with that kernel's current kept_windows")
        names = {w.name for w in windows}
        with recursion_headroom():
            checked = check(program, {n: v for n, v in shapes.items() if n not in names},
                            sizes, {n: v for n, v in dtypes.items() if n not in names})
            if outputs is not None:  # results that later statements also read
                checked = replace(checked, outputs=outputs)
            plan = plan_program(checked, dtype, np.dtype(dtype).itemsize, budget, fft,
                                in_one_process=backend != "dask",  # Dask: checked per block
                                pack=pack, gemv_sums=backend != "cupy", shift=shift,
                                given_windows=given)
            plan = plan_for_backend(plan, backend, jit, budget)
            if backend == "numpy":  # (one kernel's statements share their im2col copies)
                plan = share_windows(plan)
                if keep:
                    plan = keep_windows(plan)
            checked = plan.program  # (reads of given windows replaced)
            source = _render(plan, backend)
        if backend == "dask":  # the statements as dask.array graphs, planned per call
            from .backends.dask import DaskPlanText, DaskProgram
            function = DaskProgram(checked, plan)
            plan = replace(plan, appendix=DaskPlanText(function))
        else:
            function = _load(source, backend, plan)
        specialization = Specialization(checked, plan, source, function)
        _CACHE[key] = specialization
        return specialization


def _shown(name: str) -> str:
    """A name for a message: quoted, and escaped when not ASCII, so that a look-alike
    ('а' in Cyrillic) can be told from the name it imitates."""
    return f"'{name}'" if name.isascii() else f"{ascii(name)} (not ASCII)"


def bind_inputs(inputs: tuple[str, ...], args: tuple, named: Mapping[str, Any],
                owner: str = "the kernel", what: str = "arrays") -> dict[str, Any]:
    """Every input by name, in `inputs` order, from positional and keyword arguments; a
    CallError names what is missing, unexpected or given twice, and suggests a fix."""
    values = dict(named)
    if len(args) > len(inputs):
        raise CallError(f"{owner} takes {len(inputs)} inputs ({', '.join(inputs)}), got "
                        f"{len(args)} positional {what}")
    for name, value in zip(inputs, args):
        if name in values:
            raise CallError(f"'{name}' is given both by position and by name")
        values[name] = value
    missing = [n for n in inputs if n not in values]
    extra = [n for n in values if n not in inputs]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input{'s' if len(missing) > 1 else ''} "
                         + ", ".join(_shown(n) for n in missing))
        if extra:
            parts.append(f"unexpected input{'s' if len(extra) > 1 else ''} "
                         + ", ".join(_shown(n) for n in extra)
                         + "".join(did_you_mean(n, missing) for n in extra))
        raise CallError("; ".join(parts) + f" (the program's inputs: {', '.join(inputs)})")
    return {name: values[name] for name in inputs}


def _is_int(value: Any) -> bool:
    import numpy as np
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _size(name: str, value: Any) -> int:
    """A size given for a size name (N=64): a non-negative integer."""
    if not _is_int(value) or value < 0:
        raise CallError(f"size '{name}' must be a non-negative integer, not {value!r}")
    return int(value)


def _shape(value: Any, name: str = "a tensor") -> tuple[int, ...]:
    """A shape given for a tensor: an int or a tuple of non-negative ints."""
    if _is_int(value):
        value = (value,)
    iterable = hasattr(value, "__iter__") and not isinstance(value, (str, bytes, Mapping))
    shape = tuple(value) if iterable else None
    if shape is None or not all(_is_int(d) for d in shape):
        raise ShapeError(f"the shape of {name} must be a tuple of integers such as "
                         f"(2, 3, 32, 32), not {value!r}")
    if any(d < 0 for d in shape):
        raise ShapeError(f"the shape of {name} has a negative size: {shape}")
    return tuple(int(d) for d in shape)


def _validated_text(program: S.Program) -> str:
    """The normalized source of a Program. One that was not parsed from text (built by hand,
    or by tc.grad) must parse back to itself: generated code may only ever contain what the
    grammar accepts (identifiers, numbers), whatever the syntax tree holds."""
    try:
        text = str(program)
        if program.source:
            return text  # parsed: the grammar has checked it
        if parse(text) == program:
            return text
    except TensorcError as error:
        raise TensorcError(f"this Program is not valid tensorc: {error.message}; build programs "
                           "with tc.parse") from None
    except (ValueError, TypeError, AttributeError) as error:
        raise TensorcError(f"this Program cannot be written as tensorc ({error}); build "
                           "programs with tc.parse") from None
    raise TensorcError("this Program does not parse back to itself (a name or number the "
                       "grammar would not accept?); build programs with tc.parse")


def _float_dtype(dtype: Any) -> str | None:
    """`dtype=` of compile: float16, float32 or float64 (any spelling NumPy reads)."""
    if dtype is None:
        return None
    import numpy as np
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in ("float16", "float32", "float64"):
        raise DtypeError(f"dtype={dtype!r}: tensorc computes in float16, float32 or float64; "
                         "pass one of those (e.g. dtype='float32')")
    return name


class Kernel:
    """A compiled tensorc program. Call it with arrays by name; inspect source, plan, ir."""

    def __init__(self, program: S.Program, backend: str = "numpy",
                 shapes: Mapping[str, Any] | None = None, sizes: Mapping[str, int] | None = None,
                 dtype: str | None = None, keep_integers: bool = False,
                 outputs: tuple[str, ...] | None = None, keep_windows: bool = False,
                 windows: tuple[KeptWindow, ...] = ()) -> None:
        if backend not in BACKENDS:
            raise BackendError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
        self.program = program
        self.backend = backend
        # keep_windows: also return the im2col copies of windows of inputs (kept_windows);
        # windows: such copies another kernel kept, passed by name and read instead
        self.keep_windows = keep_windows
        self.windows = tuple(windows)
        self.inputs = tuple(program_inputs(program)) + tuple(w.name for w in self.windows)
        self.fixed_shapes = {name: _shape(v, f"'{name}'") for name, v in (shapes or {}).items()}
        self.sizes = {name: _size(name, v) for name, v in (sizes or {}).items()}
        self.dtype = _float_dtype(dtype)
        self.keep_integers = keep_integers
        self.requested_outputs = outputs
        self._program_text = _validated_text(program)  # the cache key: normalized source
        self._last: Specialization | None = None
        # Per-kernel memo in front of the global cache: a call looks up its shapes only.
        self._by_call: dict[tuple, Specialization] = {}
        # Shapes given for some inputs mean "build now": missing ones are then an error
        # (bare names without a shape are scalars), rather than a surprise at call time.
        if self.fixed_shapes or self._all_shapes_known():
            self._last = self._specialization(self.fixed_shapes, self._default_dtype())

    # ---- inspection ----
    @property
    def source(self) -> str:
        """The generated module (the most recent specialization)."""
        return self._current().source

    @property
    def cuda(self) -> str:
        """The CUDA C of the CuPy backend's loop kernels (also inside `source`); '' when the
        plan has none, as on the NumPy backend."""
        from .backends.cupy import cuda_source
        return cuda_source(self._current().plan)

    @property
    def plan(self) -> ProgramPlan:
        return self._current().plan

    @property
    def ir(self) -> CheckedProgram:
        return self._current().program

    @property
    def outputs(self) -> tuple[str, ...]:
        return self._current().program.outputs

    @property
    def kept_windows(self) -> tuple[KeptWindow, ...]:
        """The im2col copies the kernel also returns (keep_windows=True), by name."""
        return self._current().plan.kept_windows

    def __repr__(self) -> str:
        return f"<tensorc.Kernel backend={self.backend!r} inputs={list(self.inputs)}:\n{self.program}>"

    def _current(self) -> Specialization:
        if self._last is None:
            raise TensorcError("this kernel has no shapes yet: pass shapes to tc.compile "
                               "(e.g. x=(2, 3, 32, 32)) or call it once with arrays")
        return self._last

    def _all_shapes_known(self) -> bool:
        """Whether every input's shape is given or follows from declarations and sizes."""
        declared = {s.tensor: s for s in self.program.statements if isinstance(s, S.Declaration)}
        sizes = dict(self.sizes)
        for name, shape in self.fixed_shapes.items():
            if name in declared and declared[name].dims is not None:
                sizes.update({d: n for d, n in zip(declared[name].dims, shape)
                              if isinstance(d, str)})

        def known(name: str) -> bool:
            if name in self.fixed_shapes:
                return True
            declaration = declared.get(name)
            return declaration is not None and (declaration.dims is None or all(
                isinstance(d, int) or d in sizes for d in declaration.dims))
        return all(known(name) for name in self.inputs)

    def _default_dtype(self) -> str:
        if self.dtype is not None:
            return str(self.dtype)
        declared = [DTYPES[s.dtype] for s in self.program.statements
                    if isinstance(s, S.Declaration) and s.dtype in DTYPES]
        import numpy as np
        return str(np.result_type(*declared)) if declared else "float64"

    def _specialization(self, shapes: dict[str, tuple[int, ...]], dtype: str,
                        dtypes: dict[str, str] | None = None) -> Specialization:
        try:
            return _specialize(self.program, self._program_text, self.backend, shapes,
                               self.sizes, dtype, dtypes or {}, self.requested_outputs,
                               self.keep_windows, self.windows)
        except TensorcError as error:
            raise error.attach_source(self.program.source, self.program.filename) from None

    # ---- calling ----
    def __call__(self, *args: Any, **arrays: Any) -> Any:
        import numpy as np
        xp = np
        if self.backend == "cupy":
            from .backends.cupy import device_namespace
            xp = device_namespace()
        elif self.backend == "dask":  # NumPy arrays are chunked automatically
            from .backends.dask import dask_array_module
            xp = dask_array_module()
        arrays = bind_inputs(self.inputs, args, arrays)
        values = {name: _as_array(name, arrays[name], xp) for name in self.inputs}
        # Python numbers are weak, as in NumPy 2 and PyTorch: s=0.5 keeps a float32 model float32
        weak = {name for name in self.inputs if isinstance(arrays[name], (int, float))
                and not isinstance(arrays[name], np.generic)}
        memo_key = tuple((value.shape, value.dtype.str, name in weak)
                         for name, value in values.items())
        specialization = self._by_call.get(memo_key)
        if specialization is None:
            dtype = self._call_dtype(values, weak)
            shapes = {name: value.shape for name, value in values.items()}
            if self.fixed_shapes:
                self._check_fixed_shapes(shapes)
                # shapes of tensors that are not inputs (a `+=` target, say) still apply
                shapes = {**self.fixed_shapes, **shapes}
            dtypes = {name: str(value.dtype) for name, value in values.items()}
            specialization = self._specialization(shapes, dtype, dtypes)
            if len(self._by_call) < 64:
                self._by_call[memo_key] = specialization
        self._last = specialization
        dtype = specialization.plan.dtype
        converted = [values[n] if values[n].dtype == dtype else values[n].astype(dtype)
                     for n in specialization.program.inputs]
        return specialization.function(*converted)

    def _call_dtype(self, values: Mapping[str, Any], weak: set[str] = frozenset()) -> str:
        """The dtype a call computes in: NumPy's promotion of the inputs' dtypes.

        Integer and boolean inputs are converted to the floating dtype of the others
        (float64 if none is floating), except for tc.einsum, which keeps integers as
        numpy.einsum does. Complex and other dtypes are rejected.
        """
        import numpy as np
        floating, integral = [], []
        for name, value in values.items():
            kind = value.dtype.kind
            if kind == "f" and value.dtype.itemsize not in (2, 4, 8):
                raise DtypeError(f"input '{name}' has dtype {value.dtype}; tensorc computes with "
                                 "float16, float32 or float64: convert it with .astype")
            if name in weak:
                continue  # a Python number takes the dtype of the arrays
            if kind == "f":
                floating.append(value.dtype)
            elif kind in "iub":
                integral.append(value.dtype)
            else:
                raise DtypeError(f"input '{name}' has dtype {value.dtype}; tensorc computes with "
                                 "float16, float32 or float64 (integers are converted)")
        if self.keep_integers and not floating:
            return str(np.result_type(*integral)) if integral else "float64"
        if self.keep_integers:
            return str(np.result_type(*floating, *integral))
        if floating:
            return str(np.result_type(*floating))
        return self._default_dtype()

    def _check_fixed_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        for name, shape in shapes.items():
            expected = self.fixed_shapes.get(name)
            if expected is None:
                continue
            span = self._first_use(name)
            if len(shape) != len(expected):
                raise RankError(f"'{name}' has {len(shape)} dimensions (shape {shape}) but the "
                                f"kernel was compiled for shape {expected}; compile without "
                                "shapes to specialize per call", span
                                ).attach_source(self.program.source, self.program.filename)
            for dim, (got, want) in enumerate(zip(shape, expected)):
                if got != want:
                    raise ShapeError(f"'{name}' dimension {dim} has size {got} but the kernel "
                                     f"was compiled for {want} (shape {expected})", span
                                     ).attach_source(self.program.source, self.program.filename)

    def _first_use(self, name: str):
        """The span of the first read of `name`, to point a call error at."""
        for statement in self.program.statements:
            if isinstance(statement, S.Assignment):
                for node in S.walk(statement.value):
                    if isinstance(node, S.Access) and node.tensor == name \
                            or isinstance(node, S.Name) and node.name == name:
                        return node.span
        return None


def _as_array(name: str, value: Any, xp: Any = None) -> Any:
    """An input as an array of `xp` (NumPy, or CuPy for the GPU), or a CallError saying why
    it cannot be one."""
    import numpy as np
    xp = xp or np
    if hasattr(value, "detach") and hasattr(value, "requires_grad") and xp is np:  # torch
        hint = (f"; pass {name}.detach().cpu().numpy(), or run the program inside autograd "
                "with tensorc.interop.TorchFunction")
    else:
        hint = ""
    try:
        return xp.asarray(value)
    except (ValueError, TypeError, RuntimeError) as error:
        raise CallError(f"input '{name}' cannot be read as an array ({error}){hint}") from None


def compile(program: str | S.Program, backend: str = "numpy", *, dtype: str | None = None,
            **shapes: Any) -> Kernel:
    """Compile tensorc source (or a parsed Program) into a Kernel.

    Keyword arguments give input shapes (`x=(2, 3, 32, 32)`) or size names bound by
    declarations (`N=64`). Without shapes the kernel specializes on each call's arrays.
    """
    if isinstance(program, str):
        program = parse(program)
    elif not isinstance(program, S.Program):
        raise TensorcError(f"tc.compile takes tensorc source or a Program, not "
                           f"{type(program).__name__}")
    tensor_shapes, sizes = _split_shapes(program, shapes)
    return Kernel(program, backend, tensor_shapes, sizes, dtype)


def _split_shapes(program: S.Program, shapes: Mapping[str, Any]) -> tuple[dict, dict]:
    """Keyword arguments of compile: input shapes, and sizes bound by declarations (N=64)."""
    tensor_names = set(program_inputs(program)) | {
        s.tensor for s in program.statements if isinstance(s, S.Declaration)}
    tensor_shapes, sizes = {}, {}
    for name, value in shapes.items():
        if _is_int(value) and name not in tensor_names:
            sizes[name] = value
        else:
            tensor_shapes[name] = value
    return tensor_shapes, sizes


def compile_grad(program: str | S.Program, wrt: list[str], of: list[str] | None = None,
                 backend: str = "numpy", *, dtype: str | None = None, **shapes: Any) -> Kernel:
    """One kernel for the forward pass and the gradients, sharing the intermediates.

    It returns a dict: the program's outputs by name and, for each name in `wrt`, its
    gradient `d<name>`. The cotangent of a non-scalar output `y` is an input named `dy`; a
    scalar output (a loss) needs none. `kern.program` is the combined program.
    """
    if isinstance(program, str):
        program = parse(program)
    adjoint = derive_adjoint(program, wrt, of, keep_forward=True)
    outputs = tuple(dict.fromkeys(adjoint.outputs + tuple(adjoint.gradients.values())))
    tensor_shapes, sizes = _split_shapes(adjoint.program, shapes)
    return Kernel(adjoint.program, backend, tensor_shapes, sizes, dtype, outputs=outputs)
