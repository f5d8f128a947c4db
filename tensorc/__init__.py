"""tensorc: an einsum compiler for deep learning."""
from .errors import TensorcError
from .parser import parse
