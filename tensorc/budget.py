"""The memory budget for a kernel's temporaries.

Temporaries are the arrays a statement allocates besides the tensors the program defines:
padded and channels-last copies, im2col copies, GEMM results, contributions added back
through windows. The planner sizes im2col chunks to fit the budget and estimates each
statement's peak; a statement that cannot fit, or a program whose tensors would not fit in
the machine's memory at all, fails when it is compiled, with a MemoryBudgetError naming
the size, instead of being killed for running out of memory halfway through a call.

The default is a quarter of the machine's physical memory. `TENSORC_MEMORY_BUDGET` (read
at import, e.g. "2GiB" or "500MB") or `tc.set_memory_budget(...)` changes it.
"""

from __future__ import annotations

import os
import re

from .errors import TensorcError

__all__ = ["memory_budget", "set_memory_budget", "physical_memory", "parse_size", "format_size"]

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*\Z")
_FALLBACK_MEMORY = 4 << 30  # when the machine does not say


def parse_size(value: int | float | str) -> int:
    """Bytes from 1048576, 1e9 or a string such as '512MiB', '2 GB', '1.5GiB'."""
    if isinstance(value, bool):
        raise TensorcError(f"a memory size must be a number of bytes or a string such as "
                           f"'512MiB', not {value!r}")
    if isinstance(value, (int, float)):
        size = int(value)
    else:
        match = _SIZE.match(str(value))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise TensorcError(f"cannot read {value!r} as a memory size; write a number of "
                               "bytes or a string such as '512MiB', '2GB' or '1.5GiB'")
        size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise TensorcError(f"a memory budget must be positive, got {value!r}")
    return size


def format_size(size: float) -> str:
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{int(size)} B"


def physical_memory() -> int:
    """The machine's physical memory in bytes (a 4 GiB guess where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return _FALLBACK_MEMORY


def _initial_budget() -> int | None:
    text = os.environ.get("TENSORC_MEMORY_BUDGET")
    if not text:
        return None
    try:
        return parse_size(text)
    except TensorcError as error:
        raise TensorcError(f"TENSORC_MEMORY_BUDGET: {error.message}") from None


_budget: int | None = _initial_budget()


def memory_budget() -> int:
    """The budget in bytes: the one set, else a quarter of physical memory."""
    return _budget if _budget is not None else physical_memory() // 4


def set_memory_budget(size: int | float | str | None) -> None:
    """Set the budget for kernels compiled from now on (None: back to the default)."""
    global _budget
    _budget = None if size is None else parse_size(size)
