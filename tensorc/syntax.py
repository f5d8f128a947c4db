"""The surface syntax tree: frozen dataclasses with source spans, and format()."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from .errors import Span

__all__ = [
    "AffineTerm", "Affine", "Number", "Name", "Access", "Unary", "Binary", "Compare", "Call",
    "Reduction", "Expr", "Target", "RangeBound", "Boundary", "WhereItem", "Assignment",
    "Declaration", "Statement", "Program", "format_expr", "format_affine", "walk",
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

# Binding strength; a child is parenthesized when it binds more loosely than its slot needs.
_COMPARE, _SUM, _PRODUCT, _UNARY, _POWER, _ATOM = range(1, 7)
_BINARY_PRECEDENCE = {"+": _SUM, "-": _SUM, "*": _PRODUCT, "/": _PRODUCT, "^": _POWER}


def _precedence(expr: Expr) -> int:
    if isinstance(expr, Compare):
        return _COMPARE
    if isinstance(expr, Binary):
        return _BINARY_PRECEDENCE[expr.op]
    if isinstance(expr, Unary):
        return _UNARY
    return _ATOM


def _wrap(expr: Expr, needed: int) -> str:
    text = format_expr(expr)
    return f"({text})" if _precedence(expr) < needed else text


def format_number(value: Union[int, float]) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def format_affine(affine: Affine) -> str:
    parts: list[str] = []
    for term in affine.terms:
        magnitude = abs(term.coefficient)
        text = term.name if magnitude == 1 else f"{magnitude}*{term.name}"
        if not parts:
            parts.append(text if term.coefficient > 0 else f"-{text}")
        else:
            parts.append(f"+ {text}" if term.coefficient > 0 else f"- {text}")
    if affine.constant or not parts:
        if not parts:
            parts.append(str(affine.constant))
        else:
            parts.append(f"+ {affine.constant}" if affine.constant > 0 else f"- {-affine.constant}")
    text = " ".join(parts)
    # Compact the common one- and two-term cases: `h+u`, `2*h+u-1`.
    return text.replace(" + ", "+").replace(" - ", "-")


def format_expr(expr: Expr) -> str:
    if isinstance(expr, Number):
        return format_number(expr.value)
    if isinstance(expr, Name):
        return expr.name
    if isinstance(expr, Access):
        return f"{expr.tensor}[{','.join(format_affine(index) for index in expr.indices)}]"
    if isinstance(expr, Unary):
        return f"-{_wrap(expr.operand, _UNARY)}"
    if isinstance(expr, Binary):
        level = _BINARY_PRECEDENCE[expr.op]
        if expr.op == "^":  # right-associative, and its exponent may be a unary minus
            return f"{_wrap(expr.left, _POWER + 1)}^{_wrap(expr.right, _UNARY)}"
        spaced = f" {expr.op} " if level == _SUM else expr.op
        return f"{_wrap(expr.left, level)}{spaced}{_wrap(expr.right, level + 1)}"
    if isinstance(expr, Compare):
        return f"{_wrap(expr.left, _SUM)} {expr.op} {_wrap(expr.right, _SUM)}"
    if isinstance(expr, Call):
        return f"{expr.function}({', '.join(format_expr(argument) for argument in expr.arguments)})"
    if isinstance(expr, Reduction):
        return f"{expr.op}[{','.join(expr.indices)}]({format_expr(expr.body)})"
    raise AssertionError(f"unknown expression node {expr!r}")


def _format_where_item(item: WhereItem) -> str:
    if isinstance(item, Boundary):
        return f"{item.tensor}: {item.mode}"
    if item.low == 0:
        return f"{item.index} < {item.high}"
    return f"{item.index} in {item.low}:{item.high}"


def format_statement(statement: Statement) -> str:
    if isinstance(statement, Declaration):
        dtype = f"{statement.dtype}" if statement.dtype else ""
        if statement.dims is None:
            return f"{statement.tensor}: {dtype}"
        return f"{statement.tensor}: {dtype}[{', '.join(str(dim) for dim in statement.dims)}]"
    target = statement.target
    lhs = target.tensor
    if target.indices:
        lhs += f"[{','.join(format_affine(index) for index in target.indices)}]"
    op = "+=" if statement.accumulate else "="
    text = f"{lhs} {op} {format_expr(statement.value)}"
    if statement.where:
        text += "   where " + ", ".join(_format_where_item(item) for item in statement.where)
    return text
