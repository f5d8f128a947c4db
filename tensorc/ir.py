"""The checked IR: statements over index variables with concrete ranges and affine maps."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Union

from .errors import Span
from .syntax import NO_SPAN

__all__ = ["IndexMap", "Read", "Constant", "IndexValue", "Apply", "Reduce", "Expr",
           "TensorInfo", "Statement", "CheckedProgram", "StatementStructure", "ProgramStructure",
           "walk", "map_reads", "first_appearance", "free_indices"]


@dataclass(frozen=True)
class IndexMap:
    """One array dimension's index: sum(coefficient * index) + offset."""

    terms: tuple[tuple[str, int], ...]
    offset: int = 0

    @property
    def is_plain(self) -> bool:
        return self.offset == 0 and len(self.terms) == 1 and self.terms[0][1] == 1

    def indices(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.terms)

    def extent(self, ranges: dict[str, int]) -> tuple[int, int]:
        """Smallest and largest position this map reaches, every index in 0:ranges[index]."""
        low = high = self.offset
        for name, coefficient in self.terms:
            reach = coefficient * (ranges[name] - 1)
            low += min(0, reach)
            high += max(0, reach)
        return low, high

    def shifted(self, starts: dict[str, int]) -> IndexMap:
        """Substitute index = index' + start (ranges are normalized to start at 0)."""
        extra = sum(coefficient * starts.get(name, 0) for name, coefficient in self.terms)
        return IndexMap(self.terms, self.offset + extra)

    def __str__(self) -> str:
        parts = []
        for name, coefficient in self.terms:
            text = name if abs(coefficient) == 1 else f"{abs(coefficient)}*{name}"
            parts.append(("-" if coefficient < 0 else ("+" if parts else "")) + text)
        if self.offset or not parts:
            parts.append(f"{self.offset:+d}" if parts else str(self.offset))
        return "".join(parts)


@dataclass(frozen=True)
class Read:
    """An element read `x[maps...]`; `boundary` is the statement's mode for x, if any."""

    tensor: str
    maps: tuple[IndexMap, ...]
    boundary: str | None = None
    span: Span = field(default=NO_SPAN, compare=False)

    def indices(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for m in self.maps for name in m.indices()))

    def __str__(self) -> str:
        return f"{self.tensor}[{','.join(str(m) for m in self.maps)}]" if self.maps else self.tensor


@dataclass(frozen=True)
class Constant:
    value: Union[int, float]

    def __str__(self) -> str:
        return repr(self.value)


@dataclass(frozen=True)
class IndexValue:
    """An index used as a number (`i`, e.g. in `i < j`); its value is index + start."""

    index: str
    start: int = 0

    def __str__(self) -> str:
        return self.index if not self.start else f"({self.index}{self.start:+d})"


@dataclass(frozen=True)
class Apply:
    """Elementwise: an operator (add sub mul div pow neg lt le ... ) or a function."""

    op: str
    args: tuple[Expr, ...]
    span: Span = field(default=NO_SPAN, compare=False)

    def __str__(self) -> str:
        infix = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "^", "lt": "<",
                 "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
        if self.op in infix:
            return f"({self.args[0]} {infix[self.op]} {self.args[1]})"
        if self.op == "neg":
            return f"-{self.args[0]}"
        return f"{self.op}({', '.join(str(arg) for arg in self.args)})"


@dataclass(frozen=True)
class Reduce:
    """A reduction over named indices; `implicit` marks an Einstein sum the checker placed."""

    op: str
    indices: tuple[str, ...]
    body: Expr
    implicit: bool = False
    span: Span = field(default=NO_SPAN, compare=False)

    def __str__(self) -> str:
        return f"{self.op}[{','.join(self.indices)}]({self.body})"


Expr = Union[Read, Constant, IndexValue, Apply, Reduce]


def walk(expr: Expr):
    """Every node of an expression, parents before children."""
    yield expr
    if isinstance(expr, Apply):
        for arg in expr.args:
            yield from walk(arg)
    elif isinstance(expr, Reduce):
        yield from walk(expr.body)


def map_reads(expr: Expr, function) -> Expr:
    """`expr` with every Read replaced by `function(read)`, the rest rebuilt around them."""
    if isinstance(expr, Read):
        return function(expr)
    if isinstance(expr, Apply):
        return replace(expr, args=tuple(map_reads(a, function) for a in expr.args))
    if isinstance(expr, Reduce):
        return replace(expr, body=map_reads(expr.body, function))
    return expr


def first_appearance(expr: Expr) -> list[str]:
    """Index names in the order they first appear (reads and reduction lists)."""
    order: dict[str, None] = {}
    for node in walk(expr):
        if isinstance(node, Read):
            order.update(dict.fromkeys(node.indices()))
        elif isinstance(node, Reduce):
            order.update(dict.fromkeys(node.indices))
        elif isinstance(node, IndexValue):
            order[node.index] = None
    return list(order)


def free_indices(expr: Expr) -> list[str]:
    """Indices an expression uses that no reduction inside it binds, in order."""
    if isinstance(expr, Read):
        return list(expr.indices())
    if isinstance(expr, IndexValue):
        return [expr.index]
    if isinstance(expr, Apply):
        return list(dict.fromkeys(n for arg in expr.args for n in free_indices(arg)))
    if isinstance(expr, Reduce):
        return [n for n in free_indices(expr.body) if n not in expr.indices]
    return []


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str | None = None  # declared dtype, if any
    defined_by: int | None = None  # statement number, None for inputs


@dataclass(frozen=True)
class Statement:
    """`target[target_maps] (=|+=) value`, every index ranging over 0:ranges[index]."""

    target: str
    target_maps: tuple[IndexMap, ...]
    accumulate: bool
    value: Expr
    ranges: dict[str, int]
    text: str
    line: int
    span: Span = field(default=NO_SPAN, compare=False)
    target_boundary: str | None = None

    def index_order(self) -> list[str]:
        """Canonical axis order: target indices first, then by first appearance on the right."""
        order = dict.fromkeys(name for m in self.target_maps for name in m.indices())
        order.update(dict.fromkeys(first_appearance(self.value)))
        return list(order)

    def __str__(self) -> str:
        target = self.target
        if self.target_maps:
            target += f"[{','.join(str(m) for m in self.target_maps)}]"
        ranges = ", ".join(f"{name} < {size}" for name, size in self.ranges.items())
        return f"{target} {'+=' if self.accumulate else '='} {self.value}   where {ranges}"


@dataclass(frozen=True)
class CheckedProgram:
    statements: tuple[Statement, ...]
    tensors: dict[str, TensorInfo]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    source: str = ""
    filename: str = "<program>"

    def __str__(self) -> str:
        lines = [f"# inputs: {', '.join(f'{n}{list(self.tensors[n].shape)}' for n in self.inputs)}"]
        lines += [str(statement) for statement in self.statements]
        lines.append(f"# outputs: {', '.join(f'{n}{list(self.tensors[n].shape)}' for n in self.outputs)}")
        return "\n".join(lines)


@dataclass(frozen=True)
class StatementStructure:
    """A statement checked without shapes: its maps and placed sums, but no ranges yet."""

    source: Any  # the syntax.Assignment it came from
    target: str
    target_maps: tuple[IndexMap, ...]
    accumulate: bool
    value: Expr
    boundaries: dict[str, str]  # tensor -> canonical boundary mode
    where_ranges: dict[str, tuple[int | str, int | str]]  # index -> (low, high) from `where`
    indices: tuple[str, ...]


@dataclass(frozen=True)
class ProgramStructure:
    statements: tuple[StatementStructure, ...]
    declarations: dict[str, Any]  # tensor -> syntax.Declaration
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    size_names: frozenset[str]
