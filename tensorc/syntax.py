"""The surface syntax tree: frozen dataclasses with source spans, and format()."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence, Union

from .errors import Span

__all__ = [
    "AffineTerm", "Affine", "Number", "Name", "Access", "Unary", "Binary", "Compare", "Call",
    "Reduction", "Expr", "Target", "RangeBound", "Boundary", "WhereItem", "Assignment",
    "Declaration", "Statement", "Program", "format_expr", "format_affine", "walk",
    "placed_program",
]

NO_SPAN = Span(0, 0, 0, 0, 0, 0)


def _span() -> Span:
    # Spans never take part in equality: parse(str(p)) == p must hold.
    return field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class AffineTerm:
    """`coefficient * name` inside an index expression."""

    name: str
    coefficient: int
    span: Span = _span()


@dataclass(frozen=True)
class Affine:
    """An index expression: sum of integer multiples of names, plus a constant."""

    terms: tuple[AffineTerm, ...]
    constant: int
    span: Span = _span()

    def names(self) -> tuple[str, ...]:
        return tuple(term.name for term in self.terms)

    @property
    def is_plain(self) -> bool:
        """True for a single name with coefficient 1 and no offset (`x[i]`)."""
        return self.constant == 0 and len(self.terms) == 1 and self.terms[0].coefficient == 1


@dataclass(frozen=True)
class Number:
    value: Union[int, float]
    span: Span = _span()


@dataclass(frozen=True)
class Name:
    """A bare name in an expression: a scalar tensor, an index value or a size."""

    name: str
    span: Span = _span()


@dataclass(frozen=True)
class Access:
    tensor: str
    indices: tuple[Affine, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Unary:
    op: str  # only "-"
    operand: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Binary:
    op: str  # + - * / ^
    left: Expr
    right: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Compare:
    op: str  # < <= > >= == !=
    left: Expr
    right: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Call:
    function: str
    arguments: tuple[Expr, ...]
    span: Span = _span()
    name_span: Span = _span()


@dataclass(frozen=True)
class Reduction:
    op: str  # sum mean max min
    indices: tuple[str, ...]
    body: Expr
    span: Span = _span()
    index_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)


Expr = Union[Number, Name, Access, Unary, Binary, Compare, Call, Reduction]


@dataclass(frozen=True)
class Target:
    tensor: str
    indices: tuple[Affine, ...]  # () for a scalar target
    span: Span = _span()


@dataclass(frozen=True)
class RangeBound:
    """`where i < hi` (lo = 0) or `where i in lo:hi`; bounds are ints or size names."""

    index: str
    low: Union[int, str]
    high: Union[int, str]
    span: Span = _span()


@dataclass(frozen=True)
class Boundary:
    """`where x: reflect`."""

    tensor: str
    mode: str
    span: Span = _span()
    mode_span: Span = _span()


WhereItem = Union[RangeBound, Boundary]


@dataclass(frozen=True)
class Assignment:
    target: Target
    value: Expr
    where: tuple[WhereItem, ...] = ()
    accumulate: bool = False  # `+=`
    span: Span = _span()

    def __str__(self) -> str:
        return format_statement(self)


@dataclass(frozen=True)
class Declaration:
    """`x: f32[N, C, H, W]`; dtype may be omitted; dims None for a scalar (`s: f32`)."""

    tensor: str
    dtype: str | None
    dims: tuple[Union[int, str], ...] | None
    span: Span = _span()
    dim_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)
    dtype_span: Span = _span()

    def __str__(self) -> str:
        return format_statement(self)


Statement = Union[Assignment, Declaration]


@dataclass(frozen=True)
class Program:
    statements: tuple[Statement, ...]
    source: str = field(default="", compare=False, repr=False)
    filename: str = field(default="<program>", compare=False, repr=False)

    def __str__(self) -> str:
        return "\n".join(format_statement(statement) for statement in self.statements)


def walk(expr: Expr):
    """Every node of an expression in source order (parents first), without recursion."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, Unary):
            children: tuple = (node.operand,)
        elif isinstance(node, (Binary, Compare)):
            children = (node.left, node.right)
        elif isinstance(node, Call):
            children = node.arguments
        elif isinstance(node, Reduction):
            children = (node.body,)
        else:
            children = ()
        stack.extend(reversed(children))


# ---- formatting: normalized source text --------------------------------------------------
#
# One formatter both prints nodes and, given a _Place, rebuilds them with the spans of
# their text: a derived program (tc.grad's) is placed in its own printed source as
# parse(str(p)) would place it, without being parsed again.

# Binding strength; a child is parenthesized when it binds more loosely than its slot needs.
_COMPARE, _SUM, _PRODUCT, _UNARY, _POWER, _ATOM = range(1, 7)
_BINARY_PRECEDENCE = {"+": _SUM, "-": _SUM, "*": _PRODUCT, "/": _PRODUCT, "^": _POWER}


@dataclass(frozen=True)
class _Place:
    """Where a statement's text lies: its line (1-based) and the line's offset in the
    source. The formatter counts offsets `at` from the line's start; spans are as lark
    gives them: columns 1-based, ends exclusive."""

    line: int
    start: int

    def span(self, at: int, end: int) -> Span:
        return Span(self.line, at + 1, self.line, end + 1, self.start + at, self.start + end)


def _precedence(expr: Expr) -> int:
    if isinstance(expr, Compare):
        return _COMPARE
    if isinstance(expr, Binary):
        return _BINARY_PRECEDENCE[expr.op]
    if isinstance(expr, Unary):
        return _UNARY
    return _ATOM


def format_number(value: Union[int, float]) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _affine(affine: Affine, at: int, place: _Place | None) -> tuple[str, Affine]:
    """`h`, `h+u-1`, `2*h+u`, `-w`, `3`; each term's span is its name's."""
    text, terms = "", []
    for term in affine.terms:
        magnitude = abs(term.coefficient)
        sign = "-" if term.coefficient < 0 else "+" if text else ""
        factor = "" if magnitude == 1 else f"{magnitude}*"
        if place is not None:
            name_at = at + len(text) + len(sign) + len(factor)
            terms.append(AffineTerm(term.name, term.coefficient,
                                    place.span(name_at, name_at + len(term.name))))
        text += sign + factor + term.name
    if not text:
        text = str(affine.constant)
    elif affine.constant:
        text += f"+{affine.constant}" if affine.constant > 0 else f"-{-affine.constant}"
    if place is None:
        return text, affine
    return text, Affine(tuple(terms), affine.constant, place.span(at, at + len(text)))


def _indices(affines: tuple[Affine, ...], at: int,
             place: _Place | None) -> tuple[str, tuple[Affine, ...]]:
    """`[i,h+u]` (at: the offset of its '[')."""
    text, placed = "[", []
    for number, index in enumerate(affines):
        if number:
            text += ","
        part, node = _affine(index, at + len(text), place)
        text += part
        placed.append(node)
    return text + "]", tuple(placed)


def _wrap(expr: Expr, needed: int, at: int, place: _Place | None) -> tuple[str, Expr]:
    if _precedence(expr) < needed:
        text, node = _expr(expr, at + 1, place)
        return f"({text})", node
    return _expr(expr, at, place)


def _expr(expr: Expr, at: int, place: _Place | None) -> tuple[str, Expr]:
    """The expression's text starting at offset `at`, and the node with its spans placed
    (the node itself when `place` is None)."""
    if isinstance(expr, (Number, Name)):
        text = format_number(expr.value) if isinstance(expr, Number) else expr.name
        return text, expr if place is None else replace(expr, span=place.span(at, at + len(text)))
    if isinstance(expr, Access):
        indices, placed = _indices(expr.indices, at + len(expr.tensor), place)
        text = expr.tensor + indices
        return text, expr if place is None else Access(expr.tensor, placed,
                                                       place.span(at, at + len(text)))
    if isinstance(expr, Unary):
        operand, node = _wrap(expr.operand, _UNARY, at + 1, place)
        text = "-" + operand
        return text, expr if place is None else Unary("-", node, place.span(at, at + len(text)))
    if isinstance(expr, (Binary, Compare)):
        if isinstance(expr, Compare):
            needed, spaced = (_SUM, _SUM), f" {expr.op} "
        elif expr.op == "^":  # right-associative, and its exponent may be a unary minus
            needed, spaced = (_POWER + 1, _UNARY), "^"
        else:
            level = _BINARY_PRECEDENCE[expr.op]
            needed, spaced = (level, level + 1), f" {expr.op} " if level == _SUM else expr.op
        left, left_node = _wrap(expr.left, needed[0], at, place)
        right, right_node = _wrap(expr.right, needed[1], at + len(left) + len(spaced), place)
        text = left + spaced + right
        if place is None:
            return text, expr
        return text, type(expr)(expr.op, left_node, right_node, place.span(at, at + len(text)))
    if isinstance(expr, Call):
        text, arguments = expr.function + "(", []
        for number, argument in enumerate(expr.arguments):
            if number:
                text += ", "
            part, node = _expr(argument, at + len(text), place)
            text += part
            arguments.append(node)
        text += ")"
        if place is None:
            return text, expr
        return text, Call(expr.function, tuple(arguments), place.span(at, at + len(text)),
                          place.span(at, at + len(expr.function)))
    if isinstance(expr, Reduction):
        head = f"{expr.op}[{','.join(expr.indices)}]("
        body, node = _expr(expr.body, at + len(head), place)
        text = head + body + ")"
        if place is None:
            return text, expr
        spans, offset = [], at + len(expr.op) + 1
        for index in expr.indices:
            spans.append(place.span(offset, offset + len(index)))
            offset += len(index) + 1
        return text, Reduction(expr.op, expr.indices, node, place.span(at, at + len(text)),
                               tuple(spans))
    raise AssertionError(f"unknown expression node {expr!r}")


def _where_item(item: WhereItem, at: int, place: _Place | None) -> tuple[str, WhereItem]:
    if isinstance(item, Boundary):
        text = f"{item.tensor}: {item.mode}"
        if place is None:
            return text, item
        end = at + len(text)
        return text, Boundary(item.tensor, item.mode, place.span(at, end),
                              place.span(end - len(item.mode), end))
    text = f"{item.index} < {item.high}" if item.low == 0 else \
        f"{item.index} in {item.low}:{item.high}"
    return text, item if place is None else replace(item, span=place.span(at, at + len(text)))


def _declaration(statement: Declaration, place: _Place | None) -> tuple[str, Declaration]:
    """`x: f32[N, C]`, `x: [N, C]` or `s: f64`; without a dtype, its span is the name's."""
    text = f"{statement.tensor}: {statement.dtype or ''}"
    dim_spans = []
    if statement.dims is not None:
        text += "["
        for number, dim in enumerate(statement.dims):
            if number:
                text += ", "
            dim_spans.append((len(text), len(text) + len(str(dim))))
            text += str(dim)
        text += "]"
    if place is None:
        return text, statement
    dtype_at = len(statement.tensor) + 2 if statement.dtype else 0
    dtype_end = dtype_at + len(statement.dtype) if statement.dtype else len(statement.tensor)
    return text, Declaration(statement.tensor, statement.dtype, statement.dims,
                             place.span(0, len(text)),
                             tuple(place.span(a, b) for a, b in dim_spans),
                             place.span(dtype_at, dtype_end))


def _statement(statement: Statement, place: _Place | None) -> tuple[str, Statement]:
    if isinstance(statement, Declaration):
        return _declaration(statement, place)
    target = statement.target
    text, indices = target.tensor, ()
    if target.indices:
        part, indices = _indices(target.indices, len(text), place)
        text += part
    target_end = len(text)
    text += " += " if statement.accumulate else " = "
    value_text, value = _expr(statement.value, len(text), place)
    text += value_text
    where = []
    for number, item in enumerate(statement.where):
        text += ", " if number else "   where "
        item_text, item_node = _where_item(item, len(text), place)
        text += item_text
        where.append(item_node)
    if place is None:
        return text, statement
    return text, Assignment(Target(target.tensor, indices, place.span(0, target_end)), value,
                            tuple(where), statement.accumulate, place.span(0, len(text)))


def format_affine(affine: Affine) -> str:
    return _affine(affine, 0, None)[0]


def format_expr(expr: Expr) -> str:
    return _expr(expr, 0, None)[0]


def format_statement(statement: Statement) -> str:
    return _statement(statement, None)[0]


def placed_program(statements: Sequence[Statement], filename: str = "<program>") -> Program:
    """The program of `statements` with its normalized source, every node's span placed in
    that source as parse() would place it (derived programs need no second parse). The
    statements must be in normal form: parse(str(statement)) == statement."""
    lines, placed, start = [], [], 0
    for line, statement in enumerate(statements, 1):
        text, node = _statement(statement, _Place(line, start))
        lines.append(text)
        placed.append(node)
        start += len(text) + 1
    return Program(tuple(placed), "\n".join(lines), filename)
