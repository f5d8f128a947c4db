"""Symbolic adjoints: tc.grad derives, in the language itself, a program computing gradients.

The derivation works on the shape-free structure of a program (check.structure): every
statement's value as an IR expression with its Einstein sums placed. Reverse mode walks each
statement from its root down, carrying the cotangent G of the node it is at (an expression
over the indices in scope there). At a read `x[A]` of a tensor that needs a gradient it emits

    dx[A] += G          (indices of G that are not in A are summed: the chain rule)

so a windowed read `x[n,c,h+u,w+v]` becomes an accumulation through the same window, which
is the flipped-kernel convolution of the cotangent; a boundary mode on x becomes the same
mode on dx, whose lowering folds out-of-range contributions back (or drops them, for zero).

Policy for forward values the adjoint needs: recompute. The adjoint program repeats the
forward statements whose results it reads, so it is a self-contained ordinary program.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Sequence

from . import syntax as S
from .check import place_sums, structure
from .errors import NameResolutionError, RangeError, TensorcError
from .ir import (
    Apply, Constant, Expr, IndexMap, IndexValue, ProgramStructure, Read, Reduce,
    StatementStructure, first_appearance, walk,
)
from .ops import BINARY_OPS, COMPARE_OPS, FUNCTIONS
from .parser import parse

__all__ = ["grad", "derive_adjoint", "Adjoint"]

ZERO, ONE = Constant(0), Constant(1)


# ---- expressions that fold as they are built (keeps derived programs readable) ----------

def _is(expr: Expr, value: float) -> bool:
    return isinstance(expr, Constant) and expr.value == value


def neg(a: Expr) -> Expr:
    if isinstance(a, Constant):
        return Constant(-a.value)
    if isinstance(a, Apply) and a.op == "neg":
        return a.args[0]
    return Apply("neg", (a,))


def add(a: Expr, b: Expr) -> Expr:
    if _is(a, 0):
        return b
    if _is(b, 0):
        return a
    if isinstance(a, Constant) and isinstance(b, Constant):
        return Constant(a.value + b.value)
    if isinstance(b, Apply) and b.op == "neg":
        return Apply("sub", (a, b.args[0]))
    return Apply("add", (a, b))


def sub(a: Expr, b: Expr) -> Expr:
    return add(a, neg(b))


def mul(a: Expr, b: Expr) -> Expr:
    if _is(a, 0) or _is(b, 0):
        return ZERO
    if _is(a, 1):
        return b
    if _is(b, 1):
        return a
    if isinstance(a, Constant) and isinstance(b, Constant):
        return Constant(a.value * b.value)
    if isinstance(a, Apply) and a.op == "neg":
        return neg(mul(a.args[0], b))
    if isinstance(b, Apply) and b.op == "neg":
        return neg(mul(a, b.args[0]))
    if isinstance(b, Apply) and b.op == "div" and _is(b.args[0], 1):
        return div(a, b.args[1])
    return Apply("mul", (a, b))


def div(a: Expr, b: Expr) -> Expr:
    if _is(a, 0) or _is(b, 1):
        return a
    if isinstance(a, Apply) and a.op == "neg":
        return neg(div(a.args[0], b))
    return Apply("div", (a, b))


def power(a: Expr, b: Expr) -> Expr:
    if _is(b, 1):
        return a
    if _is(b, 0):
        return ONE
    return Apply("pow", (a, b))


# ---- derivatives of functions, written in the language (ops.FUNCTIONS) -------------------

@lru_cache(maxsize=None)
def _template(text: str) -> S.Expr:
    statement = parse(f"_ = {text}").statements[0]
    assert isinstance(statement, S.Assignment)
    return statement.value


def _instantiate(node: S.Expr, bindings: dict[str, Expr]) -> Expr:
    """A derivative template with its placeholders `a`, `b`, `out` replaced."""
    if isinstance(node, S.Number):
        return Constant(node.value)
    if isinstance(node, S.Name):
        return bindings[node.name]
    if isinstance(node, S.Unary):
        return neg(_instantiate(node.operand, bindings))
    if isinstance(node, S.Binary):
        left, right = _instantiate(node.left, bindings), _instantiate(node.right, bindings)
        return {"+": add, "-": sub, "*": mul, "/": div, "^": power}[node.op](left, right)
    if isinstance(node, S.Compare):
        return Apply(COMPARE_OPS[node.op], (_instantiate(node.left, bindings),
                                            _instantiate(node.right, bindings)))
    if isinstance(node, S.Call):
        return Apply(node.function, tuple(_instantiate(a, bindings) for a in node.arguments))
    raise AssertionError(f"unexpected node in a derivative template: {node!r}")


# ---- index bookkeeping ---------------------------------------------------------------------

def free_indices(expr: Expr) -> list[str]:
    if isinstance(expr, Read):
        return list(expr.indices())
    if isinstance(expr, IndexValue):
        return [expr.index]
    if isinstance(expr, Apply):
        return list(dict.fromkeys(n for arg in expr.args for n in free_indices(arg)))
    if isinstance(expr, Reduce):
        return [n for n in free_indices(expr.body) if n not in expr.indices]
    return []


def rename(expr: Expr, names: dict[str, str]) -> Expr:
    """Substitute index names (free occurrences only)."""
    if not names:
        return expr
    if isinstance(expr, Read):
        maps = tuple(IndexMap(tuple((names.get(n, n), c) for n, c in m.terms), m.offset)
                     for m in expr.maps)
        return Read(expr.tensor, maps, expr.boundary, expr.span)
    if isinstance(expr, IndexValue):
        return IndexValue(names.get(expr.index, expr.index), expr.start)
    if isinstance(expr, Apply):
        return Apply(expr.op, tuple(rename(a, names) for a in expr.args), expr.span)
    if isinstance(expr, Reduce):
        inner = {k: v for k, v in names.items() if k not in expr.indices}
        return Reduce(expr.op, expr.indices, rename(expr.body, inner), expr.implicit, expr.span)
    return expr


# ---- one statement, root to leaves --------------------------------------------------------

@dataclass
class Contribution:
    """`d<read.tensor>[read.maps] += value`, summing the indices of value not in the maps."""

    read: Read
    value: Expr
    statement: StatementStructure
    extra_ranges: dict[str, tuple[int | str, int | str]] = field(default_factory=dict)


class _StatementAdjoint:
    def __init__(self, item: StatementStructure, cotangent: Expr, active: set[str],
                 fresh: _FreshNames, ranges: _SymbolicRanges,
                 temporaries: dict[tuple[str, Expr], S.Assignment]) -> None:
        self.item = item
        self.temporaries = temporaries
        self.active = active
        self.fresh = fresh
        self.ranges = ranges
        self.contributions: list[Contribution] = []
        self.extra_ranges: dict[str, tuple[int | str, int | str]] = {}
        # The statement's own value is its target: exp' = exp reads the result, not a recompute.
        plain = not item.accumulate and all(m.is_plain for m in item.target_maps)
        self.root_value = Read(item.target, item.target_maps) if plain else None
        self.propagate(item.value, cotangent)

    def value_of(self, node: Expr) -> Expr:
        """A forward value the derivative needs, as something cheap to read.

        The statement's root is its target; a subexpression holding a reduction is computed
        once into a temporary rather than repeated inside every gradient statement.
        """
        if node is self.item.value and self.root_value is not None:
            return self.root_value
        if not any(isinstance(n, Reduce) for n in walk(node)):
            return node
        indices = free_indices(node)
        key = (self.item.target, node)
        if key not in self.temporaries:
            if isinstance(node, Reduce):
                first = next(n.tensor for n in walk(node) if isinstance(n, Read))
                base = f"{node.op}_{first}"
            else:
                base = f"{self.item.target}_inner"
            name = self.fresh.make(base)
            used = {n for m in walk(node) if isinstance(m, Read) for n in m.indices()}
            used |= {n for m in walk(node) if isinstance(m, Reduce) for n in m.indices}
            where: list[S.WhereItem] = [S.RangeBound(i, *self.item.where_ranges[i])
                                        for i in self.item.indices
                                        if i in used and i in self.item.where_ranges]
            moded = {n.tensor: n.boundary for n in walk(node) if isinstance(n, Read) and n.boundary}
            where += [S.Boundary(t, mode) for t, mode in moded.items()]
            target = S.Target(name, tuple(S.Affine((S.AffineTerm(i, 1),), 0) for i in indices))
            self.temporaries[key] = S.Assignment(target, to_syntax(node), tuple(where))
        name = self.temporaries[key].target.tensor
        return Read(name, tuple(IndexMap(((i, 1),)) for i in indices))

    def depends(self, node: Expr) -> bool:
        return any(isinstance(n, Read) and n.tensor in self.active for n in walk(node))

    def propagate(self, node: Expr, g: Expr) -> None:
        if _is(g, 0) or not self.depends(node):
            return
        if isinstance(node, Read):
            self.contributions.append(Contribution(node, g, self.item, self.extra_ranges))
        elif isinstance(node, Apply):
            self.propagate_apply(node, g)
        elif isinstance(node, Reduce):
            self.propagate_reduce(node, g)

    # Elementwise rules; the forward meaning of each op is in backends/numpy.py's templates.
    def propagate_apply(self, node: Apply, g: Expr) -> None:
        op, args = node.op, node.args
        if op == "add":  # d(a + b) = da + db
            self.propagate(args[0], g)
            self.propagate(args[1], g)
        elif op == "sub":  # d(a - b) = da - db
            self.propagate(args[0], g)
            self.propagate(args[1], neg(g))
        elif op == "neg":
            self.propagate(args[0], neg(g))
        elif op == "mul":  # d(a*b) = b da + a db
            self.propagate(args[0], mul(g, self.value_of(args[1])))
            self.propagate(args[1], mul(g, self.value_of(args[0])))
        elif op == "div":  # d(a/b) = da/b - (a/b) db/b
            divisor = self.value_of(args[1])
            self.propagate(args[0], div(g, divisor))
            self.propagate(args[1], neg(div(mul(g, self.value_of(node)), divisor)))
        elif op == "pow":  # d(a^b) = b a^(b-1) da + a^b log(a) db
            a, b = self.value_of(args[0]), self.value_of(args[1])
            self.propagate(args[0], mul(g, mul(b, power(a, sub(b, ONE)))))
            self.propagate(args[1], mul(g, mul(self.value_of(node), Apply("log", (a,)))))
        elif op in COMPARE_OPS.values():
            return  # 0/1 valued: zero derivative where defined
        else:
            function = FUNCTIONS[op]
            bindings = dict(zip("ab", (self.value_of(a) for a in args)), out=self.value_of(node))
            for arg, derivative in zip(args, function.derivative):
                self.propagate(arg, mul(g, _instantiate(_template(derivative), bindings)))

    # Reductions. The body's indices are bound by the reduction; the cotangent g of the
    # reduction does not use them, so it broadcasts over them:
    #   sum[j](b[j])  -> db[j] = g
    #   mean[j](b[j]) -> db[j] = g / |j|
    #   max[j](b[j])  -> db[j] = g * (b[j] == max) / #ties   (ties share, like torch.amax)
    def propagate_reduce(self, node: Reduce, g: Expr) -> None:
        body, indices = node.body, node.indices
        clashes = {i for i in indices if i in free_indices(g)}
        if clashes:  # g uses an outer index that this reduction's own index shadows
            names = {i: self.fresh.index(i) for i in clashes}
            for old, new in names.items():
                if old in self.item.where_ranges:
                    self.extra_ranges[new] = self.item.where_ranges[old]
            body = rename(body, names)
            indices = tuple(names.get(i, i) for i in indices)
        if node.op == "sum":
            self.propagate(body, g)
        elif node.op == "mean":
            count: Expr = ONE
            for index in node.indices:
                count = mul(count, self.ranges.size(index, self.item))
            self.propagate(body, div(g, count))
        else:
            mask = Apply("eq", (self.value_of(body), self.value_of(node)))
            ties = Reduce("sum", indices, mask)
            self.propagate(body, div(mul(g, mask), ties))


# ---- names and symbolic sizes -------------------------------------------------------------

class _FreshNames:
    def __init__(self, taken: Iterable[str]) -> None:
        self.taken = set(taken)

    def make(self, base: str) -> str:
        name, number = base, 2
        while name in self.taken:
            name, number = f"{base}{number}", number + 1
        self.taken.add(name)
        return name

    def index(self, base: str) -> str:
        return self.make(base + "2" if base + "2" not in self.taken else base)


class _SymbolicRanges:
    """Sizes as language expressions: declared or generated size names, `where` bounds."""

    def __init__(self, program: ProgramStructure, fresh: _FreshNames) -> None:
        self.program = program
        self.fresh = fresh
        self.shapes: dict[str, tuple[int | str, ...]] = {}
        self.generated: set[str] = set()  # tensors that need a declaration added
        for name, declaration in program.declarations.items():
            if declaration.dims is not None:
                self.shapes[name] = tuple(declaration.dims)

    def shape(self, tensor: str, rank: int) -> tuple[int | str, ...]:
        if tensor not in self.shapes:
            self.shapes[tensor] = tuple(self.fresh.make(f"{tensor}_{axis}") for axis in range(rank))
            self.generated.add(tensor)
        return self.shapes[tensor]

    def size(self, index: str, item: StatementStructure) -> Expr:
        """The number of values `index` takes in `item`, as an expression."""
        if index in item.where_ranges:
            low, high = item.where_ranges[index]
            return sub(_size_value(high), _size_value(low))
        reads = [n for n in walk(item.value) if isinstance(n, Read) and n.maps]
        reads.sort(key=lambda read: read.tensor not in self.program.inputs)  # inputs first
        for node in reads:
            for axis, m in enumerate(node.maps):
                if m.is_plain and m.terms[0][0] == index:
                    return _size_value(self.shape(node.tensor, len(node.maps))[axis])
        raise RangeError(f"tc.grad needs the size of '{index}' to differentiate the mean over it; "
                         f"add 'where {index} < N' to the statement", item.source.span)


def _size_value(size: int | str) -> Expr:
    return Constant(size) if isinstance(size, int) else Read(size, ())


# ---- IR -> syntax --------------------------------------------------------------------------

_INFIX = {v: k for k, v in BINARY_OPS.items()}
_COMPARE = {v: k for k, v in COMPARE_OPS.items()}


def _affine(m: IndexMap) -> S.Affine:
    return S.Affine(tuple(S.AffineTerm(n, c) for n, c in m.terms), m.offset)


def to_syntax(expr: Expr) -> S.Expr:
    if isinstance(expr, Constant):
        value = expr.value
        if value < 0:
            return S.Unary("-", S.Number(-value))
        return S.Number(value)
    if isinstance(expr, IndexValue):
        name = S.Name(expr.index)
        return name if not expr.start else S.Binary("+", name, S.Number(expr.start))
    if isinstance(expr, Read):
        if not expr.maps:
            return S.Name(expr.tensor)
        return S.Access(expr.tensor, tuple(_affine(m) for m in expr.maps))
    if isinstance(expr, Apply):
        args = tuple(to_syntax(a) for a in expr.args)
        if expr.op == "neg":
            return S.Unary("-", args[0])
        if expr.op in _INFIX:
            return S.Binary(_INFIX[expr.op], *args)
        if expr.op in _COMPARE:
            return S.Compare(_COMPARE[expr.op], *args)
        return S.Call(expr.op, args)
    if isinstance(expr, Reduce):
        return S.Reduction(expr.op, expr.indices, to_syntax(expr.body))
    raise AssertionError(f"unknown IR node {expr!r}")


def _statement_value(value: Expr, summed: list[str]) -> S.Expr:
    """The value with `summed` indices summed: implicitly where the Einstein rule agrees."""
    if not summed:
        return to_syntax(value)
    explicit = Reduce("sum", tuple(summed), value, True)
    if place_sums(value, set(summed), first_appearance(value)) == explicit:
        return to_syntax(value)
    return to_syntax(Reduce("sum", tuple(summed), value))


# ---- the whole program ---------------------------------------------------------------------

def _reads(expr: Expr) -> set[str]:
    return {n.tensor for n in walk(expr) if isinstance(n, Read) and n.maps is not None}


def _active_tensors(program: ProgramStructure, wrt: Sequence[str], of: Sequence[str]) -> set[str]:
    """Tensors on a path from some `wrt` tensor to some differentiated output."""
    depends = set(wrt)
    for item in program.statements:
        if _reads(item.value) & depends:
            depends.add(item.target)
    needed = set(of)
    for item in reversed(program.statements):
        if item.target in needed:
            needed |= _reads(item.value)
    return depends & needed


@dataclass(frozen=True)
class Adjoint:
    program: S.Program
    gradients: dict[str, str]  # wrt tensor -> the name of its gradient
    outputs: tuple[str, ...]  # the forward outputs differentiated
    cotangents: dict[str, str]  # non-scalar output -> the input holding its cotangent


def grad(program: str | S.Program, wrt: Sequence[str],
         of: Sequence[str] | None = None) -> S.Program:
    """The adjoint program: gradients of the outputs `of` with respect to the tensors `wrt`.

    A scalar output (a loss) is seeded with 1; a non-scalar output `y` takes its cotangent as
    an input named `dy`. The result defines `d<name>` for each name in `wrt` and is an
    ordinary program: print it, compile it, differentiate it again.
    """
    return derive_adjoint(program, wrt, of).program


def derive_adjoint(program: str | S.Program, wrt: Sequence[str],
                   of: Sequence[str] | None = None, keep_forward: bool = False) -> Adjoint:
    """tc.grad with its naming: `keep_forward` keeps every forward statement (for a kernel
    that returns the outputs and the gradients together)."""
    if isinstance(program, str):
        program = parse(program)
    try:
        derivation = _Derivation(program, list(wrt) if not isinstance(wrt, str) else wrt, of)
        adjoint_program = derivation.program(keep_forward)
    except TensorcError as error:
        raise error.attach_source(program.source, program.filename) from None
    names = derivation.gradient_names
    return Adjoint(adjoint_program, {name: names[name] for name in derivation.wrt},
                   tuple(derivation.outputs),
                   {name: names[name] for name in derivation.outputs
                    if derivation.rank(name) > 0})


class _Derivation:
    def __init__(self, program: S.Program, wrt: list[str], of: Sequence[str] | None) -> None:
        self.syntax = program
        self.structure = structure(program)
        known = set(self.structure.inputs) | {item.target for item in self.structure.statements}
        if isinstance(wrt, str) or not wrt:
            raise TensorcError("tc.grad needs wrt=[...]: the names of the tensors to "
                               "differentiate with respect to, e.g. wrt=['x', 'k']")
        for name in wrt:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise NameResolutionError(f"tc.grad: '{name}' is not a tensor of this program; "
                                          f"{hint}(tensors: {', '.join(sorted(known))})")
        outputs = list(self.structure.outputs if of is None else of)
        for name in outputs:
            if name not in {item.target for item in self.structure.statements}:
                raise NameResolutionError(f"tc.grad: of=['{name}'] is not computed by this "
                                          f"program (outputs: {', '.join(self.structure.outputs)})")
        read_later = {t for item in self.structure.statements for t in _reads(item.value)}
        for name in outputs:
            if name in read_later:
                raise NameResolutionError(f"tc.grad: '{name}' is read by a later statement; "
                                          "differentiate the program's final results")
        self.wrt, self.outputs = wrt, outputs
        names = set(known) | set(self.structure.size_names)
        for item in self.structure.statements:
            names |= set(item.indices)
        self.fresh = _FreshNames(names)
        self.ranges = _SymbolicRanges(self.structure, self.fresh)
        self.active = _active_tensors(self.structure, wrt, outputs)
        self.gradient_names = {name: self.fresh.make(f"d{name}") for name in
                               sorted(self.active | set(wrt) | set(outputs))}

    def program(self, keep_forward: bool = False) -> S.Program:
        contributions: list[Contribution] = []
        temporaries: dict[tuple[str, Expr], S.Assignment] = {}
        for item in reversed(self.structure.statements):  # reverse mode: last statement first
            if item.target in self.active:
                derived = _StatementAdjoint(item, self.cotangent(item), self.active, self.fresh,
                                            self.ranges, temporaries)
                contributions.extend(derived.contributions)
        rendered: list[S.Assignment] = []
        defined: set[str] = set()
        declared: list[str] = []  # gradients whose shape must be declared
        for contribution in contributions:
            gradient = self.gradient_names[contribution.read.tensor]
            statement, needs_shape = self.render(contribution, gradient, gradient in defined)
            if needs_shape and gradient not in defined:
                declared.append(gradient)
            defined.add(gradient)
            rendered.append(statement)
        for name in self.wrt:  # no path to the outputs: the gradient is zero
            gradient = self.gradient_names[name]
            if gradient not in defined:
                rendered.append(self.zero_gradient(name, gradient))
                defined.add(gradient)
        rendered = self.without_dead(list(temporaries.values()) + rendered)
        targets = {s.target.tensor for s in rendered}
        declared = [g for g in declared if g in targets]
        reads = {n.tensor for s in rendered for n in S.walk(s.value) if isinstance(n, S.Access)}
        reads |= {n.name for s in rendered for n in S.walk(s.value) if isinstance(n, S.Name)}
        by_gradient = {g: t for t, g in self.gradient_names.items()}
        shapes = {by_gradient[g]: self.ranges.shape(by_gradient[g], self.rank(by_gradient[g]))
                  for g in declared}
        # A gradient declared with an intermediate's sizes needs that intermediate computed.
        # Sizes named after an intermediate are bound by computing it.
        wanted = reads | {t for t in self.ranges.generated if t not in self.structure.inputs}
        wanted |= {t for t in shapes if t not in self.structure.inputs}
        if keep_forward:
            wanted |= {item.target for item in self.structure.statements}
        forward = self.recomputed(wanted)
        forward = [s for s in forward if s.target.tensor not in targets]
        head: list[S.Statement] = [S.Declaration(t, None, self.ranges.shapes[t])
                                   for t in sorted(self.ranges.generated)]
        head += [S.Declaration(self.gradient_names[t], None, shape) for t, shape in shapes.items()]
        # The forward's declarations of tensors the adjoint uses, or that name its sizes.
        body = forward + rendered
        used = {s.target.tensor for s in body} | reads
        used |= {n.tensor for s in forward for n in S.walk(s.value) if isinstance(n, S.Access)}
        used |= {n.name for s in forward for n in S.walk(s.value) if isinstance(n, S.Name)}
        size_uses = {d for s in head for d in s.dims or () if isinstance(d, str)} | {
            i.high for s in body for i in s.where if isinstance(i, S.RangeBound)} | {
            i.low for s in body for i in s.where if isinstance(i, S.RangeBound)} | used
        head += [s for s in self.syntax.statements if isinstance(s, S.Declaration) and (
            s.tensor in used or size_uses & {d for d in s.dims or () if isinstance(d, str)})]
        return parse("\n".join(str(s) for s in head + forward + rendered))

    def cotangent(self, item: StatementStructure) -> Expr:
        """The cotangent of a statement's target, read at the positions it writes."""
        if item.target in self.outputs and not item.target_maps:
            return ONE  # a scalar such as a loss: d loss / d loss = 1
        boundary = item.boundaries.get(item.target) if item.accumulate else None
        return Read(self.gradient_names[item.target], item.target_maps, boundary)

    def render(self, contribution: Contribution, gradient: str,
               exists: bool) -> tuple[S.Assignment, bool]:
        read, value, item = contribution.read, contribution.value, contribution.statement
        lhs = [n for m in read.maps for n in m.indices()]
        summed = [n for n in first_appearance(value) if n not in lhs and n in free_indices(value)]
        plain = all(m.is_plain for m in read.maps) and len(set(lhs)) == len(lhs) == len(read.maps)
        ranged = {**item.where_ranges, **contribution.extra_ranges}
        whole = {m.terms[0][0] for n in walk(value) if isinstance(n, Read)
                 for m in n.maps if m.is_plain}
        assign = (not exists and plain and read.boundary is None
                  and not any(n in ranged for n in lhs))
        # `=` infers the shape when every index on the left is used whole on the right.
        needs_shape = bool(read.maps) and not exists and not (assign and set(lhs) <= whole)
        where: list[S.WhereItem] = []
        used = set(lhs) | {n for node in walk(value) if isinstance(node, (Read, IndexValue))
                           for n in (node.indices() if isinstance(node, Read) else (node.index,))}
        used |= {n for node in walk(value) if isinstance(node, Reduce) for n in node.indices}
        for index in item.indices + tuple(contribution.extra_ranges):
            if index in used and index in ranged:
                low, high = ranged[index]
                where.append(S.RangeBound(index, low, high))
        if read.boundary is not None:
            where.append(S.Boundary(gradient, read.boundary))
        moded = {n.tensor: n.boundary for n in walk(value) if isinstance(n, Read) and n.boundary}
        where.extend(S.Boundary(t, mode) for t, mode in moded.items())
        target = S.Target(gradient, tuple(_affine(m) for m in read.maps))
        statement = S.Assignment(target, _statement_value(value, summed), tuple(where),
                                 accumulate=not assign)
        return statement, needs_shape

    def zero_gradient(self, name: str, gradient: str) -> S.Assignment:
        rank = self.rank(name)
        shape = self.ranges.shape(name, rank)
        indices = [self.fresh.index(f"i{axis}") for axis in range(rank)]
        where = tuple(S.RangeBound(i, 0, size) for i, size in zip(indices, shape))
        target = S.Target(gradient, tuple(S.Affine((S.AffineTerm(i, 1),), 0) for i in indices))
        return S.Assignment(target, S.Number(0), where)

    def rank(self, tensor: str) -> int:
        for item in self.structure.statements:
            if item.target == tensor:
                return len(item.target_maps)
            for node in walk(item.value):
                if isinstance(node, Read) and node.tensor == tensor:
                    return len(node.maps)
        declaration = self.structure.declarations.get(tensor)
        return len(declaration.dims or ()) if declaration else 0

    def without_dead(self, statements: list[S.Assignment]) -> list[S.Assignment]:
        keep = {self.gradient_names[name] for name in self.wrt}
        kept: list[S.Assignment] = []
        for statement in reversed(statements):
            if statement.target.tensor in keep:
                kept.append(statement)
                keep |= {n.tensor for n in S.walk(statement.value) if isinstance(n, S.Access)}
                keep |= {n.name for n in S.walk(statement.value) if isinstance(n, S.Name)}
        return kept[::-1]

    def recomputed(self, needed: set[str]) -> list[S.Assignment]:
        """Forward statements the adjoint reads (and those they read), in program order."""
        keep = set(needed)
        chosen: list[int] = []
        statements = self.structure.statements
        for number in range(len(statements) - 1, -1, -1):
            item = statements[number]
            if item.target in keep:
                chosen.append(number)
                keep |= _reads(item.value)
        return [statements[number].source for number in sorted(chosen)]
