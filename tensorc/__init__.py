"""tensorc: an einsum compiler for deep learning.

    import tensorc as tc
    kern = tc.compile("y[n,o,h,w] = relu(x[n,c,h+u,w+v] * k[o,c,u,v] + b[o])",
                      x=(8, 3, 32, 32), k=(16, 3, 3, 3), b=(16,))
    print(kern.plan); print(kern.source)
    y = kern(x=x, k=k, b=b)
"""

from .errors import (
    BackendError, BoundsError, CallError, DtypeError, MemoryBudgetError, NameResolutionError,
    ParseError, RangeError, RankError, ShapeError, TensorcError,
)
from .budget import memory_budget, set_memory_budget
from .parser import parse
from .check import check
from .adjoint import grad
from .plan import plan_program
from .kernel import Kernel, compile, compile_grad
from .einsum import einsum

__version__ = "0.1.0"

__all__ = [
    "parse", "check", "grad", "plan_program", "compile", "compile_grad", "einsum", "Kernel", "TensorcError",
    "ParseError", "NameResolutionError", "RankError", "ShapeError", "RangeError",
    "BoundsError", "DtypeError", "CallError", "BackendError", "MemoryBudgetError",
    "memory_budget", "set_memory_budget",
]
