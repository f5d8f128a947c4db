"""A numpy.einsum-compatible front end that compiles each equation into a tensorc program."""

from __future__ import annotations

import string
from typing import Any

from .errors import TensorcError
from .kernel import Kernel
from .parser import parse

__all__ = ["einsum", "einsum_program"]

_cache: dict[tuple, Kernel] = {}


class EinsumError(TensorcError, ValueError):
    """A malformed einsum equation (also a ValueError, as numpy.einsum raises)."""


def _from_sublists(operands: tuple) -> tuple[str, tuple]:
    """np.einsum(a, [0, 1], b, [1, 2], [0, 2]) -> ("ab,bc->ac", (a, b))."""
    letters = string.ascii_letters

    def word(sublist: Any) -> str:
        return "".join("..." if s is Ellipsis else letters[int(s)] for s in sublist)

    arrays, words = [], []
    items = list(operands)
    while len(items) >= 2:
        arrays.append(items.pop(0))
        words.append(word(items.pop(0)))
    equation = ",".join(words)
    if items:
        equation += "->" + word(items.pop(0))
    return equation, tuple(arrays)


def einsum_program(subscripts: str, shapes: list[tuple[int, ...]]) -> tuple[str, list[str]]:
    """The tensorc source for an einsum equation and operand shapes, and operand names."""
    equation = subscripts.replace(" ", "")
    if "->" in equation:
        inputs_text, output = equation.split("->", 1)
        if "->" in output:
            raise EinsumError(f"einsum equation {subscripts!r} has more than one '->'")
    else:
        inputs_text, output = equation, None
    words = inputs_text.split(",")
    if len(words) != len(shapes):
        raise EinsumError(f"einsum equation {subscripts!r} names {len(words)} operands but "
                          f"{len(shapes)} were given")
    for word in words + ([output] if output is not None else []):
        stripped = word.replace("...", "")
        bad = [c for c in stripped if c not in string.ascii_letters]
        if bad or word.count("...") > 1:
            raise EinsumError(f"invalid subscript {bad[0] if bad else '...'!r} in einsum "
                              f"equation {subscripts!r}: use letters and at most one '...'")
    # Expand '...' into named indices, right-aligned across operands like broadcasting.
    ellipsis_rank = 0
    for word, shape in zip(words, shapes):
        explicit = len(word.replace("...", ""))
        if "..." in word:
            ellipsis_rank = max(ellipsis_rank, len(shape) - explicit)
        elif explicit != len(shape):
            raise EinsumError(f"einsum operand '{word}' has {explicit} subscripts but the array "
                              f"has {len(shape)} dimensions")
    ellipsis_names = [f"e{i}" for i in range(ellipsis_rank)]
    operand_indices: list[list[str]] = []
    for word, shape in zip(words, shapes):
        before, _, after = word.partition("...")
        count = len(shape) - len(before) - len(after) if "..." in word else 0
        if count < 0:
            raise EinsumError(f"einsum operand '{word}' has more subscripts than the array's "
                              f"{len(shape)} dimensions")
        middle = ellipsis_names[ellipsis_rank - count:] if count else []
        operand_indices.append(list(before) + middle + list(after))
    counts: dict[str, int] = {}
    for indices in operand_indices:
        for index in indices:
            counts[index] = counts.get(index, 0) + 1
    if output is None:  # numpy's implicit output: '...' first, then letters used once, sorted
        letters = sorted(i for i, c in counts.items() if c == 1 and i not in ellipsis_names)
        output_indices = ellipsis_names + letters
    else:
        before, _, after = output.partition("...")
        if ellipsis_names and "..." not in output:  # as numpy.einsum: no silent sum over '...'
            raise EinsumError(f"output of {subscripts!r} has no '...' but the inputs' '...' "
                              f"covers {ellipsis_rank} dimension(s); write '...' in the output "
                              "or name those dimensions")
        output_indices = list(before) + (ellipsis_names if "..." in output else []) + list(after)
        for index in output_indices:
            if index not in counts:
                raise EinsumError(f"output subscript '{index}' does not appear in the inputs "
                                  f"of {subscripts!r}")
        if len(set(output_indices)) != len(output_indices):
            raise EinsumError(f"output subscripts of {subscripts!r} repeat an index")
    # Size-1 dimensions broadcast: read them at position 0 instead of by the index.
    sizes: dict[str, int] = {}
    for indices, shape in zip(operand_indices, shapes):
        for index, size in zip(indices, shape):
            if size != 1:
                if sizes.get(index, size) != size:
                    raise EinsumError(f"size of index '{index}' is {sizes[index]} in one operand "
                                      f"and {size} in another, in {subscripts!r}")
                sizes[index] = size
    names = [f"operand{i}" for i in range(len(shapes))]
    factors = []
    for name, indices, shape in zip(names, operand_indices, shapes):
        if not indices:
            factors.append(name)
            continue
        subscript = [("0" if size == 1 and sizes.get(index, 1) != 1 else index)
                     for index, size in zip(indices, shape)]
        factors.append(f"{name}[{','.join(subscript)}]")
    wheres = [f"{index} < 1" for index in dict.fromkeys(i for ind in operand_indices for i in ind)
              if index not in sizes]
    target = f"out[{','.join(output_indices)}]" if output_indices else "out"
    source = f"{target} = {' * '.join(factors)}"
    if wheres:
        source += "   where " + ", ".join(wheres)
    return source, names


def einsum(subscripts: Any, *operands: Any, out: Any = None, optimize: Any = True,
           dtype: Any = None, **unsupported: Any) -> Any:
    """numpy.einsum, planned by opt_einsum and lowered to BLAS through tensorc."""
    import numpy as np
    if unsupported:
        raise EinsumError(f"tc.einsum does not take {', '.join(unsupported)}")
    if not isinstance(subscripts, str):
        subscripts, operands = _from_sublists((subscripts,) + operands)
    arrays = [np.asarray(operand) for operand in operands]
    if dtype is not None:
        arrays = [a.astype(dtype) for a in arrays]
    key = (subscripts, tuple(a.shape for a in arrays))
    kernel = _cache.get(key)
    if kernel is None:
        source, _ = einsum_program(subscripts, [a.shape for a in arrays])
        kernel = Kernel(parse(source), "numpy", keep_integers=True)
        if len(_cache) > 4096:
            _cache.clear()
        _cache[key] = kernel
    names = {f"operand{i}": a for i, a in enumerate(arrays)}
    result = kernel(**{n: names[n] for n in kernel.inputs})
    if out is not None:
        out[...] = result
        return out
    return result[()] if result.ndim == 0 else result
