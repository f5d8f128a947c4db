"""The Dask backend: a program's statements as dask.array graphs whose blocks run the NumPy
code tensorc generates for each block's shape.

Lowering, per statement (chosen by `plan_statement`, printed in `kern.plan`):

- **einsum**: a contraction of whole tensors (plain index maps, no boundary mode) runs as
  `dask.array.einsum`, one call per pairwise step of the planner's opt_einsum path:
  blockwise products, and sums over chunks of contracted indices by Dask's tree reductions.
- **blocks**, everything else (windows, boundary modes, reductions, elementwise work, `+=`
  through windows): the target is cut into blocks along the chunks its indices have in
  the tensors it reads (`y[n,o,h,w] = x[n,c,h+u-1,w+v-1]*k[o,c,u,v]` takes x's chunking of
  n, h and w). A block reads from each tensor the region its index maps reach: its own
  chunk and a halo (the window's reach: 1 on each side here), cut by one slicing task per
  chunk it overlaps, run where that chunk is, so only the halos move. This is `map_overlap`'s overlap, derived
  from the maps, so that it also holds where input and output chunks differ in size
  (strides, 'valid' windows). A boundary mode pads the tensor first with
  `dask.array.pad`, whose modes mean what NumPy's do (zero -> constant, circular -> wrap,
  replicate -> edge, reflect, symmetric); where a pad is longer than the axis, Dask's pad
  differs from NumPy's and the padded axis is gathered by index instead. Each block is the
  same statement with its maps shifted to the block, planned and rendered by the NumPy
  backend (cached by shape).
- **partial results**: when a statement is a contraction (a sum or mean of products), or
  a max or min, over an index its inputs chunk (a weight gradient's batch index), each
  chunk of that index gives a partial result and a tree reduction combines them:
  data-parallel gradients. A max or min splits so only where each target element is one
  maximum, not a sum of several through a window. A plain sum keeps NumPy's order in one
  task (a max's gradient recomputes it and compares with ==) unless that task would read
  more than 64 MiB. A target dimension written through a window (`dx[n,c,h+u,w+v] += ...`)
  is not cut; its plain dimensions are.

The estimated bytes moved between workers count, per block task, the input elements its
regions take from chunks other than the one it overlaps most, plus the partial results a
tree reduction moves: an upper bound that assumes neighbouring chunks live on other workers.
"""

from __future__ import annotations

import itertools
import math
import operator
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ..errors import BackendError
from ..budget import memory_budget
from ..loopnest import plan_for_backend
from ..parser import recursion_headroom
from ..ir import (
    Apply, CheckedProgram, Expr, IndexMap, IndexValue, Read, Reduce, Statement,
    TensorInfo, walk,
)
from ..plan import (
    ContractNode, ProgramPlan, ReduceNode, StatementPlan, ViewNode, boundary_pad, format_size,
    plan_program,
)
from .jit import cpu_modes
from .numpy import NUMPY_PAD_MODES, execute_module, render_module

__all__ = ["DaskProgram", "DaskPlanText", "dask_array_module", "render_dask_module",
           "INSTALL_HINT"]

INSTALL_HINT = "pip install 'tensorc[dask]' (dask[array,distributed])"


def dask_array_module():
    """dask.array, or a BackendError naming the extra to install."""
    try:
        import dask.array as da
    except ImportError as error:
        raise BackendError(f"the dask backend needs Dask ({error}); {INSTALL_HINT}") from None
    return da


# ---- planning a statement for a given chunking --------------------------------------------

@dataclass
class DaskStatementPlan:
    number: int
    strategy: str  # "einsum" | "blocks"
    # blocks: per blocked index, its block boundaries [0, b1, ..., size]
    blocks: dict[str, list[int]] = field(default_factory=dict)
    split: str | None = None  # the reduced index whose chunks give partial results
    split_bounds: list[int] = field(default_factory=list)
    pads: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    halos: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # tensor -> per dim
    # per position in the block grid: its block (or partial-result pieces) with the
    # region each reads per tensor
    pieces: list[tuple[tuple[int, ...], list[tuple[_Block, dict]]]] = field(default_factory=list)
    tasks: int = 1
    moved_bytes: int = 0

    def describe(self, statement: Statement) -> str:
        if self.strategy == "einsum":
            return ("dask: dask.array.einsum per pairwise step of the contraction path "
                    "(sums over chunks of contracted indices by tree reductions)")
        cut = ", ".join(f"{i} ({len(b) - 1})" for i, b in self.blocks.items() if len(b) > 2)
        text = f"dask: {self.tasks} block task{'s' if self.tasks != 1 else ''}"
        text += f", {statement.target} cut along {cut}" if cut else ", one block"
        if self.split:
            text += (f"; partial results over {len(self.split_bounds) - 1} chunks of "
                     f"{self.split}, combined by a tree reduction")
        halos = [f"{t} " + " ".join(f"{lo}/{hi}" for lo, hi in dims)
                 for t, dims in self.halos.items() if any(lo or hi for lo, hi in dims)]
        if halos:
            text += "; halo (low/high per dimension): " + ", ".join(halos)
        if self.pads:
            text += "; padded first: " + ", ".join(self.pads)
        return text + f"; about {format_size(self.moved_bytes)} moved between workers"


def _bounds(chunks: tuple[int, ...]) -> list[int]:
    return [0, *itertools.accumulate(chunks)]


def _reads(statement: Statement) -> list[Read]:
    return [n for n in walk(statement.value) if isinstance(n, Read) and n.maps]


def _bound_inside(statement: Statement) -> set[str]:
    """Indices some reduction binds (a block must not shift them)."""
    return {i for n in walk(statement.value) if isinstance(n, Reduce) for i in n.indices}


def _index_bounds(index: str, size: int, statement: Statement,
                  chunks: dict[str, tuple[tuple[int, ...], ...]]) -> list[int]:
    """Block boundaries for an index: the chunk boundaries of the first input dimension it
    indexes, plainly if possible (then blocks and chunks align), else through a window."""
    candidates = []
    for read in _reads(statement):
        if read.tensor not in chunks:
            continue
        for dim, m in enumerate(read.maps):
            coefficient = dict(m.terms).get(index, 0)
            if coefficient > 0:
                candidates.append((not m.is_plain, read.tensor, dim, m, coefficient))
    if not candidates:
        return [0, size]
    _, tensor, dim, m, coefficient = min(candidates, key=lambda c: c[0])
    inner = _bounds(chunks[tensor][dim])[1:-1]
    # a block ends where its windows' centres cross a chunk boundary: halos on both sides
    low, high = IndexMap(tuple(t for t in m.terms if t[0] != index), m.offset).extent(
        statement.ranges)
    centre = (low + high) / 2
    cuts = sorted({min(max(round((b - centre) / coefficient), 0), size) for b in inner}
                  - {0, size})
    return [0, *cuts, size]


def plan_statement(sp: StatementPlan, program: CheckedProgram, itemsize: int,
                   chunks: dict[str, tuple[tuple[int, ...], ...]]) -> DaskStatementPlan:
    statement = sp.statement
    reads_target = _reads_target(statement)
    if _einsum_shaped(sp) and not reads_target:
        return DaskStatementPlan(sp.number, "einsum")
    plan = DaskStatementPlan(sp.number, "blocks")
    bound = _bound_inside(statement)
    plain_targets = [m.terms[0][0] for m in statement.target_maps if m.is_plain]
    through_window = {i for m in statement.target_maps if not m.is_plain for i in m.indices()}
    # (blocks of an index cut the target's dimension only where the index covers it whole)
    covering = {m.terms[0][0] for m, size in zip(statement.target_maps,
                                                 program.tensors[statement.target].shape)
                if m.is_plain and statement.ranges[m.terms[0][0]] == size}
    if not reads_target and len(set(plain_targets)) == len(plain_targets):
        for index in plain_targets:
            if index not in bound and index not in through_window and index in covering:
                bounds = _index_bounds(index, statement.ranges[index], statement, chunks)
                if len(bounds) > 2:
                    plan.blocks[index] = bounds
        root = statement.value
        # Partial results: of contractions (sums of products: convolutions, their weight
        # gradients), and of max and min, which are exact in any order, where each target
        # element is one of them (through a window, `y[k+l] += max[i](...)`, an element sums
        # several, and a max of those sums is wrong). A plain sum keeps NumPy's order (a
        # max's gradient recomputes it and compares with ==, for ties) unless a task would
        # otherwise read more than PLAIN_SUM_TASK_BYTES.
        one_each = not through_window and set(statement.ranges) - bound <= set(plain_targets)
        if isinstance(sp.root, ReduceNode) and sp.root.op in ("max", "min"):
            splittable = one_each
        else:
            splittable = isinstance(sp.root, ContractNode) or isinstance(sp.root, ReduceNode) \
                and _task_bytes(statement, program, plan, itemsize) > PLAIN_SUM_TASK_BYTES
        if splittable and isinstance(root, Reduce):
            # an index every read takes whole (a batch, channels), not a window's offset
            inner_bound = {i for n in walk(root.body) if isinstance(n, Reduce) for i in n.indices}
            plain = {i for i in root.indices if all(
                m.is_plain for r in _reads(statement) for m in r.maps if i in m.indices())}
            in_target = {i for m in statement.target_maps for i in m.indices()}
            splits = [(len(b), i, b) for i in root.indices if i in plain - inner_bound - in_target
                      and len(b := _index_bounds(i, statement.ranges[i], statement, chunks)) > 2]
            if splits:
                _, plan.split, plan.split_bounds = max(splits)
    plan.pads = _pads(statement, program)
    plan.halos = _halos(statement, set(plan.blocks))
    plan.pieces = [(position, [(block, _regions(statement, program, block, plan.pads))
                               for block in parts])
                   for position, parts in _blocks(statement, plan)]
    plan.tasks, plan.moved_bytes = _traffic(statement, program, plan, chunks, itemsize)
    return plan


PLAIN_SUM_TASK_BYTES = 64 << 20


def _task_bytes(statement: Statement, program: CheckedProgram, plan: DaskStatementPlan,
                itemsize: int) -> int:
    """The input bytes the largest block task of `plan` (as it stands) reads."""
    largest = 0
    for _, parts in _blocks(statement, plan):
        for block in parts:
            regions = _regions(statement, program, block, {})
            largest = max(largest, sum(math.prod(hi - lo for lo, hi in region)
                                       for region in regions.values()))
    return largest * itemsize


def _einsum_shaped(sp: StatementPlan) -> bool:
    root = sp.root
    return (isinstance(root, ContractNode) and root.fft is None
            and all(isinstance(o, ViewNode) and o.kind == "whole" and o.read.boundary is None
                    for o in root.operands)
            and all(m.is_plain for m in sp.statement.target_maps)
            and sorted(m.terms[0][0] for m in sp.statement.target_maps) == sorted(root.axes))


def _pads(statement: Statement, program: CheckedProgram) -> dict[str, tuple[tuple[int, int], ...]]:
    """Per tensor read with a boundary mode: how far its reads reach beyond it."""
    pads: dict[str, list[list[int]]] = {}
    for read in _reads(statement):
        if read.boundary is None:
            continue
        shape = program.tensors[read.tensor].shape
        amounts = pads.setdefault(read.tensor, [[0, 0] for _ in shape])
        for dim, (before, after) in enumerate(boundary_pad(read.maps, shape, statement.ranges)):
            amounts[dim][0] = max(amounts[dim][0], before)
            amounts[dim][1] = max(amounts[dim][1], after)
    return {t: tuple(tuple(a) for a in amounts) for t, amounts in pads.items()
            if any(a != [0, 0] for a in amounts)}


def _halos(statement: Statement, blocked: set[str]) -> dict[str, list[tuple[int, int]]]:
    """Per tensor and dimension, how far a block's reads reach beyond its own positions (the
    blocked indices' terms): the window's reach."""
    halos: dict[str, list[tuple[int, int]]] = {}
    for read in _reads(statement):
        dims = halos.setdefault(read.tensor, [(0, 0)] * len(read.maps))
        for dim, m in enumerate(read.maps):
            if not blocked & set(m.indices()):
                continue
            rest = IndexMap(tuple(t for t in m.terms if t[0] not in blocked), m.offset)
            low, high = rest.extent(statement.ranges)
            dims[dim] = (max(dims[dim][0], -low), max(dims[dim][1], high))
    return halos


# ---- blocks ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Block:
    starts: dict[str, int]
    ranges: dict[str, int]


def _blocks(statement: Statement, plan: DaskStatementPlan) -> list[tuple[tuple[int, ...], list[_Block]]]:
    """(position in the target's block grid, the block and its partial-result pieces)."""
    indices = list(plan.blocks)
    grid = [range(len(plan.blocks[i]) - 1) for i in indices]
    pieces = [(None, 0, 0)] if plan.split is None else [
        (plan.split, lo, hi) for lo, hi in zip(plan.split_bounds, plan.split_bounds[1:])]
    result = []
    for position in itertools.product(*grid):
        starts, ranges = {}, dict(statement.ranges)
        for index, k in zip(indices, position):
            lo, hi = plan.blocks[index][k], plan.blocks[index][k + 1]
            starts[index], ranges[index] = lo, hi - lo
        parts = []
        for split, lo, hi in pieces:
            if split is None:
                parts.append(_Block(dict(starts), dict(ranges)))
            else:
                parts.append(_Block({**starts, split: lo}, {**ranges, split: hi - lo}))
        result.append((position, parts))
    return result


def _regions(statement: Statement, program: CheckedProgram, block: _Block,
             pads: dict[str, tuple[tuple[int, int], ...]]) -> dict[str, list[tuple[int, int]]]:
    """Per tensor read, the [low, high) its reads reach per dimension in this block, in the
    coordinates of its padded copy. A statement that reads its own target runs whole, on
    whole tensors (it adds to what it reads)."""
    regions: dict[str, list[tuple[int, int]]] = {}
    whole = _reads_target(statement)
    for read in _reads(statement):
        pad = pads.get(read.tensor) or tuple((0, 0) for _ in read.maps)
        if whole:
            shape = program.tensors[read.tensor].shape
            regions[read.tensor] = [(0, size + a + b) for size, (a, b) in zip(shape, pad)]
            continue
        extents = []
        for dim, m in enumerate(read.maps):
            low, high = m.shifted(block.starts).extent(block.ranges)
            extents.append((low + pad[dim][0], high + pad[dim][0] + 1))
        known = regions.get(read.tensor)
        regions[read.tensor] = extents if known is None else [
            (min(a, c), max(b, d)) for (a, b), (c, d) in zip(known, extents)]
    return regions


def _traffic(statement: Statement, program: CheckedProgram, plan: DaskStatementPlan,
             chunks: dict[str, tuple[tuple[int, ...], ...]], itemsize: int) -> tuple[int, int]:
    """(block tasks, estimated bytes moved between workers)."""
    tasks = moved = 0
    for _, parts in plan.pieces:
        for _, regions in parts:
            tasks += 1
            for tensor, region in regions.items():
                elements = math.prod(hi - lo for lo, hi in region)
                if tensor not in chunks:
                    continue
                home = 1
                for dim, (lo, hi) in enumerate(region):
                    bounds = _bounds(_padded_chunks(chunks[tensor], plan.pads.get(tensor))[dim])
                    home *= max(max(0, min(hi, b1) - max(lo, b0))
                                for b0, b1 in zip(bounds, bounds[1:]))
                moved += elements - home
        if len(parts) > 1:  # the tree reduction moves partial results
            moved += (len(parts) - 1) * math.prod(_target_shape(statement, program,
                                                                parts[0][0]))
    return tasks, moved * itemsize


def _padded_chunks(chunks: tuple[tuple[int, ...], ...],
                   pad: tuple[tuple[int, int], ...] | None) -> tuple[tuple[int, ...], ...]:
    """The chunks after padding, for the estimate: the pads widen the edge chunks."""
    if pad is None:
        return chunks
    padded = []
    for sizes, (low, high) in zip(chunks, pad):
        sizes = list(sizes)
        sizes[0] += low
        sizes[-1] += high
        padded.append(tuple(sizes))
    return tuple(padded)


def _target_shape(statement: Statement, program: CheckedProgram, block: _Block) -> tuple[int, ...]:
    """The target's part one block computes: a blocked index's block along its plain
    dimension, the whole dimension elsewhere (which an index may cover only in part:
    `y[j-3,j] += s   where j in 3:4, y: zero` writes one row of two)."""
    shape = program.tensors[statement.target].shape
    return tuple(block.ranges[m.terms[0][0]] if m.is_plain and m.terms[0][0] in block.starts
                 else size for m, size in zip(statement.target_maps, shape))


def _shift(expr: Expr, starts: dict[str, int], lows: dict[str, list[int]]) -> Expr:
    """The statement's value for a block: indices start at the block's starts, and each read
    addresses the region cut for it (whose position 0 is `lows[tensor]`)."""
    if isinstance(expr, Read):
        if not expr.maps:
            return expr
        low = lows[expr.tensor]
        maps = tuple(IndexMap(m.shifted(starts).terms, m.shifted(starts).offset - low[dim])
                     for dim, m in enumerate(expr.maps))
        return replace(expr, maps=maps, boundary=None)
    if isinstance(expr, IndexValue):
        return replace(expr, start=expr.start + starts.get(expr.index, 0))
    if isinstance(expr, Apply):
        return replace(expr, args=tuple(_shift(a, starts, lows) for a in expr.args))
    if isinstance(expr, Reduce):
        return replace(expr, body=_shift(expr.body, starts, lows))
    return expr


class _BlockKernel:
    """A block's kernel as its source: what a task ships to a worker (a compiled function
    holds thread-local buffers, which do not pickle); each process compiles a source once.
    `lanes` (the CUDA kernels' NumPy lane forms) marks a CuPy-backend module, for chunks
    that are CuPy arrays."""

    def __init__(self, source: str, lanes: str | None = None, dtype: str = "") -> None:
        self.source, self.lanes, self.dtype = source, lanes, dtype

    def __call__(self, *arrays: Any) -> Any:
        key = (self.source, self.lanes is not None and _emulating())
        kernel = _COMPILED.get(key)
        if kernel is None:
            with _LOCK:
                kernel = _COMPILED.get(key)
                if kernel is None:
                    kernel = _COMPILED[key] = self.load()
        return kernel(*arrays)

    def load(self) -> Callable[..., Any]:
        if self.lanes is None:
            return execute_module(self.source, "dask-block")["kernel"]
        from .cupy import bind_namespace
        return bind_namespace(execute_module(self.source, "dask-cupy-block"), self.lanes,
                              self.dtype)

    def __dask_tokenize__(self) -> str:
        return self.source


def _emulating() -> bool:
    from .cupy import emulating
    return emulating()


_COMPILED: dict[tuple, Callable[..., Any]] = {}
_SOURCES: dict[tuple, _BlockKernel] = {}
_LOCK = threading.Lock()


def block_kernel(statement: Statement, tensors: dict[str, TensorInfo], inputs: tuple[str, ...],
                 dtype: str, itemsize: int, device: bool = False) -> _BlockKernel:
    """The kernel of one block's statement, planned and rendered once per shapes: by the
    NumPy backend, or by the CuPy backend for chunks on a GPU (`device`)."""
    with recursion_headroom():  # deeply nested expressions
        jit, pack = cpu_modes(not device)
        key = (str(statement), statement.target_boundary, statement.accumulate,
               tuple((n, tensors[n].shape) for n in (*inputs, statement.target)), dtype, device,
               jit, pack)
        found = _SOURCES.get(key)
        if found is None:
            program = CheckedProgram((statement,), tensors, inputs, (statement.target,))
            plan = plan_for_backend(plan_program(program, dtype, itemsize, pack=pack,
                                                 gemv_sums=not device),
                                    "cupy" if device else "numpy", jit, memory_budget())
            if device:
                from .cupy import lanes_source, render_module as render_cupy_module
                found = _BlockKernel(render_cupy_module(plan), lanes_source(plan), dtype)
            else:
                found = _BlockKernel(render_module(plan))
        with _LOCK:
            found = _SOURCES.setdefault(key, found)
    return found


def _on_device(values: dict[str, Any]) -> bool:
    """Whether the chunks are CuPy arrays (or the CuPy backend is being emulated on NumPy,
    as tests do without a GPU)."""
    return _emulating() or any(
        type(getattr(v, "_meta", None)).__module__.split(".")[0] == "cupy"
        for v in values.values())


# ---- running -------------------------------------------------------------------------------

class DaskProgram:
    """A checked program on Dask: called with dask arrays (or NumPy arrays, chunked
    automatically), it returns its outputs as dask arrays, lazy until computed. Each
    statement is planned for the chunks its inputs have at that call."""

    def __init__(self, program: CheckedProgram, plan: ProgramPlan) -> None:
        self.program, self.numpy_plan = program, plan
        self.last: list[DaskStatementPlan] = []

    def __call__(self, *arrays: Any) -> Any:
        da = dask_array_module()
        with recursion_headroom():  # deeply nested expressions
            return self.build(da, dict(zip(self.program.inputs, arrays)))

    def build(self, da, values: dict[str, Any]) -> Any:
        plans = []
        device = _on_device(values)
        for sp in self.numpy_plan.statements:
            chunks = {n: v.chunks for n, v in values.items() if getattr(v, "ndim", 0)}
            plan = plan_statement(sp, self.program, self.numpy_plan.itemsize, chunks)
            plans.append(plan)
            statement = sp.statement
            if plan.strategy == "einsum":
                value = _run_einsum(da, sp, values).astype(self.numpy_plan.dtype, copy=False)
            else:
                value = _run_blocks(da, statement, self.program, plan, values,
                                    self.numpy_plan.dtype, self.numpy_plan.itemsize, device)
            old = values.get(statement.target)
            if statement.accumulate and old is not None and not _reads_target(statement):
                value = old + value  # a block that reads its target has added to it already
            values[statement.target] = value
        self.last = plans
        outputs = [values[n] for n in self.program.outputs]
        if len(outputs) == 1:
            return outputs[0]
        return dict(zip(self.program.outputs, outputs))


def _reads_target(statement: Statement) -> bool:
    return any(isinstance(n, Read) and n.tensor == statement.target for n in walk(statement.value))


def _padded(da, value, pad: tuple[tuple[int, int], ...], mode: str):
    """`value` padded per tensorc's boundary `mode`, exactly as numpy.pad would."""
    numpy_mode = NUMPY_PAD_MODES[mode]
    if numpy_mode == "constant":
        return da.pad(value, pad, mode="constant")
    import numpy as np
    for dim, (low, high) in enumerate(pad):
        if not (low or high):
            continue
        size = value.shape[dim]
        widths = [(0, 0)] * value.ndim
        widths[dim] = (low, high)
        if max(low, high) < size:  # within one reflection: Dask's pad is NumPy's
            value = da.pad(value, widths, mode=numpy_mode)
        else:  # NumPy repeats the pattern; gather those positions
            positions = np.pad(np.arange(size), (low, high), mode=numpy_mode)
            value = da.take(value, positions, axis=dim)
    return value


def _run_blocks(da, statement: Statement, program: CheckedProgram, plan: DaskStatementPlan,
                values: dict[str, Any], dtype: str, itemsize: int, device: bool = False):
    """The statement's target as a dask array: one task per block (and partial result) that
    cuts its regions out of the chunks they overlap and runs the block's NumPy kernel; a
    tree of sums (or max, min) over partial results."""
    import numpy as np
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph
    boundaries = {r.tensor: r.boundary for r in _reads(statement) if r.boundary is not None}
    sources = {}
    for tensor in dict.fromkeys(n.tensor for n in walk(statement.value) if isinstance(n, Read)):
        value = da.asarray(values[tensor])
        if tensor in plan.pads:
            value = _padded(da, value, plan.pads[tensor], boundaries[tensor])
        sources[tensor] = value
    inputs = tuple(sources)
    token = tokenize(statement.text, plan.number, plan.blocks, plan.split_bounds,
                     [v.name for v in sources.values()])
    name = f"tensorc-{statement.target}-{token}"
    dims = [m.terms[0][0] if m.is_plain and m.terms[0][0] in plan.blocks else None
            for m in statement.target_maps]
    order = list(plan.blocks)
    layer: dict[tuple, Any] = {}
    for blocked, parts in plan.pieces:
        position = tuple(blocked[order.index(i)] if i else 0 for i in dims)
        partial_keys = []
        for number, (block, regions) in enumerate(parts):
            # a map's position p is p + (low padding) in the padded copy the region is cut from
            lows = {t: [lo - (plan.pads[t][dim][0] if t in plan.pads else 0)
                        for dim, (lo, _) in enumerate(region)] for t, region in regions.items()}
            tensors = {t: TensorInfo(t, tuple(hi - lo for lo, hi in regions[t]) if t in regions
                                     else sources[t].shape) for t in inputs}
            shape = _target_shape(statement, program, block)
            tensors[statement.target] = TensorInfo(statement.target, shape, defined_by=0)
            block_statement = replace(statement, value=_shift(statement.value, block.starts, lows),
                                      ranges=block.ranges)
            kernel = block_kernel(block_statement, tensors, inputs, dtype, itemsize, device)
            arguments = []
            for t in inputs:
                region = regions.get(t) or [(0, n) for n in sources[t].shape]
                prefix = f"{name}-{t}-{'-'.join(map(str, position))}-{number}"
                arguments.append(_region_task(layer, prefix, sources[t], region))
            key = (f"{name}-part", number, *position) if len(parts) > 1 else (name, *position)
            weight = block.ranges[plan.split] / statement.ranges[plan.split] \
                if plan.split and statement.value.op == "mean" else None
            layer[key] = (_weighted, kernel, weight, *arguments) if weight else (kernel, *arguments)
            partial_keys.append(key)
        if len(parts) > 1:
            _tree(layer, (name, *position), partial_keys, statement.value.op)
    chunks = tuple(tuple(b - a for a, b in zip(plan.blocks[i], plan.blocks[i][1:])) if i
                   else (size,) for i, size in zip(dims, program.tensors[statement.target].shape))
    graph = HighLevelGraph.from_collections(name, layer, dependencies=list(sources.values()))
    meta = next((v._meta for v in sources.values() if v.ndim), None)  # NumPy or CuPy chunks
    if meta is not None:
        from dask.array.utils import meta_from_array
        meta = meta_from_array(meta, ndim=len(chunks), dtype=np.dtype(dtype))
    return da.Array(graph, name, chunks, dtype=np.dtype(dtype), meta=meta)


def _region_task(layer: dict, prefix: str, array, region: list[tuple[int, int]]):
    """The key of a task holding [low, high) per dimension of `array`: a chunk's own key
    when the region is that chunk, else a task joining one slicing task per chunk it
    overlaps. The slicing runs where the chunk is, so only the slices (halos) move."""
    keys = array.__dask_keys__()
    if not region:
        return keys[0]
    picks, cuts = [], []
    for dim, (lo, hi) in enumerate(region):
        bounds = _bounds(array.chunks[dim])
        inside = [k for k in range(len(bounds) - 1) if bounds[k] < hi and bounds[k + 1] > lo]
        picks.append(inside)
        cuts.append([slice(max(lo, bounds[k]) - bounds[k], min(hi, bounds[k + 1]) - bounds[k])
                     for k in inside])
    whole = all(len(p) == 1 and c[0] == slice(0, array.chunks[d][p[0]])
                for d, (p, c) in enumerate(zip(picks, cuts)))

    def key_of(index: tuple[int, ...]):
        node = keys
        for k in index:
            node = node[k]
        return node
    if whole:
        return key_of(tuple(p[0] for p in picks))

    def nest(level: int, index: tuple[int, ...], position: tuple[int, ...]):
        if level == len(region):
            piece = (f"{prefix}-slice", *index)
            layer[piece] = (operator.getitem, key_of(index),
                            tuple(cuts[d][position[d]] for d in range(len(region))))
            return piece
        return [nest(level + 1, index + (k,), position + (j,))
                for j, k in enumerate(picks[level])]
    layer[(prefix,)] = (_joined, nest(0, (), ()))
    return (prefix,)


def _joined(pieces):
    """A region from its pieces (nested one level per dimension): np.block, one copy of each
    piece; CuPy, which has no block, concatenates level by level."""
    import numpy as np
    if not isinstance(pieces, list):
        return pieces
    leaf = pieces
    while isinstance(leaf, list):
        leaf = leaf[0]
    if isinstance(leaf, np.ndarray):
        return np.block(pieces)

    def concatenated(node, axis: int):
        if not isinstance(node, list):
            return node
        parts = [concatenated(child, axis + 1) for child in node]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)  # dispatches
    return concatenated(pieces, 0)


def _weighted(kernel, weight, *arrays):
    return kernel(*arrays) * weight


_COMBINE = {"max": "maximum", "min": "minimum"}
TREE_FAN_IN = 4


def _tree(layer: dict, key: tuple, partials: list[tuple], op: str) -> None:
    """Combine partial results into `key` by a tree of fan-in TREE_FAN_IN."""
    level = 0
    while len(partials) > TREE_FAN_IN:
        grouped = []
        for k in range(0, len(partials), TREE_FAN_IN):
            node = (f"{key[0]}-tree{level}", k, *key[1:])
            layer[node] = (_combine, op, partials[k:k + TREE_FAN_IN])
            grouped.append(node)
        partials, level = grouped, level + 1
    layer[key] = (_combine, op, partials)


def _combine(op: str, parts: list):
    import numpy as np
    function = getattr(np, _COMBINE.get(op, "add"))  # sums, and means weighted by share
    result = parts[0]
    for part in parts[1:]:
        result = function(result, part)
    return result


def _run_einsum(da, sp: StatementPlan, values: dict[str, Any]):
    import opt_einsum
    root = sp.root
    symbol = {name: opt_einsum.get_symbol(i) for i, name in enumerate(sp.order)}
    letters = lambda axes: "".join(symbol[a] for a in axes)  # noqa: E731
    working = [(values[o.read.tensor], tuple(m.terms[0][0] for m in o.read.maps))
               for o in root.operands]
    for step in root.steps:
        if step.left == step.right:
            (array, axes), = [working.pop(step.left)]
            result = da.einsum(f"{letters(axes)}->{letters(step.result_axes)}", array)
        else:
            (b, b_axes) = working.pop(max(step.left, step.right))
            (a, a_axes) = working.pop(min(step.left, step.right))
            result = da.einsum(f"{letters(a_axes)},{letters(b_axes)}->"
                               f"{letters(step.result_axes)}", a, b)
        working.append((result, step.result_axes))
    (array, axes), = working
    target = tuple(m.terms[0][0] for m in sp.statement.target_maps)
    if axes != target:
        array = da.einsum(f"{letters(axes)}->{letters(target)}", array)
    factor = root.scale / root.mean_count
    return array * factor if factor != 1 else array


class DaskPlanText:
    """The Dask part of `kern.plan`: each statement's lowering for the chunks of the most
    recent call (chunking is the caller's, so it is known only then)."""

    def __init__(self, program: DaskProgram) -> None:
        self.program = program

    def __str__(self) -> str:
        plans = self.program.last
        if not plans:
            return "\ndask: planned per call, for the chunks of its arrays (not called yet)"
        lines = ["", "dask, for the chunks of the most recent call:"]
        for statement, plan in zip(self.program.program.statements, plans):
            lines.append(f"  statement {plan.number + 1}: {plan.describe(statement)}")
        return "\n".join(lines)


def render_dask_module(plan: ProgramPlan) -> str:
    """What `kern.source` shows on the Dask backend: the NumPy module of the whole program.
    Each block runs the same statements with maps shifted to it (at a single block, this
    very code)."""
    source = render_module(plan)
    return source.replace("Generated by tensorc for the NumPy backend",
                          "Generated by tensorc for the Dask backend (each block runs this "
                          "NumPy code, maps shifted to the block)", 1)
