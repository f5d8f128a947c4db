"""Source spans and the one user-facing error family, rendered with a caret."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "Span",
    "TensorcError",
    "ParseError",
    "NameResolutionError",
    "RankError",
    "ShapeError",
    "RangeError",
    "BoundsError",
    "DtypeError",
    "CallError",
    "BackendError",
    "MemoryBudgetError",
    "did_you_mean",
]


@dataclass(frozen=True)
class Span:
    """A region of program text: 1-based line/column and 0-based offsets."""

    line: int
    column: int
    end_line: int
    end_column: int
    start: int
    end: int

    def join(self, other: Span) -> Span:
        first, last = (self, other) if self.start <= other.start else (other, self)
        return Span(first.line, first.column, last.end_line, last.end_column, first.start, last.end)


class TensorcError(Exception):
    """Every error a user can cause. str() gives 'file:line:col: message', the line, a caret.

    Inner code raises with a span only; the public entry point attaches the
    program text once (`attach_source`), so messages carry context without
    every raise site having to know it.
    """

    def __init__(self, message: str, span: Span | None = None, *, source: str | None = None,
                 filename: str = "<program>") -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.source = source
        self.filename = filename

    def attach_source(self, source: str | None, filename: str = "<program>") -> TensorcError:
        if self.source is None and source is not None:
            self.source = source
            self.filename = filename
        return self

    def __str__(self) -> str:
        if self.span is None:
            return self.message
        head = f"{self.filename}:{self.span.line}:{self.span.column}: {self.message}"
        if self.source is None:
            return head
        # Lines as the parser counts them (only '\n' ends one); other control characters
        # are shown as spaces so the caret stays under the right column.
        lines = self.source.split("\n")
        if self.span.line > len(lines):
            return head
        text = "".join(c if c.isprintable() else " " for c in lines[self.span.line - 1])
        if self.span.end_line == self.span.line:
            width = max(1, self.span.end_column - self.span.column)
        else:
            width = max(1, len(text) - self.span.column + 1)
        caret = " " * (self.span.column - 1) + "^" * width
        return f"{head}\n{text}\n{caret}"


class ParseError(TensorcError):
    """The text is not in the language's grammar."""


class NameResolutionError(TensorcError):
    """An unknown, reserved, redefined or ambiguous name."""


class RankError(TensorcError):
    """A tensor used with a different number of indices than it has dimensions."""


class ShapeError(TensorcError):
    """Sizes that contradict each other, the declarations or the arrays given."""


class RangeError(TensorcError):
    """An index whose range is missing, empty or cannot be inferred."""


class BoundsError(TensorcError):
    """An access that can leave its tensor's bounds without a boundary mode."""


class DtypeError(TensorcError):
    """An array whose dtype contradicts a declaration or cannot be computed with."""


class CallError(TensorcError):
    """A kernel called with missing, extra or malformed arrays."""


class BackendError(TensorcError):
    """A backend that is unknown or not usable on this machine."""


class MemoryBudgetError(TensorcError):
    """A kernel's temporaries would exceed the memory budget, or its tensors the machine."""


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """'; did you mean ...?' naming another case ('b' for 'B'), a close spelling, or a
    prefix ('b', 'bias') among `options`; '' when none is close."""
    lowered = {option.lower(): option for option in sorted(options)}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1)
    close = close or [o for o in lowered
                      if name.lower().startswith(o) or o.startswith(name.lower())]
    return f"; did you mean '{lowered[close[0]]}'?" if close else ""
