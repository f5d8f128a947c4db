"""Render a plan as a standalone, deterministic NumPy module that a person can read and run.

Safety rule for everything below: user text reaches the generated source only as
identifiers the grammar accepted (re-checked by `python_name`), numbers formatted by
`repr` of parsed ints and floats, and, in comments and the docstring, the normalized
statement text, which is built from nothing but those and operators (no quotes, no
newlines). Nothing else from the program is ever spliced in.
"""

from __future__ import annotations

import builtins
import hashlib
import itertools
import keyword
import linecache
import math
import re
import textwrap
from dataclasses import dataclass, replace
from typing import Any

from ..ir import Read, walk
from ..plan import (
    ConstNode, ContractNode, ElementwiseNode, IndexNode, Node, PairStep, ProgramPlan,
    ReduceNode, ShiftedPlan, StatementPlan, ViewNode, boundary_pad, format_plan,
    ones_gemv_split, reads_in, scatter_slices, shifted_text, step_text,
)

__all__ = ["render_module", "execute_module", "python_name", "NUMPY_PAD_MODES"]

NUMPY_PAD_MODES = {"zero": "constant", "circular": "wrap", "reflect": "reflect",
                   "symmetric": "symmetric", "replicate": "edge"}

# Names the generated module defines or calls (its helpers and Python's builtins, such as
# range and min; and the CuPy backend's module globals); user names that collide get a
# trailing '_'.
_MODULE_NAMES = {"np", "as_strided", "DTYPE", "kernel", "math", "threading", "_erf",
                 "_scipy_erf", "_scratch", "_SCRATCH", "_fold_margins", "_sigmoid", "_softplus",
                 "xp", "numpy", "bind", "launch", "special", "CUDA_SOURCE", "JIT_SOURCE",
                 "_jit", "_load_jit"} | set(dir(builtins))
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def python_name(name: str) -> str:
    """A user identifier as a safe Python name (keywords and module names get a '_')."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not an identifier: {name!r}")  # the grammar never lets one through
    if keyword.iskeyword(name) or keyword.issoftkeyword(name) or name in _MODULE_NAMES \
            or name.endswith("_"):
        return name + "_"
    return name


# Elementwise operators and functions: a template over argument expressions, and whether
# the template repeats its argument (then the argument is first bound to a name).
_ELEMENTWISE = {
    "add": "{0} + {1}", "sub": "{0} - {1}", "mul": "{0} * {1}", "div": "{0} / {1}",
    "pow": "{0} ** {1}", "neg": "-{0}",
    "lt": "np.less({0}, {1}).astype(DTYPE)", "le": "np.less_equal({0}, {1}).astype(DTYPE)",
    "gt": "np.greater({0}, {1}).astype(DTYPE)", "ge": "np.greater_equal({0}, {1}).astype(DTYPE)",
    "eq": "np.equal({0}, {1}).astype(DTYPE)", "ne": "np.not_equal({0}, {1}).astype(DTYPE)",
    "exp": "np.exp({0})", "log": "np.log({0})", "sqrt": "np.sqrt({0})",
    "rsqrt": "1 / np.sqrt({0})", "abs": "np.abs({0})", "tanh": "np.tanh({0})",
    "sigmoid": "_sigmoid({0})", "relu": "np.maximum({0}, 0)",
    "gelu": "0.5 * {0} * (1 + _erf({0} * 0.7071067811865476))",
    "silu": "{0} * _sigmoid({0})", "softplus": "_softplus({0})",
    "elu": "np.where({0} > 0, {0}, np.expm1(np.minimum({0}, 0)))", "erf": "_erf({0})",
    "sin": "np.sin({0})", "cos": "np.cos({0})", "log1p": "np.log1p({0})",
    "expm1": "np.expm1({0})", "sign": "np.sign({0})",
    "max": "np.maximum({0}, {1})", "min": "np.minimum({0}, {1})",
}
_INFIX = {"add", "sub", "mul", "div", "pow", "neg"}
_COMPARISONS = {"lt", "le", "gt", "ge", "eq", "ne"}
_AS_DTYPE = ".astype(DTYPE)"
# Templates whose result is not a single call: they need parentheses before a subscript.
_TEMPLATE_PRECEDENCE = {"rsqrt": 2, "gelu": 2, "silu": 2}


def _argument_precedence(template: str, position: int) -> int:
    """How tightly an argument must bind: any expression where it is a plain call argument
    (`np.exp({0})`), an atom where an operator touches it (`-{0}`, `{0} * ...`)."""
    marker = "{%d}" % position
    for match in re.finditer(re.escape(marker), template):
        before = template[:match.start()].rstrip()
        after = template[match.end():].lstrip()
        if not (before.endswith(("(", ",")) and after.startswith((")", ","))):
            return 100
    return 0
# Python binding strengths of what the templates produce, and what each operand slot needs
# to go without parentheses (`-a ** 2` is -(a**2), so a power's base must be an atom).
_ATOM = 100
_RESULT_PRECEDENCE = {"add": 1, "sub": 1, "mul": 2, "div": 2, "neg": 3, "pow": 4}
_OPERAND_PRECEDENCE = {"add": (1, 1), "sub": (1, 2), "mul": (2, 3), "div": (2, 3),
                       "neg": (3,), "pow": (_ATOM, 3)}
# In-place forms, used when the first operand is a fresh temporary of the result's shape.
_IN_PLACE = {
    "add": "{0} += {1}", "sub": "{0} -= {1}", "mul": "{0} *= {1}", "div": "{0} /= {1}",
    "neg": "np.negative({0}, out={0})", "exp": "np.exp({0}, out={0})",
    "log": "np.log({0}, out={0})", "sqrt": "np.sqrt({0}, out={0})",
    "abs": "np.abs({0}, out={0})", "tanh": "np.tanh({0}, out={0})",
    "relu": "np.maximum({0}, 0, out={0})", "max": "np.maximum({0}, {1}, out={0})",
    "min": "np.minimum({0}, {1}, out={0})", "sin": "np.sin({0}, out={0})",
    "cos": "np.cos({0}, out={0})", "log1p": "np.log1p({0}, out={0})",
    "expm1": "np.expm1({0}, out={0})", "softplus": "np.logaddexp(0, {0}, out={0})",
}
_REDUCERS = {"sum": "np.sum", "mean": "np.mean", "max": "np.max", "min": "np.min"}
_WINDOW_UPDATE = {"sum": "np.add", "mean": "np.add", "max": "np.maximum", "min": "np.minimum"}

# A GEMM result the statement drops once used goes into a reused buffer from this size on
# (smaller ones are cheap to allocate, and their modules stay without the helper).
SCRATCH_RESULT_MIN_BYTES = 256 << 10

_SCRATCH_HELPER = '''
_SCRATCH = threading.local()  # per-thread buffers reused across calls (fresh large ones are slow)


def _scratch(name, shape, zeroed=False):
    """This thread's reusable buffer; a zeroed one is zero when made, so borders stay zero."""
    buffers = _SCRATCH.__dict__
    buffer = buffers.get(name)
    if buffer is None or buffer.shape != shape:
        buffer = buffers[name] = (np.zeros if zeroed else np.empty)(shape, dtype=DTYPE)
    return buffer
'''

_FOLD_HELPER = '''

def _fold_margins(padded, pad, mode):
    """The adjoint of np.pad: add every margin sample onto the sample it was read from."""
    for axis, (before, after) in enumerate(pad):
        if before == after == 0:
            continue
        size = padded.shape[axis] - before - after
        source = np.pad(np.arange(size), (before, after), mode=mode)  # where each sample came from
        margins = np.concatenate([np.arange(0, before),
                                  np.arange(before + size, before + size + after)])
        lead = (slice(None),) * axis
        folded = np.array(padded[lead + (slice(before, before + size),)])
        np.add.at(folded, lead + (source[margins],), padded[lead + (margins,)])
        padded = folded
    return padded
'''

# np.logaddexp is stable for large |x| but flags a NaN argument as an invalid operation;
# a NaN passing through should be as silent as in torch (and SciPy's expit).
_SIGMOID_HELPER = '''

def _sigmoid(x):
    with np.errstate(invalid="ignore"):
        return np.exp(-np.logaddexp(0, -x))


def _softplus(x):
    with np.errstate(invalid="ignore"):
        return np.logaddexp(0, x)
'''

_ERF_HELPER = '''
try:  # SciPy's erf when present; otherwise math.erf elementwise (exact, slower)
    from scipy.special import erf as _scipy_erf

    def _erf(x):
        return _scipy_erf(x).astype(DTYPE, copy=False)  # SciPy computes float16 in float32
except ImportError:  # pragma: no cover - depends on the machine
    import math
    _erf = np.vectorize(math.erf, otypes=[DTYPE])
'''


@dataclass
class _Value:
    code: str  # a Python expression
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    owned: bool = False  # a fresh array of this statement: may be updated in place
    precedence: int = _ATOM  # how tightly `code` binds; below _ATOM it needs parentheses
                             # before a subscript or method call
    contiguous: bool = True  # False for a GEMM result transposed into the wanted order
    constant: float | None = None  # the value, for a literal (constants are folded)
    # How a transposed GEMM result is stored (its axes in memory order), when known.
    layout: tuple[str, ...] | None = None
    window: ViewNode | None = None  # what a strided window view shows

    @property
    def atomic(self) -> bool:
        return self.precedence >= _ATOM

    @property
    def is_name(self) -> bool:
        return _IDENTIFIER.match(self.code) is not None


def _transposed(code: str, order: list[int]) -> str:
    """`code` (an array) with its axes in `order`: itself when that is their order."""
    return code if order == sorted(order) else f"{code}.transpose{_arguments(order)}"


def _wide_cut(shifted: ShiftedPlan, sizes: dict[str, int]) -> list[str]:
    """Subscripts of an array in wide rows ([looped..., rows..., positions]) that select its
    positions in range: every column past a row's last output (or dy's last column) cut."""
    cut = [":"] * (len(shifted.looped) + len(shifted.rows) + 1) + [
        f":{sizes[p]}" if sizes[p] != width else ":"
        for p, width in zip(shifted.positions[1:], shifted.padded[1:])]
    while cut and cut[-1] == ":":
        cut.pop()
    return cut


def _tuple(items) -> str:
    items = list(items)
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(str(i) for i in items)})"


def _arguments(items) -> str:
    """Call arguments for reshape/transpose: `(2, 27, 36)`, `(5)`, or `(())` for a 0-d shape."""
    items = list(items)
    return f"({', '.join(str(i) for i in items)})" if items else "(())"


def _number(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isinf(value):
        return "np.inf" if value > 0 else "-np.inf"
    if math.isnan(value):
        return "np.nan"
    return repr(value)


def _flops(value: int) -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.3g} {prefix}FLOP"
    return f"{value} FLOP"


def _fold(op: str, values: list) -> float:
    """An operation on constants, computed as the generated code would on float64 arrays
    (so 1/0 is inf and 10^400 overflows to inf, instead of raising Python errors)."""
    import numpy as np
    namespace = {"np": np, "DTYPE": np.float64, "_erf": _scalar_erf}
    exec(_SIGMOID_HELPER, namespace)  # noqa: S102 - our own helper source (_sigmoid, _softplus)
    # 0-d arrays, not NumPy scalars: their operators follow array rules (0**-1 is inf)
    namespace.update({f"_a{i}": np.asarray(v, dtype=np.float64) for i, v in enumerate(values)})
    template = _ELEMENTWISE[op].format(*(f"_a{i}" for i in range(len(values))))
    with np.errstate(all="ignore"):
        result = eval(template, namespace)  # noqa: S307 - our template over float64 constants
    return float(result)


def _scalar_erf(value):
    import math
    return math.erf(value)


class _StatementRenderer:
    def __init__(self, module: _ModuleRenderer, sp: StatementPlan) -> None:
        self.module = module
        self.sp = sp
        self.sizes = sp.statement.ranges
        self.lines: list[str] = []
        self.padded: dict[tuple, str] = {}
        self.views: dict[tuple, _Value] = {}
        # Inside a loop over window offsets: the looped indices and their loop variables
        # (reads are sliced at them), and the indentation of the loop body.
        self.fixed: dict[str, str] = {}
        self.indent = ""
        self.hoisted: dict[int, _Value] = {}  # plan nodes computed before such a loop
        # set while rendering a value the statement drops once used (`temporary`)
        self.into_scratch = False
        # (line number, name) of each line that makes a window view or its padded copy,
        # dropped when threaded copies read the tensor instead
        self.view_lines: list[tuple[int, str]] = []

    def emit(self, line: str) -> None:
        self.lines.append(self.indent + line)

    def fresh(self, hint: str) -> str:
        return self.module.fresh(hint)

    # ---- alignment ----
    def aligned(self, value: _Value, axes: tuple[str, ...]) -> str:
        """`value` indexed with None so that it broadcasts against an array with `axes`."""
        if value.axes == axes or not value.axes:
            return value.code
        start = axes.index(value.axes[0])
        index = [":" if a in value.axes else "None" for a in axes[start:]]
        while index and index[-1] == ":":
            index.pop()
        if not index:
            return value.code
        code = value.code if value.atomic else f"({value.code})"
        return f"{code}[{', '.join(index)}]"

    def materialized(self, value: _Value, hint: str) -> _Value:
        if value.is_name:
            return value
        name = self.fresh(hint)
        self.emit(f"{name} = {value.code}")
        return _Value(name, value.axes, value.shape, value.owned, layout=value.layout)

    def temporary(self, node: Node, hint: str) -> _Value:
        """`node`'s value, named, for a statement that drops it once used (a contribution
        added back through windows): a GEMM that yields it writes into a reused buffer.
        Measured on LeNet-2's 6.5 MB input-gradient contribution: the training step took
        0.93-0.99 of the time in six in-process A/B runs, while the kernel alone took the
        same time either way (no page faults in either case): the gain is in the step,
        where the kernel runs between others that allocate."""
        self.into_scratch = True
        try:
            return self.materialized(self.render(node, hint), hint)
        finally:
            self.into_scratch = False

    # ---- nodes ----
    def render(self, node: Node, name_hint: str = "t") -> _Value:
        if id(node) in self.hoisted:
            return self.hoisted[id(node)]
        value = self.render_node(node, name_hint)
        if not set(self.fixed) & set(value.axes):
            return value
        # a read inside a loop over window offsets: its slice at the current offset
        if isinstance(node, IndexNode):
            return _Value(f"DTYPE({self.fixed[node.index]} + {node.start})", (), (),
                          precedence=_ATOM)
        index = [self.fixed.get(a, ":") for a in value.axes]
        while index[-1] == ":":
            index.pop()
        code = value.code if value.atomic else f"({value.code})"
        kept = [i for i, a in enumerate(value.axes) if a not in self.fixed]
        return _Value(f"{code}[{', '.join(index)}]", tuple(value.axes[i] for i in kept),
                      tuple(value.shape[i] for i in kept), contiguous=False)

    def hoist_invariants(self, node: Node, looped: set[str]) -> None:
        """Compute, before a loop over window offsets, the parts of its body that do not
        depend on the offset (a max-pool gradient's dp / ties), once instead of per offset."""
        if not isinstance(node, ElementwiseNode):
            return
        if set(node.axes) & looped:
            for arg in node.args:
                self.hoist_invariants(arg, looped)
            return
        value = self.materialized(self.render(node), "t")
        self.hoisted[id(node)] = replace(value, owned=False)  # read by every offset: not in place

    def render_views_first(self, node: Node) -> None:
        """Emit the window views (and padded copies) a loop body reads, before the loop."""
        for view in reads_in(node):
            self.render_view(view)

    def render_node(self, node: Node, name_hint: str) -> _Value:
        if isinstance(node, ViewNode):
            return self.render_view(node)
        if isinstance(node, ConstNode):
            code = _number(node.value)
            return _Value(code, (), (), False, _ATOM if not code.startswith("-") else 3,
                          constant=node.value)
        if isinstance(node, IndexNode):
            size = node.shape[0]
            return _Value(f"np.arange({node.start}, {node.start + size}, dtype=DTYPE)",
                          node.axes, node.shape, True)
        if isinstance(node, ElementwiseNode):
            return self.render_elementwise(node, name_hint)
        if isinstance(node, ContractNode):
            return self.render_contraction(node, name_hint)
        if isinstance(node, ReduceNode):
            return self.render_reduce(node, name_hint)
        raise AssertionError(f"unknown plan node {node!r}")

    def render_view(self, node: ViewNode) -> _Value:
        read = node.read
        tensor = self.module.variable(read.tensor)
        if node.kind == "scalar":
            return _Value(tensor, (), ())
        key = (read.tensor, read.maps, read.boundary, node.axes)
        if key in self.views:
            return self.views[key]
        if node.kind == "whole":
            dims = [m.terms[0][0] for m in read.maps]
            code = _transposed(tensor, [dims.index(a) for a in node.axes])
            value = _Value(code, node.axes, node.shape, contiguous=code == tensor)
            self.views[key] = value
            return value
        base = self.window_base(node)
        pad = node.pad or tuple((0, 0) for _ in read.maps)
        source = base
        starts = [m.offset + before for m, (before, _) in zip(read.maps, pad)]
        if any(starts):
            source = f"{base}[{', '.join(f'{s}:' if s else ':' for s in starts)}]"
        strides_name = self.fresh(f"{tensor}_strides")
        self.view_lines.append((len(self.lines), strides_name))
        self.emit(f"{strides_name} = {base}.strides")
        strides = []
        for axis in node.axes:
            parts = []
            for dim, m in enumerate(read.maps):
                coefficient = dict(m.terms).get(axis, 0)
                if coefficient:
                    stride = f"{strides_name}[{dim}]"
                    parts.append(stride if coefficient == 1 else
                                 f"-{stride}" if coefficient == -1 else f"{coefficient}*{stride}")
            strides.append(" + ".join(parts).replace("+ -", "- "))
        name = self.fresh(f"{tensor}_win")
        self.view_lines.append((len(self.lines), name))
        self.emit(f"{name} = as_strided({source}, shape={_tuple(node.shape)}, "
                  f"strides={_tuple(strides)}, writeable=False)  # {read} over {_tuple(node.axes)}"
                  .replace("'", ""))
        value = _Value(name, node.axes, node.shape, contiguous=False, window=node)
        self.views[key] = value
        return value

    def window_base(self, node: ViewNode) -> str:
        """The array a window is cut from: the tensor, or its padded or channels-last copy
        (made once per statement)."""
        read = node.read
        tensor = self.module.variable(read.tensor)
        if node.pad is None and node.memory_order is None:
            return tensor
        pad_key = (read.tensor, node.pad, read.boundary, node.memory_order)
        if pad_key not in self.padded:
            name = self.fresh(f"{tensor}_pad" if node.pad else f"{tensor}_last")
            pad = node.pad or tuple((0, 0) for _ in read.maps)
            self.emit_padding(name, tensor, read.boundary, pad, node.memory_order)
            self.padded[pad_key] = name
        return self.padded[pad_key]

    def emit_padding(self, name: str, tensor: str, mode: str | None,
                     pad: tuple[tuple[int, int], ...],
                     memory_order: tuple[int, ...] | None = None) -> None:
        """`name` = the tensor padded per `mode`, stored in `memory_order` (a channels-last
        copy is a transposed view of a contiguous buffer, so it indexes like the tensor)."""
        shape = self.module.plan.program.tensors[self.module.tensor_of[tensor]].shape
        order = memory_order or tuple(range(len(shape)))
        inverse = tuple(order.index(d) for d in range(len(order)))
        back = "" if memory_order is None else f".transpose{_arguments(inverse)}"
        if mode in (None, "zero"):  # copy into the middle of a reused buffer
            self.module.needs_scratch = True
            padded = tuple(size + a + b for size, (a, b) in zip(shape, pad))
            stored = tuple(padded[d] for d in order)
            middle = ", ".join(f"{a}:{a + size}" if (a, b) != (0, 0) else ":"
                               for size, (a, b) in zip(shape, pad))
            zeroed = any(a != (0, 0) for a in pad)
            comment = "boundary 'zero'" if zeroed else "channels-last copy"
            if zeroed and memory_order is not None:
                comment += ", channels-last"
            self.view_lines += [(len(self.lines), name), (len(self.lines) + 1, name)]
            self.emit(f"{name} = _scratch({name!r}, {_tuple(stored)}"
                      f"{', zeroed=True' if zeroed else ''}){back}  # {comment}")
            self.emit(f"{name}[{middle}] = {tensor}")
            return
        widths = ", ".join(f"({pad[d][0]}, {pad[d][1]})" for d in order)
        source = tensor if memory_order is None else f"{tensor}.transpose{_arguments(order)}"
        self.view_lines.append((len(self.lines), name))
        self.emit(f"{name} = np.pad({source}, ({widths}{',' if len(pad) == 1 else ''}), "
                  f"mode={NUMPY_PAD_MODES[mode]!r}){back}  # boundary '{mode}'"
                  + (", channels-last" if memory_order is not None else ""))

    def render_elementwise(self, node: ElementwiseNode, name_hint: str) -> _Value:
        args = [self.render(arg, name_hint if i == 0 else "t") for i, arg in enumerate(node.args)]
        if all(arg.constant is not None for arg in args):
            return self.render(ConstNode(_fold(node.op, [arg.constant for arg in args])))
        if node.op in ("gelu", "erf"):
            self.module.needs_erf = True
        if node.op in ("sigmoid", "silu", "softplus"):
            self.module.needs_sigmoid = True
        kept = [i for i, a in enumerate(node.axes) if a not in self.fixed]
        axes = tuple(node.axes[i] for i in kept)
        shape = tuple(node.shape[i] for i in kept)
        first = args[0]
        if node.op in _IN_PLACE and first.owned and first.is_name and first.axes == axes \
                and (len(args) == 1 or set(args[1].axes) <= set(axes)):
            other = self.aligned(args[1], axes) if len(args) > 1 else ""
            self.emit(_IN_PLACE[node.op].format(first.code, other))
            return first
        if node.op == "pow" and isinstance(node.args[1], ConstNode) and node.args[1].value == 2:
            return _Value(f"np.square({self.aligned(first, axes)})", axes, shape, True)
        template = _ELEMENTWISE[node.op]
        if template.count("{0}") > 1 and not first.is_name:
            first = self.materialized(first, "t")
            args[0] = first
        codes = []
        for i, arg in enumerate(args):
            code = self.aligned(arg, axes)
            precedence = _ATOM if code != arg.code else arg.precedence
            needed = _OPERAND_PRECEDENCE[node.op][i] if node.op in _INFIX else \
                _argument_precedence(template, i)
            codes.append(f"({code})" if precedence < needed else code)
        code = template.format(*codes)
        precedence = _RESULT_PRECEDENCE.get(node.op, _TEMPLATE_PRECEDENCE.get(node.op, _ATOM))
        return _Value(code, axes, shape, True, precedence)

    def operand(self, node: Node) -> _Value:
        value = self.render(node)
        if isinstance(node, ViewNode):
            return value
        return self.materialized(value, "t")

    def render_contraction(self, node: ContractNode, name_hint: str) -> _Value:
        if node.fft is not None:
            value = self.render_fft(node, name_hint)
        elif node.shifted is not None:
            value = self.render_shifted(node, name_hint)
        else:
            into_scratch, self.into_scratch = self.into_scratch, False  # (not its operands)
            working = [self.operand(o) for o in node.operands]
            total = len(node.steps)
            for number, step in enumerate(node.steps, 1):
                last = number == total
                result = self.fresh(name_hint if last else "t")
                self.emit(f"# step {number}/{total}: {self.describe(step)}")
                value = self.render_step(step, working, result, into_scratch and last)
                for i in sorted({step.left, step.right}, reverse=True):
                    working.pop(i)
                working.append(value)
            value = working[-1]
        factor = node.scale / node.mean_count
        if factor != 1:
            if value.axes:
                self.emit(f"{value.code} *= {_number(factor)}")
            else:
                self.emit(f"{value.code} = {value.code} * {_number(factor)}")
        return value

    def render_fft(self, node: ContractNode, name_hint: str) -> _Value:
        """Both operands to the frequency domain over the window dimensions, their product
        there (the plan's step, over frequency axes), back, and the output range cut out."""
        fft = node.fft
        self.sizes = {**self.sizes, **fft.sizes}
        signal, kernel = node.operands[fft.signal], node.operands[fft.kernel]
        lengths = _tuple(d.length for d in fft.dims)
        outputs = ",".join(d.output for d in fft.dims)
        self.emit(f"# FFT over {outputs}: a circular convolution of length "
                  f"{'x'.join(str(d.length) for d in fft.dims)}, which wraps around only "
                  "outside the output range")
        # the signal: its padded array whole along the windows, its own range elsewhere
        windowed = {d.dim for d in fft.dims}
        shape = self.module.plan.program.tensors[signal.read.tensor].shape
        cut = [":" if dim in windowed or self.sizes[m.terms[0][0]] == size
               else f":{self.sizes[m.terms[0][0]]}"
               for dim, (m, size) in enumerate(zip(signal.read.maps, shape))]
        source = self.window_base(signal) + (f"[{', '.join(cut)}]" if set(cut) != {":"} else "")
        signal_f = self.fresh(f"{self.module.variable(signal.read.tensor)}_f")
        self.emit(f"{signal_f} = np.fft.rfftn({source}, s={lengths}, "
                  f"axes={_tuple(d.dim for d in fft.dims)})")
        # the kernel: flipped along correlations (a correlation is a convolution with the
        # flipped kernel), cut to each index's range; rfftn zero-pads it to the lengths
        shape = self.module.plan.program.tensors[kernel.read.tensor].shape
        by_window = {d.window: d for d in fft.dims}
        cut = []
        for m, size in zip(kernel.read.maps, shape):
            n = self.sizes[m.terms[0][0]]
            d = by_window.get(m.terms[0][0])
            if d is not None and d.sign > 0:
                cut.append("::-1" if n == size else f"{n - 1}::-1")
            else:
                cut.append(":" if n == size else f":{n}")
        source = self.module.variable(kernel.read.tensor) + (
            f"[{', '.join(cut)}]" if set(cut) != {":"} else "")
        kernel_f = self.fresh(f"{self.module.variable(kernel.read.tensor)}_f")
        self.emit(f"{kernel_f} = np.fft.rfftn({source}, s={lengths}, "
                  f"axes={_tuple(d.kernel_dim for d in fft.dims)})")
        working = [_Value(name, axes, tuple(self.sizes[a] for a in axes), True)  # the
                   for name, axes in ((signal_f, fft.signal_axes),  # step's (left, right)
                                      (kernel_f, fft.kernel_axes))]
        step = node.steps[0]
        self.emit(f"# {self.describe(step)} (in complex numbers: 4x the work)")
        product = self.render_step(step, working, self.fresh("t_f"))
        positions = _tuple(product.axes.index(d.frequency) for d in fft.dims)
        crop = {d.frequency: f"{d.crop}:{d.crop + self.sizes[d.output]}" for d in fft.dims}
        cut = ", ".join(crop.get(a, ":") for a in product.axes)
        result = self.fresh(name_hint)
        self.emit(f"{result} = np.fft.irfftn({product.code}, s={lengths}, axes={positions})"
                  f"[{cut}].astype(DTYPE, copy=False)")
        return _Value(result, node.axes, node.shape, True, contiguous=False)

    def render_shifted(self, node: ContractNode, name_hint: str) -> _Value:
        """One padded, flattened copy of the signal; the kernel operand arranged per offset
        (or dy in wide rows); then one BLAS GEMM per looped entry and window offset, on
        views of the copy shifted by the offset (see plan.ShiftedPlan)."""
        shifted = node.shifted
        self.module.needs_scratch = self.module.needs_gemm = True
        x, k = node.operands[shifted.signal], node.operands[shifted.kernel]
        size = lambda axes: [self.sizes[a] for a in axes]  # noqa: E731
        summed = shifted.mode == "offsets summed"
        windowed = shifted.dims
        # the signal, padded and flattened: [looped..., channels..., plane], plus a tail
        x_name = self.module.variable(x.read.tensor)
        x_shape = self.module.plan.program.tensors[x.read.tensor].shape
        x_dim = {m.terms[0][0]: i for i, m in enumerate(x.read.maps) if i not in windowed}
        outer = [*shifted.looped, *shifted.channels]
        source = _transposed(x_name, [x_dim[a] for a in outer] + list(windowed))
        pad = x.pad or tuple((0, 0) for _ in x_shape)
        stored = size(outer) + list(shifted.padded)
        interior = [":"] * len(outer) + [
            ":" if pad[d] == (0, 0) else f"{pad[d][0]}:{pad[d][0] + x_shape[d]}" for d in windowed]
        while interior and interior[-1] == ":":
            interior.pop()
        plane = math.prod(shifted.padded)
        total = math.prod(stored)
        flat = self.fresh(f"{x_name}_flat")
        padded = "x".join(map(str, shifted.padded))
        tail = f", and {shifted.tail} more read by the last shifts" if shifted.tail else ""
        self.emit(f"{flat} = _scratch({flat!r}, ({total + shifted.tail},), zeroed=True)  "
                  f"# {x.read.tensor} {'zero-padded to ' if x.pad else 'as '}{padded} planes"
                  f"{tail}")
        whole = f"{flat}[:{total}]" if shifted.tail else flat
        self.emit(f"{whole}.reshape{_arguments(stored)}"
                  f"{'[' + ', '.join(interior) + ']' if interior else '[...]'} = {source}")
        # the signal shifted by each offset: [offsets..., looped..., channels, positions]
        steps = [math.prod(shifted.padded[i + 1:]) for i in range(len(windowed))]
        base = sum(start * step for (start, _), step in zip(shifted.shifts, steps))
        wide = shifted.gemm_shape[1] if summed else shifted.gemm_shape[2]
        looped_steps = [math.prod(stored[i + 1:]) for i in range(len(shifted.looped))]
        view_shape = size(shifted.offsets) + size(shifted.looped) + [
            math.prod(size(shifted.channels)), wide]
        view_steps = [c * step for (_, c), step in zip(shifted.shifts, steps)] \
            + looped_steps + [plane, 1]
        x_shifted = self.fresh(f"{x_name}_shifted")
        positions = " + ".join(f"{p}*{step}" if step > 1 else p
                               for p, step in zip(shifted.positions, steps))
        axes_text = ", ".join(list(shifted.offsets) + list(shifted.looped)
                              + [",".join(shifted.channels) or "1", positions])
        start = f"{flat}[{base}:]" if base else flat
        self.emit(f"{x_shifted} = as_strided({start}, shape={_tuple(view_shape)}, "
                  f"strides=tuple({flat}.itemsize * step for step in {_tuple(view_steps)}), "
                  f"writeable=False)  # [{axes_text}]")
        # the kernel operand, and where the products go
        k_name = self.module.variable(k.read.tensor)
        k_dim = {m.terms[0][0]: i for i, m in enumerate(k.read.maps)}
        shared = [a for a in shifted.looped if a in k_dim and a not in shifted.accumulated]
        result = self.fresh(name_hint)
        # the result (summed) or dy (kept) in wide rows, and the same as GEMM rows
        wide_shape = size(shifted.looped) + size(shifted.rows) \
            + size(shifted.positions[:1]) + list(shifted.padded[1:])
        rows_shape = size(shifted.looped) + [math.prod(size(shifted.rows)), wide]
        if summed:  # kernel[offset..., shared..., rows, channels]
            k_order = [k_dim[a] for a in [*shifted.offsets, *shared, *shifted.rows,
                                          *shifted.channels]]
            k_arranged = self.fresh(f"{k_name}_offsets")
            arranged_shape = size(shifted.offsets) + size(shared) + [
                math.prod(size(shifted.rows)), math.prod(size(shifted.channels))]
            self.emit(f"{k_arranged} = np.ascontiguousarray({_transposed(k_name, k_order)})"
                      f".reshape{_arguments(arranged_shape)}")
            wide_result = self.fresh(f"{name_hint}_wide") if len(windowed) > 1 else result
            out_rows = self.fresh(f"{name_hint}_rows")
            self.emit(f"{wide_result} = np.empty({_tuple(wide_shape)}, dtype=DTYPE)"
                      + ("  # wide rows: the columns past each row's outputs are cut off"
                         if len(windowed) > 1 else ""))
            self.emit(f"{out_rows} = {wide_result}.reshape{_arguments(rows_shape)}")
        else:  # dy in wide rows: [shared..., accumulated..., rows, positions], zeros between
            k_order = [k_dim[a] for a in [*shifted.looped, *shifted.rows, *shifted.positions]]
            k_arranged = self.fresh(f"{k_name}_wide")
            cut = _wide_cut(shifted, self.sizes)
            self.emit(f"{k_arranged} = _scratch({k_arranged!r}, {_tuple(wide_shape)}, "
                      f"zeroed=True)" + ("  # wide rows: their extra columns stay zero"
                                         if len(windowed) > 1 else ""))
            self.emit(f"{k_arranged}[{', '.join(cut) or '...'}] = "
                      f"{_transposed(k_name, k_order)}")
            k_arranged_rows = self.fresh(f"{k_name}_rows")
            self.emit(f"{k_arranged_rows} = {k_arranged}.reshape{_arguments(rows_shape)}")
            out_shape = size(shared) + size(shifted.offsets) + [
                math.prod(size(shifted.rows)), math.prod(size(shifted.channels))]
            self.emit(f"{result} = np.empty({_tuple(out_shape)}, dtype=DTYPE)")
        # the GEMMs
        self.emit(f"# {shifted_text(shifted, self.sizes)}")
        loop_vars = {a: self.module.index_variable(a) for a in (*shifted.looped, *shifted.offsets)}
        indent = self.indent
        for a in (*shifted.looped, *shifted.offsets):
            self.emit(f"for {loop_vars[a]} in range({self.sizes[a]}):")
            self.indent += "    "
        at = lambda axes: ", ".join(loop_vars[a] for a in axes)  # noqa: E731
        if summed:
            first = " + ".join(loop_vars[a] for a in shifted.offsets)
            self.emit(f"_gemm({k_arranged}[{at([*shifted.offsets, *shared])}], "
                      f"{x_shifted}[{at([*shifted.offsets, *shifted.looped])}], "
                      f"{out_rows}{'[' + at(shifted.looped) + ']' if shifted.looped else ''}, "
                      f"accumulate={first} > 0)")
        else:
            first = " + ".join(loop_vars[a] for a in shifted.accumulated)
            rows = f"[{at(shifted.looped)}]" if shifted.looped else ""
            self.emit(f"_gemm({k_arranged_rows}{rows}, "
                      f"{x_shifted}[{at([*shifted.offsets, *shifted.looped])}].T, "
                      f"{result}[{at([*shared, *shifted.offsets])}], "
                      f"accumulate={first + ' > 0' if first else 'False'})")
        self.indent = indent
        if summed:
            cut = _wide_cut(shifted, self.sizes)
            axes = (*shifted.looped, *shifted.rows, *shifted.positions)
            code = f"{wide_result}[{', '.join(cut)}]" if cut else wide_result
        else:
            axes = (*shared, *shifted.offsets, *shifted.rows, *shifted.channels)
            code = f"{result}.reshape{_arguments(size(axes))}"
        code = _transposed(code, [axes.index(a) for a in node.axes])
        return _Value(code, node.axes, node.shape, True,
                      contiguous=code == wide_result if summed else False)

    def describe(self, step: PairStep) -> str:
        if step.kind == "multiply":
            return f"broadcast product -> {_tuple(step.result_axes)}".replace("'", "")
        text = step_text(step, self.sizes)
        return text if step.kind == "reduce" else f"{text}, {_flops(step.flops)}"

    def presummed(self, value: _Value, axes: tuple[str, ...]) -> _Value:
        if not axes:
            return value
        positions = [value.axes.index(a) for a in axes]
        kept = tuple(a for a in value.axes if a not in axes)
        return _Value(f"np.sum({value.code}, axis={_tuple(positions)})", kept,
                      tuple(self.sizes[a] for a in kept), True)

    def reordered(self, value: _Value, order: tuple[str, ...]) -> _Value:
        """`value` transposed so its axes follow `order` (GEMM operands keep their own)."""
        wanted = tuple(a for a in order if a in value.axes)
        if wanted == value.axes:
            return value
        permutation = [value.axes.index(a) for a in wanted]
        code = value.code if value.atomic else f"({value.code})"
        return _Value(f"{code}.transpose{_arguments(permutation)}", wanted,
                      tuple(self.sizes[a] for a in wanted), value.owned)

    def render_step(self, step: PairStep, working: list[_Value], result: str,
                    into_scratch: bool = False) -> _Value:
        """One step of a contraction, its result named `result`; with `into_scratch`, a
        GEMM's result written into this thread's reused buffer of that name."""
        out_shape = tuple(self.sizes[a] for a in step.result_axes)
        if step.kind == "reduce":
            value = self.presummed(working[step.left], step.presum_left)
            value = self.reordered(value, step.result_axes)
            self.emit(f"{result} = {value.code}")
            return _Value(result, value.axes, value.shape, bool(value.axes),
                          contiguous=False)
        a = self.presummed(working[step.left], step.presum_left)
        b = self.presummed(working[step.right], step.presum_right)
        if step.kind == "multiply":
            a = self.reordered(a, step.result_axes)
            b = self.reordered(b, step.result_axes)
            code = f"{self.aligned(a, step.result_axes)} * {self.aligned(b, step.result_axes)}"
            union = tuple(x for x in step.result_axes if x in a.axes or x in b.axes)
            if union != step.result_axes:
                code = f"np.broadcast_to({code}, {_tuple(out_shape)}).copy()"
            self.emit(f"{result} = {code}")
            return _Value(result, step.result_axes, out_shape, bool(out_shape))
        first, second = (b, a) if step.swap else (a, b)
        if step.chunked(self.sizes):
            if step.chunk_axis in step.contracted:
                return self.render_summed_chunks(step, first, second, result)
            return self.render_chunked_gemm(step, first, second, result)
        sides = ((step.kept_left, step.contracted), (step.contracted, step.kept_right))
        first, second = (self.held_copy(value, kept or shared, bool(kept), step.batch, *axes)
                         if kept or shared else value
                         for value, kept, shared, axes in zip((first, second), step.kept,
                                                              step.shared, sides))
        if "im2col" in self.sp.packing:
            first = self.packed(first, step.windows[0], step.batch, step.kept_left,
                                step.contracted)
            second = self.packed(second, step.windows[1], step.batch, step.contracted,
                                 step.kept_right)
        left = self.gemm_operand(first, step.batch, step.kept_left, step.contracted)
        right = self.gemm_operand(second, step.batch, step.contracted, step.kept_right)
        natural = step.batch + step.kept_left + step.kept_right
        natural_shape = tuple(self.sizes[x] for x in natural)
        gemm_shape = tuple(self.sizes[x] for x in step.batch) + (
            math.prod(self.sizes[x] for x in step.kept_left),
            math.prod(self.sizes[x] for x in step.kept_right))
        if into_scratch and not step.summed and \
                math.prod(gemm_shape) * self.module.plan.itemsize >= SCRATCH_RESULT_MIN_BYTES:
            self.module.needs_scratch = True
            code = f"np.matmul({left}, {right}, out=_scratch({result!r}, {_tuple(gemm_shape)}))"
        else:
            code = f"np.matmul({left}, {right})"
        if step.summed:  # the leading batch axes are contracted: add up their results
            count = len(step.summed)
            code += f".sum(axis={0 if count == 1 else _tuple(range(count))})"
            natural, natural_shape, gemm_shape = (natural[count:], natural_shape[count:],
                                                  gemm_shape[count:])
        if natural_shape != gemm_shape:
            code += f".reshape{_arguments(natural_shape)}"
        if step.final_transpose is not None:
            code += f".transpose{_arguments(step.final_transpose)}"
        self.emit(f"{result} = {code}")
        return _Value(result, step.result_axes, out_shape, bool(out_shape),
                      contiguous=step.final_transpose is None, layout=natural)

    def packed(self, value: _Value, window: bool, batch: tuple[str, ...],
               first: tuple[str, ...], second: tuple[str, ...]) -> _Value:
        """A window operand copied into GEMM order by a threaded Numba loop (im2col) into a
        reused buffer; any other operand as it is."""
        if not window or value.window is None:
            return value
        self.module.needs_scratch = True
        order = tuple(g for g in batch if g in value.axes) + first + second
        shape = tuple(self.sizes[x] for x in order)
        buffer = self.fresh(value.code.removesuffix("_win") + "_cols")
        self.emit(f"{buffer} = _scratch({buffer!r}, {_tuple(shape)})")
        self.emit(self.pack_window(value, buffer, order))
        return _Value(buffer, order, shape)

    def held_copy(self, value: _Value, name: str, returned: bool, batch: tuple[str, ...],
                  first: tuple[str, ...], second: tuple[str, ...]) -> _Value:
        """A window operand copied into GEMM order into `name`: a fresh array the kernel
        also returns (`returned`: plan.keep_windows), else this thread's reused buffer that
        a later statement reads (plan.share_windows); by the threaded copy where the plan
        packs, else by NumPy."""
        order = tuple(g for g in batch if g in value.axes) + first + second
        shape = tuple(self.sizes[x] for x in order)
        if returned:
            buffer, note = f"np.empty({_tuple(shape)}, dtype=DTYPE)", "also returned"
        else:
            self.module.needs_scratch = True
            buffer, note = f"_scratch({name!r}, {_tuple(shape)})", "read again below"
        if "im2col" in self.sp.packing:
            self.emit(f"{name} = {buffer}  # im2col copy, {note}")
            self.emit(self.pack_window(value, name, order))
        elif returned:
            self.emit(f"{name} = np.ascontiguousarray({self.reordered(value, order).code})"
                      f"  # im2col copy, {note}")
        else:
            self.emit(f"{name} = {buffer}  # im2col copy, {note}")
            whole = ", ".join(":" * len(shape))
            self.emit(f"{name}[{whole}] = {self.reordered(value, order).code}")
        return _Value(name, order, shape)

    def pack_window(self, value: _Value, cols: str, order: tuple[str, ...],
                    chunk: tuple[str, str, str, int] | None = None) -> str:
        """The call that copies window `value` into `cols`, laid out along `order`, by a
        threaded Numba loop; `chunk` = (axis, start, stop, most entries) copies only those
        entries. A window with zero (or no) boundary is read from the tensor itself, with
        bounds checks instead of a padded copy."""
        from .jit import render_pack
        node = value.window
        read = node.read
        tensor = self.module.variable(read.tensor)
        shape = self.module.plan.program.tensors[read.tensor].shape
        maps = read.maps
        if read.boundary in (None, "zero") and node.memory_order is None:
            source, shifts = tensor, (0,) * len(shape)
            guarded = tuple(d for d, p in enumerate(node.pad or ()) if p != (0, 0))
        else:  # the padded (or channels-last) copy the view was cut from
            source = self.window_base(node)
            shifts = tuple(before for before, _ in (node.pad or ((0, 0),) * len(shape)))
            shape = tuple(size + a + b for size, (a, b) in zip(shape, node.pad or
                                                                ((0, 0),) * len(shape)))
            guarded = ()
            if node.memory_order is not None:  # index the copy as it is stored: C order
                memory = node.memory_order
                source = f"{source}.transpose{_arguments(memory)}"
                maps = tuple(maps[d] for d in memory)
                shifts = tuple(shifts[d] for d in memory)
                shape = tuple(shape[d] for d in memory)
        name = self.module.jit_name(f"pack_{read.tensor}")
        self.module.jit_copies.append(render_pack(
            name, str(read), maps, shifts, shape, guarded, order,
            {a: chunk[3] if chunk and a == chunk[0] else self.sizes[a] for a in order},
            chunk[0] if chunk else None))
        arguments = [source, cols] + ([chunk[1], chunk[2]] if chunk else [])
        return f"_jit.{name}({', '.join(arguments)})"

    @staticmethod
    def gemm_size(axes: tuple[str, ...], sizes: dict) -> int | str:
        """The product of the axes' sizes: a number, or a Python expression when one of
        them is a chunk's size (`n_stop - n_start`)."""
        numbers = [sizes[x] for x in axes]
        if all(isinstance(n, int) for n in numbers):
            return math.prod(numbers)
        fixed = math.prod(n for n in numbers if isinstance(n, int))
        parts = [f"({n})" for n in numbers if isinstance(n, str)]
        return " * ".join(([str(fixed)] if fixed != 1 else []) + parts)

    def gemm_operand(self, value: _Value, batch: tuple[str, ...], first: tuple[str, ...],
                     second: tuple[str, ...], sizes: dict | None = None) -> str:
        """Arrange an operand as [batch..., first, second] (size-1 batch axes it lacks).

        An operand stored as [batch..., second, first] becomes a transposed view, which BLAS
        reads without a copy. `sizes` may map an axis to a Python expression (a chunk).
        """
        sizes = sizes or self.sizes
        size = lambda axes: self.gemm_size(axes, sizes)  # noqa: E731
        present = [g for g in batch if g in value.axes]
        lead = tuple(sizes[g] if g in value.axes else 1 for g in batch) if present else ()
        code = value.code if value.atomic else f"({value.code})"
        swapped = tuple(present) + tuple(second) + tuple(first)
        if value.contiguous and value.axes == swapped and first and second \
                and (len(first) > 1 or len(second) > 1):
            shape = lead + (size(second), size(first))
            if tuple(sizes[x] for x in swapped) != shape:
                code += f".reshape{_arguments(shape)}"
            return code + (".T" if not lead else ".swapaxes(-1, -2)")
        order = present + list(first) + list(second)
        permutation = [value.axes.index(x) for x in order]
        if permutation != list(range(len(permutation))):
            code += f".transpose{_arguments(permutation)}"
        current = tuple(sizes[x] for x in order)
        wanted = lead + (size(first), size(second))
        if current != wanted:
            code += f".reshape{_arguments(wanted)}"
        return code

    def render_chunked_gemm(self, step: PairStep, first: _Value, second: _Value,
                            result: str) -> _Value:
        """im2col one chunk of the GEMM's leading axis (the first batch or row axis) at a
        time into a reused buffer, and GEMM each chunk straight into the result (in the
        GEMM's layout, transposed at the end when that differs from the result's)."""
        self.module.needs_scratch = True
        axis = step.chunk_axis
        total = self.sizes[axis]
        out_shape = tuple(self.sizes[a] for a in step.result_axes)
        start, stop = self.fresh(f"{axis}_start"), self.fresh(f"{axis}_stop")
        chunk_sizes = {**self.sizes, axis: f"{stop} - {start}"}
        layout = step.batch + step.kept_left + step.kept_right
        product = self.gemm_size
        gemm_out = result if step.final_transpose is None else self.fresh(f"{result}_gemm")
        self.emit(f"{gemm_out} = np.empty({_tuple(tuple(self.sizes[a] for a in layout))}, "
                  "dtype=DTYPE)")
        loop_lines: list[str] = []
        arranged = []
        for value, outer, inner, window, held in ((first, step.kept_left, step.contracted,
                                                   step.windows[0], step.shared[0]),
                                                  (second, step.contracted, step.kept_right,
                                                   step.windows[1], step.shared[1])):
            if axis in value.axes:
                index = ", ".join([":"] * value.axes.index(axis) + [f"{start}:{stop}"])
                sliced = _Value(f"{value.code}[{index}]", value.axes, value.shape,
                                contiguous=value.contiguous)
            else:
                sliced = value
            if window:  # the strided window view: im2col this chunk into the buffer
                present = [g for g in step.batch if g in value.axes]
                order = present + list(outer) + list(inner)
                full = tuple(self.sizes[x] if x != axis else step.chunk for x in order)
                if held:  # a later statement reads the whole copy (plan.share_windows)
                    buffer, full = held, tuple(self.sizes[x] for x in order)
                else:
                    buffer = self.fresh(value.code.removesuffix("_win") + "_cols")
                self.emit(f"{buffer} = _scratch({buffer!r}, {_tuple(full)})"
                          + ("  # im2col copy, read again below" if held else ""))
                cols = self.fresh("cols")
                permutation = [value.axes.index(x) for x in order]
                moved = "" if permutation == sorted(permutation) else \
                    f".transpose{_arguments(permutation)}"
                loop_lines.append(f"{cols} = {buffer}[{start}:{stop}]" if held else
                                  f"{cols} = {buffer}[:{stop} - {start}]")
                loop_lines.append(self.copy_chunk(value, sliced.code + moved, cols,
                                                  tuple(order), step, start, stop))
                copied = _Value(cols, tuple(order), full)
                arranged.append(self.gemm_operand(copied, step.batch, outer, inner, chunk_sizes))
            elif axis in value.axes:
                arranged.append(self.gemm_operand(sliced, step.batch, outer, inner, chunk_sizes))
            else:
                hoisted = self.gemm_operand(value, step.batch, outer, inner)
                if not _IDENTIFIER.match(hoisted):
                    name = self.fresh(f"{value.code}_mat" if value.is_name else "t")
                    self.emit(f"{name} = {hoisted}")
                    hoisted = name
                arranged.append(hoisted)
        lead = tuple(chunk_sizes[g] for g in step.batch)
        out_view = (f"{gemm_out}[{start}:{stop}].reshape"
                    f"{_arguments(lead + (product(step.kept_left, chunk_sizes), product(step.kept_right, chunk_sizes)))}")
        self.emit(f"for {start} in range(0, {total}, {step.chunk}):")
        self.emit(f"    {stop} = min({start} + {step.chunk}, {total})")
        for line in loop_lines:
            self.emit("    " + line)
        self.emit(f"    np.matmul({arranged[0]}, {arranged[1]}, out={out_view})")
        if step.final_transpose is not None:
            self.emit(f"{result} = {gemm_out}.transpose{_arguments(step.final_transpose)}")
        return _Value(result, step.result_axes, out_shape, True,
                      contiguous=step.final_transpose is None, layout=layout)

    def copy_chunk(self, value: _Value, view: str, cols: str, order: tuple[str, ...],
                   step: PairStep, start: str, stop: str) -> str:
        """The line that copies one chunk of a window into `cols` (im2col): NumPy's copyto
        of the chunk's `view`, or a threaded Numba loop."""
        if "im2col" not in self.sp.packing or value.window is None:
            return f"np.copyto({cols}, {view})"
        axis = step.chunk_axis
        return self.pack_window(value, cols, tuple(order), (axis, start, stop, step.chunk)
                                if axis in value.axes else None)

    def render_summed_chunks(self, step: PairStep, first: _Value, second: _Value,
                             result: str) -> _Value:
        """A GEMM that contracts over a window's leading axis (a weight gradient sums over
        the batch): im2col one chunk of that axis at a time into a reused buffer and add up
        the chunks' GEMMs, instead of copying the whole window at once."""
        self.module.needs_scratch = True
        axis = step.chunk_axis
        total = self.sizes[axis]
        start, stop = self.fresh(f"{axis}_start"), self.fresh(f"{axis}_stop")
        chunk_sizes = {**self.sizes, axis: f"{stop} - {start}"}
        rows = math.prod(self.sizes[x] for x in step.kept_left)
        columns = math.prod(self.sizes[x] for x in step.kept_right)
        total_name = self.fresh(f"{result}_sum")
        self.emit(f"{total_name} = np.zeros({_tuple((rows, columns))}, dtype=DTYPE)")
        loop_lines: list[str] = []
        arranged = []
        for value, outer, inner, window in ((first, step.kept_left, step.contracted,
                                             step.windows[0]),
                                            (second, step.contracted, step.kept_right,
                                             step.windows[1])):
            index = ", ".join([":"] * value.axes.index(axis) + [f"{start}:{stop}"])
            sliced = _Value(f"{value.code}[{index}]", value.axes, value.shape,
                            contiguous=value.contiguous)
            if window:  # copy this chunk of the window into the front of a reused buffer
                order = list(outer) + list(inner)
                buffer = self.fresh(value.code.removesuffix("_win") + "_cols")
                most = math.prod(self.sizes[x] if x != axis else step.chunk for x in order)
                self.emit(f"{buffer} = _scratch({buffer!r}, ({most},))")
                shape = ", ".join(chunk_sizes[x] if x == axis else str(self.sizes[x])
                                  for x in order)
                count = " * ".join(f"({chunk_sizes[x]})" if x == axis else str(self.sizes[x])
                                   for x in order)
                cols = self.fresh("cols")
                permutation = [value.axes.index(x) for x in order]
                loop_lines.append(f"{cols} = {buffer}[:{count}].reshape({shape})")
                moved = "" if permutation == sorted(permutation) else \
                    f".transpose{_arguments(permutation)}"
                loop_lines.append(self.copy_chunk(value, sliced.code + moved, cols,
                                                  tuple(order), step, start, stop))
                copied = _Value(cols, tuple(order), ())
                arranged.append(self.gemm_operand(copied, (), outer, inner, chunk_sizes))
            else:
                arranged.append(self.gemm_operand(sliced, (), outer, inner, chunk_sizes))
        self.emit(f"for {start} in range(0, {total}, {step.chunk}):")
        self.emit(f"    {stop} = min({start} + {step.chunk}, {total})")
        for line in loop_lines:
            self.emit("    " + line)
        self.emit(f"    {total_name} += np.matmul({arranged[0]}, {arranged[1]})")
        natural = step.kept_left + step.kept_right
        code = total_name
        if len(natural) != 2 or not step.kept_left or not step.kept_right:
            code += f".reshape{_arguments(tuple(self.sizes[x] for x in natural))}"
        if step.final_transpose is not None:
            code += f".transpose{_arguments(step.final_transpose)}"
        self.emit(f"{result} = {code}")
        out_shape = tuple(self.sizes[a] for a in step.result_axes)
        return _Value(result, step.result_axes, out_shape, True,
                      contiguous=step.final_transpose is None, layout=natural)

    def render_reduce(self, node: ReduceNode, name_hint: str) -> _Value:
        if node.strategy == "window-loop":
            return self.render_window_loop(node, name_hint)
        if node.strategy == "ones-gemv":
            return self.render_ones_gemv(node, name_hint)
        body = self.render(node.body)
        positions = [body.axes.index(a) for a in node.reduced]
        result = self.fresh(name_hint)
        code = f"{_REDUCERS[node.op]}({body.code}, axis={_tuple(positions)})"
        self.emit(f"{result} = {code}")
        return _Value(result, node.axes, node.shape, bool(node.axes))

    def render_ones_gemv(self, node: ReduceNode, name_hint: str) -> _Value:
        """A sum of a tensor read whole, over dimensions before and after its kept ones in
        memory: its rows times a vector of ones, then a vector of ones times the result."""
        view = node.body
        leading, kept, trailing = ones_gemv_split(view, node.reduced)
        code = self.module.variable(view.read.tensor)
        if trailing > 1:
            code = (f"({code}.reshape({leading * kept}, {trailing}) "
                    f"@ np.ones({trailing}, dtype=DTYPE))")
        if leading > 1:
            code = f"(np.ones({leading}, dtype=DTYPE) @ {code}.reshape({leading}, {kept}))"
        dims = [m.terms[0][0] for m in view.read.maps]
        stored = [d for d in dims if d in node.axes]  # the kept dimensions, in memory order
        if not stored:
            code += "[0]"  # the one element of a (1,) result: a scalar, as np.sum gives
        elif len(stored) > 1:
            code += f".reshape{_tuple(self.sizes[d] for d in stored)}"
            permutation = [stored.index(a) for a in node.axes]
            if permutation != sorted(permutation):
                code += f".transpose{_arguments(permutation)}"
        result = self.fresh(name_hint)
        self.emit(f"{result} = {code}")
        if node.op == "mean":
            self.emit(f"{result} = {result} * {_number(1 / node.count)}")
        return _Value(result, node.axes, node.shape, bool(node.axes))

    def render_window_loop(self, node: ReduceNode, name_hint: str) -> _Value:
        """A reduction over window offsets as a running update, one offset's slice at a time."""
        assert not self.fixed, "window loops do not nest"
        self.render_views_first(node.body)
        result = self.fresh(name_hint)
        sizes = [self.sizes[a] for a in node.reduced]
        loop_names = [self.module.index_variable(a) for a in node.reduced]
        self.emit(f"# {node.op} over {','.join(node.reduced)}: running update over "
                  f"{node.count} strided window slices")
        self.fixed = {a: "0" for a in node.reduced}
        first = self.render(node.body)
        fresh = first.owned and not first.is_name  # a new array, not a view of an input
        # The copy keeps the input's memory order: every slice is then read along its
        # storage (a 2x2 max-pool of LeNet-2's output, channels-last under an NCHW view:
        # 290 us from a C-order copy, 72 us in the input's order, 98 us even with the
        # result then copied to C order).
        self.emit(f"{result} = {first.code}" + ("" if fresh else ".copy(order='K')"))
        if len(sizes) == 1:
            header = f"for {loop_names[0]} in range(1, {sizes[0]}):"
        else:
            header = f"for {', '.join(loop_names)} in list(np.ndindex{_tuple(sizes)})[1:]:"
        self.emit(header)
        self.fixed, self.indent = dict(zip(node.reduced, loop_names)), self.indent + "    "
        try:
            value = self.render(node.body)
            code = value.code
            if node.op in ("sum", "mean") and isinstance(node.body, ElementwiseNode) \
                    and node.body.op in _COMPARISONS and code.endswith(_AS_DTYPE):
                code = code[:-len(_AS_DTYPE)]  # np.add casts the 0/1 bools into the result
            self.emit(f"{_WINDOW_UPDATE[node.op]}({result}, {code}, out={result})")
        finally:
            self.fixed, self.indent = {}, self.indent[:-4]
        if node.op == "mean":
            self.emit(f"{result} *= {_number(1 / node.count)}")
        return _Value(result, node.axes, node.shape, True)

    # ---- statements ----
    def render_statement(self) -> list[str]:
        sp = self.sp
        statement = sp.statement
        target = self.module.variable(statement.target)
        for line in _heading(sp):
            self.emit(line)
        if statement.accumulate:
            self.render_accumulation(target)
        else:
            value = self.render(sp.root, target)
            shape = self.module.plan.program.tensors[statement.target].shape
            lhs = tuple(m.terms[0][0] for m in statement.target_maps)
            self.assign(target, value, lhs, shape)
        self.module.defined.add(statement.target)
        if "im2col" in sp.packing:
            self.drop_unused_views()
        return self.lines

    def drop_unused_views(self) -> None:
        """Drop the lines making window views and padded copies that nothing reads any
        more: threaded im2col copies read a zero-padded window from the tensor itself."""
        made: dict[str, set[int]] = {}
        for number, name in self.view_lines:
            made.setdefault(name, set()).add(number)
        dropped: set[int] = set()
        changed = True
        while changed:
            changed = False
            for name, numbers in made.items():
                if numbers <= dropped:
                    continue
                used = re.compile(rf"\b{re.escape(name)}\b")
                if not any(used.search(line.split("  # ")[0])
                           for number, line in enumerate(self.lines)
                           if number not in dropped and number not in numbers):
                    dropped |= numbers
                    changed = True
        self.lines = [line for number, line in enumerate(self.lines) if number not in dropped]

    def assign(self, target: str, value: _Value, lhs: tuple[str, ...],
               shape: tuple[int, ...]) -> None:
        covered = tuple(self.sizes[i] for i in lhs)
        if covered != tuple(shape) and len(set(lhs)) == len(lhs):
            # the indices reach only the start of the target (`y[i] = x[i]   where i < 3`
            # into y: [6]): the rest of it is zero
            code = value.code if not value.axes or value.axes == lhs else \
                self.aligned(value, lhs)
            if re.search(rf"\b{re.escape(target)}\b", code):
                # computed under the target's name (maybe broadcast): set it aside first
                aside = self.fresh(f"{target}_covered")
                self.emit(f"{aside} = {code}")
                code = aside
            self.emit(f"{target} = np.zeros({_tuple(shape)}, dtype=DTYPE)")
            self.emit(f"{target}[{', '.join(f':{n}' for n in covered)}] = {code}")
            return
        if not lhs:
            self.emit(f"{target} = np.array({value.code}, dtype=DTYPE)  # a copy: later += must not touch the source")
        elif not value.axes and not value.owned:
            self.emit(f"{target} = np.full({_tuple(shape)}, {value.code}, dtype=DTYPE)")
        elif value.axes != lhs:
            self.emit(f"{target} = np.array(np.broadcast_to({self.aligned(value, lhs)}, "
                      f"{_tuple(shape)}), dtype=DTYPE)")
        elif value.code == target:
            pass
        elif value.owned:
            self.emit(f"{target} = {value.code}")
        else:  # a view of an input: copy, so outputs never alias inputs
            self.emit(f"{target} = np.array({value.code}, dtype=DTYPE)")

    def render_accumulation(self, target: str) -> None:
        statement = self.sp.statement
        program = self.module.plan.program
        shape = program.tensors[statement.target].shape
        maps = statement.target_maps
        first = statement.target not in self.module.defined \
            and statement.target not in program.inputs \
            and not any(isinstance(n, Read) and n.tensor == statement.target
                        for n in walk(statement.value))
        lhs = tuple(m.terms[0][0] for m in maps) if all(m.is_plain for m in maps) else None
        if first and lhs is not None and len(set(lhs)) == len(lhs) \
                and all(self.sizes[n] == size for n, size in zip(lhs, shape)):
            # the first contribution to a fresh tensor, everywhere: it is the value
            self.assign(target, self.render(self.sp.root, "contribution"), lhs, shape)
            return
        if statement.target not in self.module.defined:
            if statement.target in program.inputs:
                self.emit(f"{target} = np.array({target}, dtype=DTYPE)  # accumulate into a copy")
            elif self.sp.tiles_target:  # every element is assigned below
                self.emit(f"{target} = np.empty({_tuple(shape)}, dtype=DTYPE)  # the windows "
                          "tile it: each offset assigns its own slice")
            elif self.sp.target_order is not None:
                order = self.sp.target_order
                inverse = tuple(order.index(d) for d in range(len(order)))
                inner = maps[order[-1]].terms[0][0]
                self.emit(f"{target} = np.zeros({_tuple(shape[d] for d in order)}, "
                          f"dtype=DTYPE).transpose{_arguments(inverse)}  # {inner} innermost: "
                          "the adds run over whole rows")
            else:
                self.emit(f"{target} = np.zeros({_tuple(shape)}, dtype=DTYPE)")
        if "col2im" in self.sp.packing:
            self.scatter_by_jit(target, shape)
            return
        maps = statement.target_maps
        order = [a for a in self.sp.order if any(a in m.indices() for m in maps)]
        per_offset = bool(self.sp.offset_loop)  # else: computed once, sliced per offset
        if not per_offset:
            value = self.temporary(self.sp.root, "contribution")
        destination = target
        mode = statement.target_boundary
        pad = boundary_pad(maps, shape, self.sizes) if mode is not None else \
            ((0, 0),) * len(maps)
        if mode is not None and any(p != (0, 0) for p in pad):
            destination = self.padded_destination(target, shape, pad, mode)
        # Each dimension is sliced along one index that only it uses; the rest are looped.
        slice_index = scatter_slices(maps, self.sizes)
        loops = [a for a in order if a not in slice_index]
        loop_names = {a: self.module.index_variable(a) for a in loops}
        subscripts = []
        full_shape = [size + a + b for size, (a, b) in zip(shape, pad)]
        for m, s, (before, _), size in zip(maps, slice_index, pad, full_shape):
            offset = [f"{c}*{loop_names[n]}" if c != 1 else loop_names[n]
                      for n, c in m.terms if n != s]
            constant = m.offset + before
            start = " + ".join(offset + ([str(constant)] if constant or not offset else []))
            start = start.replace("+ -", "- ")
            if s is None:
                subscripts.append(start)
                continue
            coefficient = dict(m.terms)[s]
            length = coefficient * (self.sizes[s] - 1) + 1
            if not offset and constant == 0 and coefficient == 1 and length == size:
                subscripts.append(":")
                continue
            stop = f"{start} + {length}" if offset else str(constant + length)
            step = f":{coefficient}" if coefficient != 1 else ""
            start_text = "" if start == "0" else start
            subscripts.append(f"{start_text}:{stop}{step}")
        dims_order = [s for s in slice_index if s is not None]
        if loops:
            sizes = [self.sizes[a] for a in loops]
            names = [loop_names[a] for a in loops]
            if per_offset:
                self.render_views_first(self.sp.root)
                self.hoist_invariants(self.sp.root, set(loops))
            self.emit(f"for {names[0]} in range({sizes[0]}):" if len(loops) == 1 else
                      f"for {', '.join(names)} in np.ndindex{_tuple(sizes)}:")
            self.indent += "    "
        if per_offset:
            self.fixed = dict(loop_names)
            value = self.render(self.sp.root, "contribution")
            self.fixed = {}
        contribution = self.sliced_contribution(value, order, loop_names, dims_order)
        update = "=" if self.sp.tiles_target else "+="
        self.emit(f"{destination}[{', '.join(subscripts)}] {update} {contribution}" if subscripts
                  else f"{destination} {update} {contribution}")
        if loops:
            self.indent = self.indent[:-4]
        if not per_offset:
            self.release(value)
        if self.sp.target_order is not None:
            # back to the target's own layout: whatever reads it next (an elementwise
            # gradient, say) would otherwise iterate against the grain
            self.emit(f"{target} = np.ascontiguousarray({target})")
        if destination != target:
            self.fold_back(target, destination, shape, pad, mode)

    def release(self, contribution: _Value) -> None:
        """Free a contribution once added: a large array still held while the next
        statement allocates its own makes malloc map fresh pages (page faults cost LeNet-1's
        backward 2x)."""
        if contribution.owned and contribution.code not in self.module.tensor_of:
            self.emit(f"del {contribution.code}")

    def padded_destination(self, target: str, shape: tuple[int, ...],
                           pad: tuple[tuple[int, int], ...], mode: str) -> str:
        """A zeroed buffer `target` padded by `pad`, for adds that reach past its edges."""
        destination = self.fresh(f"{target}_padded")
        padded_shape = tuple(s + a + b for s, (a, b) in zip(shape, pad))
        why = ("out-of-range contributions land in the margin and are dropped"
               if mode == "zero" else
               f"the margin is folded back onto the samples a '{mode}' read takes")
        self.emit(f"{destination} = np.zeros({_tuple(padded_shape)}, dtype=DTYPE)  # {why}")
        return destination

    def fold_back(self, target: str, destination: str, shape: tuple[int, ...],
                  pad: tuple[tuple[int, int], ...], mode: str) -> None:
        """Add the padded buffer into `target`: its margins folded back onto the samples a
        `mode` read takes, or, for 'zero', dropped."""
        if mode != "zero":
            self.module.needs_fold = True
            self.emit(f"{target} += _fold_margins({destination}, {_tuple(tuple(pad))}, "
                      f"{NUMPY_PAD_MODES[mode]!r})")
        else:
            crop = ", ".join(f"{a}:{a + s}" if (a, b) != (0, 0) else ":"
                             for (a, b), s in zip(pad, shape))
            self.emit(f"{target} += {destination}[{crop}]")

    def scatter_by_jit(self, target: str, shape: tuple[int, ...]) -> None:
        """A '+=' through windows as one threaded Numba loop over the contribution (col2im):
        zero-boundary adds that fall outside are dropped by bounds checks, other modes go
        through a padded buffer whose margins are folded back."""
        from .jit import render_scatter
        statement = self.sp.statement
        maps = statement.target_maps
        value = self.temporary(self.sp.root, "contribution")
        assert set(value.axes) <= {n for m in maps for n in m.indices()}, "a free index"
        if value.layout is not None:  # a transposed GEMM result: pass it as it is stored
            layout = value.layout
            permutation = [value.axes.index(a) for a in layout]
            array = f"{value.code}.transpose{_arguments(permutation)}" \
                if permutation != sorted(permutation) else value.code
        else:
            layout, array = value.axes, value.code
        mode = statement.target_boundary
        destination, shifts, guarded = target, (0,) * len(maps), ()
        pad = boundary_pad(maps, shape, self.sizes)
        if mode == "zero":
            guarded = tuple(d for d, p in enumerate(pad) if p != (0, 0))
        elif mode is not None and any(p != (0, 0) for p in pad):
            destination = self.padded_destination(target, shape, pad, mode)
            shifts = tuple(before for before, _ in pad)
        name = self.module.jit_name(f"scatter_{statement.target}")
        self.module.jit_copies.append(render_scatter(
            name, statement.text, maps, shifts, shape, guarded, tuple(layout),
            {a: self.sizes[a] for m in maps for a in m.indices()}))
        self.emit(f"_jit.{name}({array}, {destination})")
        self.release(value)
        if destination != target:
            self.fold_back(target, destination, shape, pad, mode)

    def sliced_contribution(self, value: _Value, order: list[str], loop_names: dict[str, str],
                            dims_order: list[str]) -> str:
        """The contribution at the current window offset, laid out like the target slice."""
        value_index = []
        for a in order:
            if a in value.axes:
                value_index.append(loop_names[a] if a in loop_names else ":")
        sliced_axes = [a for a in order if a in value.axes and a not in loop_names]
        contribution, precedence = value.code, value.precedence
        if any(i != ":" for i in value_index):
            contribution = f"{value.code}[{', '.join(value_index)}]"  # a materialized name
        present = [a for a in dims_order if a in sliced_axes]
        if present != sliced_axes:
            permutation = [sliced_axes.index(a) for a in present]
            contribution = (contribution if precedence >= _ATOM else f"({contribution})") + \
                f".transpose{_arguments(permutation)}"
            precedence = _ATOM
        # broadcast over target indices the contribution does not depend on
        missing = [a for a in dims_order if a not in sliced_axes]
        if missing:
            contribution = self.aligned(_Value(contribution, tuple(present), (), True,
                                               precedence), tuple(dims_order))
        return contribution


def _heading(sp: StatementPlan) -> list[str]:
    """The comment above a statement's code: the statement, then its strategy."""
    statement = sp.statement
    return [f"# statement {sp.number + 1} (line {statement.line}): {statement.text}",
            f"#   {sp.strategy}"]


class _ModuleRenderer:
    def __init__(self, plan: ProgramPlan) -> None:
        self.plan = plan
        program = plan.program
        self.variables = {name: python_name(name) for name in program.tensors}
        self.tensor_of = {variable: name for name, variable in self.variables.items()}
        self.taken = set(self.variables.values()) | _MODULE_NAMES \
            | {window.name for window in plan.kept_windows}
        for statement in program.statements:
            self.taken |= {python_name(index) for index in statement.ranges}
        self.claimable: str | None = None
        self.needs_erf = False
        self.needs_sigmoid = False
        self.needs_scratch = False
        self.needs_fold = False
        self.needs_gemm = False  # shifted GEMMs call BLAS directly
        self.defined: set[str] = set()
        self.jit_copies: list[str] = []  # Numba functions of threaded packing copies

    def variable(self, tensor: str) -> str:
        return self.variables[tensor]

    def index_variable(self, index: str) -> str:
        return python_name(index)

    def jit_name(self, hint: str) -> str:
        """A new name in the module of Numba functions: hint_1, hint_2, ..."""
        return f"{hint}_{len(self.jit_copies) + 1}"

    def fresh(self, hint: str) -> str:
        """A new name, deterministic: anonymous temporaries are t1, t2, ...; others hint,
        hint_2, ... Only the statement's own `=` target may be claimed by its value."""
        if hint == self.claimable:
            self.claimable = None
            return hint
        candidates = (f"t{i}" for i in itertools.count(1)) if hint == "t" else \
            itertools.chain([hint], (f"{hint}_{i}" for i in itertools.count(2)))
        for name in candidates:
            if name not in self.taken:
                self.taken.add(name)
                return name
        raise AssertionError("unreachable")

    def render_statement(self, sp: StatementPlan) -> list[str]:
        if sp.computed_in is not None:  # by the loop kernel of the next statement
            return _heading(sp)
        if sp.loop_nest is not None:
            return self.render_loop_kernel(sp, "_jit.{name}({arguments})", "np",
                                           "np.ascontiguousarray({0})")
        return _StatementRenderer(self, sp).render_statement()

    def render_loop_kernel(self, sp: StatementPlan, call: str, namespace: str,
                           contiguous: str) -> list[str]:
        """A statement run by a loop kernel (a CUDA or Numba one): its target allocated
        (or copied, or made contiguous, for '+='), then the call. Kernels index their
        arrays as C-contiguous: `contiguous` wraps each input."""
        nest = sp.loop_nest
        statement = sp.statement
        target = self.variable(statement.target)
        shape = self.plan.program.tensors[statement.target].shape
        lines = _heading(sp)
        if not nest.atomic:  # (a '+=' into a fresh target it covers assigns it)
            lines.append(f"{target} = {namespace}.empty({_tuple(shape)}, dtype=DTYPE)")
        elif statement.target in self.defined:
            if shape:  # (ascontiguousarray makes a 0-d array 1-d)
                lines.append(f"{target} = {namespace}.ascontiguousarray({target})"
                             "  # added into in place")
        elif statement.target in self.plan.program.inputs:
            lines.append(f"{target} = {namespace}.array({target}, dtype=DTYPE)"
                         "  # accumulate into a copy")
        else:
            lines.append(f"{target} = {namespace}.zeros({_tuple(shape)}, dtype=DTYPE)")
        inputs = [contiguous.format(self.variable(t)) for t in nest.inputs]
        if nest.threads and nest.halves:  # (Numba's: on two threads, each over half)
            cut = nest.split_tensors
            split = tuple(t in cut for t in (*nest.inputs, statement.target))
            lines.append(f"_jit.in_halves({nest.name!r}, {split}, "
                         f"{', '.join(inputs + [target])})")
        elif nest.threads:
            lines.append(call.format(name=nest.name, threads=nest.threads,
                                     arguments=", ".join(inputs + [target])))
        self.defined.add(statement.target)
        return lines

    def render_body(self) -> list[str]:
        """The lines of `kernel`'s body: every statement, then the return."""
        program = self.plan.program
        body: list[str] = []
        # A statement's target may be named as the user wrote it: free it for the root value.
        for sp in self.plan.statements:
            self.claimable = None if sp.statement.accumulate else self.variable(sp.statement.target)
            body.extend(self.render_statement(sp))
            body.append("")
        outputs = [(name, self.variable(name)) for name in program.outputs]
        outputs += [(window.name, window.name) for window in self.plan.kept_windows]
        if len(outputs) == 1:
            body.append(f"return {outputs[0][1]}")
        else:
            pairs = ", ".join(f"{name!r}: {variable}" for name, variable in outputs)
            body.append(f"return {{{pairs}}}")
        return body

    def docstring(self, backend: str) -> str:
        program = self.plan.program
        source_lines = "\n".join(f"    {s.text}" for s in program.statements)
        plan_text = textwrap.indent(format_plan(self.plan), "    ")
        return (f'"""Generated by tensorc for the {backend} backend: regenerate, do not edit.\n\n'
                f"Program:\n{source_lines}\n\nPlan:\n{plan_text}\n\"\"\"\n")

    def signature(self) -> str:
        return f"def kernel({', '.join(self.variable(n) for n in self.plan.program.inputs)}):"

    def render(self) -> str:
        body = self.render_body()
        parts = [self.docstring("NumPy"), "import numpy as np",
                 "from numpy.lib.stride_tricks import as_strided", "", f"DTYPE = np.{self.plan.dtype}"]
        if self.needs_scratch:
            parts[1:1] = ["import threading", ""]
            parts.append(_SCRATCH_HELPER.rstrip())
        if self.needs_fold:
            parts.append(_FOLD_HELPER.rstrip())
        if self.needs_sigmoid:
            parts.append(_SIGMOID_HELPER.rstrip())
        if self.needs_erf:
            parts.append(_ERF_HELPER.rstrip())
        if self.needs_gemm:
            parts += ["", "# NumPy's BLAS called directly: GEMMs on strided views that add "
                      "into their output",
                      "from tensorc.backends.blas import gemm as _gemm  # noqa: E402"]
        nests = [sp.loop_nest for sp in self.plan.statements if sp.loop_nest is not None]
        if nests or self.jit_copies:
            from .jit import render_numba
            numba_source = render_numba(nests, self.plan.dtype, tuple(self.jit_copies))
            parts += ["", "# Numba loop kernels (tensorc[jit]): compiled at the first call, cached",
                      "from tensorc.backends.jit import load as _load_jit  # noqa: E402", "",
                      f"JIT_SOURCE = r'''\n{numba_source}'''",
                      "_jit = _load_jit(JIT_SOURCE)"]
        parts += ["", "", self.signature()]
        parts += [("    " + line) if line else "" for line in body]
        return "\n".join(parts).rstrip() + "\n"


def execute_module(source: str, backend: str) -> dict[str, Any]:
    """Run a generated module's source: its namespace."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    filename = f"<tensorc-{backend}-{digest}>"
    # Registered so that tracebacks and inspect show the generated lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": f"tensorc_generated_{digest}"}
    exec(builtins.compile(source, filename, "exec"), namespace)  # noqa: S102 - our own rendered code
    return namespace


def render_module(plan: ProgramPlan) -> str:
    """The plan as the source of a module defining `kernel(<inputs>)`."""
    return _ModuleRenderer(plan).render()
