"""The elementwise functions, reductions and boundary modes of the language."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Function", "FUNCTIONS", "REDUCTIONS", "BOUNDARY_MODES", "canonical_mode",
           "BINARY_OPS", "COMPARE_OPS"]


@dataclass(frozen=True)
class Function:
    """An elementwise function, what it means, and its derivative written in the language.

    `derivative` has one entry per argument, in terms of the arguments `a` (and `b`) and
    of `out`, the function's own value (so exp' reuses exp(a) instead of recomputing it).
    "0" marks a function whose derivative is zero wherever it is defined (sign).
    """

    name: str
    arity: int
    meaning: str
    derivative: tuple[str, ...]


FUNCTIONS: dict[str, Function] = {f.name: f for f in [
    Function("exp", 1, "e^a", ("out",)),
    Function("log", 1, "natural logarithm", ("1 / a",)),
    Function("sqrt", 1, "square root", ("0.5 / out",)),
    Function("rsqrt", 1, "1/sqrt(a)", ("-0.5 * out^3",)),
    Function("abs", 1, "|a|", ("sign(a)",)),  # 0 at a = 0, like PyTorch
    Function("tanh", 1, "hyperbolic tangent", ("1 - out^2",)),
    Function("sigmoid", 1, "1/(1+e^-a)", ("out * (1 - out)",)),
    # a > 0 rather than out > 0: a backward run on its own then needs no forward recomputed
    Function("relu", 1, "max(a, 0)", ("a > 0",)),  # 0 at a = 0, like PyTorch
    # d/da a*Phi(a) = Phi(a) + a*phi(a), with phi(a) = exp(-a^2/2)/sqrt(2*pi)
    Function("gelu", 1, "a*Phi(a), the exact (erf) form",
             ("0.5 * (1 + erf(0.7071067811865476 * a))"
              " + 0.3989422804014327 * a * exp(-0.5 * a^2)",)),
    Function("silu", 1, "a*sigmoid(a)", ("sigmoid(a) * (1 + a * (1 - sigmoid(a)))",)),
    Function("softplus", 1, "log(1+e^a)", ("sigmoid(a)",)),
    # min(out, 0): at out = +inf the unused branch would be 0 * inf = nan
    Function("elu", 1, "a if a > 0 else e^a - 1", ("(out > 0) + (out <= 0) * (min(out, 0) + 1)",)),
    Function("erf", 1, "the error function", ("1.1283791670955126 * exp(-a^2)",)),
    Function("sin", 1, "sine", ("cos(a)",)),
    Function("cos", 1, "cosine", ("-sin(a)",)),
    Function("log1p", 1, "log(1+a)", ("1 / (1 + a)",)),
    Function("expm1", 1, "e^a - 1", ("out + 1",)),
    Function("sign", 1, "-1, 0 or 1", ("0",)),
    # Ties share the gradient equally, as PyTorch's maximum/minimum do.
    Function("max", 2, "elementwise maximum of two values",
             ("(a > b) + 0.5 * (a == b)", "(b > a) + 0.5 * (a == b)")),
    Function("min", 2, "elementwise minimum of two values",
             ("(a < b) + 0.5 * (a == b)", "(b < a) + 0.5 * (a == b)")),
]}

# Arithmetic operators in the IR, by the name an Apply node carries.
BINARY_OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "^": "pow"}
COMPARE_OPS = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}

REDUCTIONS = ("sum", "mean", "max", "min")

# Canonical boundary modes and the aliases users know them by.
BOUNDARY_MODES: dict[str, str] = {
    "zero": "zero", "zeros": "zero",
    "circular": "circular", "cyclic": "circular", "wrap": "circular",
    "reflect": "reflect",
    "symmetric": "symmetric",
    "replicate": "replicate", "hold": "replicate", "edge": "replicate",
}


def canonical_mode(name: str) -> str | None:
    return BOUNDARY_MODES.get(name)
