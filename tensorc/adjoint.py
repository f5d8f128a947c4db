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
    StatementStructure, first_appearance, free_indices, walk,
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


# ---- where each index of a forward statement gets its range --------------------------------

@dataclass
class _IndexSource:
    """How a forward statement ranges one index; derived statements must range it alike."""

    where: tuple[int | str, int | str] | None = None  # `where i in low:high`
    whole: list[tuple[str, int]] = field(default_factory=list)  # (tensor, axis) used whole
    windows: set[tuple[str, tuple[IndexMap, ...]]] = field(default_factory=set)  # valid-range reads


def _index_sources(item: StatementStructure, declared: set[str]) -> dict[str, _IndexSource]:
    sources = {index: _IndexSource(item.where_ranges.get(index)) for index in item.indices}
    reads = [n for n in walk(item.value) if isinstance(n, Read) and n.maps]
    if item.accumulate or item.target in declared:
        # a target's known shape (`+=`, or declared) takes part in range inference too
        reads.append(Read(item.target, item.target_maps, item.boundaries.get(item.target)))
    for read in reads:
        for axis, m in enumerate(read.maps):
            if m.is_plain:
                sources[m.terms[0][0]].whole.append((read.tensor, axis))
            elif read.boundary is None:
                for index in m.indices():
                    sources[index].windows.add((read.tensor, read.maps))
    return sources


# ---- one statement, root to leaves --------------------------------------------------------

@dataclass
class Contribution:
    """`d<read.tensor>[read.maps] += value`, summing the indices of value not in the maps."""

    read: Read
    value: Expr
    statement: StatementStructure
    origin: dict[str, str]  # renamed index -> the forward statement's index


class _StatementAdjoint:
    def __init__(self, derivation: _Derivation, item: StatementStructure, cotangent: Expr) -> None:
        self.derivation = derivation
        self.item = item
        self.active = derivation.active
        self.contributions: list[Contribution] = []
        self.origin: dict[str, str] = {}
        self.scope: list[str] = []  # indices bound by the reductions around the current node
        # The statement's own value is its target (exp' = exp reads the result), unless a
        # later `+=` changes the target.
        plain = not item.accumulate and all(m.is_plain for m in item.target_maps)
        later = any(s.accumulate and s.target == item.target
                    for s in derivation.structure.statements)
        self.root_value = (derivation.plain_read(item.target, [m.terms[0][0] for m in
                                                               item.target_maps], item, {})
                           if plain and not later else None)
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
        try:
            return self.derivation.temporary(self.item, node, dict(self.origin))
        except RangeError:  # its ranges need reads outside it: compute it in place instead
            return node

    def depends(self, node: Expr) -> bool:
        return any(isinstance(n, Read) and n.tensor in self.active for n in walk(node))

    def propagate(self, node: Expr, g: Expr) -> None:
        if _is(g, 0) or not self.depends(node):
            return
        if isinstance(node, Read):
            # A reduction index that neither g nor the read uses still sums: the read gets
            # one contribution per value of it (d/ds sum[k](s + w[k]) = |k|).
            for index in self.scope:
                if index not in free_indices(g) and index not in node.indices():
                    g = mul(g, self.derivation.count(index, self.item, self.origin,
                                                     in_statement=False))
            self.contributions.append(Contribution(node, g, self.item, dict(self.origin)))
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
    #   max[j](b[j])  -> db[j] = g / #ties * (b[j] == max)   (ties share, like torch.amax)
    def propagate_reduce(self, node: Reduce, g: Expr) -> None:
        body, indices = node.body, node.indices
        taken = set(free_indices(g)) | set(self.scope)
        clashes = [i for i in indices if i in taken]
        if clashes:  # an outer index of the same name is in use: rename this reduction's own
            names = {i: self.derivation.fresh.index(i) for i in clashes}
            for old, new in names.items():
                self.origin[new] = self.origin.get(old, old)
            body = rename(body, names)
            indices = tuple(names.get(i, i) for i in indices)
        if node.op == "mean":
            count: Expr = ONE
            for index in indices:
                count = mul(count, self.derivation.count(index, self.item, self.origin))
            g = div(g, count)
        elif node.op in ("max", "min"):
            mask = Apply("eq", (self.value_of(body), self.value_of(node)))
            ties = self.derivation.temporary(self.item, Reduce("sum", indices, mask),
                                             dict(self.origin), "ties")
            # (g / #ties) * mask: the same numbers for a 0/1 mask, and g / #ties does not
            # depend on the window offset, so a loop over offsets computes it once
            g = mul(div(g, ties), mask)
        self.scope.extend(indices)
        self.propagate(body, g)
        del self.scope[len(self.scope) - len(indices):]


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
        self.fresh = fresh
        self.shapes: dict[str, tuple[int | str, ...]] = {}
        self.generated: set[str] = set()  # tensors that need a declaration added
        for name, declaration in program.declarations.items():
            if declaration.dims is not None:
                self.shapes[name] = tuple(declaration.dims)

    def shape(self, tensor: str, rank: int) -> tuple[int | str, ...]:
        if rank == 0:
            return ()
        if tensor not in self.shapes:
            self.shapes[tensor] = tuple(self.fresh.make(f"{tensor}_{axis}") for axis in range(rank))
            self.generated.add(tensor)
        return self.shapes[tensor]


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
    bracketed = {n for node in walk(value) if isinstance(node, Read) for n in node.indices()}
    bracketed |= {n for node in walk(value) if isinstance(node, Reduce) for n in node.indices}
    # An index used only as a value (`k*x[i]`) is an index only inside brackets: say sum[k].
    if set(summed) <= bracketed and \
            place_sums(value, set(summed), first_appearance(value)) == explicit:
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
        self.temporaries: dict[tuple[str, Expr], S.Assignment] = {}
        declared = {name for name, d in self.structure.declarations.items() if d.dims is not None}
        self.sources = {id(item): _index_sources(item, declared)
                        for item in self.structure.statements}

    # ---- sizes and ranges carried from a forward statement into derived ones ----
    def size(self, index: str, item: StatementStructure) -> Expr | None:
        """How many values the forward index takes, as an expression of sizes, if one says."""
        source = self.sources[id(item)][index]
        if source.where is not None:
            low, high = source.where
            return sub(_size_value(high), _size_value(low))
        if source.whole:
            return _size_value(self.whole_size(source))
        return None

    def whole_size(self, source: _IndexSource) -> int | str:
        """The size of a dimension the index is used whole in (an input's, if it can)."""
        tensor, axis = min(source.whole, key=lambda ta: ta[0] not in self.structure.inputs)
        return self.ranges.shape(tensor, self.rank(tensor))[axis]

    def count(self, index: str, item: StatementStructure, origin: dict[str, str],
              in_statement: bool = True) -> Expr:
        """The number of values of `index` (renamed from origin) in a derived statement."""
        size = self.size(origin.get(index, index), item)
        if size is not None:
            return size
        if in_statement:  # the index ranges in the derived statement itself: count it there
            return Reduce("sum", (index,), ONE)
        raise RangeError(f"tc.grad needs the size of '{origin.get(index, index)}' here; add "
                         f"'where {origin.get(index, index)} < N' to the statement",
                         item.source.span)

    def plain_read(self, tensor: str, indices: list[str], item: StatementStructure,
                   origin: dict[str, str]) -> Read:
        """`tensor[i, j, ...]` for a tensor indexed by a statement's own plain indices, whose
        ranges may start above 0 (`where i in 1:3`: position i - 1)."""
        maps = []
        for index in indices:
            where = self.sources[id(item)][origin.get(index, index)].where
            low = where[0] if where else 0
            if isinstance(low, str):
                raise RangeError(f"tc.grad: a range starting at the size '{low}' is not "
                                 f"supported yet; shift '{index}' to start at 0",
                                 item.source.span)
            maps.append(IndexMap(((index, 1),), -low))
        return Read(tensor, tuple(maps))

    def temporary(self, item: StatementStructure, node: Expr, origin: dict[str, str],
                  base: str | None = None) -> Read:
        """A forward subexpression computed once into a named tensor; read back plainly."""
        indices = free_indices(node)
        key = (item.target, node)
        if key not in self.temporaries:
            if base is None and isinstance(node, Reduce):
                first = next((n.tensor for n in walk(node) if isinstance(n, Read) and n.maps),
                             "value")
                base = f"{node.op}_{first}"
            name = self.fresh.make(base or f"{item.target}_inner")
            target = S.Target(name, tuple(S.Affine((S.AffineTerm(i, 1),), 0) for i in indices))
            where = self.where_clause(item, origin, node, (), None, False)
            self.temporaries[key] = S.Assignment(target, _statement_value(node, []), where)
        name = self.temporaries[key].target.tensor
        return self.plain_read(name, indices, item, origin)

    def where_clause(self, item: StatementStructure, origin: dict[str, str], value: Expr,
                     target_maps: tuple[IndexMap, ...], target: tuple[str, str | None] | None,
                     target_shaped: bool) -> tuple[S.WhereItem, ...]:
        """Ranges and boundary modes of a statement derived from `item`.

        Every index must take the range it has in the forward statement. An index used whole
        in the derived statement gets it from the same dimension; otherwise the `where` of
        the forward carries over, or its size (`where h < x_2`); an index whose forward range
        came from windows ("valid") keeps it only if the derived statement reads them all.
        `target` is (the forward tensor it stands for, its mode) for a gradient target.
        """
        sources = self.sources[id(item)]
        back = {new: old for new, old in origin.items()}
        reads = [n for n in walk(value) if isinstance(n, Read) and n.maps]
        whole = {m.terms[0][0] for r in reads for m in r.maps if m.is_plain}
        if target_shaped:
            whole |= {m.terms[0][0] for m in target_maps if m.is_plain}
        # (a cotangent dy[A] has y's shape: it bounds its indices as y[A] did)
        forward_name = {g: t for t, g in self.gradient_names.items()}
        windows = {(forward_name.get(r.tensor, r.tensor), rename(r, back).maps)
                   for r in reads if r.boundary is None}
        if target is not None and target[1] is None:
            windows.add((target[0], rename(Read(target[0], target_maps), back).maps))
        indices = dict.fromkeys([*(n for m in target_maps for n in m.indices()),
                                 *first_appearance(value)])
        clause: list[S.WhereItem] = []
        for index in indices:
            forward = back.get(index, index)
            source = sources.get(forward)
            if source is None:
                continue
            if source.where is not None:
                clause.append(S.RangeBound(index, *source.where))
            elif index in whole:
                continue
            elif source.whole:
                clause.append(S.RangeBound(index, 0, self.whole_size(source)))
            else:
                missing = [(t, maps) for t, maps in source.windows if (t, maps) not in windows]
                if missing:
                    read = Read(*missing[0])
                    raise RangeError(
                        f"tc.grad: the range of '{forward}' is inferred from '{read}', which a "
                        f"derived statement does not read; give it explicitly, as in "
                        f"'where {forward} < N'", item.source.span)
        if target is not None and target[1] is not None:
            clause.append(S.Boundary(self.gradient_names[target[0]], target[1]))
        moded = {n.tensor: n.boundary for n in reads if n.boundary}
        clause.extend(S.Boundary(t, mode) for t, mode in moded.items())
        return tuple(clause)

    def program(self, keep_forward: bool = False) -> S.Program:
        contributions: list[Contribution] = []
        reached = set(self.outputs)  # tensors with a (nonzero) cotangent so far
        for item in reversed(self.structure.statements):  # reverse mode: last statement first
            if item.target in self.active and item.target in reached:
                derived = _StatementAdjoint(self, item, self.cotangent(item))
                contributions.extend(derived.contributions)
                reached |= {c.read.tensor for c in derived.contributions}
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
        rendered = self.without_dead(list(self.temporaries.values()) + rendered)
        targets = {s.target.tensor for s in rendered}
        declared = [g for g in declared if g in targets]
        reads = {n.tensor for s in rendered for n in S.walk(s.value) if isinstance(n, S.Access)}
        reads |= {n.name for s in rendered for n in S.walk(s.value) if isinstance(n, S.Name)}
        by_gradient = {g: t for t, g in self.gradient_names.items()}
        shapes = {by_gradient[g]: self.ranges.shape(by_gradient[g], self.rank(by_gradient[g]))
                  for g in declared}
        # Sizes named by an intermediate's declaration are bound by computing it.
        inputs = set(self.structure.inputs)
        input_sizes = {d for t in inputs for d in self.ranges.shapes.get(t, ()) if isinstance(d, str)}
        wanted = reads | {t for t in self.ranges.generated if t not in inputs}
        wanted |= {t for t, shape in shapes.items() if t not in inputs
                   and any(isinstance(d, str) and d not in input_sizes for d in shape)}
        if keep_forward:
            wanted |= {item.target for item in self.structure.statements}
        forward = self.recomputed(wanted)
        forward = [s for s in forward if s.target.tensor not in targets]
        head: list[S.Statement] = [S.Declaration(t, None, self.ranges.shapes[t])
                                   for t in sorted(self.ranges.generated)]
        head += [S.Declaration(self.gradient_names[t], None, shape) for t, shape in shapes.items()]
        head += self.forward_declarations(forward + rendered, head)
        # Placed in its own printed source, as parse(str(...)) would (the round-trip
        # property tests check the statements are in normal form): no second parse.
        return S.placed_program(head + forward + rendered)

    def forward_declarations(self, body: list[S.Assignment],
                             head: list[S.Declaration]) -> list[S.Declaration]:
        """The forward's declarations of tensors the adjoint uses, then of inputs (else any
        tensor) that bind the size names it still needs."""
        used = {s.target.tensor for s in body}
        used |= {n.tensor for s in body for n in S.walk(s.value) if isinstance(n, S.Access)}
        used |= {n.name for s in body for n in S.walk(s.value) if isinstance(n, S.Name)}
        names = lambda d: {x for x in d.dims or () if isinstance(x, str)}  # noqa: E731
        needed = set().union(*(names(d) for d in head)) | used
        needed |= {b for s in body for i in s.where if isinstance(i, S.RangeBound)
                   for b in (i.low, i.high) if isinstance(b, str)}
        forward = [s for s in self.syntax.statements if isinstance(s, S.Declaration)]
        chosen = [d for d in forward if d.tensor in used]
        binding = [d for d in head if d.tensor in self.ranges.generated]  # not gradients'
        provided = set().union(*(names(d) for d in chosen + binding))
        inputs = set(self.structure.inputs)
        for declaration in sorted(forward, key=lambda d: d.tensor not in inputs):
            if declaration not in chosen and (names(declaration) & needed) - provided:
                chosen.append(declaration)
                provided |= names(declaration)
        return [d for d in forward if d in chosen]

    def cotangent(self, item: StatementStructure) -> Expr:
        """The cotangent of a statement's target, read at the positions it writes."""
        if item.target in self.outputs and not item.target_maps:
            return ONE  # a scalar such as a loss: d loss / d loss = 1
        gradient = self.gradient_names[item.target]
        if item.accumulate:
            return Read(gradient, item.target_maps, item.boundaries.get(item.target))
        return self.plain_read(gradient, [m.terms[0][0] for m in item.target_maps], item, {})

    def render(self, contribution: Contribution, gradient: str,
               exists: bool) -> tuple[S.Assignment, bool]:
        read, value, item = contribution.read, contribution.value, contribution.statement
        lhs = [n for m in read.maps for n in m.indices()]
        summed = [n for n in first_appearance(value) if n not in lhs and n in free_indices(value)]
        plain = all(m.is_plain for m in read.maps) and len(set(lhs)) == len(lhs) == len(read.maps)
        sources = self.sources[id(item)]
        back = contribution.origin
        ranged = any(sources[back.get(n, n)].where for n in lhs)
        whole = {m.terms[0][0] for n in walk(value) if isinstance(n, Read)
                 for m in n.maps if m.is_plain}
        assign = not exists and plain and read.boundary is None and not ranged
        # `=` infers the shape when every index on the left is used whole on the right.
        needs_shape = bool(read.maps) and not exists and not (assign and set(lhs) <= whole)
        where = self.where_clause(item, back, value, read.maps, (read.tensor, read.boundary),
                                  target_shaped=bool(read.maps) and (exists or needs_shape))
        target = S.Target(gradient, tuple(_affine(m) for m in read.maps))
        statement = S.Assignment(target, _statement_value(value, summed), where,
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
