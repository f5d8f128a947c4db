"""Text -> syntax tree: a cached lark LALR parser; lark's errors become ParseErrors."""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import math
import sys
import threading
from typing import Any

import lark
from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from .errors import ParseError, Span, TensorcError
from .syntax import (
    Access, Affine, AffineTerm, Assignment, Binary, Boundary, Call, Compare, Declaration, Name,
    Number, Program, RangeBound, Reduction, Target, Unary,
)

__all__ = ["parse", "grammar_text", "recursion_headroom", "MAX_NESTING"]

# Expressions may nest this deep (a sum of N terms nests N deep); deeper ones are refused
# with a ParseError rather than risking Python's recursion limit in later stages.
MAX_NESTING = 500
_headroom_lock = threading.Lock()
_headroom_users = 0
_saved_limit = 0


@contextlib.contextmanager
def recursion_headroom(limit: int = 20_000):
    """Raise Python's recursion limit while any thread is parsing or compiling.

    The stages walk syntax trees recursively; MAX_NESTING levels take a few frames each.
    """
    global _headroom_users, _saved_limit
    with _headroom_lock:
        if _headroom_users == 0:
            _saved_limit = sys.getrecursionlimit()
            sys.setrecursionlimit(max(_saved_limit, limit))
        _headroom_users += 1
    try:
        yield
    finally:
        with _headroom_lock:
            _headroom_users -= 1
            if _headroom_users == 0:
                sys.setrecursionlimit(_saved_limit)


def grammar_text() -> str:
    """The grammar shipped in the package (grammar/tensorc.lark in the source tree)."""
    return importlib.resources.files("tensorc.grammar").joinpath("tensorc.lark").read_text("utf-8")


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark(grammar_text(), parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _token_span(token: Token) -> Span:
    return Span(token.line, token.column, token.end_line, token.end_column,
                token.start_pos, token.end_pos)


def _meta_span(meta: Any) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column,
                meta.start_pos, meta.end_pos)


class _AffineValue:
    """An index expression while it is being built: {name: coefficient} + constant."""

    def __init__(self, coefficients: dict[str, int], constant: int,
                 spans: dict[str, Span], span: Span) -> None:
        self.coefficients = coefficients
        self.constant = constant
        self.spans = spans
        self.span = span

    def combined(self, other: _AffineValue, sign: int, span: Span) -> _AffineValue:
        coefficients = dict(self.coefficients)
        spans = dict(self.spans)
        for name, coefficient in other.coefficients.items():
            coefficients[name] = coefficients.get(name, 0) + sign * coefficient
            spans.setdefault(name, other.spans[name])
        return _AffineValue(coefficients, self.constant + sign * other.constant, spans, span)

    def scaled(self, factor: int, span: Span) -> _AffineValue:
        return _AffineValue({n: c * factor for n, c in self.coefficients.items()},
                            self.constant * factor, self.spans, span)

    def frozen(self) -> Affine:
        terms = tuple(AffineTerm(name, coefficient, self.spans[name])
                      for name, coefficient in self.coefficients.items() if coefficient != 0)
        return Affine(terms, self.constant, self.span)


INDEX_INTEGER_LIMIT = 2**62  # sizes, offsets and coefficients: array strides must not overflow


def _shortened(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:10]}...{text[-10:]} ({len(text)} digits)"


def _index_integer(token: Token, what: str) -> int:
    """An integer used for indexing: small enough that strides and sizes stay int64."""
    text = str(token)
    if len(text.lstrip("0")) > 19 or int(text) > INDEX_INTEGER_LIMIT:
        raise ParseError(f"{_shortened(text)} is too large for {what} (at most 2**62)",
                         _token_span(token))
    return int(text)


@v_args(meta=True, inline=True)
class SyntaxBuilder(Transformer):
    """One method per grammar alias; each returns a frozen syntax node with its span."""

    def __default__(self, data: Any, children: Any, meta: Any) -> Any:
        raise AssertionError(f"grammar rule {data!r} has no SyntaxBuilder method")

    # ---- program and statements ----
    def start(self, meta: Any, *statements: Any) -> tuple:
        return statements

    def assign(self, meta: Any, target: Target, value: Any, where: tuple = ()) -> Assignment:
        return Assignment(target, value, where, False, _meta_span(meta))

    def accumulate(self, meta: Any, target: Target, value: Any, where: tuple = ()) -> Assignment:
        return Assignment(target, value, where, True, _meta_span(meta))

    def declaration(self, meta: Any, name: Token, *rest: Any) -> Declaration:
        dtype_token = rest[0] if len(rest) == 2 else None
        dims, dim_spans = rest[-1]
        dtype_span = _token_span(dtype_token) if dtype_token is not None else _token_span(name)
        return Declaration(str(name), str(dtype_token) if dtype_token else None, dims,
                           _meta_span(meta), dim_spans, dtype_span)

    def scalar_declaration(self, meta: Any, name: Token, dtype: Token) -> Declaration:
        return Declaration(str(name), str(dtype), None, _meta_span(meta), (), _token_span(dtype))

    def dim_list(self, meta: Any, *dims: tuple) -> tuple:
        return tuple(value for value, _ in dims), tuple(span for _, span in dims)

    def dim_size(self, meta: Any, token: Token) -> tuple:
        return _index_integer(token, "a size"), _token_span(token)

    def dim_name(self, meta: Any, token: Token) -> tuple:
        return str(token), _token_span(token)

    def indexed_target(self, meta: Any, name: Token, indices: tuple) -> Target:
        return Target(str(name), indices, _meta_span(meta))

    def scalar_target(self, meta: Any, name: Token) -> Target:
        return Target(str(name), (), _meta_span(meta))

    # ---- where clause ----
    def where_clause(self, meta: Any, *items: Any) -> tuple:
        return items

    def range_below(self, meta: Any, index: Token, high: Any) -> RangeBound:
        return RangeBound(str(index), 0, high, _meta_span(meta))

    def range_between(self, meta: Any, index: Token, low: Any, high: Any) -> RangeBound:
        return RangeBound(str(index), low, high, _meta_span(meta))

    def boundary(self, meta: Any, tensor: Token, mode: Token) -> Boundary:
        return Boundary(str(tensor), str(mode), _meta_span(meta), _token_span(mode))

    def bound_int(self, meta: Any, token: Token) -> int:
        return _index_integer(token, "a range bound")

    def bound_name(self, meta: Any, token: Token) -> str:
        return str(token)

    # ---- expressions ----
    def number(self, meta: Any, token: Token) -> Number:
        text = str(token)
        if text.isdigit():
            digits = len(text.lstrip("0"))  # beyond float64, where the arithmetic happens:
            if digits > 309 or digits == 309 and int(text) > sys.float_info.max:
                raise ParseError(f"the number {_shortened(text)} is too large for a float64 "
                                 "(at most about 1.8e308)", _token_span(token))
            return Number(int(text), _token_span(token))
        value = float(text)
        if not math.isfinite(value):
            raise ParseError(f"the number {text} is too large for a float64 (at most about "
                             "1.8e308)", _token_span(token))
        return Number(value, _token_span(token))

    def name(self, meta: Any, token: Token) -> Name:
        return Name(str(token), _token_span(token))

    def access(self, meta: Any, name: Token, indices: tuple) -> Access:
        return Access(str(name), indices, _meta_span(meta))

    def call(self, meta: Any, name: Token, arguments: tuple) -> Call:
        return Call(str(name), arguments, _meta_span(meta), _token_span(name))

    def arguments(self, meta: Any, *arguments: Any) -> tuple:
        return arguments

    def reduction(self, meta: Any, op: Token, indices: tuple, body: Any) -> Reduction:
        names, spans = indices
        return Reduction(str(op), names, body, _meta_span(meta), spans)

    def reduced_list(self, meta: Any, *names: Token) -> tuple:
        return tuple(str(name) for name in names), tuple(_token_span(name) for name in names)

    def neg(self, meta: Any, operand: Any) -> Unary:
        return Unary("-", operand, _meta_span(meta))

    def _binary(op: str):  # type: ignore[misc]
        def build(self: SyntaxBuilder, meta: Any, left: Any, right: Any) -> Binary:
            return Binary(op, left, right, _meta_span(meta))
        return build

    add = _binary("+")
    sub = _binary("-")
    mul = _binary("*")
    div = _binary("/")
    pow = _binary("^")

    def compare(self, meta: Any, left: Any, op: Token, right: Any) -> Compare:
        return Compare(str(op), left, right, _meta_span(meta))

    # ---- affine index expressions ----
    def index_list(self, meta: Any, *indices: _AffineValue) -> tuple:
        return tuple(index.frozen() for index in indices)

    def affine_name(self, meta: Any, token: Token) -> _AffineValue:
        span = _token_span(token)
        return _AffineValue({str(token): 1}, 0, {str(token): span}, span)

    def affine_int(self, meta: Any, token: Token) -> _AffineValue:
        return _AffineValue({}, _index_integer(token, "an index offset or coefficient"), {},
                            _token_span(token))

    def affine_neg(self, meta: Any, value: _AffineValue) -> _AffineValue:
        return value.scaled(-1, _meta_span(meta))

    def affine_add(self, meta: Any, left: _AffineValue, right: _AffineValue) -> _AffineValue:
        return left.combined(right, 1, _meta_span(meta))

    def affine_sub(self, meta: Any, left: _AffineValue, right: _AffineValue) -> _AffineValue:
        return left.combined(right, -1, _meta_span(meta))

    def affine_mul(self, meta: Any, left: _AffineValue, right: _AffineValue) -> _AffineValue:
        span = _meta_span(meta)
        if left.coefficients and right.coefficients:
            raise ParseError("an index expression must be affine: this multiplies two indices; "
                             "write integer multiples such as '2*h + u'", span)
        if left.coefficients:
            return left.scaled(right.constant, span)
        return right.scaled(left.constant, span)


_READABLE_TERMINALS = {
    "NAME": "a name", "INT": "an integer", "NUMBER": "a number", "REDUCER": "sum/mean/max/min",
    "COMPARE": "a comparison", "_SEP": "end of statement", "$END": "end of input",
}


def _describe_expected(expected: set[str]) -> str:
    parser = _lark()
    described = set()
    for name in expected:
        if name in _READABLE_TERMINALS:
            described.add(_READABLE_TERMINALS[name])
            continue
        try:
            pattern = parser.get_terminal(name).pattern
            described.add(f"'{pattern.value}'" if pattern.type == "str" else name)
        except KeyError:
            described.add(name)
    return ", ".join(sorted(described))


def _parse_error(error: UnexpectedInput, source: str) -> ParseError:
    line, column = error.line, error.column
    at_end = isinstance(error, UnexpectedToken) and error.token.type == "$END"
    if at_end or line is None or line < 1:  # end of input: point just past the last character
        lines = source.split("\n")  # as lark counts lines
        line, column = len(lines), len(lines[-1].rstrip()) + 1  # just past the last text
    start = getattr(error, "pos_in_stream", None) or 0
    if isinstance(error, UnexpectedToken) and error.token.type == "_SEP" and line >= 1:
        # a line end after a carriage return (ignored as a blank): no column of the line
        text = source.split("\n")[line - 1] if line <= source.count("\n") + 1 else ""
        column = min(column, len(text.rstrip("\r")) + 1)
    if isinstance(error, UnexpectedCharacters):
        found = repr(source[error.pos_in_stream]) if error.pos_in_stream < len(source) else "end"
        message = f"unexpected character {found}"
        expected = error.allowed or set()
    elif isinstance(error, UnexpectedToken):
        token = error.token
        if token.type == "$END":
            found = "end of input"
        elif token.type == "_SEP":
            found = "end of line" if str(token) == "\n" else "';'"
        else:
            found = repr(str(token))
        message = f"unexpected {found}"
        expected = error.expected or set()
    else:
        message = "unexpected end of input"
        expected = getattr(error, "expected", None) or set()
    width = 1
    if isinstance(error, UnexpectedToken) and error.token.type not in ("$END", "_SEP"):
        width = max(1, len(str(error.token)))
    span = Span(line, column, line, column + width, start, start + width)
    hint = f"; expected {_describe_expected(set(expected))}" if expected else ""
    return ParseError(message + hint, span)


@functools.lru_cache(maxsize=1)
def _builder() -> SyntaxBuilder:
    """One SyntaxBuilder (it keeps no state: threads share it) with its methods bound once:
    lark's v_args wraps a method anew at every lookup, once per tree node, which took 40%
    of a transform's time."""
    builder = SyntaxBuilder()
    for name, method in vars(SyntaxBuilder).items():
        if not name.startswith("_") and hasattr(method, "__get__"):
            builder.__dict__[name] = getattr(builder, name)  # (found before the class's)
    return builder


def parse(source: str, filename: str = "<program>") -> Program:
    """Parse tensorc source into a Program; str() of it is normalized source."""
    if not isinstance(source, str):
        raise ParseError(f"a program is a string of tensorc source, not {type(source).__name__}")
    try:
        with recursion_headroom():
            try:
                tree = _lark().parse(source)
            except UnexpectedInput as error:
                raise _parse_error(error, source) from None
            _check_nesting(tree)
            try:
                statements = _builder().transform(tree)
            except VisitError as error:
                if isinstance(error.orig_exc, TensorcError):
                    raise error.orig_exc from None
                if isinstance(error.orig_exc, RecursionError):
                    raise _too_deep() from None
                raise
    except RecursionError:
        raise _too_deep() from None
    except TensorcError as error:
        raise error.attach_source(source, filename) from None
    return Program(tuple(statements), source, filename)


def _too_deep(span: Span | None = None) -> ParseError:
    return ParseError(f"the program nests expressions more than {MAX_NESTING} levels deep; "
                      "split it into several statements", span)


def _check_nesting(tree: lark.Tree) -> None:
    """Refuse trees deeper than MAX_NESTING (walked without recursion)."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            meta = node.meta
            span = _meta_span(meta) if not meta.empty else None
            raise _too_deep(span)
        stack.extend((child, depth + 1) for child in node.children
                     if isinstance(child, lark.Tree))
