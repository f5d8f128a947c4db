"""Syntax tree -> checked IR: names, ranks, sizes, implicit sums, ranges and bounds."""

from __future__ import annotations

import difflib
from dataclasses import replace
from typing import Iterable, Mapping

from . import syntax as S
from .errors import (
    BoundsError, DtypeError, NameResolutionError, RangeError, RankError, ShapeError, Span,
    TensorcError,
)
from .ir import (
    Apply, CheckedProgram, Constant, Expr, IndexMap, IndexValue, ProgramStructure, Read, Reduce,
    Statement, StatementStructure, TensorInfo, first_appearance, free_indices, walk,
)
from .ops import BINARY_OPS, BOUNDARY_MODES, COMPARE_OPS, FUNCTIONS, canonical_mode

__all__ = ["check", "structure", "DTYPES", "program_inputs"]

# Declared dtype names and the NumPy dtype names they stand for.
DTYPES = {"f16": "float16", "f32": "float32", "f64": "float64",
          "float16": "float16", "float32": "float32", "float64": "float64"}

# Ops whose operands are summation scopes of their own (SPEC: "the smallest enclosing
# additive term or function argument"); mul/div/pow/neg keep their operands in one term.
_TERM_OPS = {"mul", "div", "pow", "neg"}


def _suggest(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _bracket_names(expr: S.Expr) -> list[tuple[str, Span]]:
    """Names used inside [...] of accesses and reduction lists, in order, with spans."""
    found: list[tuple[str, Span]] = []
    for node in S.walk(expr):
        if isinstance(node, S.Access):
            for index in node.indices:
                found.extend((term.name, term.span) for term in index.terms)
        elif isinstance(node, S.Reduction):
            found.extend(zip(node.indices, node.index_spans or (node.span,) * len(node.indices)))
    return found


def program_inputs(program: S.Program) -> list[str]:
    """Names a program reads and never defines, in order of first use, then tensors that
    are declared and never defined.

    (Reading a name before the statement that defines it is an error the checker reports.)
    """
    defined = {s.target.tensor for s in program.statements if isinstance(s, S.Assignment)
               and not s.accumulate}
    size_names = {d for s in program.statements if isinstance(s, S.Declaration)
                  for d in (s.dims or ()) if isinstance(d, str)}
    inputs: dict[str, None] = {}
    for statement in program.statements:
        if not isinstance(statement, S.Assignment):
            continue
        statement_indices = {name for name, _ in _bracket_names(statement.value)}
        statement_indices |= {t.name for i in statement.target.indices for t in i.terms}
        for node in S.walk(statement.value):
            if isinstance(node, S.Access) and node.tensor not in defined:
                inputs[node.tensor] = None
            elif isinstance(node, S.Name) and node.name not in defined \
                    and node.name not in statement_indices and node.name not in size_names:
                inputs[node.name] = None
        defined.add(statement.target.tensor)
    # A declared tensor that nothing computes is an input too: its shape binds size names.
    targets = {s.target.tensor for s in program.statements if isinstance(s, S.Assignment)}
    for statement in program.statements:
        if isinstance(statement, S.Declaration) and statement.tensor not in targets:
            inputs.setdefault(statement.tensor, None)
    return list(inputs)


class _ProgramChecker:
    def __init__(self, program: S.Program, shapes: Mapping[str, tuple[int, ...]],
                 sizes: Mapping[str, int], dtypes: Mapping[str, str],
                 symbolic: bool = False) -> None:
        self.program = program
        # Symbolic: shapes are unknown (tc.grad); ranks, names and sums are still checked.
        self.symbolic = symbolic
        self.shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        self.dtypes = dict(dtypes)
        self.declarations: dict[str, S.Declaration] = {}
        self.size_values: dict[str, int] = dict(sizes)
        self.size_names = {dim for d in program.statements if isinstance(d, S.Declaration)
                           for dim in (d.dims or ()) if isinstance(dim, str)}
        self.size_origin: dict[str, str] = {name: "given" for name in sizes}
        self.tensors: dict[str, TensorInfo] = {}
        self.statements: list[Statement] = []
        self.read_later: set[str] = set()

    # ---- declarations and sizes -----------------------------------------------------
    def collect_declarations(self) -> None:
        for statement in self.program.statements:
            if not isinstance(statement, S.Declaration):
                continue
            if statement.tensor in self.declarations:
                raise NameResolutionError(f"'{statement.tensor}' is declared twice; "
                                          "keep one declaration", statement.span)
            if statement.dtype is not None and statement.dtype not in DTYPES:
                raise DtypeError(f"unknown dtype '{statement.dtype}'; expected one of "
                                 f"f16, f32, f64{_suggest(statement.dtype, DTYPES)}",
                                 statement.dtype_span)
            self.declarations[statement.tensor] = statement
        # Bind size names from the shapes given for declared tensors.
        for name, declaration in self.declarations.items():
            if name not in self.shapes:
                continue
            dims = declaration.dims or ()
            shape = self.shapes[name]
            if len(shape) != len(dims):
                raise RankError(f"'{name}' is declared with {len(dims)} dimensions but was given "
                                f"shape {shape} ({len(shape)} dimensions)", declaration.span)
            for axis, (dim, size) in enumerate(zip(dims, shape)):
                span = declaration.dim_spans[axis] if declaration.dim_spans else declaration.span
                self.bind_size(dim, size, f"{name} dim {axis}", span)
            self.check_dtype(name)

    def bind_size(self, dim: int | str, size: int, origin: str, span: Span) -> None:
        if isinstance(dim, int):
            if dim != size:
                raise ShapeError(f"{origin} is declared as {dim} but has size {size}", span)
            return
        known = self.size_values.get(dim)
        if known is None:
            self.size_values[dim] = size
            self.size_origin[dim] = origin
        elif known != size:
            raise ShapeError(f"size '{dim}' is {known} (from {self.size_origin[dim]}) but "
                             f"{origin} has size {size}", span)

    def check_dtype(self, name: str) -> None:
        declaration = self.declarations.get(name)
        if declaration is None or declaration.dtype is None or name not in self.dtypes:
            return
        expected = DTYPES[declaration.dtype]
        # integer and boolean arrays are converted like any input's; other floats are not
        if self.dtypes[name] != expected and self.dtypes[name].startswith("float"):
            raise DtypeError(f"'{name}' is declared {declaration.dtype} ({expected}) but was "
                             f"given {self.dtypes[name]}; convert it or change the declaration",
                             declaration.dtype_span)

    def declared_shape(self, name: str) -> tuple[int, ...] | None:
        declaration = self.declarations.get(name)
        if declaration is None:
            return None
        if declaration.dims is None:
            return ()
        shape = []
        for dim in declaration.dims:
            if isinstance(dim, int):
                shape.append(dim)
            elif dim in self.size_values:
                shape.append(self.size_values[dim])
            else:
                return None
        return tuple(shape)

    def size_of(self, name: str | int, span: Span) -> int:
        if isinstance(name, int):
            return name
        if name in self.size_values:
            return self.size_values[name]
        options = list(self.size_values)
        hint = _suggest(name, options) if options else \
            "; declare it, as in 'x: f32[N, C]', or give it to tc.compile as N=..."
        raise NameResolutionError(f"unknown size '{name}'{hint}", span)

    # ---- tensors ----------------------------------------------------------------------
    def tensor_shape(self, name: str, span: Span, used_with_rank: int) -> tuple[int, ...]:
        info = self.tensors.get(name)
        if info is not None:
            return info.shape
        later = self.defined_later(name)
        if later is not None:
            raise NameResolutionError(f"'{name}' is used before it is defined (on line {later}); "
                                      "move its definition above this line", span)
        shape = self.shapes.get(name)
        if shape is None:
            shape = self.declared_shape(name)
        if shape is None and self.symbolic and name in self.declarations:
            shape = (-1,) * len(self.declarations[name].dims or ())
        if shape is None:
            if used_with_rank == 0:
                shape = ()  # a bare name with no shape given: a scalar input
            elif self.symbolic:
                shape = (-1,) * used_with_rank  # known rank, unknown sizes
            else:
                raise ShapeError(f"no shape for input '{name}': pass {name}=(...) to "
                                 f"tc.compile, call the kernel with arrays, or declare it "
                                 f"('{name}: f32[...]')", span)
        self.tensors[name] = TensorInfo(name, shape, self.declared_dtype(name), None)
        return shape

    def is_size(self, name: str) -> bool:
        return name in (self.size_names if self.symbolic else self.size_values)

    def declared_dtype(self, name: str) -> str | None:
        declaration = self.declarations.get(name)
        return DTYPES[declaration.dtype] if declaration and declaration.dtype else None

    def defined_later(self, name: str) -> int | None:
        for statement in self.program.statements[len(self.seen_statements):]:
            if isinstance(statement, S.Assignment) and statement.target.tensor == name:
                return statement.span.line
        return None

    # ---- the program ------------------------------------------------------------------
    def check(self) -> CheckedProgram:
        self.collect_declarations()
        self.tensor_names = self.all_tensor_names()
        self.seen_statements: list[S.Statement] = []
        assignments = [s for s in self.program.statements if isinstance(s, S.Assignment)]
        if not assignments:
            raise TensorcError("the program has no statements to compute; write one such as "
                               "'C[i,k] = A[i,j] * B[j,k]'")
        for statement in self.program.statements:
            self.seen_statements.append(statement)
            if isinstance(statement, S.Assignment):
                self.statements.append(_StatementChecker(self, statement).check())
        read_by_later = _shape_donors(self.program)
        outputs: list[str] = []
        for number in range(len(self.statements) - 1, -1, -1):
            statement = self.statements[number]
            if statement.target not in read_by_later and statement.target not in outputs:
                outputs.append(statement.target)
            read_by_later |= {n.tensor for n in walk(statement.value) if isinstance(n, Read)}
        defined = {s.target for s in self.statements}
        # What the kernel takes, as program_inputs says: a '+=' target read before anything
        # defines it (acc[i] += acc[i]) is an input, accumulated into a copy.
        inputs = [n for n in program_inputs(self.program) if n in self.tensors]
        inputs += [n for n in self.tensors if self.tensors[n].defined_by is None
                   and n not in defined and n not in inputs]
        for name in self.shapes:
            if name not in self.tensors and name not in self.size_values \
                    and name not in self.declarations:
                raise ShapeError(f"a shape was given for '{name}', which the program does not "
                                 f"use{_suggest(name, self.tensors)}")
            if name in defined and name not in inputs \
                    and tuple(self.shapes[name]) != tuple(self.tensors[name].shape):
                raise ShapeError(f"a shape {tuple(self.shapes[name])} was given for '{name}', "
                                 f"but the program computes it with shape "
                                 f"{tuple(self.tensors[name].shape)}; drop that shape or fix it",
                                 self.statements[self.tensors[name].defined_by].span
                                 if self.tensors[name].defined_by is not None else None)
        return CheckedProgram(tuple(self.statements), dict(self.tensors), tuple(inputs),
                              tuple(reversed(outputs)), self.program.source,
                              self.program.filename)

    def all_tensor_names(self) -> set[str]:
        names = set(self.declarations)
        for statement in self.program.statements:
            if isinstance(statement, S.Assignment):
                names.add(statement.target.tensor)
                names |= {n.tensor for n in S.walk(statement.value)
                          if isinstance(n, S.Access)}
        return names


class _StatementChecker:
    """Checks one assignment; produces an IR Statement with ranges normalized to start at 0."""

    def __init__(self, program: _ProgramChecker, statement: S.Assignment) -> None:
        self.p = program
        self.s = statement
        self.ranges: dict[str, tuple[int, int]] = {}
        self.range_spans: dict[str, Span] = {}
        self.boundaries: dict[str, str] = {}
        self.index_spans: dict[str, Span] = {}
        self.reads: list[Read] = []

    def check(self) -> Statement:
        statement, p = self.s, self.p
        target = statement.target
        lhs_names = [(t.name, t.span) for index in target.indices for t in index.terms]
        rhs_names = _bracket_names(statement.value)
        self.indices: dict[str, None] = {}
        # Errors about an index point at its first use on the right, where ranges come from.
        for name, span in rhs_names + lhs_names:
            if p.is_size(name) and name not in self.indices:
                continue  # a size name inside an index is a constant
            if name in p.tensor_names:
                raise NameResolutionError(f"'{name}' is a tensor and cannot also be an index; "
                                          "rename one of them", span)
            self.indices.setdefault(name, None)
            self.index_spans.setdefault(name, span)
        self.read_where()
        value = self.build(statement.value, bound=())
        lhs_indices = list(dict.fromkeys(name for name, _ in lhs_names
                                         if name in self.indices))
        value = self.place_implicit_sums(value, set(lhs_indices))
        target_maps = tuple(self.affine_map(index) for index in target.indices)
        target_shape = self.target_shape(target, target_maps)
        sizes = self.infer_ranges(target, target_maps, target_shape)
        if target_shape is None:
            target_shape = tuple(sizes[m.terms[0][0]] for m in target_maps)
            self.bind_declared_sizes(target, target_shape)
        self.check_bounds(target, target_maps, target_shape, sizes)
        starts = {name: low for name, (low, _) in self.ranges.items() if low}
        value = _shift(value, starts)
        if statement.accumulate:
            target_maps = tuple(m.shifted(starts) for m in target_maps)
        number = len(p.statements)
        if statement.accumulate and target.tensor in p.tensors:
            pass  # accumulating into a tensor that already exists keeps its entry
        else:
            p.tensors[target.tensor] = TensorInfo(target.tensor, target_shape,
                                                  p.declared_dtype(target.tensor), number)
        order = dict.fromkeys(n for m in target_maps for n in m.indices())
        order.update(dict.fromkeys(first_appearance(value)))
        order.update(dict.fromkeys(self.indices))
        ordered_ranges = {name: sizes[name] for name in order}
        return Statement(target.tensor, target_maps, statement.accumulate, value, ordered_ranges,
                         str(statement), statement.span.line, statement.span,
                         self.boundaries.get(target.tensor))

    def structure(self) -> StatementStructure:
        """Names, maps and implicit sums only: what tc.grad needs when shapes are unknown."""
        statement = self.s
        self.indices = {}
        for name, span in _bracket_names(statement.value) + [
                (t.name, t.span) for index in statement.target.indices for t in index.terms]:
            if self.p.is_size(name):
                continue
            if name in self.p.tensor_names:
                raise NameResolutionError(f"'{name}' is a tensor and cannot also be an index; "
                                          "rename one of them", span)
            self.indices.setdefault(name, None)
            self.index_spans.setdefault(name, span)
        ranges = {}
        for item in statement.where:
            if isinstance(item, S.Boundary):
                mode = canonical_mode(item.mode)
                if mode is None:
                    raise NameResolutionError(f"unknown boundary mode '{item.mode}'"
                                              f"{_suggest(item.mode, BOUNDARY_MODES)}",
                                              item.mode_span)
                self.boundaries[item.tensor] = mode
            elif item.index in self.indices:
                ranges[item.index] = (item.low, item.high)
        value = self.build(statement.value, bound=())
        lhs = {t.name for index in statement.target.indices for t in index.terms}
        value = self.place_implicit_sums(value, lhs)
        target_maps = tuple(self.affine_map(index) for index in statement.target.indices)
        name = statement.target.tensor
        if name not in self.p.tensors:
            self.p.tensors[name] = TensorInfo(name, (-1,) * len(target_maps),
                                              self.p.declared_dtype(name), len(self.p.statements))
        return StatementStructure(statement, name, target_maps, statement.accumulate, value,
                                  dict(self.boundaries), ranges, tuple(self.indices))

    def bind_declared_sizes(self, target: S.Target, shape: tuple[int, ...]) -> None:
        """A declaration of a defined tensor names its sizes (`y: [N, O, P, Q]`): bind them."""
        declaration = self.p.declarations.get(target.tensor)
        if declaration is None or declaration.dims is None:
            return
        if len(declaration.dims) != len(shape):
            raise RankError(f"'{target.tensor}' is declared with {len(declaration.dims)} "
                            f"dimensions but is defined with {len(shape)} indices", target.span)
        for axis, (dim, size) in enumerate(zip(declaration.dims, shape)):
            span = declaration.dim_spans[axis] if declaration.dim_spans else declaration.span
            self.p.bind_size(dim, size, f"{target.tensor} dim {axis}", span)

    # ---- where ------------------------------------------------------------------------
    def read_where(self) -> None:
        for item in self.s.where:
            if isinstance(item, S.Boundary):
                mode = canonical_mode(item.mode)
                if mode is None:
                    options = ", ".join(sorted(set(BOUNDARY_MODES)))
                    raise NameResolutionError(
                        f"unknown boundary mode '{item.mode}'{_suggest(item.mode, BOUNDARY_MODES)} "
                        f"(modes: {options})", item.mode_span)
                if item.tensor not in self.p.tensor_names:
                    raise NameResolutionError(f"boundary mode for '{item.tensor}', which is not a "
                                              f"tensor{_suggest(item.tensor, self.p.tensor_names)}",
                                              item.span)
                self.boundaries[item.tensor] = mode
                continue
            if item.index not in self.indices:
                raise NameResolutionError(
                    f"'where' gives a range for '{item.index}', which is not an index of this "
                    f"statement{_suggest(item.index, self.indices)}", item.span)
            low = self.p.size_of(item.low, item.span)
            high = self.p.size_of(item.high, item.span)
            if high <= low:
                raise RangeError(f"empty range for '{item.index}': {low}:{high}; the upper bound "
                                 "must exceed the lower", item.span)
            if item.index in self.ranges:
                raise RangeError(f"'{item.index}' is given two ranges; keep one", item.span)
            self.ranges[item.index] = (low, high)
            self.range_spans[item.index] = item.span

    # ---- expressions --------------------------------------------------------------------
    def affine_map(self, affine: S.Affine) -> IndexMap:
        coefficients: dict[str, int] = {}
        offset = affine.constant
        for term in affine.terms:
            if term.name in self.indices:
                coefficients[term.name] = coefficients.get(term.name, 0) + term.coefficient
            elif self.p.symbolic:
                raise RangeError(f"size name '{term.name}' inside an index is not supported by "
                                 "tc.grad yet; write the number instead", term.span)
            else:
                offset += term.coefficient * self.p.size_values[term.name]
        return IndexMap(tuple((n, c) for n, c in coefficients.items() if c), offset)

    def build(self, node: S.Expr, bound: tuple[str, ...]) -> Expr:
        if isinstance(node, S.Number):
            return Constant(node.value)
        if isinstance(node, S.Name):
            return self.build_name(node)
        if isinstance(node, S.Access):
            shape = self.p.tensor_shape(node.tensor, node.span, len(node.indices))
            if len(shape) != len(node.indices):
                raise RankError(f"'{node.tensor}' has {len(shape)} dimensions (shape "
                                f"{list(shape)}) but is indexed with {len(node.indices)}",
                                node.span)
            read = Read(node.tensor, tuple(self.affine_map(i) for i in node.indices),
                        self.boundaries.get(node.tensor), node.span)
            self.reads.append(read)
            return read
        if isinstance(node, S.Unary):
            return Apply("neg", (self.build(node.operand, bound),), node.span)
        if isinstance(node, S.Binary):
            return Apply(BINARY_OPS[node.op], (self.build(node.left, bound),
                                               self.build(node.right, bound)), node.span)
        if isinstance(node, S.Compare):
            return Apply(COMPARE_OPS[node.op], (self.build(node.left, bound),
                                                self.build(node.right, bound)), node.span)
        if isinstance(node, S.Call):
            return self.build_call(node, bound)
        if isinstance(node, S.Reduction):
            return self.build_reduction(node, bound)
        raise AssertionError(f"unknown syntax node {node!r}")

    def build_name(self, node: S.Name) -> Expr:
        if node.name in self.indices:
            return IndexValue(node.name)
        if self.p.symbolic and node.name in self.p.size_names:
            return Read(node.name, (), None, node.span)  # a size as a value, kept symbolic
        if node.name in self.p.size_values:
            return Constant(self.p.size_values[node.name])
        if node.name in self.p.size_names:
            raise NameResolutionError(
                f"size '{node.name}' has no value yet: it is bound by a declaration whose "
                f"tensor is not an input or not computed before this line; pass "
                f"{node.name}=... to tc.compile", node.span)
        shape = self.p.tensor_shape(node.name, node.span, 0)
        if shape:
            raise RankError(f"'{node.name}' has {len(shape)} dimensions (shape {list(shape)}); "
                            f"index it, as in {node.name}[{','.join('ijklmn'[:len(shape)])}]",
                            node.span)
        read = Read(node.name, (), None, node.span)
        self.reads.append(read)
        return read

    def build_call(self, node: S.Call, bound: tuple[str, ...]) -> Expr:
        function = FUNCTIONS.get(node.function)
        if function is None:
            raise NameResolutionError(f"unknown function '{node.function}'"
                                      f"{_suggest(node.function, FUNCTIONS)}; functions: "
                                      f"{', '.join(sorted(FUNCTIONS))}", node.name_span)
        if len(node.arguments) != function.arity:
            hint = ""
            if node.function in ("max", "min") and len(node.arguments) == 1:
                hint = f"; to reduce, name the indices: {node.function}[j](...)"
            raise NameResolutionError(f"'{node.function}' takes {function.arity} argument"
                                      f"{'s' if function.arity > 1 else ''}, got "
                                      f"{len(node.arguments)}{hint}", node.span)
        return Apply(node.function, tuple(self.build(a, bound) for a in node.arguments), node.span)

    def build_reduction(self, node: S.Reduction, bound: tuple[str, ...]) -> Expr:
        # A reduction binds its indices locally, so `p[n,j] = e[n,j] / sum[j](e[n,j])` is
        # fine: the inner j shadows the outer one and shares its range.
        spans = node.index_spans or (node.span,) * len(node.indices)
        for name, span in zip(node.indices, spans):
            if name in bound or node.indices.count(name) > 1:
                raise RangeError(f"'{name}' is already reduced here; reduce each index once", span)
        body = self.build(node.body, bound + node.indices)
        used = set(free_indices(body))
        counting = isinstance(body, Constant) and node.op == "sum"  # sum[j](1): j's count
        for name, span in zip(node.indices, spans):
            if name not in used and not counting:
                raise RangeError(f"{node.op}[...] reduces '{name}', which its argument does not "
                                 "use", span)
        return Reduce(node.op, node.indices, body, False, node.span)

    # ---- implicit (Einstein) sums --------------------------------------------------------
    def place_implicit_sums(self, value: Expr, lhs: set[str]) -> Expr:
        order = first_appearance(value)
        free = [name for name in free_indices(value) if name not in lhs]
        return place_sums(value, set(free), order)

    # ---- shapes and ranges --------------------------------------------------------------
    def target_shape(self, target: S.Target, maps: tuple[IndexMap, ...]) -> tuple[int, ...] | None:
        p, name = self.p, target.tensor
        if self.s.accumulate:
            if name in p.tensors:
                shape = p.tensors[name].shape
            else:
                shape = p.shapes.get(name)
                if shape is None:
                    shape = p.declared_shape(name)
            declaration = p.declarations.get(name)
            if shape is None and declaration is not None and declaration.dims:
                missing = [d for d in declaration.dims
                           if isinstance(d, str) and d not in p.size_values]
                raise ShapeError(f"'+=' into '{name}' needs the size{'s' if len(missing) > 1 else ''}"
                                 f" {', '.join(missing)} of its declaration; give "
                                 f"{' and '.join(f'{d}=...' for d in missing)} to tc.compile",
                                 target.span)
            if shape is None:
                raise ShapeError(f"'+=' into '{name}' needs its shape: declare it first, as in "
                                 f"'{name}: f32[...]', or define it with '='", target.span)
            if len(shape) != len(maps):
                raise RankError(f"'{name}' has {len(shape)} dimensions but is indexed with "
                                f"{len(maps)}", target.span)
            return shape
        if name in p.tensors:
            info = p.tensors[name]
            what = "an input" if info.defined_by is None else \
                f"defined on line {p.statements[info.defined_by].line}"
            raise NameResolutionError(f"'{name}' is already {what}; give this result another "
                                      "name, or use '+=' to accumulate into it", target.span)
        seen: set[str] = set()
        for index, m in zip(target.indices, maps):
            if not m.is_plain:
                raise RangeError("the left-hand side of '=' takes plain indices; use '+=' to "
                                 f"accumulate into positions such as '{S.format_affine(index)}'",
                                 index.span)
            if m.terms[0][0] in seen:
                raise RangeError(f"index '{m.terms[0][0]}' appears twice on the left-hand side",
                                 index.span)
            seen.add(m.terms[0][0])
        declared = p.declared_shape(name)
        if declared is not None and len(declared) != len(maps):
            raise RankError(f"'{name}' is declared with {len(declared)} dimensions but is "
                            f"defined with {len(maps)} indices", target.span)
        return declared

    def infer_ranges(self, target: S.Target, target_maps: tuple[IndexMap, ...],
                     target_shape: tuple[int, ...] | None) -> dict[str, int]:
        known: dict[str, tuple[int, int]] = dict(self.ranges)
        uses: list[tuple[Read, int, int]] = []  # (read, dim, size)
        for read in self.reads:
            shape = self.p.tensors[read.tensor].shape
            uses.extend((read, dim, shape[dim]) for dim in range(len(read.maps)))
        if target_shape is not None:
            as_read = Read(target.tensor, target_maps, self.boundaries.get(target.tensor),
                           target.span)
            uses.extend((as_read, dim, size) for dim, size in enumerate(target_shape))
        # 1. an index used whole in a dimension takes that dimension's size
        whole: dict[str, tuple[int, Read]] = {}
        for read, dim, size in uses:
            m = read.maps[dim]
            if not m.is_plain or m.terms[0][0] in self.ranges:
                continue
            name = m.terms[0][0]
            if name in whole and whole[name][0] != size:
                first_size, first = whole[name]
                raise ShapeError(f"conflicting sizes for index '{name}': {first_size} in "
                                 f"'{first}' but {size} in '{read}'", read.span)
            whole.setdefault(name, (size, read))
        for name, (size, _) in whole.items():
            known[name] = (0, size)
        # 2. an index inside affine accesses takes the largest range keeping them in bounds
        progress = True
        while progress:
            progress = False
            candidates: dict[str, int] = {}
            for read, dim, size in uses:
                if read.boundary is not None:
                    continue
                m = read.maps[dim]
                unknown = [(n, c) for n, c in m.terms if n not in known]
                if len(unknown) != 1:
                    continue
                name, coefficient = unknown[0]
                rest_low = rest_high = m.offset
                for other, c in m.terms:
                    if other != name:
                        low, high = known[other]
                        rest_low += min(c * low, c * (high - 1))
                        rest_high += max(c * low, c * (high - 1))
                if coefficient > 0:
                    if rest_low < 0:
                        raise BoundsError(
                            f"'{read}' reads position {rest_low} of '{read.tensor}' dim {dim} at "
                            f"{name} = 0; add a boundary mode ('where {read.tensor}: zero') "
                            f"or a range such as 'where {name} in {-rest_low}:...'", read.span)
                    limit = (size - 1 - rest_high) // coefficient + 1
                else:
                    if rest_high > size - 1:
                        raise BoundsError(
                            f"'{read}' reads position {rest_high} of '{read.tensor}' dim {dim} "
                            f"(size {size}) at {name} = 0; add a boundary mode or a range",
                            read.span)
                    limit = rest_low // (-coefficient) + 1
                if limit <= 0:
                    raise RangeError(
                        f"index '{name}' has no valid range: '{read.tensor}' dim {dim} has size "
                        f"{size}, too small for the window in '{read}'", read.span)
                candidates[name] = min(limit, candidates.get(name, limit))
            for name, limit in candidates.items():
                known[name] = (0, limit)
                progress = True
        missing = [name for name in self.indices if name not in known]
        if missing:
            on_left = {n for m in target_maps for n in m.indices()}
            missing.sort(key=lambda name: name in on_left)  # blame a right-hand index first
            raise self.no_range_error(missing[0], target_maps)
        self.ranges = known
        return {name: high - low for name, (low, high) in known.items()}

    def no_range_error(self, name: str, target_maps: tuple[IndexMap, ...]) -> RangeError:
        span = self.index_spans[name]
        moded = [r for r in self.reads if name in r.indices() and r.boundary]
        inside = [r for r in self.reads if name in r.indices()]
        if moded and len(moded) == len(inside):
            read = moded[0]
            return RangeError(f"index '{name}' has no range: its accesses to '{read.tensor}' may "
                              f"leave the bounds ('{read.tensor}: {read.boundary}'); add "
                              f"'where {name} < ...'", span)
        for read in inside:
            for m in read.maps:
                if name in m.indices() and not m.is_plain:
                    return RangeError(f"index '{name}' has no range: it appears only inside "
                                      f"'{m}'; add 'where {name} < ...' or use '{name}' whole "
                                      "in a dimension", span)
        return RangeError(f"index '{name}' has no range: no tensor on the right-hand side is "
                          f"indexed by it; add 'where {name} < ...'", span)

    def check_bounds(self, target: S.Target, target_maps: tuple[IndexMap, ...],
                     target_shape: tuple[int, ...] | None, sizes: dict[str, int]) -> None:
        reads = [(read, self.p.tensors[read.tensor].shape) for read in self.reads]
        if self.s.accumulate:
            # A mode on a '+=' target is the adjoint of reading with it: 'zero' drops the
            # out-of-range contributions, the other modes fold them back (see backends).
            mode = self.boundaries.get(target.tensor)
            reads.append((Read(target.tensor, target_maps, mode, target.span), target_shape))
        for read, shape in reads:
            if read.boundary is not None:
                continue
            if any(sizes[n] == 0 for m in read.maps for n in m.indices()):
                continue  # an empty range reads nothing
            for dim, (m, size) in enumerate(zip(read.maps, shape)):
                shifted = m.shifted({n: low for n, (low, _) in self.ranges.items()})
                low, high = shifted.extent(sizes)
                if low < 0 or high > size - 1:
                    ranges = ", ".join(f"{n} in {self.ranges[n][0]}:{self.ranges[n][1]}"
                                       for n in m.indices())
                    raise BoundsError(
                        f"'{read}' can leave the bounds of '{read.tensor}': dim {dim} is read at "
                        f"{low}..{high} but has size {size} (with {ranges}); add a boundary mode "
                        f"such as 'where {read.tensor}: zero', or narrow the range", read.span)


def _shape_donors(program: S.Program) -> set[str]:
    """Computed tensors whose shapes bind size names that the program uses elsewhere.

    A declaration's size names are bound by an input's shape when an input is declared
    with them, else by the first tensor computed with `=` that is declared with them
    (`y: [y_0, y_1]` in an adjoint, whose `dy: [y_0, y_1]` needs them). Such a tensor's
    shape is used, so it is not a result even if no statement reads its values.
    """
    declarations = {s.tensor: s for s in program.statements if isinstance(s, S.Declaration)}
    assigned = [s.target.tensor for s in program.statements
                if isinstance(s, S.Assignment) and not s.accumulate]
    targets = {s.target.tensor for s in program.statements if isinstance(s, S.Assignment)}
    uses: dict[str, int] = {}
    for declaration in declarations.values():
        for dim in declaration.dims or ():
            if isinstance(dim, str):
                uses[dim] = uses.get(dim, 0) + 1
    for statement in program.statements:  # sizes used as values or range bounds
        if isinstance(statement, S.Assignment):
            named = {n.name for n in S.walk(statement.value) if isinstance(n, S.Name)}
            named |= {b for item in statement.where if isinstance(item, S.RangeBound)
                      for b in (item.low, item.high) if isinstance(b, str)}
            for name in named & set(uses):
                uses[name] += 1
    bound = {d for name, declaration in declarations.items() if name not in targets
             for d in declaration.dims or () if isinstance(d, str)}
    donors = set()
    for tensor in dict.fromkeys(assigned):
        declaration = declarations.get(tensor)
        if declaration is None:
            continue
        names = {d for d in declaration.dims or () if isinstance(d, str)} - bound
        if any(uses[name] > 1 for name in names):
            donors.add(tensor)
        bound |= names
    return donors


def _children(node: Expr) -> tuple[tuple[Expr, bool], ...]:
    """(child, starts a new summation scope) pairs."""
    if isinstance(node, Apply):
        new_scope = node.op not in _TERM_OPS
        return tuple((arg, new_scope) for arg in node.args)
    if isinstance(node, Reduce):
        return ((node.body, True),)
    return ()


def place_sums(scope: Expr, to_sum: set[str], order: list[str]) -> Expr:
    """Sum each index over the smallest scope holding all of its uses (SPEC section 1)."""
    child_scopes: list[Expr] = []
    glue_uses: set[str] = set()

    def collect(node: Expr) -> None:
        if isinstance(node, (Read, IndexValue)):
            glue_uses.update(free_indices(node))
        for child, new_scope in _children(node):
            if new_scope:
                child_scopes.append(child)
            else:
                collect(child)

    collect(scope)
    pushed: dict[int, set[str]] = {id(child): set() for child in child_scopes}
    for name in to_sum:
        holders = [child for child in child_scopes if name in free_indices(child)]
        if name not in glue_uses and len(holders) == 1:
            pushed[id(holders[0])].add(name)
    here = to_sum - set().union(*pushed.values()) if pushed else set(to_sum)

    def rebuild(node: Expr) -> Expr:
        if isinstance(node, Apply):
            args = []
            for child, new_scope in _children(node):
                args.append(place_sums(child, pushed[id(child)], order) if new_scope
                            else rebuild(child))
            return replace(node, args=tuple(args))
        if isinstance(node, Reduce):
            return replace(node, body=place_sums(node.body, pushed[id(node.body)], order))
        return node

    rebuilt = rebuild(scope)
    if not here:
        return rebuilt
    return Reduce("sum", tuple(n for n in order if n in here), rebuilt, True)


def _shift(expr: Expr, starts: dict[str, int]) -> Expr:
    """Rewrite reads for ranges that start at `starts[index]` instead of 0."""
    if not starts:
        return expr
    if isinstance(expr, Read):
        return replace(expr, maps=tuple(m.shifted(starts) for m in expr.maps))
    if isinstance(expr, IndexValue):
        return replace(expr, start=expr.start + starts.get(expr.index, 0))
    if isinstance(expr, Apply):
        return replace(expr, args=tuple(_shift(a, starts) for a in expr.args))
    if isinstance(expr, Reduce):
        return replace(expr, body=_shift(expr.body, starts))
    return expr


def structure(program: S.Program) -> ProgramStructure:
    """The shape-independent part of checking: what every statement computes, symbolically."""
    try:
        checker = _ProgramChecker(program, {}, {}, {}, symbolic=True)
        checker.collect_declarations()
        checker.tensor_names = checker.all_tensor_names()
        checker.seen_statements = []
        statements = []
        for statement in program.statements:
            checker.seen_statements.append(statement)
            if isinstance(statement, S.Assignment):
                statements.append(_StatementChecker(checker, statement).structure())
                checker.statements.append(statements[-1])
        if not statements:
            raise TensorcError("the program has no statements; write one such as "
                               "'C[i,k] = A[i,j] * B[j,k]'")
        read_by_later = _shape_donors(program)
        outputs: list[str] = []
        for item in reversed(statements):
            if item.target not in read_by_later and item.target not in outputs:
                outputs.append(item.target)
            read_by_later |= {n.tensor for n in walk(item.value) if isinstance(n, Read)}
        defined = {item.target for item in statements}
        inputs = tuple(n for n in checker.tensors if n not in defined)
        return ProgramStructure(tuple(statements), dict(checker.declarations), inputs,
                                tuple(reversed(outputs)), frozenset(checker.size_names))
    except TensorcError as error:
        raise error.attach_source(program.source, program.filename) from None


def check(program: S.Program, shapes: Mapping[str, tuple[int, ...]] | None = None,
          sizes: Mapping[str, int] | None = None,
          dtypes: Mapping[str, str] | None = None) -> CheckedProgram:
    """Resolve names, shapes and ranges of a parsed program against concrete input shapes."""
    try:
        return _ProgramChecker(program, shapes or {}, sizes or {}, dtypes or {}).check()
    except TensorcError as error:
        raise error.attach_source(program.source, program.filename) from None
