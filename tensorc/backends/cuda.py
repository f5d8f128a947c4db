"""Render loop nests (tensorc.loopnest) as CUDA C kernels, and as their NumPy lane form.

Both renderings walk the same nest in the same way, so they share everything but syntax:
each GPU thread decomposes its number into the parallel indices (the last fastest), reads
tensors at row-major flat positions computed from the affine maps, applies boundary modes
by index arithmetic (C's truncating `%` made non-negative), evaluates reductions as
sequential loops into a named accumulator, and stores (or, for '+=', adds atomically) its
value. In the lane form, written with NumPy, `thread` is an array holding every thread
number at once: each lane is one thread, running the same arithmetic. Tests run the lane
form on the CPU; the CUDA C is compiled with NVRTC (and nvcc where present).

User names reach the output only as identifiers the grammar accepted, mangled by
`nest_name` away from C and Python keywords and the helpers' names; numbers are formatted
from parsed ints and floats.
"""

from __future__ import annotations

import keyword
import math
import re
from typing import Callable

from ..ir import Apply, Constant, Expr, IndexMap, IndexValue, Read, Reduce
from ..loopnest import LoopNest

__all__ = ["render_cuda", "render_lanes", "nest_name", "affine_text", "CUDA_ARCH_NOTE"]

CUDA_ARCH_NOTE = "atomicAdd on double needs sm_60 or newer"

_C_KEYWORDS = set("""
alignas alignof and and_eq asm auto bitand bitor bool break case catch char char16_t
char32_t class compl const constexpr const_cast continue decltype default delete do double
dynamic_cast else enum explicit export extern false float for friend goto if inline int long
mutable namespace new noexcept not not_eq nullptr operator or or_eq private protected public
register reinterpret_cast return short signed sizeof static static_assert static_cast struct
switch template this thread_local throw true try typedef typeid typename union unsigned using
virtual void volatile wchar_t while xor xor_eq restrict main
blockIdx blockDim threadIdx gridDim warpSize
""".split())
# Names the renderings define themselves.
_OWN_NAMES = {"thread", "real", "storage", "np", "REAL", "STORAGE", "math", "range", "int",
              "float", "len", "abs", "min", "max", "pow", "exp", "log", "sqrt", "erf", "sin",
              "cos", "tanh", "fabs", "fmax", "fmin", "log1p", "expm1", "atomicAdd", "lanes",
              "inside", "row", "prange", "njit"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CALL = re.compile(r"tc_[a-z]+\([^()]*\)\Z")  # a boundary helper on a position
_INTEGER = re.compile(r"\d+\Z")  # a position that is a number (never negative: in bounds)


def nest_name(name: str) -> str:
    """A user identifier as a name safe in both C and Python (a trailing '_' when needed)."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not an identifier: {name!r}")  # the grammar never lets one through
    if name in _C_KEYWORDS or name in _OWN_NAMES or keyword.iskeyword(name) \
            or keyword.issoftkeyword(name) or name.startswith(("tc_", "__")) \
            or name.endswith("_"):
        return name + "_"
    return name


def _number(value: float | int, language: str) -> str:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float) and math.isinf(value):
        sign = "-" if value < 0 else ""
        # typed, so that a max/min accumulator stays float32 (a float64 one converts every
        # compare: a LeNet max-pool ran 5x slower single-threaded)
        return f"{sign}TC_INFINITY" if language == "c" else f"REAL({sign}np.inf)"
    if isinstance(value, float) and math.isnan(value):
        return "TC_NAN" if language == "c" else "REAL(np.nan)"
    text = repr(value) if isinstance(value, float) else str(value)
    return f"(real){text}" if language == "c" else f"REAL({text})"


def affine_text(m: IndexMap, variable: Callable[[str], str], shift: int = 0) -> str:
    """An affine map, its offset moved by `shift`, as an expression in C or Python
    (`2 * h + u - 1`), each index written as `variable(index)`."""
    text = ""
    for index, coefficient in m.terms:
        name = variable(index)
        term = name if abs(coefficient) == 1 else f"{abs(coefficient)} * {name}"
        if not text:
            text = term if coefficient > 0 else f"-{term}"
        else:
            text += f" + {term}" if coefficient > 0 else f" - {term}"
    offset = m.offset + shift
    if not text:
        return str(offset)
    if offset:
        text += f" + {offset}" if offset > 0 else f" - {-offset}"
    return text


# ---- the shared walk ------------------------------------------------------------------------

MAX_NESTING = 50  # deeper expressions are split into named temporaries
REDUCTION_START = {"sum": 0, "mean": 0, "max": -math.inf, "min": math.inf}  # accumulators' start


def _nesting(code: str) -> int:
    depth = deepest = 0
    for char in code:
        if char in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]":
            depth -= 1
    return deepest


class _NestRenderer:
    """The rendering of one nest's body; subclasses supply the syntax."""

    language = ""
    indent_unit = "    "

    def __init__(self, nest: LoopNest) -> None:
        self.nest = nest
        self.ranges = nest.ranges
        self.shapes = nest.shapes  # (plus, on the CPU, a kernel's own buffers)
        self.lines: list[str] = []
        self.indent = ""
        self.taken = {nest_name(n) for n in list(self.ranges) + list(nest.shapes)}
        # index -> the variable holding it where the code is: a reduction over an index
        # that an enclosing loop already binds (sum[i](i) inside a sum over i) gets its own
        self.variables = {i: nest_name(i) for i in nest.parallel}
        self.index_type = "int" if max(
            [nest.threads] + [math.prod(s) for s in nest.shapes.values()]) < 2 ** 31 - 1 \
            else "long long"

    def emit(self, line: str) -> None:
        self.lines.append(self.indent + line)

    def fresh(self, hint: str) -> str:
        name, number = hint, 2
        while name in self.taken:
            name, number = f"{hint}_{number}", number + 1
        self.taken.add(name)
        return name

    # positions and flat offsets
    def position(self, m: IndexMap) -> str:
        """An affine map as an expression: `2 * h + u - 1`."""
        return affine_text(m, self.variables.__getitem__)

    def can_leave(self, m: IndexMap, size: int) -> bool:
        low, high = m.extent(self.ranges)
        return low < 0 or high > size - 1

    def flat(self, positions: list[str], shape: tuple[int, ...]) -> str:
        """The row-major offset: (p0 * n1 + p1) * n2 + p2, with the positions that are
        numbers (indices bound at a border point or in an unrolled window) folded: k[c,1,2]
        of a 3x3 window is at c * 9 + 5, not (c * 3 + 1) * 3 + 2."""
        head, scale, constant = "", 1, 0  # the offset so far: head * scale + constant
        for position, size in zip(positions, (1,) + tuple(shape[1:])):
            scale, constant = scale * size, constant * size
            if _INTEGER.match(position):
                constant += int(position)
            else:
                head, scale, constant = self.offset(head, scale, constant, position), 1, 0
        return self.offset(head, scale, constant)

    def offset(self, head: str, scale: int, constant: int, position: str | None = None) -> str:
        """head * scale + constant (+ position), as an expression."""
        terms = [f"{self.wrap(head)} * {scale}" if scale != 1 else head] if head else []
        terms += [str(constant)] if constant else []
        terms += [self.wrap(position)] if position is not None else []
        return " + ".join(terms) or "0"

    @staticmethod
    def wrap(position: str) -> str:
        """`position` as an operand of `*`: parenthesized unless a name, number or call."""
        if _IDENTIFIER.match(position) or position.isdigit() or _CALL.match(position):
            return position
        return f"({position})"

    def placed(self, tensor: str, maps: tuple[IndexMap, ...], mode: str | None
               ) -> tuple[str, list[str]]:
        """The flat offset of `tensor[maps]` under boundary `mode`, and the conditions (zero
        mode) under which that position is inside the tensor."""
        shape = self.shapes[tensor]
        positions, inside = [], []
        for m, size in zip(maps, shape):
            position = self.position(m)
            if mode is not None and self.can_leave(m, size):
                if mode == "zero":
                    inside.append(f"tc_inside({position}, {size})")
                else:
                    position = f"tc_{mode}({position}, {size})"
            positions.append(position)
        return self.flat(positions, shape), inside

    # expressions
    def expr(self, e: Expr) -> str:
        if isinstance(e, Constant):
            return _number(e.value, self.language)
        if isinstance(e, IndexValue):
            return self.index_value(self.variables[e.index], e.start)
        if isinstance(e, Read):
            return self.read(e)
        if isinstance(e, Apply):
            code = self.apply(e.op, [self.expr(arg) for arg in e.args])
            if _nesting(code) > MAX_NESTING:  # Python's parser stops at 200 levels
                name = self.fresh("t")
                self.declare(name, code)
                return name
            return code
        if isinstance(e, Reduce):
            return self.reduce(e)
        raise AssertionError(f"unknown expression {e!r}")

    def reduce(self, e: Reduce) -> str:
        accumulator = self.fresh(f"{e.op}_{'_'.join(nest_name(i) for i in e.indices)}")
        initial = REDUCTION_START[e.op]
        self.declare(accumulator, _number(initial, self.language))
        enclosing = dict(self.variables)
        self.reduction_loops(e, accumulator)
        self.variables = enclosing
        if e.op == "mean":
            count = math.prod(self.ranges[i] for i in e.indices)
            self.scale(accumulator, count)
        return accumulator

    def reduction_loops(self, e: Reduce, accumulator: str) -> None:
        """The loops of a reduction, updating `accumulator` with the body at each point."""
        depth = len(self.indent)
        for index in e.indices:
            self.open_loop(self.loop_variable(index), self.ranges[index])
        self.update(accumulator, e.op, self.expr(e.body))
        while len(self.indent) > depth:
            self.close_loop()

    def loop_variable(self, index: str) -> str:
        """The variable of a reduction's loop over `index` (renamed when it shadows an
        enclosing loop's index), now where reads of `index` look."""
        variable = nest_name(index)
        if variable in self.variables.values():  # shadows an enclosing loop's index
            variable = self.fresh(variable)
        self.variables[index] = variable
        return variable

    def body(self) -> list[str]:
        """The per-thread code: index decomposition, the expression, the store."""
        nest = self.nest
        assert nest.producer is None, "the GPU plan keeps a producer as a kernel of its own"
        sizes = [self.ranges[i] for i in nest.parallel]
        for position, index in enumerate(nest.parallel):
            inner = math.prod(sizes[position + 1:])
            divided = "thread" if inner == 1 else self.divide("thread", inner)
            value = divided if position == 0 else self.modulo(divided, sizes[position])
            self.declare_index(nest_name(index), value)
        statement = nest.statement
        value = self.expr(statement.value)
        target = nest_name(nest.target)
        if not nest.atomic:
            self.store(target, "thread" if nest.parallel else "0", value)
            return self.lines
        flat, inside = self.placed(nest.target, statement.target_maps,
                                   statement.target_boundary)
        self.add_atomically(target, flat, inside, value)
        return self.lines


# ---- CUDA C ---------------------------------------------------------------------------------

_C_OPS = {
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
    "pow": "pow({0}, {1})", "neg": "(-{0})",
    "lt": "(real)({0} < {1})", "le": "(real)({0} <= {1})", "gt": "(real)({0} > {1})",
    "ge": "(real)({0} >= {1})", "eq": "(real)({0} == {1})", "ne": "(real)({0} != {1})",
    "exp": "exp({0})", "log": "log({0})", "sqrt": "sqrt({0})", "rsqrt": "((real)1 / sqrt({0}))",
    "abs": "fabs({0})", "tanh": "tanh({0})", "sigmoid": "tc_sigmoid({0})",
    "relu": "tc_relu({0})", "gelu": "tc_gelu({0})", "silu": "tc_silu({0})",
    "softplus": "tc_softplus({0})", "elu": "tc_elu({0})", "erf": "erf({0})",
    "sin": "sin({0})", "cos": "cos({0})", "log1p": "log1p({0})", "expm1": "expm1({0})",
    "sign": "tc_sign({0})", "max": "tc_max({0}, {1})", "min": "tc_min({0}, {1})",
}

_C_STORAGE = {
    "float32": ("float", "float", "{0}", "{0}"),
    "float64": ("double", "double", "{0}", "{0}"),
    # IEEE half bits, converted with PTX (NVRTC has no cuda_fp16.h without CUDA's headers)
    "float16": ("float", "unsigned short", "tc_half_to_float({0})", "tc_float_to_half({0})"),
}

_C_PRELUDE = r"""// Generated by tensorc: CUDA C for the loop kernels of one program. Regenerate, do not edit.
// Each kernel runs one thread per point of its parallel loops (a grid-stride loop).

typedef {real} real;        // what the kernels compute in
typedef {storage} storage;  // what the arrays hold

#define TC_INFINITY __int_as_float(0x7f800000)
#define TC_NAN __int_as_float(0x7fffffff)

__device__ __forceinline__ float tc_half_to_float(unsigned short h)
{{
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}}

__device__ __forceinline__ unsigned short tc_float_to_half(float f)
{{
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}}

__device__ __forceinline__ real tc_load(storage v) {{ return {load}; }}
__device__ __forceinline__ storage tc_store(real v) {{ return {store}; }}

// NaN propagates through max and min, as in NumPy (fmax would drop it).
__device__ __forceinline__ real tc_max(real a, real b) {{ return (a != a || a > b) ? a : b; }}
__device__ __forceinline__ real tc_min(real a, real b) {{ return (a != a || a < b) ? a : b; }}
__device__ __forceinline__ real tc_relu(real a) {{ return (a > 0 || a != a) ? a : (real)0; }}
__device__ __forceinline__ real tc_sign(real a) {{ return a > 0 ? (real)1 : a < 0 ? (real)-1 : a; }}
__device__ __forceinline__ real tc_sigmoid(real a) {{ return (real)1 / ((real)1 + exp(-a)); }}
__device__ __forceinline__ real tc_silu(real a) {{ return a * tc_sigmoid(a); }}
__device__ __forceinline__ real tc_softplus(real a) {{ return fmax(a, (real)0) + log1p(exp(-fabs(a))); }}
__device__ __forceinline__ real tc_elu(real a) {{ return a > 0 ? a : expm1(a); }}
__device__ __forceinline__ real tc_gelu(real a) {{ return (real)0.5 * a * ((real)1 + erf(a * (real)0.7071067811865476)); }}

// Boundary modes: where a read at position p of a dimension of size n takes its value.
// C's % truncates toward zero; tc_mod makes it the non-negative remainder.
template <typename I> __device__ __forceinline__ I tc_mod(I p, I n) {{ I r = p % n; return r < 0 ? r + n : r; }}
template <typename I> __device__ __forceinline__ bool tc_inside(I p, I n) {{ return 0 <= p && p < n; }}
template <typename I> __device__ __forceinline__ I tc_circular(I p, I n) {{ return tc_mod(p, n); }}
template <typename I> __device__ __forceinline__ I tc_replicate(I p, I n) {{ return p < 0 ? 0 : p >= n ? n - 1 : p; }}
template <typename I> __device__ __forceinline__ I tc_symmetric(I p, I n)
{{
    I q = tc_mod(p, 2 * n);  // ... 1 0 | 0 1 2 | 2 1 ...
    return q < n ? q : 2 * n - 1 - q;
}}
template <typename I> __device__ __forceinline__ I tc_reflect(I p, I n)
{{
    if (n == 1) return 0;
    I q = tc_mod(p, 2 * n - 2);  // ... 2 1 | 0 1 2 | 1 0 ...
    return q < n ? q : 2 * n - 2 - q;
}}
"""


class _CudaRenderer(_NestRenderer):
    language = "c"

    def declare(self, name: str, value: str) -> None:
        self.emit(f"real {name} = {value};")

    def declare_index(self, name: str, value: str) -> None:
        self.emit(f"const {self.index_type} {name} = {value};")

    def divide(self, value: str, by: int) -> str:
        return f"{value} / {by}"

    def modulo(self, value: str, by: int) -> str:
        return f"{value} % {by}"

    def index_value(self, name: str, start: int) -> str:
        return f"(real){name}" if not start else f"(real)({name} + {start})"

    def open_loop(self, name: str, extent: int) -> None:
        self.emit(f"for ({self.index_type} {name} = 0; {name} < {extent}; ++{name}) {{")
        self.indent += self.indent_unit

    def close_loop(self) -> None:
        self.indent = self.indent[:-len(self.indent_unit)]
        self.emit("}")

    def update(self, accumulator: str, op: str, value: str) -> None:
        if op in ("sum", "mean"):
            self.emit(f"{accumulator} += {value};")
        else:
            self.emit(f"{accumulator} = tc_{op}({accumulator}, {value});")

    def scale(self, accumulator: str, count: int) -> None:
        self.emit(f"{accumulator} /= (real){count};")

    def apply(self, op: str, args: list[str]) -> str:
        return _C_OPS[op].format(*args)

    def read(self, e: Read) -> str:
        flat, inside = self.placed(e.tensor, e.maps, e.boundary)
        value = f"tc_load({nest_name(e.tensor)}[{flat}])"
        return f"({' && '.join(inside)} ? {value} : (real)0)" if inside else value

    def store(self, target: str, flat: str, value: str) -> None:
        self.emit(f"{target}[{flat}] = tc_store({value});")

    def add_atomically(self, target: str, flat: str, inside: list[str], value: str) -> None:
        add = f"atomicAdd(&{target}[{flat}], {value});"
        self.emit(f"if ({' && '.join(inside)}) {add}" if inside else add)

    def kernel(self) -> str:
        nest = self.nest
        statement = nest.statement
        self.indent = self.indent_unit * 2
        body = self.body()
        written = nest_name(nest.target)
        params = [f"const storage* __restrict__ {nest_name(t)}" for t in nest.inputs]
        params.append(f"storage* __restrict__ {written}")
        lines = [f"// line {statement.line}: {statement.text}",
                 f"// {nest.describe()}",
                 f'extern "C" __global__ void {nest.name}(',
                 "    " + ",\n    ".join(params) + ")",
                 "{",
                 f"    for ({self.index_type} thread = blockIdx.x * ({self.index_type})blockDim.x"
                 f" + threadIdx.x; thread < {nest.threads};",
                 f"         thread += ({self.index_type})gridDim.x * blockDim.x) {{",
                 *body,
                 "    }",
                 "}"]
        return "\n".join(lines)


def render_cuda(nests: list[LoopNest]) -> str:
    """One CUDA C source holding a kernel per nest (all of one dtype), with its helpers."""
    if not nests:
        return ""
    real, storage, load, store = _C_STORAGE[nests[0].dtype]
    prelude = _C_PRELUDE.format(real=real, storage=storage, load=load.format("v"),
                                store=store.format("v"))
    return prelude + "\n\n" + "\n\n\n".join(_CudaRenderer(n).kernel() for n in nests) + "\n"


# ---- the NumPy lane form --------------------------------------------------------------------

_LANE_OPS = {
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
    "pow": "np.power({0}, {1})", "neg": "(-{0})",
    "lt": "REAL({0} < {1})", "le": "REAL({0} <= {1})", "gt": "REAL({0} > {1})",
    "ge": "REAL({0} >= {1})", "eq": "REAL({0} == {1})", "ne": "REAL({0} != {1})",
    "exp": "np.exp({0})", "log": "np.log({0})", "sqrt": "np.sqrt({0})",
    "rsqrt": "(REAL(1) / np.sqrt({0}))", "abs": "np.abs({0})", "tanh": "np.tanh({0})",
    "sigmoid": "tc_sigmoid({0})", "relu": "tc_relu({0})", "gelu": "tc_gelu({0})",
    "silu": "tc_silu({0})", "softplus": "tc_softplus({0})", "elu": "tc_elu({0})",
    "erf": "tc_erf({0})", "sin": "np.sin({0})", "cos": "np.cos({0})",
    "log1p": "np.log1p({0})", "expm1": "np.expm1({0})", "sign": "tc_sign({0})",
    "max": "tc_max({0}, {1})", "min": "tc_min({0}, {1})",
}

_LANE_PRELUDE = '''"""Generated by tensorc: the NumPy lane form of the program's CUDA loop kernels.

Each function runs one kernel with every GPU thread at once: `thread` holds all thread
numbers, and each lane of an array is one thread doing the same index arithmetic as the
CUDA C. It exists so that the arithmetic can be checked on a machine without a GPU.
"""

import math

import numpy as np

REAL = np.{real}  # what the kernels compute in


def tc_load(values, flat, inside=None):
    """values[flat] in each lane; 0 where `inside` is False (a 'zero' boundary)."""
    values = values.reshape(-1)
    if inside is None:
        return values[flat].astype(REAL)
    return np.where(inside, values[np.where(inside, flat, 0)], 0).astype(REAL)


def tc_max(a, b):
    return np.where((a != a) | (a > b), a, b)


def tc_min(a, b):
    return np.where((a != a) | (a < b), a, b)


def tc_relu(a):
    return np.where((a > 0) | (a != a), a, REAL(0))


def tc_sign(a):
    return np.where(a > 0, REAL(1), np.where(a < 0, REAL(-1), a))


def tc_sigmoid(a):
    return REAL(1) / (REAL(1) + np.exp(-a))


def tc_silu(a):
    return a * tc_sigmoid(a)


def tc_softplus(a):
    return np.fmax(a, REAL(0)) + np.log1p(np.exp(-np.abs(a)))


def tc_elu(a):
    return np.where(a > 0, a, np.expm1(a))


tc_erf = np.vectorize(math.erf, otypes=[REAL])


def tc_gelu(a):
    return REAL(0.5) * a * (REAL(1) + tc_erf(a * REAL(0.7071067811865476)))


def tc_mod(p, n):
    r = np.fmod(p, n)  # truncating, like C's %
    return np.where(r < 0, r + n, r)


def tc_inside(p, n):
    return (0 <= p) & (p < n)


def tc_circular(p, n):
    return tc_mod(p, n)


def tc_replicate(p, n):
    return np.clip(p, 0, n - 1)


def tc_symmetric(p, n):
    q = tc_mod(p, 2 * n)
    return np.where(q < n, q, 2 * n - 1 - q)


def tc_reflect(p, n):
    if n == 1:
        return p * 0
    q = tc_mod(p, 2 * n - 2)
    return np.where(q < n, q, 2 * n - 2 - q)
'''


class _PythonSyntax(_NestRenderer):
    """What the renderings in Python (the lane form here, Numba's in backends/jit.py) write
    alike: assignments, loops, index values."""

    language = "python"

    def declare(self, name: str, value: str) -> None:
        self.emit(f"{name} = {value}")

    def index_value(self, name: str, start: int) -> str:
        return f"REAL({name})" if not start else f"REAL({name} + {start})"

    def open_loop(self, name: str, extent: int) -> None:
        self.emit(f"for {name} in range({extent}):")
        self.indent += self.indent_unit

    def close_loop(self) -> None:
        self.indent = self.indent[:-len(self.indent_unit)]


class _LaneRenderer(_PythonSyntax):
    def declare_index(self, name: str, value: str) -> None:
        self.emit(f"{name} = {value}")

    def divide(self, value: str, by: int) -> str:
        return f"{value} // {by}"  # thread numbers are non-negative: as C's /

    def modulo(self, value: str, by: int) -> str:
        return f"{value} % {by}"

    def update(self, accumulator: str, op: str, value: str) -> None:
        if op in ("sum", "mean"):
            self.emit(f"{accumulator} = {accumulator} + {value}")
        else:
            self.emit(f"{accumulator} = tc_{op}({accumulator}, {value})")

    def scale(self, accumulator: str, count: int) -> None:
        self.emit(f"{accumulator} = {accumulator} / REAL({count})")

    def apply(self, op: str, args: list[str]) -> str:
        return _LANE_OPS[op].format(*args)

    def read(self, e: Read) -> str:
        flat, inside = self.placed(e.tensor, e.maps, e.boundary)
        tensor = nest_name(e.tensor)
        if not inside:
            return f"tc_load({tensor}, {flat})"
        return f"tc_load({tensor}, {flat}, {' & '.join(inside)})"

    def store(self, target: str, flat: str, value: str) -> None:
        self.emit(f"{target}.reshape(-1)[{flat}] = {value}")

    def add_atomically(self, target: str, flat: str, inside: list[str], value: str) -> None:
        self.emit(f"lanes = np.broadcast_to({value}, thread.shape)")
        if inside:
            self.emit(f"inside = np.broadcast_to({' & '.join(inside)}, thread.shape)")
            self.emit(f"np.add.at({target}.reshape(-1), "
                      f"np.broadcast_to({flat}, thread.shape)[inside], lanes[inside])")
        else:
            self.emit(f"np.add.at({target}.reshape(-1), np.broadcast_to({flat}, thread.shape), "
                      "lanes)")

    def function(self) -> str:
        nest = self.nest
        self.indent = self.indent_unit * 2
        body = self.body()
        params = [nest_name(t) for t in nest.inputs] + [nest_name(nest.target)]
        return "\n".join([
            f"def {nest.name}({', '.join(params)}):",
            f'    """{nest.statement.text}"""',
            '    with np.errstate(all="ignore"):  # a GPU raises no floating-point warnings',
            f"        thread = np.arange({nest.threads})",
            *body])


def render_lanes(nests: list[LoopNest]) -> str:
    """The NumPy lane form of the nests' kernels: a module with one function per kernel."""
    real = "float64" if nests and nests[0].dtype == "float64" else "float32"
    return _LANE_PRELUDE.format(real=real) + "\n\n" + "\n\n\n".join(
        _LaneRenderer(n).function() for n in nests) + "\n"
