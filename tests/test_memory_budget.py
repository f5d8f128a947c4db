"""The memory budget for temporaries: im2col chunked to fit it (peak measured with
tracemalloc, which sees NumPy's allocations), early failures that name the size."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import tensorc as tc
from tensorc.budget import format_size, parse_size, physical_memory

CONV = "y[n,o,h,w] = x[n,c,h+u-2,w+v-2] * k[o,c,u,v]   where h < 96, w < 96, x: zero"


@pytest.fixture
def budget():
    """Set a budget for one test, and restore the default after it."""
    yield tc.set_memory_budget
    tc.set_memory_budget(None)


@pytest.mark.parametrize("text, size", [
    (1024, 1024), (1e6, 1_000_000), ("512MiB", 512 << 20), ("2 GB", 2_000_000_000),
    ("1.5GiB", 3 << 29), ("64kib", 64 << 10), ("100", 100)])
def test_sizes_are_read_with_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "5 parsecs", "-1", 0, "1e3MB", True])
def test_unreadable_sizes_are_tensorc_errors(text):
    with pytest.raises(tc.TensorcError, match="memory"):
        parse_size(text)


def test_default_is_a_quarter_of_physical_memory():
    assert tc.memory_budget() == physical_memory() // 4


def test_environment_variable_sets_the_budget():
    run = subprocess.run([sys.executable, "-c", "import tensorc as tc; print(tc.memory_budget())"],
                         env={**os.environ, "TENSORC_MEMORY_BUDGET": "300MiB"},
                         capture_output=True, text=True, check=True)
    assert int(run.stdout) == 300 << 20
    bad = subprocess.run([sys.executable, "-c", "import tensorc"],
                         env={**os.environ, "TENSORC_MEMORY_BUDGET": "huge"},
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "TENSORC_MEMORY_BUDGET" in bad.stderr


def test_convolution_runs_chunked_within_a_small_budget(budget, monkeypatch):
    """The naive im2col of this convolution is 943 MB; with a 128 MiB budget the kernel's
    temporaries (padded input, im2col chunks) stay under it, and the numbers are right."""
    monkeypatch.setenv("TENSORC_SHIFT", "off")  # by cost it needs no im2col at all
    import torch
    import torch.nn.functional as F
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 32, 96, 96), dtype=np.float32)
    k = rng.standard_normal((16, 32, 5, 5), dtype=np.float32)
    naive_im2col = 32 * 96 * 96 * 32 * 25 * 4
    limit = 128 << 20
    assert naive_im2col > 7 * limit
    budget(limit)
    kern = tc.compile(CONV, dtype="float32", x=x.shape, k=k.shape)
    assert "im2col in chunks" in str(kern.plan)
    output_bytes = 32 * 16 * 96 * 96 * 4
    tracemalloc.start()
    try:  # the first call, which also creates the reused (per-thread) scratch buffers
        before = tracemalloc.get_traced_memory()[0]
        y = kern(x=x, k=k)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    temporaries = peak - output_bytes
    # measured (the scratch buffers are seen), and within the budget
    assert (16 << 20) < temporaries <= limit, f"temporaries peaked at {format_size(temporaries)}"
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(k), padding=2).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-3)


def test_a_statement_that_cannot_fit_fails_when_compiled(budget):
    """An outer product feeding a sum has a temporary no chunking removes."""
    budget("1MiB")
    source = "s[i] = sum[j](exp(a[i] * b[j]))"  # the [i, j] exp is materialized, then summed
    with pytest.raises(tc.MemoryBudgetError) as info:
        tc.compile(source, a=(2000,), b=(2000,))
    message = str(info.value)
    assert "30.5 MiB of temporaries" in message and "budget of 1 MiB" in message
    assert "tc.set_memory_budget" in message and "^" in message  # with a caret
    budget(None)
    tc.compile(source, a=(2000,), b=(2000,))  # fits the default


def test_a_program_larger_than_the_machine_fails_before_allocating():
    with pytest.raises(tc.MemoryBudgetError, match=r"'y' alone is .*TiB.*memory") as info:
        tc.compile("y[i,j] = a[i] * b[j]", a=(10**6,), b=(10**6,))
    assert "^" in str(info.value)


def test_the_budget_is_part_of_the_cache_key(budget):
    """LeNet-2's 6.6 MB im2col is one copy under a large budget, chunks under a small one."""
    source, shapes = "y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]", dict(x=(64, 16, 12, 12),
                                                                      k=(32, 16, 5, 5))
    budget("4MiB")
    assert "im2col in chunks" in str(tc.compile(source, dtype="float32", **shapes).plan)
    budget("4GiB")
    assert "im2col in chunks" not in str(tc.compile(source, dtype="float32", **shapes).plan)


def test_a_derived_statement_over_budget_is_shown_in_the_adjoint(budget):
    """compile_grad places its derived program in that program's printed source (no second
    parse): an error in a derived statement puts its caret under that statement there."""
    budget("3MB")  # LeNet-2's forward fits; its input gradient's 6.6 MB contribution does not
    with pytest.raises(tc.MemoryBudgetError) as raised:
        tc.compile_grad("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]", wrt=["x", "k"],
                        dtype="float32", x=(64, 16, 12, 12), k=(32, 16, 5, 5), dy=(64, 32, 8, 8))
    error = raised.value
    statement = "dx[n,c,h+u,w+v] += dy[n,o,h,w]*k[o,c,u,v]"
    assert error.source.split("\n")[error.span.line - 1] == statement
    assert error.source[error.span.start:error.span.end] == statement
    assert str(error).endswith(f"\n{statement}\n{'^' * len(statement)}")
