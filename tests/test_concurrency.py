"""Compiling and calling kernels from several threads at once is safe.

The kernel cache (`tensorc.kernel._CACHE`, guarded by `_CACHE_LOCK`) must never hand out a
half-built entry, concurrent builds of one key must end in one shared build, clearing the
cache between and during rounds (as tests/test_plan.py does) must only cost rebuilds, a
Kernel object shared by threads (its `_by_call` memo) must give each call the
specialization for that call's shapes, the per-thread scratch buffers of a generated module
must keep concurrent calls apart, and the recursion-limit headroom taken while parsing deep
programs must be shared correctly. Every result is compared with a single-threaded
reference (NumPy, or the same computation run alone first).
"""

from __future__ import annotations

import os
import random
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import tensorc as tc
import tensorc.kernel as tk
from tensorc import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import SAME_CONV, conv_zero_pad  # noqa: E402

WORKERS = 8

# Programs and the shapes they are hammered with (several per program: different cache keys).
PROGRAMS = [
    ("C[i,k] = A[i,j] * B[j,k]", [{"A": (3, 4), "B": (4, 5)}, {"A": (6, 2), "B": (2, 7)}]),
    ("y[n,o,h,w] = relu(x[n,c,h+u,w+v] * k[o,c,u,v] + b[o])",
     [{"x": (2, 3, 7, 7), "k": (4, 3, 3, 3), "b": (4,)},
      {"x": (1, 2, 6, 5), "k": (3, 2, 2, 2), "b": (3,)}]),
    ("y[n,o,h,w] = x[n,c,h+u-1,w+v-1] * k[o,c,u,v]   where h < 6, w < 6, x: zero",
     [{"x": (2, 3, 6, 6), "k": (4, 3, 3, 3)}]),
    ("y[n,o,h,w] = x[n,c,2*h+u-1,2*w+v-1] * k[o,c,u,v]   where h < 4, w < 4, x: reflect",
     [{"x": (2, 2, 8, 8), "k": (3, 2, 3, 3)}]),
    ("p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   where u < 2, v < 2",
     [{"y": (2, 3, 8, 8)}, {"y": (1, 2, 6, 10)}]),
    ("m[n] = max[j](z[n,j])\ne[n,j] = exp(z[n,j] - m[n])\np[n,j] = e[n,j] / sum[j](e[n,j])",
     [{"z": (4, 5)}, {"z": (2, 9)}]),
    (("mu[n] = mean[d](a[n,d])\nvar[n] = mean[d]((a[n,d] - mu[n])^2)\n"
      "y[n,d] = g[d] * (a[n,d] - mu[n]) / sqrt(var[n] + 1e-5) + b[d]"),
     [{"a": (3, 6), "g": (6,), "b": (6,)}]),
    ("s[i] = a[i+j] * f[j]   where i < 9, a: circular", [{"a": (9,), "f": (3,)}]),
    ("dx: [N]\ndx[h+u-1] += dy[h] * k[u]   where h < 5, dx: symmetric",
     [{"N": 5, "dy": (5,), "k": (3,)}]),
    ("y[i] = gelu(x[i]) + silu(x[i]) * tanh(x[i])", [{"x": (7,)}, {"x": (11,)}]),
    ("y[i] = " + " + ".join(f"{c}*x[i]" for c in range(1, 300)), [{"x": (3,)}]),
    ("y[i] = " + "-" * 250 + "x[i]", [{"x": (4,)}]),
]
SIZE_NAMES = {"N"}
# A program with a user error: every thread must get the same TensorcError, every time.
BROKEN = ("C[i,k] = A[i,j] * B[j,k]", {"A": (3, 4), "B": (5, 6)})


def _inputs(shapes: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape) for name, shape in shapes.items()
            if name not in SIZE_NAMES}


def _run(text: str, shapes: dict, seed: int, eager: bool):
    """Compile (with shapes, or lazily) and call once; the result and the kernel."""
    sizes = {name: value for name, value in shapes.items() if name in SIZE_NAMES}
    kern = tc.compile(text, **(shapes if eager else sizes))
    return kern(**_inputs(shapes, seed)), kern


def _same(got, want, rtol=1e-12):
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want)
        for name in want:
            _same(got[name], want[name], rtol)
        return
    assert np.asarray(got).shape == np.asarray(want).shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-12)


def _clear_cache():
    tk._CACHE.clear()


@pytest.fixture
def references():
    """Single-threaded results of every (program, shapes, seed) used below; cache cleared."""
    table = {}
    for p, (text, shape_sets) in enumerate(PROGRAMS):
        for s, shapes in enumerate(shape_sets):
            for seed in range(3):
                table[p, s, seed] = _run(text, shapes, seed, eager=True)[0]
    _clear_cache()
    yield table
    _clear_cache()


def _hammer(function, tasks):
    """Run function(task) for every task on WORKERS threads; re-raise the first failure."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(function, tasks))


def _from_every_thread_at_once(check, rounds: int, seed: int) -> None:
    """check(rng, worker) `rounds` times on each of WORKERS threads, released together,
    each with its own generator (seed + worker)."""
    barrier = threading.Barrier(WORKERS)

    def work(worker):
        rng = np.random.default_rng(seed + worker)
        barrier.wait()
        for _ in range(rounds):
            check(rng, worker)

    _hammer(work, range(WORKERS))


def test_one_program_one_shape_from_many_threads_builds_once(references):
    text, shape_sets = PROGRAMS[1]
    shapes = shape_sets[0]
    barrier = threading.Barrier(WORKERS)

    def work(worker):
        barrier.wait()  # every thread asks for the same uncached key at once
        sources = []
        for round_ in range(6):
            seed = (worker + round_) % 3
            result, kern = _run(text, shapes, seed, eager=bool(round_ % 2))
            _same(result, references[1, 0, seed])
            sources.append(kern.source)
        return sources

    sources = [s for per_worker in _hammer(work, range(WORKERS)) for s in per_worker]
    # one build: every kernel holds the very same generated module text
    assert len({id(s) for s in sources}) == 1


def test_many_programs_and_shapes_from_many_threads(references):
    tasks = [(p, s, seed, eager) for p, (_, sets) in enumerate(PROGRAMS)
             for s in range(len(sets)) for seed in range(3) for eager in (False, True)]
    random.Random(0).shuffle(tasks)

    def work(task):
        p, s, seed, eager = task
        text, shape_sets = PROGRAMS[p]
        result, _ = _run(text, shape_sets[s], seed, eager)
        _same(result, references[p, s, seed])

    for _ in range(2):  # a round, then the cache is cleared and everything is rebuilt
        _hammer(work, tasks)
        _clear_cache()


def test_clearing_the_cache_while_threads_compile(references):
    tasks = [("run", p, s, seed) for p, (_, sets) in enumerate(PROGRAMS)
             for s in range(len(sets)) for seed in range(3)]
    tasks += [("clear",)] * 12 + [("broken",)] * 8
    random.Random(1).shuffle(tasks)

    def work(task):
        if task[0] == "clear":
            _clear_cache()
            return
        if task[0] == "broken":
            with pytest.raises(tc.ShapeError, match="conflicting sizes for index 'j'"):
                tc.compile(BROKEN[0], **BROKEN[1])
            return
        _, p, s, seed = task
        text, shape_sets = PROGRAMS[p]
        result, _ = _run(text, shape_sets[s], seed, eager=True)
        _same(result, references[p, s, seed])

    _hammer(work, tasks)
    # and the cache still works afterwards
    result, _ = _run(PROGRAMS[0][0], PROGRAMS[0][1][0], 0, eager=True)
    _same(result, references[0, 0, 0])


def test_a_shared_kernel_called_with_different_shapes_from_many_threads():
    kern = tc.compile(SAME_CONV)  # lazy: one Kernel, one `_by_call` memo, many shapes
    shapes = [(1 + w % 3, 2, 4 + w, 5 + (w * 3) % 4) for w in range(WORKERS)]

    def check(rng, worker):
        n, c, h, w = shapes[worker]
        x, k = rng.standard_normal((n, c, h, w)), rng.standard_normal((3, c, 3, 3))
        _same(kern(x=x, k=k), conv_zero_pad(x, k))
        _same(kern(x, k), conv_zero_pad(x, k))  # positional, same memo entry

    _from_every_thread_at_once(check, rounds=15, seed=0)
    assert len(kern._by_call) == len(set(shapes))


def test_one_specialization_called_from_many_threads_keeps_scratch_buffers_apart():
    # the zero boundary copies x into a reused scratch buffer: it must be per thread
    kern = tc.compile(SAME_CONV, x=(4, 3, 32, 32), k=(5, 3, 3, 3))
    assert "_scratch(" in kern.source

    def check(rng, worker):
        x = rng.standard_normal((4, 3, 32, 32)) * (worker + 1)
        k = rng.standard_normal((5, 3, 3, 3))
        _same(kern(x=x, k=k), conv_zero_pad(x, k))

    _from_every_thread_at_once(check, rounds=25, seed=100)


# LeNet-2's input gradient on 8 images: the GEMM's result (8 x 64 x 400 floats, 1.6 MB) is
# written into a reused buffer, then added back through the windows (col2im).
INPUT_GRADIENT = "dx: [N, C, H, W]\ndx[n,c,h+u,w+v] += dy[n,o,h,w] * k[o,c,u,v]"
INPUT_GRADIENT_SHAPES = {"N": 8, "C": 16, "H": 12, "W": 12, "dy": (8, 32, 8, 8),
                         "k": (32, 16, 5, 5)}


def _input_gradient(dy: np.ndarray, k: np.ndarray) -> np.ndarray:
    """dx by NumPy: the adjoint of a valid correlation, one window offset at a time."""
    dx = np.zeros((dy.shape[0], k.shape[1], 12, 12))
    for u in range(5):
        for v in range(5):
            dx[:, :, u:u + 8, v:v + 8] += np.einsum("nohw,oc->nchw", dy, k[:, :, u, v])
    return dx


@pytest.mark.parametrize("jit", ["auto", "off"])  # col2im by a Numba loop, or by NumPy
def test_a_gemm_result_in_a_reused_buffer_serves_each_call_and_each_thread(jit, monkeypatch):
    monkeypatch.setenv("TENSORC_JIT", jit)
    kern = tc.compile(INPUT_GRADIENT, **INPUT_GRADIENT_SHAPES)
    assert "out=_scratch('contribution'" in kern.source
    rng = np.random.default_rng(7)
    k = rng.standard_normal((32, 16, 5, 5))
    dys = [rng.standard_normal((8, 32, 8, 8)) for _ in range(2)]
    first, second = kern(dy=dys[0], k=k), kern(dy=dys[1], k=k)  # the second reuses the buffer
    np.testing.assert_allclose(first, _input_gradient(dys[0], k), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(second, _input_gradient(dys[1], k), rtol=1e-12, atol=1e-12)

    def check(rng, worker):
        dy = rng.standard_normal((8, 32, 8, 8)) * (worker + 1)
        np.testing.assert_allclose(kern(dy=dy, k=k), _input_gradient(dy, k),
                                   rtol=1e-12, atol=1e-12)

    _from_every_thread_at_once(check, rounds=5, seed=200)


GRAD_PROGRAM = ("y[n,o,h,w] = x[n,c,h+u-1,w+v-1] * k[o,c,u,v] + b[o]   where h < H, w < W, "
                "x: circular\nl = sum[n,o,h,w](tanh(y[n,o,h,w])^2)")


def _grad_inputs(size: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((2, 3, size, size)), "k": rng.standard_normal((4, 3, 3, 3)),
            "b": rng.standard_normal(4)}


def test_compile_grad_from_many_threads():
    sizes = [4, 5, 6]
    reference = {}
    for size in sizes:
        for seed in range(2):
            kern = tc.compile_grad(GRAD_PROGRAM, wrt=["x", "k", "b"], H=size, W=size)
            reference[size, seed] = kern(**_grad_inputs(size, seed))
    _clear_cache()
    tasks = [(size, seed) for size in sizes for seed in range(2)] * 4
    random.Random(2).shuffle(tasks)

    def work(task):
        size, seed = task
        kern = tc.compile_grad(GRAD_PROGRAM, wrt=["x", "k", "b"], H=size, W=size)
        got = kern(**_grad_inputs(size, seed))
        assert set(got) == {"l", "dx", "dk", "db"}
        _same(got, reference[size, seed], rtol=1e-10)

    _hammer(work, tasks)


def _model(seed: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, rng=seed, dtype="float64"), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 3, rng=seed + 1, dtype="float64"))


def _train(seed: int, steps: int = 3):
    """A few SGD steps of a small CNN: the losses, the output and the final parameters."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((5, 2, 6, 6))
    labels = rng.integers(0, 3, size=5)
    model = _model(seed)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = nn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = [nn.train_step(model, loss_fn, optimizer, x, labels)[0] for _ in range(steps)]
    return losses, model(x), [p.data.copy() for p in model.parameters()]


def test_nn_layers_trained_in_many_threads_each_with_its_own_model():
    seeds = [0, 1, 2, 3]
    reference = {seed: _train(seed) for seed in seeds}
    _clear_cache()

    def work(task):
        losses, output, parameters = _train(task)
        want_losses, want_output, want_parameters = reference[task]
        np.testing.assert_allclose(losses, want_losses, rtol=1e-10)
        _same(output, want_output, rtol=1e-10)
        for got, want in zip(parameters, want_parameters):
            _same(got, want, rtol=1e-10)

    _hammer(work, seeds * 2)


def test_layer_forward_and_backward_in_many_threads():
    """One layer instance per thread, the same weights everywhere: forward and input
    gradient of a Conv2d must match the single-threaded ones."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 2, 7, 7))
    grad_out = rng.standard_normal((3, 5, 7, 7))
    layer = nn.Conv2d(2, 5, 3, padding=1, padding_mode="reflect", rng=3, dtype="float64")
    want_y = layer(x)
    want_dx = layer.backward(grad_out)
    want_dw = layer.weight.grad.copy()
    _clear_cache()

    def work(_):
        own = nn.Conv2d(2, 5, 3, padding=1, padding_mode="reflect", rng=3, dtype="float64")
        for _ in range(3):
            own.zero_grad()
            _same(own(x), want_y)
            _same(own.backward(grad_out), want_dx)
            _same(own.weight.grad, want_dw)

    _hammer(work, range(WORKERS))


def test_recursion_headroom_is_shared_and_restored():
    """Deep programs need a raised recursion limit while they are parsed and compiled; with
    threads entering and leaving at different times no one may lose it, and the limit is
    back to the original once everyone is done."""
    before = sys.getrecursionlimit()
    deep = ["y[i] = " + " + ".join(["x[i]"] * depth) for depth in (200, 350, 480)]
    shallow = "y[i] = x[i] * 2"
    tasks = [deep[i % 3] if i % 2 else shallow for i in range(48)]

    def work(text):
        got = tc.compile(text)(x=np.ones(3))
        want = 2.0 if text == shallow else float(text.count("x[i]"))
        np.testing.assert_array_equal(got, np.full(3, want))

    _hammer(work, tasks)
    assert sys.getrecursionlimit() == before


HALVES_POOL = "p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   where u < 2, v < 2"


def _halves_pool(monkeypatch, seed: int = 11):
    """HALVES_POOL compiled to run in halves, an input and NumPy's answer."""
    pytest.importorskip("numba")
    monkeypatch.setenv("TENSORC_JIT", "auto")
    kern = tc.compile(HALVES_POOL, y=(16, 64, 32, 32), dtype="float32")
    assert "_jit.in_halves(" in kern.source, kern.plan
    y = np.random.default_rng(seed).standard_normal((16, 64, 32, 32), dtype=np.float32)
    return kern, y, y.reshape(16, 64, 16, 2, 16, 2).max(axis=(3, 5))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_kernel_on_two_threads_from_many_threads_and_after_a_fork(monkeypatch):
    """A kernel that runs in halves (`in_halves`: the second half on a helper thread) gives
    NumPy's values when called from many threads at once, and in a forked child, which
    inherits the helper's executor but not its thread."""
    pytest.importorskip("numba")
    import multiprocessing
    monkeypatch.setenv("TENSORC_JIT", "auto")
    kern = tc.compile(HALVES_POOL, y=(16, 64, 32, 32), dtype="float32")
    assert "_jit.in_halves(" in kern.source, kern.plan
    rng = np.random.default_rng(9)
    inputs = [rng.standard_normal((16, 64, 32, 32), dtype=np.float32) for _ in range(6)]
    wants = [y.reshape(16, 64, 16, 2, 16, 2).max(axis=(3, 5)) for y in inputs]
    with ThreadPoolExecutor(3) as pool:
        gots = list(pool.map(lambda y: kern(y=y), inputs * 3))
    for got, want in zip(gots, wants * 3):
        np.testing.assert_array_equal(got, want)
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as child:
        got = child.apply_async(_pool_in_child, (kern.source, inputs[0])).get(timeout=60)
    np.testing.assert_array_equal(got, wants[0])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_a_kernel_runs_starts_with_the_run_lock_free(monkeypatch):
    """A fork taken while another thread of the parent holds the lock kernels run under
    (here: held by the test itself) leaves the child a free lock, not one nobody releases."""
    import multiprocessing
    from tensorc.backends import jit
    kern, y, want = _halves_pool(monkeypatch, seed=10)
    context = multiprocessing.get_context("fork")
    with jit._RUN_LOCK, context.Pool(1) as child:  # the lock held as the child forks
        got = child.apply_async(_pool_in_child, (kern.source, y)).get(timeout=60)
    np.testing.assert_array_equal(got, want)


def test_a_half_that_raises_lets_the_other_half_finish_first():
    """in_halves waits for the helper thread's half even when its own half raises, so no
    half still runs once the caller sees the error (or the next kernel starts)."""
    import threading
    import time
    from tensorc.backends import jit
    finished = []
    main = threading.get_ident()

    def half(part: np.ndarray) -> None:
        if threading.get_ident() == main:
            raise ValueError("this half failed")
        time.sleep(0.2)
        finished.append(len(part))

    module = jit._Serialized(type("Module", (), {"half": staticmethod(half)}))
    with pytest.raises(ValueError, match="this half failed"):
        module.in_halves("half", (True,), np.zeros(8))
    assert finished == [4]


def test_an_error_in_the_helpers_half_reaches_the_caller_and_the_helper_serves_on():
    """An error raised in the half the helper thread runs is raised by in_halves in the
    caller's thread, once; the next call's halves both run."""
    import threading
    from tensorc.backends import jit
    main = threading.get_ident()
    ran = []

    def half(part: np.ndarray, fail: bool) -> None:
        if fail and threading.get_ident() != main:
            raise ValueError("the helper's half failed")
        ran.append(len(part))

    module = jit._Serialized(type("Module", (), {"half": staticmethod(half)}))
    with pytest.raises(ValueError, match="the helper's half failed"):
        module.in_halves("half", (True, False), np.zeros(8), True)
    assert ran == [4]
    module.in_halves("half", (True, False), np.zeros(8), False)
    assert ran == [4, 4, 4]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs thread affinity and two CPUs")
def test_the_halves_helper_runs_off_the_calling_threads_cpu(monkeypatch):
    """in_halves keeps its helper thread off the CPU its caller is on, among the process's
    CPUs, and follows the caller to another CPU."""
    from tensorc.backends import jit
    kern, y, want = _halves_pool(monkeypatch)
    allowed = os.sched_getaffinity(0)
    first, second = sorted(allowed)[:2]

    def call_from(cpu: int) -> set[int]:
        os.sched_setaffinity(0, {cpu})  # the calling worker thread only (Linux: 0 is it)
        np.testing.assert_array_equal(kern(y=y), want)
        return os.sched_getaffinity(jit._second_thread().native_id)

    with ThreadPoolExecutor(1) as caller:
        for cpu in (first, second, first):
            assert caller.submit(call_from, cpu).result() == allowed - {cpu}


def test_halves_run_where_threads_cannot_be_pinned(monkeypatch):
    """Where the system refuses to pin a thread, in_halves leaves the helper where the
    scheduler puts it, stops asking, and gives the same values."""
    from tensorc.backends import jit
    kern, y, want = _halves_pool(monkeypatch)
    refusals = []

    def refuse(*args):
        refusals.append(args)
        raise PermissionError("not permitted here")

    monkeypatch.setattr(os, "sched_setaffinity", refuse, raising=False)
    monkeypatch.setattr(jit, "_HALVES_THREAD", None)  # a helper made under the refusal
    for _ in range(3):
        np.testing.assert_array_equal(kern(y=y), want)
    if jit._current_cpu_reader() is not None and len(os.sched_getaffinity(0)) > 1:
        assert len(refusals) == 1  # asked once, then left alone


def _pool_in_child(source: str, y: np.ndarray) -> np.ndarray:
    from tensorc.backends.numpy import execute_module
    return execute_module(source, "numpy")["kernel"](y)
