"""The elementwise functions, reductions and boundary modes of the language."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Function", "FUNCTIONS", "REDUCTIONS", "BOUNDARY_MODES", "canonical_mode",
           "BINARY_OPS", "COMPARE_OPS"]


@dataclass(frozen=True)
class Function:
    name: str
    arity: int
    meaning: str


FUNCTIONS: dict[str, Function] = {f.name: f for f in [
    Function("exp", 1, "e^a"),
    Function("log", 1, "natural logarithm"),
    Function("sqrt", 1, "square root"),
    Function("rsqrt", 1, "1/sqrt(a)"),
    Function("abs", 1, "|a|"),
    Function("tanh", 1, "hyperbolic tangent"),
    Function("sigmoid", 1, "1/(1+e^-a)"),
    Function("relu", 1, "max(a, 0)"),
    Function("gelu", 1, "a*Phi(a), the exact (erf) form"),
    Function("silu", 1, "a*sigmoid(a)"),
    Function("softplus", 1, "log(1+e^a)"),
    Function("elu", 1, "a if a > 0 else e^a - 1"),
    Function("erf", 1, "the error function"),
    Function("sin", 1, "sine"),
    Function("cos", 1, "cosine"),
    Function("log1p", 1, "log(1+a)"),
    Function("expm1", 1, "e^a - 1"),
    Function("sign", 1, "-1, 0 or 1"),
    Function("max", 2, "elementwise maximum of two values"),
    Function("min", 2, "elementwise minimum of two values"),
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
