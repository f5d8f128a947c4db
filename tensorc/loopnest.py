"""Statements as loop nests, for the GPU: one thread per point, reductions as inner loops.

A statement that GEMMs serve badly (pooling, depthwise and small-channel convolutions,
elementwise epilogues, boundary modes, window gradients) runs on the GPU as one custom
kernel instead of a chain of array operations: each thread computes one point of the
parallel loops and evaluates the statement's expression there, its reductions as
sequential loops with an accumulator in a register. For '=' the parallel loops are the
target's elements; for '+=' they are every point of the target maps, and each thread
adds its contribution atomically (window gradients overlap).

backends/cuda.py renders a LoopNest twice: as CUDA C for the device, and as a NumPy "lane
form" whose array lanes are the threads, which runs on the CPU so that tests can check the
index arithmetic the GPU would run.

`plan_for_gpu` decides, statement by statement, between a loop kernel and the array-level
code (cuBLAS GEMMs, CuPy's tree reductions) that the NumPy plan describes. No GPU is
available to measure a cost model on, so the rule is stated plainly instead:

- statements without a GEMM (elementwise, pooling, explicit reductions) become loop kernels:
  one pass over memory instead of one per operation, and boundary modes by index arithmetic
  instead of padded copies; except a reduction onto few outputs (fewer than
  FEW_THREADS threads each looping over more than LONG_LOOP points), which CuPy's tree
  reductions spread over the whole device;
- a contraction becomes a loop kernel when its GEMMs are poor (every GEMM contracts fewer
  than POOR_GEMM_DEPTH elements or keeps fewer than POOR_GEMM_WIDTH on one side: depthwise
  and small-channel convolutions) and evaluating it directly costs at most DIRECT_FLOPS_SLACK
  times the planned FLOPs (a tensor network keeps its contraction order);
- never for float16 '+=' (no atomic add on halves without CUDA's headers), integer dtypes,
  or a statement that reads its own target.

A GEMM statement with an elementwise epilogue (`relu(conv + b)`) is split in two: the GEMM
into a new tensor, laid out in the order the GEMM produces it, and the epilogue, which then
becomes a loop kernel (bias, activation and the transpose back in one pass).

On the CPU (Numba, `plan_for_cpu_jit`), a loop kernel whose target only the next loop kernel
reads, at that kernel's parallel indices (a max-pool gradient's tie counts, read per window
by the routing), is computed inside the next kernel instead (`producer_indices` states the
rule): its loops over those indices outermost, the producer's value computed once per point
of them into a local variable, the consumer's other loops inside; the target is never
stored. On the GPU each stays a kernel of its own: there the parallel loops are the threads,
so the consumer's other parallel indices would become a loop in each thread (a quarter of
the threads for a 2x2 max-pool's gradient, one thread per row for a softmax), or every
thread would compute the producer again; with no GPU to measure that against the write and
read of the target it saves, the rule is not stated for the GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

from .ir import (
    Apply, CheckedProgram, Expr, IndexMap, IndexValue, Read, Reduce, Statement, TensorInfo,
    free_indices, walk,
)
from .plan import (
    GATHER_FORM, PairStep, ProgramPlan, StatementPlan, axis_sizes, contractions_in,
    plan_program, tiles_exactly,
)

__all__ = ["LoopNest", "loop_nest", "producer_indices", "with_producer", "plan_for_backend", "plan_for_gpu", "plan_for_cpu_jit", "direct_cost", "FEW_THREADS", "LONG_LOOP",
           "POOR_GEMM_DEPTH", "POOR_GEMM_WIDTH", "DIRECT_FLOPS_SLACK"]

FEW_THREADS = 4096
LONG_LOOP = 4096
POOR_GEMM_DEPTH = 64
POOR_GEMM_WIDTH = 16
DIRECT_FLOPS_SLACK = 2.0

FLOAT_DTYPES = ("float16", "float32", "float64")


@dataclass(frozen=True)
class LoopNest:
    """A statement as loops: `parallel` (one thread per point, the last index varying
    fastest) around the statement's expression, whose reductions are inner loops."""

    name: str  # the kernel's name: the statement's target, prefixed by what it computes
    statement: Statement
    parallel: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]  # every tensor the nest reads or writes
    dtype: str
    # a '+=' through windows that tile a fresh target (a max-pool gradient): every element
    # is reached exactly once, so each point stores its value, into memory never zeroed
    tiled: bool = False
    one_thread: bool = False  # on the CPU: too little work to wake other threads for
    # On the CPU, one thread's kernel run on two threads: the leading index whose halves
    # each thread takes, the kernel compiled for half its range and called on slices of
    # the tensors it leads (`halved`, `split_tensors`)
    halves: str | None = None
    # On the CPU: the statement before this one, computed inside these loops where this one
    # reads its target (see `producer_indices`), its indices renamed into this nest's. Its
    # target's indices are the outer parallel loops (`outer`); at each of their points the
    # producer's value goes into a local variable, which the statement reads instead of
    # the target: that tensor is never stored.
    producer: Statement | None = None

    @property
    def ranges(self) -> dict[str, int]:
        if self.producer is None:
            return self.statement.ranges
        return {**self.producer.ranges, **self.statement.ranges}

    @property
    def outer(self) -> tuple[str, ...]:
        """The parallel indices the producer is computed at (the first ones); without a
        producer, all of them."""
        if self.producer is None:
            return self.parallel
        return self.parallel[:len(self.producer.target_maps)]

    @property
    def values(self) -> tuple[Expr, ...]:
        """What the loops evaluate: the producer's value (if any), then the statement's."""
        value = self.statement.value
        return (value,) if self.producer is None else (self.producer.value, value)

    @property
    def threads(self) -> int:
        return math.prod(self.ranges[i] for i in self.parallel)

    @property
    def atomic(self) -> bool:
        """Whether threads add into the target ('+='): their points may overlap."""
        return self.statement.accumulate and not self.tiled

    @property
    def inputs(self) -> tuple[str, ...]:
        """The tensors read, in order of first appearance (the producer's reads where the
        statement reads its target): the kernel's first arguments."""
        computed = self.producer.target if self.producer is not None else None
        reads: list[str] = []
        for node in walk(self.statement.value):
            if isinstance(node, Read) and node.tensor == computed:
                reads += [n.tensor for n in walk(self.producer.value) if isinstance(n, Read)]
            elif isinstance(node, Read):
                reads.append(node.tensor)
        return tuple(dict.fromkeys(reads))

    @property
    def target(self) -> str:
        return self.statement.target

    def describe(self, device: str = "cuda") -> str:
        """One line for the plan and the generated comments ('cuda' or 'numba')."""
        if device == "numba":
            return self.describe_for_cpu()
        target_shape = "x".join(map(str, self.shapes[self.target])) or "scalar"
        if self.atomic and not self.parallel:
            what = f"one thread adding into {self.target}[{target_shape}]"
        elif self.atomic:
            space = "x".join(str(self.ranges[i]) for i in self.parallel)
            what = (f"one thread per point of {','.join(self.parallel)} ({self.threads:,}: "
                    f"{space}), each adding its contribution atomically into "
                    f"{self.target}[{target_shape}]")
        else:
            what = f"one thread per element of {self.target}[{target_shape}] ({self.threads:,})"
            if self.tiled:
                what += f", each stored once (its windows tile {self.target})"
        loops = [node for node in walk(self.statement.value) if isinstance(node, Reduce)]
        if loops:
            what += "; " + ", ".join(
                f"{node.op} over {','.join(node.indices)} "
                f"({math.prod(self.ranges[i] for i in node.indices)} iterations)"
                for node in loops) + " in registers"
        modes = sorted({n.boundary for n in walk(self.statement.value)
                        if isinstance(n, Read) and n.boundary}
                       | ({self.statement.target_boundary} - {None}))
        if modes:
            what += f"; boundary {', '.join(repr(m) for m in modes)} by index arithmetic, " \
                    "no padded copy"
        return f"CUDA loop kernel {self.name}: {what}"

    @property
    def visits(self) -> int:
        """How many points the loops visit: the parallel points, each times the iterations
        of every reduction inside; plus, per outer point, the producer's."""
        def iterations(expr: Expr) -> int:
            return math.prod(self.ranges[i] for node in walk(expr)
                             if isinstance(node, Reduce) for i in node.indices)
        visits = self.threads * iterations(self.statement.value)
        if self.producer is not None:
            visits += math.prod(self.ranges[i] for i in self.outer) * \
                iterations(self.producer.value)
        return visits

    def describe_for_cpu(self) -> str:
        target_shape = "x".join(map(str, self.shapes[self.target])) or "scalar"
        what = f"{self.target}[{target_shape}] by a Numba loop kernel {self.name}"
        if self.tiled:
            what += f", each element stored once (its windows tile {self.target})"
        if self.halves:
            what += (f", on two threads, each over half of {self.halves} "
                     f"({self.visits:,} points visited)")
        elif self.one_thread:
            what += f", on one thread ({self.visits:,} points visited)"
        else:
            what += f", its rows shared among threads ({self.visits:,} points visited)"
        loops = _reductions(self.statement.value)
        window = self.separable_window
        if window:
            u, v = window
            what += (f": {self.statement.value.op} over {u} first, into a buffer of "
                     f"{self.statement.value.body.tensor}'s last dimension, then over {v}")
        elif loops:
            what += f": {loops} in registers"
        if self.producer is not None:
            what += f"; {self.computed_read} computed in its loops once per point of " \
                    f"{','.join(self.outer)}"
            loops = _reductions(self.producer.value)
            what += f" ({loops} in registers), never stored" if loops else ", never stored"
        modes = sorted({n.boundary for value in self.values for n in walk(value)
                        if isinstance(n, Read) and n.boundary})
        if modes:
            what += f"; boundary {', '.join(repr(m) for m in modes)} by index arithmetic"
        return what

    @property
    def separable_window(self) -> tuple[str, str] | None:
        """(u, v) when the loops, on one thread, take a max or min over a 2-D window of one
        tensor, `max[u,v](y[.., a*h+u+b, c*w+v+d])`, v beside the innermost parallel index
        w in the tensor's last dimension and u alone with outer ones in another: the
        maximum over u of each whole row segment can go first into a buffer (contiguous
        reads, which LLVM vectorizes), then the one over v through it (one read two
        apart instead of one per window point). A 3x3 stride-2 pool over 8x64x112x112 on
        one thread: 2.65 -> 1.65 ms; over 16x64x112x112 on two, memory-bound: 3.25 -> 2.96
        ms. Windows of fewer than 3 rows keep one loop over the window."""
        value, w = self.statement.value, self.parallel[-1] if self.parallel else None
        if not (self.one_thread and self.producer is None and not self.statement.accumulate
                and isinstance(value, Reduce) and value.op in ("max", "min")
                and len(value.indices) == 2 and isinstance(value.body, Read)
                and value.body.tensor != self.target and value.body.maps
                and self.statement.target_maps[-1:] == (IndexMap(((w, 1),)),)):
            return None
        maps, (first, second) = value.body.maps, value.indices
        for u, v in ((first, second), (second, first)):
            if dict(maps[-1].terms).keys() != {w, v} or dict(maps[-1].terms)[v] != 1 \
                    or self.ranges[u] < 3 or self.ranges[v] < 2:
                continue  # (2x2 windows: even over 24x24, 1.24x as long over 56x56)
            with_u = [m for m in maps[:-1] if u in m.indices()]
            if len(with_u) == 1 and dict(with_u[0].terms)[u] == 1 and not {v, w} & {
                    i for m in maps[:-1] for i in m.indices()}:
                return u, v
        return None

    def accesses(self) -> list[tuple[str, tuple[IndexMap, ...]]]:
        """Every (tensor, maps) the loops read or write: the target, then each read."""
        return [(self.target, self.statement.target_maps)] + [
            (n.tensor, n.maps) for value in self.values for n in walk(value)
            if isinstance(n, Read)]

    @property
    def split_tensors(self) -> frozenset[str]:
        """With `halves`: the tensors it leads, sliced in two."""
        return frozenset(t for t, maps in self.accesses()
                         if maps and maps[0].indices() == (self.halves,))

    def halved(self) -> LoopNest:
        """The nest over half of `halves`' range, the tensors it leads half as long: the
        kernel each of the two threads calls on its slices."""
        index, split = self.halves, self.split_tensors

        def half(statement: Statement) -> Statement:
            if index not in statement.ranges:
                return statement
            return replace(statement, ranges={
                **statement.ranges, index: statement.ranges[index] // 2})
        shapes = {t: (shape[0] // 2, *shape[1:]) if t in split else shape
                  for t, shape in self.shapes.items()}
        producer = None if self.producer is None else half(self.producer)
        return replace(self, statement=half(self.statement), shapes=shapes,
                       producer=producer, halves=None)

    @property
    def computed_read(self) -> str:
        """The producer's target as this nest reads it: `ties[n,c,h,w]`."""
        return str(Read(self.producer.target, self.producer.target_maps))


def _reductions(expr: Expr) -> str:
    """The reductions of an expression in words: 'sum over u,v', or ''."""
    return ", ".join(f"{node.op} over {','.join(node.indices)}" for node in walk(expr)
                     if isinstance(node, Reduce))


def loop_nest(statement: Statement, program: CheckedProgram, dtype: str, name: str,
              fresh: bool = False) -> LoopNest:
    """The loop nest of a statement (see `ineligible` for which statements have one). A
    '+=' into a `fresh` target (nothing written it before) through plain maps that cover
    it is an assignment: no zero fill, no atomic adds; through windows that tile it, a
    store per point (`tiled`)."""
    shape = program.tensors[statement.target].shape
    if fresh and statement.accumulate and statement.target_boundary is None \
            and ineligible(replace(statement, accumulate=False), program, dtype) is None:
        statement = replace(statement, accumulate=False)
        name = name.replace("accumulate_", "compute_", 1)
    tiled = fresh and statement.accumulate and tiles_exactly(statement, shape)
    if tiled:
        name = name.replace("accumulate_", "compute_", 1)
    # A store goes to the flat position of the thread's number (cuda.py), so the indices
    # decompose it in the target's layout: a tiling map's index of the larger coefficient
    # first (y[i+2*j]: j, then i)
    parallel = tuple(dict.fromkeys(
        i for m in statement.target_maps
        for i in ([n for n, _ in sorted(m.terms, key=lambda term: -term[1])] if tiled
                  else m.indices())))
    tensors = {statement.target} | {n.tensor for n in walk(statement.value) if isinstance(n, Read)}
    shapes = {t: program.tensors[t].shape for t in sorted(tensors)}
    return LoopNest(name, statement, parallel, shapes, dtype, tiled)


def producer_indices(producer: LoopNest, nest: LoopNest, number: int,
                     program: CheckedProgram) -> tuple[str, ...] | None:
    """Where the loop nest of statement `number` reads the target of `producer`, the loop
    nest of the statement just before it, when that target can be computed inside the
    nest's loops instead of stored (`with_producer`): the nest's indices at which it
    reads it, one per dimension; else None. The rule (each clause keeps the results, and
    the work done, what they are with two kernels):

    - the producer assigns ('=', or '+=' into a fresh target, which its nest assigns) a
      target that no other statement writes, that is no input or output of the program,
      and that no statement but this one reads;
    - that target is not a scalar (its indices are where the nest's rows run in
      parallel), and the producer computes no producer of its own (a chain of such
      statements fuses in pairs, from its start);
    - every read of it here is at one tuple of distinct indices of the nest's target
      (plain maps: `ties[n,c,h,w]`), without a boundary mode, that no reduction inside
      binds: one value per point of those parallel loops, computed once there;
    - the producer does not read the nest's target (which these loops write)."""
    tensor, statement = producer.target, nest.statement
    if producer.producer is not None or producer.statement.accumulate \
            or not producer.statement.target_maps \
            or tensor in program.inputs or tensor in program.outputs:
        return None
    writers = [k for k, s in enumerate(program.statements) if s.target == tensor]
    readers = [k for k, s in enumerate(program.statements)
               if any(isinstance(n, Read) and n.tensor == tensor for n in walk(s.value))]
    if writers != [number - 1] or readers != [number]:
        return None
    reads = {node for node in walk(statement.value)
             if isinstance(node, Read) and node.tensor == tensor}
    sites = {tuple(m.terms[0][0] if m.is_plain else None for m in read.maps) for read in reads}
    if len(sites) != 1 or any(read.boundary is not None for read in reads):
        return None
    (at,) = sites
    if None in at or len(set(at)) != len(at) or not set(at) <= set(nest.parallel):
        return None
    if any(isinstance(node, Reduce) and set(node.indices) & set(at)
           for node in walk(statement.value)):
        return None
    if any(isinstance(node, Read) and node.tensor == statement.target
           for node in walk(producer.statement.value)):
        return None
    return at


def with_producer(nest: LoopNest, producer: LoopNest, at: tuple[str, ...],
                  program: CheckedProgram) -> LoopNest:
    """`nest` computing `producer` inside its loops, where `producer_indices` found it reads
    the producer's target (`at`): those parallel loops outermost (in the nest's order), the
    others inside them, and the producer's statement renamed into the nest's indices."""
    outer = tuple(i for i in nest.parallel if i in at)
    nest = replace(nest, parallel=outer + tuple(i for i in nest.parallel if i not in at),
                   producer=_renamed_into(producer.statement, at, nest.statement, program))
    tensors = {nest.target, *nest.inputs}
    return replace(nest, shapes={t: program.tensors[t].shape for t in sorted(tensors)})


def _renamed_into(producer: Statement, at: tuple[str, ...], consumer: Statement,
                  program: CheckedProgram) -> Statement:
    """The producer with its target's indices renamed to `at` (the consumer's, where it
    reads it) and each of its other indices renamed when the consumer uses that name for
    another range or at an outer loop (bound where the producer is computed)."""
    names = {m.terms[0][0]: index for m, index in zip(producer.target_maps, at)}
    taken = set(consumer.ranges) | set(producer.ranges) | set(program.tensors)
    for index, size in producer.ranges.items():
        if index in names:
            continue
        if index in at or consumer.ranges.get(index, size) != size:
            number = 2
            while f"{index}_{number}" in taken:
                number += 1
            names[index] = f"{index}_{number}"
            taken.add(names[index])
        else:
            names[index] = index
    return replace(producer, target_maps=tuple(IndexMap(((names[m.terms[0][0]], 1),))
                                               for m in producer.target_maps),
                   value=_renamed(producer.value, names),
                   ranges={names[i]: size for i, size in producer.ranges.items()})


def _renamed(expr: Expr, names: dict[str, str]) -> Expr:
    """`expr` with every index renamed by `names`, bound ones included."""
    if isinstance(expr, Read):
        return replace(expr, maps=tuple(IndexMap(tuple((names[i], c) for i, c in m.terms),
                                                 m.offset) for m in expr.maps))
    if isinstance(expr, IndexValue):
        return replace(expr, index=names[expr.index])
    if isinstance(expr, Apply):
        return replace(expr, args=tuple(_renamed(arg, names) for arg in expr.args))
    if isinstance(expr, Reduce):
        return replace(expr, indices=tuple(names[i] for i in expr.indices),
                       body=_renamed(expr.body, names))
    return expr


def ineligible(statement: Statement, program: CheckedProgram, dtype: str) -> str | None:
    """Why a statement cannot be a loop kernel, or None when it can."""
    if dtype not in FLOAT_DTYPES:
        return f"dtype {dtype}: loop kernels compute in floating point"
    if statement.accumulate and dtype == "float16":
        return "float16 '+=': no atomic add on halves without CUDA's headers"
    if any(isinstance(n, Read) and n.tensor == statement.target for n in walk(statement.value)):
        return "it reads its own target"
    if not statement.accumulate:
        shape = program.tensors[statement.target].shape
        names = [m.terms[0][0] if m.is_plain else None for m in statement.target_maps]
        if None in names or len(set(names)) != len(names) or any(
                statement.ranges[n] != size for n, size in zip(names, shape)):
            return "its target is not written element for element"
    return None


def direct_cost(expr: Expr, ranges: dict[str, int]) -> int:
    """FLOPs one thread performs evaluating `expr` directly, reductions as loops (counted as
    the planner counts: one per operation, one per reduction update)."""
    if isinstance(expr, Reduce):
        return math.prod(ranges[i] for i in expr.indices) * (direct_cost(expr.body, ranges) + 1)
    if isinstance(expr, Apply):
        return 1 + sum(direct_cost(arg, ranges) for arg in expr.args)
    return 0


def _work(sp: StatementPlan, program: CheckedProgram, dtype: str
          ) -> tuple[list[PairStep], Callable[[tuple[str, ...]], int], int, int]:
    """A statement as work: the GEMM steps of its plan, the size of a set of its axes, and
    the threads of its loop nest with the FLOPs each performs."""
    sizes = axis_sizes(sp)
    steps = [step for c in contractions_in(sp.root) for step in c.steps if step.kind == "gemm"]
    threads = loop_nest(sp.statement, program, dtype, "_").threads
    return (steps, lambda axes: math.prod(sizes[a] for a in axes), threads,
            direct_cost(sp.statement.value, sp.statement.ranges))


def _by_fft_or_shifts(sp: StatementPlan) -> bool:
    """Whether a contraction of the statement was planned by FFT or as shifted GEMMs (which
    the cost model chose over GEMM steps)."""
    return any(c.fft is not None or c.shifted is not None for c in contractions_in(sp.root))


def _gpu_choice(sp: StatementPlan, program: CheckedProgram, dtype: str) -> tuple[bool, str]:
    """(loop kernel?, why), by the rule in this module's docstring."""
    reason = ineligible(sp.statement, program, dtype)
    if reason is not None:
        return False, f"array-level code ({reason})"
    if _by_fft_or_shifts(sp):  # chosen over GEMMs for a large window: cuFFT
        return False, "array-level code: an FFT convolution"
    steps, size, threads, per_thread = _work(sp, program, dtype)
    if threads < FEW_THREADS and per_thread > LONG_LOOP:
        return False, (f"array-level code: {threads} outputs of {per_thread:,} "
                       "operations each are reduced faster by CuPy's tree reductions")
    if not steps:
        return True, "no GEMM: the whole statement in one pass"
    poor = all(size(s.contracted) < POOR_GEMM_DEPTH
               or min(size(s.kept_left), size(s.kept_right)) < POOR_GEMM_WIDTH for s in steps)
    direct = threads * per_thread
    if poor and direct <= DIRECT_FLOPS_SLACK * max(sp.flops, 1):
        depth = max(size(s.contracted) for s in steps)
        return True, f"GEMM-poor (contracts {depth} elements per output): evaluated directly"
    return False, "array-level code: cuBLAS GEMMs"


def _kernel_name(sp: StatementPlan) -> str:
    what = "accumulate" if sp.statement.accumulate else "compute"
    return f"{what}_{sp.statement.target}_{sp.number + 1}"  # a grammar identifier: valid C


# ---- CPU loop kernels (Numba) -----------------------------------------------------------------

JIT_MIN_FLOPS = 200_000  # below this a statement is too quick for a loop kernel to matter
# Below this many visited points a loop kernel runs without `prange`. Waking Numba's
# workqueue threads costs about 0.2 ms, and on this machine (2 cores) its two threads run
# the vectorized kernels slower than one: a `prange` body does not vectorize. One thread /
# two (prange), in ms:
#   3x3 depthwise, 16x64x56x56 (29M visits)          4.3-4.9 / 4.9-7.7
#   the same, 32x128x56x56 (116M visits)            23-25 / 25-40
#   y with its input and weight gradients (29M each) 20 / 20-23
#   2x2 max-pool, 16x64x56x56 (3.2M visits)         0.58-0.67 / 0.77-1.38
#   2x2 max-pool, 32x128x56x56 (13M visits)         2.7-2.9 / 2.8-3.9
# (Before its loops vectorized, that max-pool took 1.6-2.2 ms on one thread, 0.9-1.4 on
# two.) An earlier measurement found two Python threads running half each 2.5-3x slower;
# with the kernel compiled `nogil` and called outside the module's run lock, they gain
# (HALVES_MIN_VISITS).
PARALLEL_MIN_VISITS = 1 << 28
# From this many visited points, a kernel below PARALLEL_MIN_VISITS runs on two threads
# all the same, each calling it (compiled for half the range, without `prange`, so its
# loops vectorize as on one thread) on one half of the leading index: `halves`. One thread
# / two, in ms, measured in one process: a 3x3 s2 max-pool over 16x64x112x112 6.6 / 3.5,
# a 3x3 depthwise convolution over 16x64x56x56 3.7 / 2.0, a 2x2 max-pool over
# 16x64x56x56 0.42 / 0.37 and over 64x16x24x24 (590K visits) 0.17 / 0.13.
HALVES_MIN_VISITS = 1 << 19
# ... and where no index halves so (a weight gradient, dk[c,u,v] summed over n,h,w), a
# kernel whose every point sums at least this many terms keeps `prange` over its rows: its
# long innermost loops gain from the second core where short ones lose. A 3x3 depthwise
# layer's forward and gradients over 16x64x56x56 took 0.77-0.87 of the time with its dk
# threaded so, in three in-process comparisons (dk alone on one thread about 2.7 ms).
THREADED_REDUCTION_MIN_TERMS = 256


def _long_reductions(nest: LoopNest) -> bool:
    """Whether every value of the nest is a sum over THREADED_REDUCTION_MIN_TERMS terms or
    more."""
    return all(isinstance(value, Reduce) and value.op == "sum" and math.prod(
        nest.ranges[i] for i in value.indices) >= THREADED_REDUCTION_MIN_TERMS
        for value in nest.values)


def _leading_half_index(nest: LoopNest) -> str | None:
    """The leading parallel index, when its range is even and every tensor that uses it
    has it as its first dimension, alone (a batch index: halves write disjoint slices of
    the target and read only their own slices), and no value uses it as a number."""
    if not nest.parallel or nest.ranges[nest.parallel[0]] % 2:
        return None
    index = nest.parallel[0]
    accesses = nest.accesses()
    led = {t for t, maps in accesses if any(index in m.indices() for m in maps)}
    if nest.target not in led:
        return None
    for tensor, maps in accesses:
        if tensor in led and not (maps[0].is_plain and maps[0].indices() == (index,)
                                  and all(index not in m.indices() for m in maps[1:])):
            return None  # (a tensor it leads in one access must be led so in every one)
    if any(isinstance(n, IndexValue) and n.index == index
           for value in nest.values for n in walk(value)):
        return None
    return index


def _through_windows(statement: Statement) -> bool:
    """Whether a statement reads or writes through windows (an index map with more than
    one index): pooling, and the scatter-adds of window gradients."""
    maps = list(statement.target_maps) + [m for n in walk(statement.value)
                                          if isinstance(n, Read) for m in n.maps]
    return any(len(m.terms) > 1 for m in maps)


def _cpu_choice(sp: StatementPlan, program: CheckedProgram, dtype: str,
                mode: str) -> str | None:
    """Why a statement runs as a Numba loop kernel on the CPU, or None (NumPy's code).

    The rule, from measurements on this project's 2-core machine (float32):
    - BLAS wins wherever a GEMM has some width (LeNet-1's [36864x25]@[25x16] GEMM beats a
      direct loop 2x), so contractions keep it, except
    - a batch of matrix-vector products (a depthwise convolution: NumPy 35.7 ms, a loop
      kernel 6.9 ms, PyTorch NCHW 12.7 ms, for 16x64x56x56 3x3), and
    - statements through windows without a GEMM: 2x2 max-pooling of 64x16x24x24 takes
      0.68 ms as NumPy's running maxima and 0.24 ms as a loop kernel; its gradient (ties
      and routing, one pass per window offset in NumPy) 4.8 ms against 1.3 ms;
    each when it does at least JIT_MIN_FLOPS. Plain elementwise statements stay NumPy's.
    """
    if mode == "off" or dtype not in ("float32", "float64"):
        return None
    if ineligible(sp.statement, program, dtype) is not None:
        return None
    if mode == "always":
        return "TENSORC_JIT=always"
    if _by_fft_or_shifts(sp):  # chosen over GEMMs by the cost model
        return None
    steps, size, threads, per_thread = _work(sp, program, dtype)
    direct = threads * per_thread
    if direct < JIT_MIN_FLOPS or direct > DIRECT_FLOPS_SLACK * max(sp.flops, 1):
        return None
    if steps and all(min(size(s.kept_left), size(s.kept_right)) == 1 for s in steps):
        return "matrix-vector products that BLAS runs one by one: evaluated directly"
    if not steps and _through_windows(sp.statement):
        return "through windows, without a GEMM: one pass instead of one per window offset"
    return None


def plan_for_cpu_jit(plan: ProgramPlan, mode: str) -> ProgramPlan:
    """The NumPy plan with Numba loop kernels where `_cpu_choice` says they pay (they make
    no copies around GEMMs: a statement's packing goes with it). A loop kernel whose
    target only the next one reads, at that one's parallel indices, is computed inside the
    next one's loops instead (`producer_indices` has the rule): one pass instead of two,
    and that target never stored. A max-pool gradient, whose tie counts the routing reads
    per window (float32, one thread): 64x16x24x24 0.84 ms as two kernels, 0.55 ms as one;
    64x32x8x8 0.17 ms against 0.13."""
    statements: list[StatementPlan] = []
    for sp, fresh in _with_freshness(plan):
        why = _cpu_choice(sp, plan.program, plan.dtype, mode)
        if why is not None:  # ("always", for tests, also runs every one on all threads)
            before = statements[-1] if statements else None
            producer = before.loop_nest if before is not None else None
            sp = replace(_as_loop_kernel(sp, plan, fresh, "numba", why,
                                         threaded=mode == "always", producer=producer),
                         packing=())
            if sp.loop_nest.producer is not None:
                statements[-1] = _computed_inside(before, sp.loop_nest)
        statements.append(sp)
    return replace(plan, statements=statements)


def _computed_inside(sp: StatementPlan, consumer: LoopNest) -> StatementPlan:
    """The plan of a statement that `consumer` computes inside its loops: no code of its own."""
    return replace(sp, loop_nest=None, computed_in=consumer.name, strategy=(
        f"{consumer.computed_read} computed inside {consumer.name}'s loops (statement "
        f"{sp.number + 2}), once per point of {','.join(consumer.outer)}, never stored"))


def _with_freshness(plan: ProgramPlan):
    """Each statement plan, and whether nothing has written its target before it."""
    defined = set(plan.program.inputs)
    for sp in plan.statements:
        yield sp, sp.statement.target not in defined
        defined.add(sp.statement.target)


def _as_loop_kernel(sp: StatementPlan, plan: ProgramPlan, fresh: bool, device: str,
                    why: str, threaded: bool = False,
                    producer: LoopNest | None = None) -> StatementPlan:
    """The statement plan run as a loop kernel on `device` ('cuda' or 'numba'); on the CPU,
    on one thread when it visits few points, unless `threaded`; computing `producer`, the
    previous statement's nest, inside its loops where `producer_indices` allows."""
    nest = loop_nest(sp.statement, plan.program, plan.dtype, _kernel_name(sp), fresh)
    at = None if producer is None else producer_indices(producer, nest, sp.number,
                                                        plan.program)
    if at is not None:
        nest = with_producer(nest, producer, at, plan.program)
    if device == "numba" and not threaded and nest.visits < PARALLEL_MIN_VISITS:
        halves = _leading_half_index(nest) if nest.visits >= HALVES_MIN_VISITS else None
        rows_threaded = halves is None and nest.visits >= HALVES_MIN_VISITS \
            and _long_reductions(nest)
        if not rows_threaded:
            nest = replace(nest, one_thread=True, halves=halves)
    strategy = f"{nest.describe(device)} ({why})"
    if GATHER_FORM in sp.strategy:
        strategy = f"{GATHER_FORM}; {strategy}"
    return replace(sp, strategy=strategy, loop_nest=nest,
                   flops=nest.threads * direct_cost(sp.statement.value, nest.ranges),
                   largest_intermediate=0, peak_temporary_bytes=0)


# ---- epilogues -------------------------------------------------------------------------------

def _contraction_with_epilogue(statement: Statement) -> Reduce | None:
    """The Einstein sum of `y[...] = f(sum(...), ...)` when f does more than return it (bias,
    activation): the one Reduce of an '=' statement, under elementwise operations."""
    if statement.accumulate or not all(m.is_plain for m in statement.target_maps):
        return None
    reductions = [n for n in walk(statement.value) if isinstance(n, Reduce)]
    if len(reductions) != 1 or reductions[0] is statement.value:
        return None
    found = reductions[0]
    return found if found.op == "sum" and found.implicit else None


def _replaced(expr: Expr, old: Expr, new: Expr) -> Expr:
    if expr is old:
        return new
    if isinstance(expr, Apply):
        return replace(expr, args=tuple(_replaced(a, old, new) for a in expr.args))
    return expr


def _split_epilogues(program: CheckedProgram, numbers: set[int],
                     orders: dict[int, tuple[str, ...]]) -> tuple[CheckedProgram, dict[int, int]]:
    """The program with each statement in `numbers` split in two: its Einstein sum into a
    new tensor (laid out in `orders`' axis order, when given: the GEMM's own), then the
    elementwise rest as a statement of its own, which becomes a loop kernel. Also: where
    each split statement's GEMM went (old number -> new number)."""
    statements, tensors, moved = [], dict(program.tensors), {}
    for number, statement in enumerate(program.statements):
        contraction = _contraction_with_epilogue(statement) if number in numbers else None
        if contraction is None:
            statements.append(statement)
            continue
        free = [i for i in statement.index_order() if i in free_indices(contraction)]
        axes = orders.get(number, tuple(free))
        name, suffix = f"{statement.target}_gemm", 2
        while name in tensors or any(name in s.ranges for s in program.statements):
            name, suffix = f"{statement.target}_gemm{suffix}", suffix + 1
        moved[number] = len(statements)
        tensors[name] = TensorInfo(name, tuple(statement.ranges[i] for i in axes),
                                   defined_by=len(statements))
        maps = tuple(IndexMap(((i, 1),)) for i in axes)
        used = free + list(contraction.indices)
        statements.append(Statement(
            name, maps, False, contraction, {i: statement.ranges[i] for i in used},
            f"{name}[{','.join(axes)}] = {contraction}", statement.line, statement.span))
        rest = _replaced(statement.value, contraction, Read(name, maps))
        target = f"{statement.target}[{','.join(str(m) for m in statement.target_maps)}]"
        statements.append(replace(statement, value=rest, text=f"{target} = {rest}"))
    return replace(program, statements=tuple(statements), tensors=tensors), moved


def plan_for_backend(plan: ProgramPlan, backend: str, jit: str, budget: int) -> ProgramPlan:
    """The NumPy plan lowered for `backend`: the CuPy backend's loop kernels and epilogues,
    or, on the CPU, Numba loop kernels unless `jit` is "off"."""
    if backend == "cupy":
        return plan_for_gpu(plan, budget)
    if jit != "off":
        return plan_for_cpu_jit(plan, jit)
    return plan


def plan_for_gpu(plan: ProgramPlan, budget: int | None = None) -> ProgramPlan:
    """The plan for the CuPy backend: each statement a loop kernel or array-level code. A
    GEMM statement's elementwise epilogue (bias, activation) is split off into a loop kernel
    of its own, one pass over the GEMM's result instead of one per operation. No kernel
    computes its producer (see this module's docstring for why: unlike on the CPU)."""
    split = {sp.number for sp in plan.statements
             if _contraction_with_epilogue(sp.statement) is not None and not _by_fft_or_shifts(sp)
             and not _gpu_choice(sp, plan.program, plan.dtype)[0]}
    if split:
        program, moved = _split_epilogues(plan.program, split, {})
        replanned = plan_program(program, plan.dtype, plan.itemsize, budget, plan.fft,
                                 gemv_sums=False)
        # store each GEMM's result in the order the GEMM produces it: no transposed copy
        orders = {}
        for number, position in moved.items():
            steps = [st for c in contractions_in(replanned.statements[position].root)
                     for st in c.steps]
            if steps and steps[-1].final_transpose is not None:
                orders[number] = steps[-1].natural_axes
        if orders:
            program, _ = _split_epilogues(plan.program, split, orders)
            replanned = plan_program(program, plan.dtype, plan.itemsize, budget, plan.fft,
                                 gemv_sums=False)
        plan = replanned
        epilogues = {position + 1 for position in moved.values()}
    else:
        epilogues = set()
    statements = []
    for sp, fresh in _with_freshness(plan):
        use_loops, why = _gpu_choice(sp, plan.program, plan.dtype)
        if sp.number in epilogues and use_loops:
            why = "the elementwise epilogue of the GEMM above, in one pass over its result"
        if use_loops:
            sp = _as_loop_kernel(sp, plan, fresh, "cuda", why)
        else:
            sp = replace(sp, strategy=f"{sp.strategy} [GPU: {why}]")
        statements.append(sp)
    return replace(plan, statements=statements)
