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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

from .ir import (
    Apply, CheckedProgram, Expr, IndexMap, Read, Reduce, Statement, TensorInfo, free_indices, walk,
)
from .plan import (
    GATHER_FORM, PairStep, ProgramPlan, StatementPlan, axis_sizes, contractions_in,
    plan_program, tiles_exactly,
)

__all__ = ["LoopNest", "loop_nest", "plan_for_backend", "plan_for_gpu", "plan_for_cpu_jit", "direct_cost", "FEW_THREADS", "LONG_LOOP",
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

    @property
    def ranges(self) -> dict[str, int]:
        return self.statement.ranges

    @property
    def threads(self) -> int:
        return math.prod(self.ranges[i] for i in self.parallel)

    @property
    def atomic(self) -> bool:
        """Whether threads add into the target ('+='): their points may overlap."""
        return self.statement.accumulate and not self.tiled

    @property
    def inputs(self) -> tuple[str, ...]:
        """The tensors read, in order of first appearance: the kernel's first arguments."""
        return tuple(dict.fromkeys(n.tensor for n in walk(self.statement.value)
                                   if isinstance(n, Read)))

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
        of every reduction inside."""
        return self.threads * math.prod(self.ranges[i] for node in walk(self.statement.value)
                                        if isinstance(node, Reduce) for i in node.indices)

    def describe_for_cpu(self) -> str:
        target_shape = "x".join(map(str, self.shapes[self.target])) or "scalar"
        loops = [node for node in walk(self.statement.value) if isinstance(node, Reduce)]
        what = f"{self.target}[{target_shape}] by a Numba loop kernel {self.name}"
        if self.tiled:
            what += f", each element stored once (its windows tile {self.target})"
        if self.one_thread:
            what += f", on one thread ({self.visits:,} points visited)"
        if loops:
            what += ": " + ", ".join(f"{node.op} over {','.join(node.indices)}"
                                     for node in loops) + " in registers"
        modes = sorted({n.boundary for n in walk(self.statement.value)
                        if isinstance(n, Read) and n.boundary})
        if modes:
            what += f"; boundary {', '.join(repr(m) for m in modes)} by index arithmetic"
        return what


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
    parallel = tuple(dict.fromkeys(i for m in statement.target_maps for i in m.indices()))
    tensors = {statement.target} | {n.tensor for n in walk(statement.value) if isinstance(n, Read)}
    shapes = {t: program.tensors[t].shape for t in sorted(tensors)}
    return LoopNest(name, statement, parallel, shapes, dtype, tiled)


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
# Below this many visited points a loop kernel runs on one thread: waking Numba's workqueue
# threads costs about 0.2 ms. A 64x16x24x24 max-pool (590k visits) took 0.30-0.34 ms on one
# thread, 0.35-0.50 on two; its gradient's routing (590k) 0.62-0.79 against 0.85-0.99; a
# 16x64x56x56 max-pool (3.2M) 1.6-2.2 ms against 0.9-1.4.
PARALLEL_MIN_VISITS = 2_000_000


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
    no copies around GEMMs: a statement's packing goes with it)."""
    statements = []
    for sp, fresh in _with_freshness(plan):
        why = _cpu_choice(sp, plan.program, plan.dtype, mode)
        if why is not None:  # ("always", for tests, also runs every one on all threads)
            sp = replace(_as_loop_kernel(sp, plan, fresh, "numba", why,
                                         threaded=mode == "always"), packing=())
        statements.append(sp)
    return replace(plan, statements=statements)


def _with_freshness(plan: ProgramPlan):
    """Each statement plan, and whether nothing has written its target before it."""
    defined = set(plan.program.inputs)
    for sp in plan.statements:
        yield sp, sp.statement.target not in defined
        defined.add(sp.statement.target)


def _as_loop_kernel(sp: StatementPlan, plan: ProgramPlan, fresh: bool, device: str,
                    why: str, threaded: bool = False) -> StatementPlan:
    """The statement plan run as a loop kernel on `device` ('cuda' or 'numba'); on the CPU,
    on one thread when it visits few points, unless `threaded`."""
    nest = loop_nest(sp.statement, plan.program, plan.dtype, _kernel_name(sp), fresh)
    if device == "numba" and not threaded and nest.visits < PARALLEL_MIN_VISITS:
        nest = replace(nest, one_thread=True)
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
    of its own, one pass over the GEMM's result instead of one per operation."""
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
