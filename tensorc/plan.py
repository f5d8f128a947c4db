"""Checked IR -> a plan of array operations: contraction order, GEMM layouts, strategies, costs.

Every planned node yields an array whose axes are a subsequence of its statement's
canonical index order (target indices first, then by first appearance), so that operands
of elementwise operations line up by inserting new axes, never by transposing.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Collection, Iterator, Sequence, Union

import opt_einsum

from .budget import format_size, memory_budget, physical_memory
from .errors import MemoryBudgetError
from .ir import (
    Apply, CheckedProgram, Constant, Expr, IndexMap, IndexValue, Read, Reduce, Statement,
    TensorInfo, map_reads, walk,
)

__all__ = ["IM2COL_CHUNK_BYTES", "BlasCall", "blas_calls", "ViewNode", "ConstNode", "IndexNode", "ElementwiseNode", "ContractNode", "PairStep",
           "ReduceNode", "Node", "StatementPlan", "ProgramPlan", "plan_program",
           "WINDOW_LOOP_LIMIT", "GATHER_FORM", "contractions_in", "KeptWindow", "keep_windows",
           "share_windows", "PlanSettings"]

# Window reductions with at most this many offsets run as a loop of strided-slice updates
# (np.maximum(out, slice, out=out)); larger ones reduce a window view along its axes.
WINDOW_LOOP_LIMIT = 64
# A sum over at least this many elements of a tensor read whole, whose kept dimensions are
# adjacent in memory, runs as products with a vector of ones (BLAS's GEMV, on every core):
# a conv bias gradient, 64x16x24x24 summed over n,h,w, took 0.17 ms by np.sum, 0.025 ms so
# (BLAS adds in a few running sums, not pairwise: float32 errors a few times np.sum's, 1e-5).
ONES_GEMV_MIN = 1 << 15

# The cost model that picks a GEMM layout, in nanoseconds. Calibrated on the development
# machine (2 cores, OpenBLAS through NumPy, float32); only the ratios matter.
GEMM_FLOPS_PER_NS = 150.0  # large float32 GEMMs
GEMM_FULL_SPEED_DIMENSION = 64  # GEMMs with a smaller m, n or k run slower (~sqrt)
GEMM_CALL_NS = 300.0  # each entry of a batched matmul
# ... and, per entry that OpenBLAS runs on several threads (m*n*k above its threshold), the
# threads' hand-over: LeNet-2's input gradient, 64 x [64x32]@[32x400], took 1.8-3.3 ms
# batched against 1.0-1.5 ms as one [4096x32]@[32x400] GEMM (5-27 us per entry, 2 cores)
GEMM_THREADED_CALL_NS = 5000.0
OPENBLAS_THREADED_MNK = 4 * 65536  # GEMM_MULTITHREAD_THRESHOLD * SMP_THRESHOLD_MIN
# A GEMM of at most that many multiply-adds runs on one thread, at most one core's speed
# (GEMM_FLOPS_PER_NS is the development machine's 2 cores together): 96 x [96x48]@[48x48]
# took 0.59 ms with OpenBLAS on 2 threads or on 1, 16 x [64x576]@[576x784] 6.5 against
# 11.8 ms. Smaller dimensions slow it further (_gemm_efficiency, measured on such GEMMs).
GEMM_CORES = 2
TRANSPOSED_COPY_NS = 1.2  # per element, materializing a transposed array
# ... when the copy's two innermost axes both step a cache line or more through the source,
# so each line read serves one element (dy[n,o,h,w] -> [h,w,n,o]): measured ~0.9 ns slower
TRANSPOSED_SCATTER_NS = 2.1
# ... and when its innermost axis is the source's own, so it moves whole runs (dy[n,o,h,w]
# -> [o,n,h,w]: 0.08 ms for 64x16x24x24 floats; -> [n,h,w,o], o innermost: 0.27 ms)
TRANSPOSED_RUNS_NS = 0.4
CACHE_LINE_ELEMENTS = 16
BATCH_SUM_NS = 0.3  # per element of a batched matmul's result summed over its batch axis
TRANSPOSED_VIEW_NS = 0.05  # per element, handing a statement's result back transposed
WINDOW_COPY_NS = 0.2  # per element of an im2col copy, plus, per run of its innermost axis:
WINDOW_COPY_RUN_NS = 8.0  # NumPy's inner-loop overhead (runs of 8 measured ~1.1 ns/element)
WINDOW_GAPPED_NS = 0.4  # per element, when the innermost axis steps over gaps (stride 2)
# ... plus this, per element of one that cannot be chunked (its batch is summed after the
# matmul), written into one fresh buffer: ResNet's 128-channel weight gradient took 0.95 of
# the time in chunks that it took with its 57.8 MB of windows batched by image
FRESH_WINDOW_COPY_NS = 0.1
RELAYOUT_NS = 0.6  # per element, copying a tensor into channels-last order (with its padding)
# Threaded packing copies (`pack`, with Numba on the CPU): the copies around GEMMs done by
# parallel loops instead of NumPy's. Measured here (float32, 2 cores): an im2col copy of
# 7.2 MB (strided 3x3 s2, C64@56, a chunk of 4 images) takes 4.4 ms in NumPy (zero padding
# included) and 2.7 ms threaded, with bounds checks instead of the padded copy; LeNet-1's
# 3.7 MB copy 0.34 against 0.35 ms, so small copies stay NumPy's, and so do copies whose
# source runs are long (from a channels-last copy, runs of KW*C: LeNet-2's 6.5 MB copy in
# runs of 80 took 0.53 ms in NumPy, 0.88 ms threaded). col2im pays from small
# sizes on, since NumPy adds one strided slice per window offset in rows as short as the
# image is wide: the strided layer's dx 12.8 ms against 2.0 ms, LeNet-2's 1.3 against
# 0.73 ms (and no batch-last buffer or transposed copy back). The choice between adding
# back and the gather form stays with NumPy's scatter cost: a threaded scatter of a large
# contribution read across its storage order (ResNet's 3x3 input gradient) lost to the
# gather form, 94 against 56 ms.
PACK_MIN_BYTES = 4 << 20
PACK_SHORT_RUN = 64  # elements: an im2col copy in shorter (or gapped) runs is threaded
SCATTER_MIN_BYTES = 256 << 10
THREADED_COPY_NS = 0.25  # per element of a threaded im2col copy (bounds checks included),
THREADED_COPY_LOOP_NS = 4.6  # plus, per pass of its innermost loop (the copy's last axis):
# LeNet-1's copy in rows of 24 took 0.28 ns per element, LeNet-2's in rows of 16 0.54 ns
SCATTER_ADD_NS = 0.5  # per element added back through a window (col2im), read-modify-write,
SCATTER_RUN_NS = 20.0  # plus, per run of the adds' innermost axis (LeNet-2's rows: 8 wide)
# ... plus this, per element, when the contribution's innermost axis is not the target's
# last position index (w of dx[n,c,2*h+u-1,2*w+v-1]): the loop, in the contribution's
# storage order, then adds into a different plane at each step. The strided layer's dx
# (7.2M elements) took 7.9 ms from [n,h,w,c,u,v], 4.4 ms from [n,c,u,v,h,w].
SCATTER_ACROSS_NS = 0.5
# An accumulation whose adds would run shorter than this puts a whole-read target index
# innermost (dx[n,c,h+u,w+v]: n), so that each add runs over (w, n). Measured: adds along
# rows of 8 cost 2.6 ns per element, rows of 24 0.65 ns, where the transpose of dy that
# the batch-last GEMM needs no longer pays.
SCATTER_SHORT_RUN = 16

# How the plan names an accumulation planned as a read through windows.
GATHER_FORM = "accumulation through windows read as a convolution with the flipped kernel " \
    "(gather form)"

# FFT convolution (numpy.fft, pocketfft, single-threaded), per element of a transform times
# log2 of its length, measured on this machine for float32: real-to-complex about 0.6-1 ns,
# complex-to-real about half that; plus about 100 ns per 1-D transform (a 12x12 image's
# transform is mostly that). The product of the transforms is a batch of small complex
# GEMMs, one per frequency, which NumPy runs at about 4 ns per GEMM plus 0.1 ns per complex
# multiply-add at full GEMM efficiency (measured 4-1500 ns per GEMM, within 3x of this).
FFT_NS = 0.8
IFFT_NS = 0.4
FFT_LINE_NS = 100.0
FREQUENCY_GEMM_NS = 4.0
COMPLEX_MULTIPLY_ADD_NS = 0.1
COMPLEX_FLOP_FACTOR = 4  # real FLOPs per complex multiply-add, over a real one's
# FFT is chosen only when the model expects it this much faster than im2col + GEMM: a wrong
# FFT choice is the costlier mistake (the model's transforms err by up to 1.5x).
FFT_MARGIN = 1.25

# Shifted GEMMs: each GEMM is a Python-level call into BLAS through ctypes (about 10 us with
# its views); the padded copy of the signal and the crop of the wide result move each
# element once, at about the speed of a strided NumPy copy.
SHIFTED_GEMM_CALL_NS = 10_000.0
SHIFTED_COPY_NS = 0.3
# "Offsets kept" GEMMs (a weight gradient: [64x3248]@[3248x64] per image and offset, the
# long side contracted) ran at about half of OpenBLAS's usual speed: 3.8 GFLOP in 42 ms for
# ResNet's 64-channel layer, where im2col + one GEMM took 36 ms.
SHIFTED_KEPT_EFFICIENCY = 0.5
# Shifted GEMMs are chosen only when the model expects them this much faster than im2col:
# where it expected a tie (ResNet's 128-channel layer at 28x28, 28.9 against 29.2 ms
# estimated), they measured a tie too (forward 31.1 against 29.0 ms, input gradient 29.5
# against 29.2), while the 64-channel layer at 56x56 (29.0 against 33.9 estimated) gained
# 20% (28.4 against 35.5 ms).
SHIFTED_MARGIN = 1.1

# im2col copies larger than this run in chunks of the first batch axis into a reused buffer.
IM2COL_CHUNK_BYTES = 8 << 20

# An intermediate of a contraction with at most this many axes is laid out in whichever
# order costs least together with the step that reads it (every order costed, both steps:
# 12 more plan_pair calls per step at 3 axes, about 1 ms; 48 at 4).
# A Tucker product's middle step leaves t[j,i,c] rather than t[i,j,c]: one GEMM after a
# copy instead of 96 small ones on one core, and the last step reads it as [c, j*i] with
# no copy (1.34 -> 1.13 ms).
LAID_OUT_AXES = 3


@dataclass
class ViewNode:
    """A read `x[maps]` as an array view: the tensor itself, a transpose, or a strided window."""

    read: Read
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    kind: str  # "scalar" | "whole" | "strided"
    pad: tuple[tuple[int, int], ...] | None = None  # per dimension, when a boundary mode applies
    # A window copied from a channels-last copy of the tensor: its dimensions from the
    # outermost in memory to the innermost (None: the tensor's own order).
    memory_order: tuple[int, ...] | None = None


@dataclass
class ConstNode:
    value: Union[int, float]
    axes: tuple[str, ...] = ()
    shape: tuple[int, ...] = ()


@dataclass
class IndexNode:
    index: str
    start: int
    axes: tuple[str, ...]
    shape: tuple[int, ...]


@dataclass
class ElementwiseNode:
    op: str
    args: list[Node]
    axes: tuple[str, ...]
    shape: tuple[int, ...]


@dataclass
class PairStep:
    """One pairwise contraction: operands (left, right) -> result, as a (batched) GEMM.

    The matmul computes [G..., L, K] @ [G..., K, R] -> [G..., L, R]: G are batch axes
    (shared, or kept from one side and broadcast), L and R the kept axes of each side,
    K the contracted axes. `kind` is "gemm" or, with nothing to contract, "multiply".
    """

    left: int  # positions in the working operand list (opt_einsum's path convention)
    right: int
    left_axes: tuple[str, ...]
    right_axes: tuple[str, ...]
    result_axes: tuple[str, ...]
    kind: str
    batch: tuple[str, ...] = ()
    kept_left: tuple[str, ...] = ()
    contracted: tuple[str, ...] = ()
    kept_right: tuple[str, ...] = ()
    presum_left: tuple[str, ...] = ()
    presum_right: tuple[str, ...] = ()
    swap: bool = False  # True when the right operand goes first in the matmul
    final_transpose: tuple[int, ...] | None = None
    flops: int = 0
    copy_bytes: int = 0
    result_bytes: int = 0
    estimated_ns: float = 0.0
    chunk: int | None = None  # im2col in chunks of this many entries of chunk_axis
    chunk_axis: str | None = None  # batch[0] or kept_left[0] (chunks of the result), or
    #                                 contracted[0] (chunks summed)
    windows: tuple[bool, bool] = (False, False)  # (matmul left, right) is a strided window
    # Contracted axes run as the leading batch axes of the matmul and summed after it (a
    # weight gradient GEMMs each image's dy with its window instead of copying dy whole).
    summed: tuple[str, ...] = ()
    short_runs: bool = False  # a window's im2col copy moves runs under PACK_SHORT_RUN or gaps
    # (matmul left, right): the name under which the kernel returns that operand's im2col
    # copy (keep_windows), or None
    kept: tuple[str | None, str | None] = (None, None)
    # ... or the name of the buffer that holds the copy for a later statement of the same
    # kernel, which reads it instead of the window (share_windows)
    shared: tuple[str | None, str | None] = (None, None)

    @property
    def natural_axes(self) -> tuple[str, ...]:
        """The axes of the matmul's result as stored (after the summed axes are summed)."""
        return tuple(x for x in self.batch if x not in self.summed) + self.kept_left \
            + self.kept_right

    def chunked(self, sizes: dict[str, int]) -> bool:
        """Whether the step runs in chunks of its chunk axis (a chunk as large as the axis
        is one run): what the renderer, the plan's text and blas_calls go by."""
        return self.chunk is not None and self.chunk < sizes[self.chunk_axis]


@dataclass(frozen=True)
class FFTDim:
    """One dimension of a windowed read done by FFT: `signal[..., output + sign*window + c]`
    summed over `window` against the kernel operand's dimension `kernel_dim`."""

    dim: int  # of the signal (the windowed read)
    output: str  # the free index, coefficient 1
    window: str  # the summed index shared with the kernel operand, coefficient `sign`
    sign: int  # +1: a correlation (the kernel is flipped first), -1: a convolution
    kernel_dim: int
    length: int  # of the transform: at least the (padded) signal's size, 5-smooth
    crop: int  # where output position 0 lies in the circular result
    frequency: str  # the axis name of this dimension's frequencies in the product


@dataclass
class FFTPlan:
    """A windowed contraction of two operands as a product in the frequency domain: both
    are transformed over the window dimensions (the last one real-to-complex, halved),
    multiplied and summed per frequency (`steps` of the ContractNode, over the frequency
    axes), transformed back and cropped to the output range."""

    signal: int  # operand positions
    kernel: int
    dims: tuple[FFTDim, ...]
    sizes: dict[str, int]  # the frequency axes' sizes
    signal_axes: tuple[str, ...]  # the transformed operands' axes, in their memory order
    kernel_axes: tuple[str, ...]
    product_axes: tuple[str, ...]  # the output's axes, positions replaced by frequencies


@dataclass
class ShiftedPlan:
    """A windowed contraction (stride 1) as one GEMM per window offset, with no im2col copy.

    The signal is copied once into a zero-padded buffer, its windowed dimensions innermost
    and flattened: a position (h, w) is h*Wp + w, with Wp the padded width. A window offset
    (u, v) then only shifts where a GEMM operand starts (by u*Wp + v), so each offset is a
    GEMM on a view of the same buffer, rows one image plane apart. Positions past a row's
    last output (w >= W) are computed too and cut off ("wide" rows).

    `mode` "offsets summed" (a convolution, its input gradient in gather form): for each
    entry of `looped` and each offset, out[rows, positions] += kernel[offset][rows, channels]
    @ signal shifted[channels, positions]; BLAS adds into the output (beta=1).
    "offsets kept" (a weight gradient): out[offset][rows, channels] (+)= kernel[rows,
    positions] @ signal shifted[channels, positions]^T, added over `accumulated` entries; the
    kernel operand (dy) is first copied into wide rows whose extra columns are zero.
    """

    signal: int  # operand positions
    kernel: int
    mode: str  # "offsets summed" | "offsets kept"
    dims: tuple[int, ...]  # the signal's windowed dimensions
    offsets: tuple[str, ...]  # per windowed dimension: the index looped over (u, v)
    positions: tuple[str, ...]  # per windowed dimension: the index flattened (h, w)
    shifts: tuple[tuple[int, int], ...]  # per windowed dimension: padded position of the
    #                                      signal read at position 0 and offset 0, and the
    #                                      offset's coefficient (+1, or -1 for a flipped read)
    padded: tuple[int, ...]  # the signal's padded sizes of the windowed dimensions
    looped: tuple[str, ...]  # looped in Python around the GEMMs (images, groups)
    accumulated: tuple[str, ...]  # looped and summed ("offsets kept": the batch)
    rows: tuple[str, ...]  # the GEMM's rows: the kernel operand's own kept axes
    channels: tuple[str, ...]  # the signal's GEMM axes: contracted, or its kept ones
    tail: int  # elements read past the padded buffer's end by the last plane's shifts
    gemms: int  # how many GEMM calls
    gemm_shape: tuple[int, int, int]  # (m, n, k) of each


@dataclass
class ContractNode:
    """A sum over a product of factors, contracted pairwise in opt_einsum's order."""

    operands: list[Node]
    scale: float
    reduced: tuple[str, ...]
    steps: list[PairStep]
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    naive_flops: int
    flops: int
    mean_count: int = 1
    estimated_ns: float = 0.0  # the steps and any channels-last copies
    fft: FFTPlan | None = None  # computed by FFT; `steps` then multiply the transforms
    shifted: ShiftedPlan | None = None  # computed by shifted GEMMs; `steps` are then empty


@dataclass
class ReduceNode:
    op: str
    body: Node
    reduced: tuple[str, ...]
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    strategy: str  # "window-loop" | "ones-gemv" | "axis"
    count: int


def ones_gemv_split(view: ViewNode, reduced: tuple[str, ...]) -> tuple[int, int, int] | None:
    """For a sum over `reduced` of a tensor read whole: (leading, kept, trailing) element
    counts of its dimensions in memory order, when the kept ones are adjacent: the sum is
    then x.reshape(leading * kept, trailing) @ ones, and ones @ that as [leading, kept]."""
    if view.kind != "whole" or view.pad is not None:
        return None
    dims = [m.terms[0][0] for m in view.read.maps]
    sizes = dict(zip(view.axes, view.shape))
    kept = [i for i, d in enumerate(dims) if d not in reduced]
    if kept and kept != list(range(kept[0], kept[-1] + 1)):
        return None
    first, stop = (kept[0], kept[-1] + 1) if kept else (0, 0)
    return tuple(math.prod(sizes[d] for d in part)
                 for part in (dims[:first], dims[first:stop], dims[stop:]))


Node = Union[ViewNode, ConstNode, IndexNode, ElementwiseNode, ContractNode, ReduceNode]


@dataclass
class StatementPlan:
    number: int
    statement: Statement
    order: list[str]
    root: Node
    strategy: str
    naive_flops: int
    flops: int
    largest_intermediate: int  # elements
    peak_temporary_bytes: int
    notes: list[str] = field(default_factory=list)
    # The memory order of a '+=' target created by this statement, outermost dimension
    # first, when it is not the target's own (a batch-last buffer for short scatter runs).
    target_order: tuple[int, ...] | None = None
    # An elementwise '+=' through windows evaluates its contribution one window offset at
    # a time (these indices, looped): long inner runs instead of a broadcast over offsets.
    offset_loop: tuple[str, ...] = ()
    # ... and the windows tile the (fresh) target exactly, each element written once: each
    # offset assigns its slice, with no zero fill and no read-modify-write.
    tiles_target: bool = False
    # On the GPU: the statement as one custom kernel (tensorc.loopnest), or None for the
    # array-level code above.
    loop_nest: Any = None
    # On the CPU with Numba: the loop kernel (of the next statement) that computes this
    # statement's value inside its own loops, where it reads it; this one then runs no code
    # and its target is never stored (tensorc.loopnest's LoopNest.producer).
    computed_in: str | None = None
    # On the CPU with Numba: the copies around the GEMMs done by threaded loops instead of
    # NumPy's ("im2col": windows into GEMM order; "col2im": a '+=' through windows).
    packing: tuple[str, ...] = ()
    # The cost model's estimate of its contractions (and adds back through windows), in ns.
    estimated_ns: float = 0.0


@dataclass(frozen=True)
class PlanSettings:
    """How plan_program plans each statement: its arguments, resolved."""

    itemsize: int
    budget: int  # bytes of temporaries a statement may use
    chunk_bytes: int  # the size im2col copies are chunked to
    fft: str
    pack: str
    blas: bool  # sums may be GEMVs with ones
    shift: str
    in_one_process: bool


@dataclass(frozen=True)
class KeptWindow:
    """A window of an input copied into GEMM order (im2col) that a kernel also returns:
    `name[axes] = read` over `shape`. A kernel given it (the adjoint's, whose weight
    gradient reads the same window) reads the copy instead of copying the window again."""

    name: str
    read: Read
    axes: tuple[str, ...]
    shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.name}[{','.join(self.axes)}] = {self.read}"


@dataclass
class ProgramPlan:
    program: CheckedProgram
    dtype: str
    statements: list[StatementPlan]
    settings: PlanSettings  # what it was planned with, to plan again
    appendix: Any = None  # printed after the statements (the Dask backend's chunking)
    kept_windows: tuple[KeptWindow, ...] = ()  # also returned (keep_windows)

    @property
    def itemsize(self) -> int:
        return self.settings.itemsize

    @property
    def fft(self) -> str:  # the FFT mode it was planned with
        return self.settings.fft

    @property
    def flops(self) -> int:
        return sum(s.flops for s in self.statements)

    @property
    def peak_temporary_bytes(self) -> int:
        return max((s.peak_temporary_bytes for s in self.statements), default=0)

    def __str__(self) -> str:
        return format_plan(self)


# ---- planning ----------------------------------------------------------------------------

class _StatementPlanner:
    def __init__(self, program: CheckedProgram, statement: Statement, settings: PlanSettings,
                 fresh_target: bool = False) -> None:
        self.program = program
        self.blas = settings.blas  # sums may be GEMVs with ones: a float dtype, on the CPU
        self.pack = settings.pack  # TENSORC_PACK's mode where threaded copies are available
        self.fft_mode = settings.fft  # "auto" (by cost), "off" or "always" (where it applies)
        self.shift_mode = settings.shift  # the same for shifted GEMMs ("off" without BLAS)
        self.chunk_bytes = settings.chunk_bytes
        self.statement = statement
        self.sizes = dict(statement.ranges)  # plus frequency axes of FFT plans
        self.counts: dict[tuple[str, ...], int] = {}  # count's products, by axes
        self.order = statement.index_order()
        self.position = {name: i for i, name in enumerate(self.order)}
        self.itemsize = settings.itemsize
        self.temporaries: list[int] = []  # bytes of each array the statement allocates
        self.largest = 0
        self.strategies: list[str] = []
        # the contraction being planned: its strided windows and their steps, by axes
        self.windows: dict[tuple[str, ...], ViewNode] = {}
        self.window_strides: dict[tuple[str, ...], dict[str, int]] = {}
        # A '+=' into a windowed target adds its contribution one window offset at a time,
        # slicing along the last dimension's position index: that axis should be innermost
        # (so should it for a threaded col2im, whose loop then stays within one plane).
        last = statement.target_maps[-1] if statement.accumulate and statement.target_maps \
            else None
        positions = [n for n, c in last.terms if c > 0] if last is not None else []
        self.scatter_inner = {max(positions, key=self.sizes.__getitem__)} if positions else set()
        self.threaded_scatter = self.scatters_threaded()
        self.target_order = None if self.threaded_scatter else \
            self.batch_last_order(fresh_target)
        if self.target_order is not None:
            dim = self.target_order[-1]
            self.scatter_inner = {statement.target_maps[dim].terms[0][0]}

    def batch_last_order(self, fresh_target: bool) -> tuple[int, ...] | None:
        """A memory order for a fresh '+=' target whose adds through windows would run short
        (rows of 8): its largest whole-read dimension moved innermost, or None."""
        statement = self.statement
        maps = statement.target_maps
        value = statement.value
        contraction = isinstance(value, Reduce) and value.op == "sum" and len(
            [f for f in _factors(value.body)[1] if not isinstance(f, Constant)]) >= 2
        # a GEMM can hand its result over in that order; an elementwise value cannot
        if not (fresh_target and contraction and statement.accumulate and maps
                and not maps[-1].is_plain and statement.target_boundary is None):
            return None
        sliced = scatter_slices(maps, self.sizes)
        if sliced[-1] is None or self.sizes[sliced[-1]] >= SCATTER_SHORT_RUN:
            return None
        plain = [d for d, m in enumerate(maps) if m.is_plain and m.terms[0][1] == 1
                 and sliced[d] == m.terms[0][0]]
        if not plain:
            return None
        inner = max(plain, key=lambda d: self.sizes[maps[d].terms[0][0]])
        if self.sizes[maps[inner].terms[0][0]] < 4:
            return None
        return tuple(d for d in range(len(maps)) if d != inner) + (inner,)

    def scatter_elements(self) -> int:
        """How many contributions a '+=' through windows adds back (0 for plain maps)."""
        maps = self.statement.target_maps
        if not self.statement.accumulate or all(m.is_plain for m in maps):
            return 0
        return math.prod(self.sizes[n] for n in {n for m in maps for n in m.indices()})

    def scatters_threaded(self) -> bool:
        """Whether a '+=' through windows adds back by a threaded loop (col2im packing)."""
        elements = self.scatter_elements()
        least = 0 if self.pack == "always" else SCATTER_MIN_BYTES
        return self.pack != "off" and elements > 0 and elements * self.itemsize >= least

    def copies_threaded(self, root: Node) -> bool:
        """Whether the statement's im2col copies run as threaded loops (im2col packing)."""
        steps = [s for c in contractions_in(root) if c.fft is None for s in c.steps
                 if any(s.windows)]
        if self.pack == "always":
            return bool(steps)
        return self.pack == "auto" and any(s.short_runs for s in steps) \
            and sum(s.copy_bytes for s in steps) >= PACK_MIN_BYTES

    def scatter_ns(self) -> float:
        """Estimated time of adding the contributions back through the windows."""
        statement = self.statement
        maps = statement.target_maps
        elements = self.scatter_elements()
        if not elements:
            return 0.0
        sliced = scatter_slices(maps, self.sizes)
        order = self.target_order or tuple(range(len(maps)))
        run = 1
        for dim in reversed(order):  # the innermost dimensions, while the slice is contiguous
            step = dict(maps[dim].terms).get(sliced[dim], 0)
            if step == 1:
                run *= self.sizes[sliced[dim]]
            if not maps[dim].is_plain or step != 1:
                break
        return elements * (SCATTER_ADD_NS + SCATTER_RUN_NS / run)

    def canonical(self, names) -> tuple[str, ...]:
        return tuple(sorted(set(names), key=self.position.__getitem__))

    def shape_of(self, axes: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(self.sizes[a] for a in axes)

    def count(self, axes: tuple[str, ...]) -> int:
        """The product of the axes' sizes (remembered: layout_cost asks often)."""
        counted = self.counts.get(axes)
        if counted is None:
            counted = self.counts[axes] = math.prod(self.sizes[x] for x in axes)
        return counted

    def allocate(self, elements: int) -> None:
        self.temporaries.append(elements * self.itemsize)
        self.largest = max(self.largest, elements)

    def plan(self, expr: Expr) -> Node:
        if isinstance(expr, Read):
            return self.plan_read(expr)
        if isinstance(expr, Constant):
            return ConstNode(expr.value)
        if isinstance(expr, IndexValue):
            return IndexNode(expr.index, expr.start, (expr.index,), (self.sizes[expr.index],))
        if isinstance(expr, Apply):
            args = [self.plan(arg) for arg in expr.args]
            axes = self.canonical(a for arg in args for a in arg.axes)
            return ElementwiseNode(expr.op, args, axes, self.shape_of(axes))
        if isinstance(expr, Reduce):
            return self.plan_reduce(expr)
        raise AssertionError(f"unknown IR node {expr!r}")

    def plan_read(self, read: Read) -> ViewNode:
        shape = self.program.tensors[read.tensor].shape
        axes = self.canonical(read.indices())
        if not read.maps:
            return ViewNode(read, (), (), "scalar")
        pad = None
        if read.boundary is not None:
            amounts = boundary_pad(read.maps, shape, self.sizes)
            if any(a != (0, 0) for a in amounts):
                pad = tuple(amounts)
                self.allocate(math.prod(s + a + b for s, (a, b) in zip(shape, amounts)))
        names = [m.terms[0][0] for m in read.maps if m.is_plain]
        whole = (pad is None and len(names) == len(read.maps) == len(set(names))
                 and all(self.sizes[n] == s for n, s in zip(names, shape)))
        return ViewNode(read, axes, self.shape_of(axes), "whole" if whole else "strided", pad)

    def plan_reduce(self, expr: Reduce) -> Node:
        count = math.prod(self.sizes[n] for n in expr.indices)
        if isinstance(expr.body, Constant):  # sum[j](1) counts j's values
            return ConstNode(expr.body.value * count if expr.op == "sum" else expr.body.value)
        if expr.op in ("sum", "mean"):
            scale, factors = _factors(expr.body)
            if len([f for f in factors if not isinstance(f, Constant)]) >= 2:
                return self.plan_contraction(expr, scale, factors, count)
        body = self.plan(expr.body)
        axes = tuple(a for a in body.axes if a not in expr.indices)
        # A small window reduced over its offsets (pooling, the tie count of a max-pool
        # gradient) is a running update over one slice per offset: reducing tiny trailing
        # axes, or broadcasting against them, runs NumPy's inner loop a few elements at a time.
        windowed = elementwise_only(body) and set(expr.indices) <= set(body.axes) and any(
            set(m.indices()) & set(expr.indices) and set(m.indices()) - set(expr.indices)
            for view in reads_in(body) if view.kind == "strided" for m in view.read.maps)
        strategy = "window-loop" if windowed and count <= WINDOW_LOOP_LIMIT else "axis"
        if strategy == "axis" and expr.op in ("sum", "mean") and self.blas \
                and isinstance(body, ViewNode) and set(expr.indices) <= set(body.axes) \
                and math.prod(body.shape) >= ONES_GEMV_MIN:
            split = ones_gemv_split(body, expr.indices)
            if split is not None and split[0] * split[2] > 1:
                strategy = "ones-gemv"
        if isinstance(body, ElementwiseNode):  # computed whole before it is reduced, or
            slices = count if strategy == "window-loop" else 1  # one window offset at a time
            self.allocate(math.prod(body.shape) // slices)
        self.allocate(math.prod(self.shape_of(axes)))
        how = {"window-loop": "running update over strided window slices",
               "ones-gemv": "products with a vector of ones (BLAS GEMV)",
               "axis": "axis reduction"}[strategy]
        self.strategies.append(f"{expr.op} over {','.join(expr.indices)}: {how}")
        return ReduceNode(expr.op, body, expr.indices, axes, self.shape_of(axes), strategy, count)

    def plan_contraction(self, expr: Reduce, scale: float, factors: list[Expr],
                         count: int) -> ContractNode:
        for factor in factors:
            if isinstance(factor, Constant):
                scale *= factor.value
        operands = [self.plan(f) for f in factors if not isinstance(f, Constant)]
        for operand in operands:
            # A GEMM operand is rearranged anyway: keep whole tensors in their own order.
            if isinstance(operand, ViewNode) and operand.kind == "whole":
                operand.axes = tuple(m.terms[0][0] for m in operand.read.maps)
                operand.shape = self.shape_of(operand.axes)
        all_axes = self.canonical(a for o in operands for a in o.axes)
        out_axes = tuple(a for a in all_axes if a not in expr.indices)
        symbol = {name: opt_einsum.get_symbol(i) for i, name in enumerate(self.order)}
        terms = ["".join(symbol[a] for a in o.axes) for o in operands]
        equation = ",".join(terms) + "->" + "".join(symbol[a] for a in out_axes)
        shapes = [o.shape for o in operands]
        path, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="auto")
        may_be_view = expr is self.statement.value
        before = (list(self.temporaries), self.largest)
        steps = self.plan_steps(operands, path, out_axes, may_be_view)
        # A window whose channel dimension is summed may be copied from a channels-last copy
        # of its tensor: one pass over the tensor buys im2col runs of channels x kernel width
        # instead of runs of the output width (LeNet-2's rows are 8 wide). Chosen by cost.
        relaid = [(o, order) for o in operands
                  if (order := self.channels_last_order(o, expr.indices)) is not None]
        if relaid:
            native = (steps, list(self.temporaries), self.largest)
            self.temporaries[:], self.largest = before
            for o, order in relaid:
                o.memory_order = order
            relaid_steps = self.plan_steps(operands, path, out_axes, may_be_view)
            relayout_ns = sum(RELAYOUT_NS * math.prod(self.padded_shape(o)) for o, _ in relaid)
            if relayout_ns + sum(s.estimated_ns for s in relaid_steps) < \
                    sum(s.estimated_ns for s in steps):
                steps = relaid_steps
                for o, _ in relaid:
                    if o.pad is None:  # the channels-last copy is a new temporary
                        self.allocate(math.prod(self.padded_shape(o)))
            else:
                for o, _ in relaid:
                    o.memory_order = None
                steps, self.temporaries[:], self.largest = native
        naive = _naive_flops(operands, self.sizes)
        mean_count = count if expr.op == "mean" else 1
        estimated = sum(s.estimated_ns for s in steps) + sum(
            RELAYOUT_NS * math.prod(self.padded_shape(o)) for o in operands
            if isinstance(o, ViewNode) and o.memory_order is not None)
        # A stride-1 window may skip the im2col copy: one GEMM per window offset on shifted
        # views of one padded copy. Chosen by cost.
        shifted = self.shifted_candidate(operands, expr.indices, out_axes) \
            if self.shift_mode != "off" else None
        if shifted is not None and not (self.shift_mode == "always"
                                        or shifted.estimated_ns * SHIFTED_MARGIN < estimated):
            shifted = None
        if shifted is not None:
            estimated = shifted.estimated_ns
        # A large window may be cheaper as a product of Fourier transforms. Chosen by cost.
        fft = self.fft_candidate(operands, expr.indices, out_axes) \
            if self.fft_mode != "off" and not (shifted and self.shift_mode == "always") \
            else None
        if fft is not None and (self.fft_mode == "always"
                                or fft.estimated_ns * FFT_MARGIN < estimated):
            self.instead_of_steps(operands, before, fft.temporaries, fft.description)
            return ContractNode(operands, scale, expr.indices, [fft.step], out_axes,
                                self.shape_of(out_axes), naive, fft.flops, mean_count,
                                fft.estimated_ns, fft.plan)
        if shifted is not None:
            self.instead_of_steps(operands, before, shifted.temporaries, shifted.description)
            return ContractNode(operands, scale, expr.indices, [], out_axes,
                                self.shape_of(out_axes), naive, shifted.flops, mean_count,
                                shifted.estimated_ns, shifted=shifted.plan)
        flops = sum(s.flops for s in steps)
        windowed = [o for o in operands if isinstance(o, ViewNode) and o.kind == "strided"
                    and any(not m.is_plain for m in o.read.maps)]
        if windowed:
            names = ", ".join(str(o.read) for o in windowed)
            relaid_names = ", ".join(o.read.tensor for o in windowed if o.memory_order)
            self.strategies.append(f"windowed contraction: strided window view of {names}, "
                                   "copied in GEMM order (im2col) + GEMM"
                                   + (f"; {relaid_names} first copied channels-last"
                                      if relaid_names else ""))
        elif len(operands) > 2:
            self.strategies.append(f"{len(operands)}-operand contraction in opt_einsum order, "
                                   "each step a BLAS GEMM")
        else:
            self.strategies.append("contraction as a BLAS GEMM"
                                   + (" (batched)" if steps[0].batch else ""))
        return ContractNode(operands, scale, expr.indices, steps, out_axes,
                            self.shape_of(out_axes), naive, flops, mean_count, estimated)

    def fft_candidate(self, operands: list[Node], reduced: tuple[str, ...],
                      out_axes: tuple[str, ...]) -> _FFTCandidate | None:
        """The contraction as an FFT convolution, or None when it is not one: two operands,
        one a window read whose windowed dimensions are `output + window + c` or
        `output - window + c` (stride and dilation 1; a boundary mode pads first), the other
        reading each window index plainly. Convolutions, their input gradients in gather
        form (dy read through the flipped window) and their weight gradients (x correlated
        with dy: the window index is then the output position) all have this shape."""
        if self.itemsize not in (4, 8) or len(operands) != 2:
            return None  # numpy.fft has no float16 transform
        pair = self.window_pair(operands, reduced, out_axes)
        if pair is None:
            return None
        signal, kernel, dims = pair
        x, k = operands[signal], operands[kernel]
        frequency = {d.output: d.frequency for d in dims}
        sizes = {d.frequency: d.length for d in dims}
        last = dims[-1]
        sizes[last.frequency] = last.length // 2 + 1  # real-to-complex: half the spectrum
        by_window = {d.window: d.frequency for d in dims}
        by_dim = {d.dim: d.frequency for d in dims}
        signal_axes = tuple(by_dim[i] if i in by_dim else m.terms[0][0]
                            for i, m in enumerate(x.read.maps))
        kernel_axes = tuple(by_window.get(m.terms[0][0], m.terms[0][0]) for m in k.read.maps)
        product_axes = tuple(frequency.get(a, a) for a in out_axes)
        saved = (dict(self.sizes), dict(self.position), self.windows, self.window_strides,
                 list(self.temporaries), self.largest)
        self.sizes.update(sizes)
        self.counts.clear()  # (frequency axes may be sized anew)
        for d in dims:
            self.position[d.frequency] = self.position[d.output] + 0.5
        self.windows, self.window_strides = {}, {}
        step = self.plan_pair(0, 1, signal_axes, kernel_axes, product_axes,
                              "temporary", "temporary")
        size = lambda axes: math.prod(self.sizes[a] for a in axes)  # noqa: E731
        spectrum = size(sizes)
        if step.kind == "gemm":
            m, n, depth = size(step.kept_left), size(step.kept_right), size(step.contracted)
            product_ns = size(step.batch) * (FREQUENCY_GEMM_NS + COMPLEX_MULTIPLY_ADD_NS * m * n
                                             * depth / _gemm_efficiency(m, n, depth))
        else:  # an elementwise complex product, memory-bound
            product_ns = size(product_axes) * TRANSPOSED_COPY_NS
        (self.sizes, self.position, self.windows, self.window_strides, self.temporaries,
         self.largest) = saved
        self.sizes.update(sizes)  # the product's axes, for the plan and the renderer
        self.counts.clear()
        transform = math.prod(d.length for d in dims)
        log = math.log2(max(transform, 2))
        plain = lambda axes: math.prod(self.sizes[a] for a in axes if a not in sizes)  # noqa
        signal_elements = plain(signal_axes) * transform
        kernel_elements = plain(kernel_axes) * transform
        out_elements = plain(product_axes) * transform
        # 1-D transforms per element: one per line along each dimension (the last halved)
        lines = sum(1 / d.length for d in dims[:-1]) * (last.length // 2 + 1) / last.length \
            + 1 / last.length
        estimated = ((FFT_NS * log + FFT_LINE_NS * lines) * (signal_elements + kernel_elements)
                     + (IFFT_NS * log + FFT_LINE_NS * lines) * out_elements + product_ns)
        flops = int(2.5 * log * (signal_elements + kernel_elements + out_elements)
                    + COMPLEX_FLOP_FACTOR * step.flops)
        # complex spectra count 2 elements each; the inverse transform's result is real
        temporaries = [2 * plain(signal_axes) * spectrum, 2 * plain(kernel_axes) * spectrum,
                       2 * plain(product_axes) * spectrum, out_elements]
        lengths = "x".join(str(d.length) for d in dims)
        how = ("a batched complex GEMM" if step.kind == "gemm" and step.batch
               else "a complex GEMM" if step.kind == "gemm" else "an elementwise product")
        summed = [a for a in reduced if a not in by_window]
        per_frequency = f"summed over {','.join(summed)} " if summed else ""
        description = (f"windowed contraction by FFT: {x.read} and {k.read.tensor} "
                       f"transformed over {','.join(d.output for d in dims)} (lengths {lengths}), "
                       f"multiplied {per_frequency}per frequency as {how}, transformed back "
                       "and cropped")
        plan = FFTPlan(signal, kernel, tuple(dims), sizes, signal_axes, kernel_axes,
                       product_axes)
        return _FFTCandidate(plan, step, estimated, flops, temporaries, description)

    def instead_of_steps(self, operands: list[Node], before: tuple[list[int], int],
                         temporaries: list[int], description: str) -> None:
        """Adopt another lowering (FFT, shifted GEMMs) over the planned GEMM steps: their
        channels-last copies and temporaries are dropped (`before` is what the statement
        had allocated until then), the lowering's own are counted and its strategy stated."""
        for operand in operands:
            if isinstance(operand, ViewNode):
                operand.memory_order = None
        self.temporaries[:], self.largest = before
        for elements in temporaries:
            self.allocate(elements)
        self.strategies.append(description)

    def shifted_candidate(self, operands: list[Node], reduced: tuple[str, ...],
                          out_axes: tuple[str, ...]) -> _Candidate | None:
        """The contraction as shifted GEMMs (see ShiftedPlan), or None when it is not a
        stride-1 windowed contraction of two operands with GEMM-shaped plain axes."""
        if len(operands) != 2:
            return None
        pair = self.window_pair(operands, reduced, out_axes)
        if pair is None:
            return None
        signal, kernel, dims = pair
        x, k = operands[signal], operands[kernel]
        if x.read.boundary not in (None, "zero"):
            return None  # other modes' margins are not zeros: a padded copy per mode
        size = self.sizes.__getitem__
        # Loop over the shorter index of each windowed dimension, flatten the longer one.
        if all(size(d.window) <= size(d.output) for d in dims):
            mode, offsets, positions = "offsets summed", [d.window for d in dims], \
                [d.output for d in dims]
        elif all(size(d.output) < size(d.window) and d.sign > 0 for d in dims):
            mode, offsets, positions = "offsets kept", [d.output for d in dims], \
                [d.window for d in dims]
        else:
            return None
        out, windowed = set(out_axes), {d.dim for d in dims}
        x_axes = [m.terms[0][0] for i, m in enumerate(x.read.maps) if i not in windowed]
        k_axes = [m.terms[0][0] for m in k.read.maps
                  if m.terms[0][0] not in offsets + positions]
        if any(not m.is_plain for i, m in enumerate(x.read.maps) if i not in windowed) \
                or len(set(x_axes)) != len(x_axes) or len(set(k_axes)) != len(k_axes):
            return None
        shared = [a for a in x_axes if a in k_axes and a in out]  # groups: looped
        rows = [a for a in k_axes if a in out and a not in x_axes]
        if mode == "offsets summed":
            channels = [a for a in x_axes if a in k_axes and a not in out]
            looped = shared + [a for a in x_axes if a in out and a not in k_axes]
            accumulated: list[str] = []
        else:
            channels = [a for a in x_axes if a in out and a not in k_axes]
            accumulated = [a for a in x_axes if a in k_axes and a not in out]
            looped = shared + accumulated
        shapes = [(o.read.maps, self.program.tensors[o.read.tensor].shape) for o in (x, k)]
        if any(m.is_plain and n != size(m.terms[0][0]) for maps, shape in shapes
               for m, n in zip(maps, shape)):
            return None  # a plain read of part of a dimension
        if set(x_axes) != set(looped + channels) \
                or set(k_axes) != set(shared + rows + (channels if mode == "offsets summed"
                                                      else accumulated)):
            return None  # an axis summed within one operand: not a GEMM per offset
        pad = x.pad or tuple((0, 0) for _ in x.read.maps)
        padded = self.padded_shape(x)
        shifts, extents = [], []
        for d in dims:
            m = x.read.maps[d.dim]
            coefficient = dict(m.terms)[d.window if mode == "offsets summed" else d.output]
            start = m.offset + pad[d.dim][0]
            lowest = start + min(0, coefficient * (size(offsets[len(shifts)]) - 1))
            if lowest < 0:
                return None
            shifts.append((start, coefficient))
            extents.append(padded[d.dim])
        # position p (flat, wide rows) reads p + shift; the last plane's garbage positions
        # read up to `tail` elements past its end
        steps = [math.prod(extents[i + 1:]) for i in range(len(dims))]
        wide = size(positions[0]) * steps[0]
        plane = math.prod(extents)
        farthest = (wide - 1) + sum(
            (start + max(0, coefficient * (size(o) - 1))) * step
            for (start, coefficient), o, step in zip(shifts, offsets, steps))
        tail = max(0, farthest + 1 - plane)
        count = lambda axes: math.prod(size(a) for a in axes)  # noqa: E731
        m_, c_ = count(rows), count(channels)
        gemms = count(looped) * count(offsets)
        gemm_shape = (m_, wide, c_) if mode == "offsets summed" else (m_, c_, wide)
        flops = 2 * gemms * math.prod(gemm_shape)
        signal_elements = count(looped + channels) * plane + tail
        if mode == "offsets summed":
            wide_elements = count(looped + rows) * wide  # the result in wide rows
            copied = signal_elements + count(out_axes)  # the padded copy and the crop
        else:
            wide_elements = count(shared + accumulated + rows) * wide  # dy in wide rows
            copied = signal_elements + wide_elements
        efficiency = _gemm_efficiency(*gemm_shape) * (
            1.0 if mode == "offsets summed" else SHIFTED_KEPT_EFFICIENCY)
        estimated = (gemms * SHIFTED_GEMM_CALL_NS + SHIFTED_COPY_NS * copied
                     + flops / (GEMM_FLOPS_PER_NS * efficiency))
        plan = ShiftedPlan(signal, kernel, mode, tuple(d.dim for d in dims), tuple(offsets),
                           tuple(positions), tuple(shifts), tuple(extents), tuple(looped),
                           tuple(accumulated), tuple(rows), tuple(channels), tail, gemms,
                           gemm_shape)
        shape = "x".join(map(str, extents))
        how = ("added into the output by BLAS (beta=1)" if mode == "offsets summed"
               else "each into its own slice of the result, summed over "
                    f"{','.join(accumulated)} by BLAS (beta=1)" if accumulated
               else "each into its own slice of the result")
        description = (f"windowed contraction by shifted GEMMs: {x.read} copied once, "
                       f"{'zero-' if x.pad else ''}padded to {shape} and flattened; one GEMM "
                       f"per {','.join(offsets)} on that copy shifted, {how}; no im2col copy")
        temporaries = [signal_elements, wide_elements, count(out_axes)]
        return _Candidate(plan, estimated, flops, temporaries, description)

    def window_pair(self, operands: list[Node], reduced: tuple[str, ...],
                    out_axes: tuple[str, ...]) -> tuple[int, int, list[FFTDim]] | None:
        """(signal, kernel, dims) of two operands: which one is read through windows and
        which one holds the window (fft_dims), either way round; None when neither fits.
        FFT convolutions and shifted GEMMs both start from it."""
        for signal, kernel in ((0, 1), (1, 0)):
            dims = self.fft_dims(operands[signal], operands[kernel], reduced, out_axes)
            if dims:
                return signal, kernel, dims
        return None

    def fft_dims(self, x: Node, k: Node, reduced: tuple[str, ...],
                 out_axes: tuple[str, ...]) -> list[FFTDim]:
        """The windowed dimensions of `x` as FFT dimensions against `k`, or [] if any
        dimension of either operand does not fit the FFT's shape."""
        if not (isinstance(x, ViewNode) and x.kind == "strided" and isinstance(k, ViewNode)
                and k.kind in ("whole", "strided")) or not all(m.is_plain for m in k.read.maps):
            return []
        kernel_dims = {m.terms[0][0]: d for d, m in enumerate(k.read.maps)}
        x_indices = [n for m in x.read.maps for n in m.indices()]
        if len(kernel_dims) != len(k.read.maps) or len(x_indices) != len(set(x_indices)):
            return []  # a diagonal: not a convolution
        padded = self.padded_shape(x)
        pad = x.pad or tuple((0, 0) for _ in x.read.maps)
        dims = []
        for dim, m in enumerate(x.read.maps):
            if m.is_plain:
                continue
            outputs = [n for n, c in m.terms if c == 1 and n in out_axes and n not in kernel_dims]
            windows = [n for n, c in m.terms if abs(c) == 1 and n in reduced and n in kernel_dims]
            if len(m.terms) != 2 or len(outputs) != 1 or len(windows) != 1 \
                    or outputs[0] == windows[0]:
                return []
            output, window = outputs[0], windows[0]
            sign = dict(m.terms)[window]
            start = m.offset + pad[dim][0]  # of output 0, window 0 in the padded signal
            crop = start + (self.sizes[window] - 1 if sign > 0 else 0)
            dims.append(FFTDim(dim, output, window, sign, kernel_dims[window],
                               fft_length(padded[dim]), crop, f"~{output}"))
        return dims

    def plan_steps(self, operands: list[Node], path, out_axes: tuple[str, ...],
                   result_may_be_view: bool) -> list[PairStep]:
        """The pairwise GEMM steps of a contraction along opt_einsum's path."""
        steps: list[PairStep] = []
        working = [o.axes for o in operands]
        kinds = [o.kind if isinstance(o, ViewNode) else "temporary" for o in operands]
        self.windows = {o.axes: o for o in operands
                        if isinstance(o, ViewNode) and o.kind == "strided"}
        self.window_strides = {axes: self.strides_of(o) for axes, o in self.windows.items()}
        pairs = [_pair(positions) for positions in path]
        for number, (left, right) in enumerate(pairs):
            last = number == len(pairs) - 1
            result = self.step_result(working, (left, right), out_axes, last)
            if last:
                step = self.plan_pair(left, right, working[left], working[right], result,
                                      kinds[left], kinds[right], result_may_be_view)
            else:
                next_last = number + 2 == len(pairs)
                step = self.intermediate_step(working, kinds, (left, right), result,
                                              pairs[number + 1], out_axes, next_last,
                                              result_may_be_view and next_last)
            steps.append(step)
            for i in sorted((left, right), reverse=True):
                working.pop(i)
                kinds.pop(i)
            working.append(step.result_axes)
            kinds.append("temporary")
        return steps

    def step_result(self, working: list[tuple[str, ...]], pair: tuple[int, int],
                    out_axes: tuple[str, ...], last: bool) -> tuple[str, ...]:
        """The axes a step keeps, in canonical order (the last step's: the output's)."""
        if last:
            return out_axes
        left, right = pair
        remaining = [axes for i, axes in enumerate(working) if i not in pair]
        needed = set(out_axes) | {a for axes in remaining for a in axes}
        return tuple(a for a in self.canonical(working[left] + working[right]) if a in needed)

    def intermediate_step(self, working: list[tuple[str, ...]], kinds: list[str],
                          pair: tuple[int, int], result: tuple[str, ...],
                          next_pair: tuple[int, int], out_axes: tuple[str, ...],
                          next_last: bool, next_may_be_view: bool) -> PairStep:
        """The step that makes an intermediate, its axes in the order (of at most
        LAID_OUT_AXES) that costs least together with the next step, when that step reads
        it; the canonical order on ties."""
        left, right = pair
        after = [axes for i, axes in enumerate(working) if i not in pair]
        after_kinds = [kind for i, kind in enumerate(kinds) if i not in pair] + ["temporary"]
        orders = [result]
        if len(after) in next_pair and len(result) <= LAID_OUT_AXES:
            orders += [order for order in itertools.permutations(result) if order != result]
        if len(orders) > 1:
            saved = (list(self.temporaries), self.largest)
            costs = []
            for order in orders:
                step = self.plan_pair(left, right, working[left], working[right], order,
                                      kinds[left], kinds[right])
                ahead = after + [order]
                a, b = next_pair
                following = self.plan_pair(
                    a, b, ahead[a], ahead[b],
                    self.step_result(ahead, next_pair, out_axes, next_last),
                    after_kinds[a], after_kinds[b], next_may_be_view)
                costs.append(step.estimated_ns + following.estimated_ns)
                self.temporaries[:], self.largest = saved
            result = orders[costs.index(min(costs))]
        return self.plan_pair(left, right, working[left], working[right], result,
                              kinds[left], kinds[right])

    def padded_shape(self, view: ViewNode) -> tuple[int, ...]:
        shape = self.program.tensors[view.read.tensor].shape
        pad = view.pad or tuple((0, 0) for _ in shape)
        return tuple(size + a + b for size, (a, b) in zip(shape, pad))

    def strides_of(self, view: ViewNode) -> dict[str, int]:
        """Each axis's step, in elements, through the array a window is cut from (the
        tensor, its padded copy or its channels-last copy)."""
        padded = self.padded_shape(view)
        dim_strides = [0] * len(padded)
        step = 1
        for dim in reversed(view.memory_order or range(len(padded))):
            dim_strides[dim] = step
            step *= padded[dim]
        strides: dict[str, int] = {}
        for dim, m in enumerate(view.read.maps):
            for name, coefficient in m.terms:
                strides[name] = strides.get(name, 0) + coefficient * dim_strides[dim]
        return strides

    def channels_last_order(self, node: Node, reduced: tuple[str, ...]) -> tuple[int, ...] | None:
        """The memory order that moves a window's last whole-read, summed dimension innermost
        (x[n,c,h+u,w+v] -> [n,h,w,c]), or None when the window has no such dimension."""
        if not (isinstance(node, ViewNode) and node.kind == "strided") or \
                len(node.read.maps) < 2 or node.read.maps[-1].is_plain:
            return None
        channels = [dim for dim, m in enumerate(node.read.maps[:-1])
                    if m.is_plain and m.terms[0][0] in reduced and self.sizes[m.terms[0][0]] > 1]
        if not channels:
            return None
        order = tuple(d for d in range(len(node.read.maps)) if d != channels[-1])
        return order + (channels[-1],)

    def copy_run(self, strides: dict[str, int], arranged: tuple[str, ...]) -> tuple[int, bool]:
        """How many elements an im2col copy in `arranged` order moves per pass of NumPy's inner
        loop (it merges axes that are contiguous in the source), and whether they have gaps."""
        axes = [a for a in arranged if self.sizes[a] > 1]
        if not axes or not 0 < abs(strides.get(axes[-1], 0)) <= 4:
            return 1, False
        step = abs(strides[axes[-1]])
        run = self.sizes[axes[-1]]
        if step == 1:
            for a in reversed(axes[:-1]):
                if strides.get(a) != run:
                    break
                run *= self.sizes[a]
        return run, step != 1

    def plan_pair(self, left: int, right: int, a: tuple[str, ...], b: tuple[str, ...],
                  result: tuple[str, ...], kind_a: str, kind_b: str,
                  result_may_be_view: bool = False) -> PairStep:
        if left == right:  # a lone operand: only a reduction over the axes not kept
            step = PairStep(left, right, a, b, result, "reduce",
                            presum_left=tuple(x for x in a if x not in result))
            step.result_bytes = math.prod(self.shape_of(result)) * self.itemsize
            self.allocate(math.prod(self.shape_of(result)))
            return step
        keep = set(result)
        shared = set(a) & set(b)
        batch = tuple(x for x in result if x in shared)
        contracted = self.canonical(x for x in shared if x not in keep)
        for axes in (a, b):  # im2col from a channels-last copy: channels innermost
            if axes in self.windows and self.windows[axes].memory_order:
                strides = self.window_strides[axes]
                contracted = tuple(sorted(contracted, key=lambda x: -abs(strides.get(x, 0))))
        presum_a = tuple(x for x in a if x not in b and x not in keep)
        presum_b = tuple(x for x in b if x not in a and x not in keep)
        a_kept = [x for x in result if x in a and x not in b]
        b_kept = [x for x in result if x in b and x not in a]
        union = set(a) | set(b)
        flops = math.prod(self.sizes[x] for x in union - set(presum_a) - set(presum_b))
        result_elements = math.prod(self.shape_of(result))
        self.allocate(result_elements)
        if not contracted:
            return PairStep(left, right, a, b, result, "multiply", batch, tuple(a_kept), (),
                            tuple(b_kept), presum_a, presum_b, flops=flops,
                            result_bytes=result_elements * self.itemsize)
        flops *= 2
        # Candidates: every split of the result order into [group, first, second] that a
        # matmul yields directly (either operand on the left), and the natural
        # [batch, a-kept, b-kept] followed by a transpose. The cheapest by _layout_cost wins.
        inner = [x for x in self.scatter_inner if x in a_kept + b_kept]
        if inner and result_may_be_view:  # that side with the scatter's inner axis last
            a_kept = [x for x in a_kept if x not in inner] + [x for x in a_kept if x in inner]
            b_kept = [x for x in b_kept if x not in inner] + [x for x in b_kept if x in inner]
        candidates = [(tuple(batch), tuple(a_kept), tuple(b_kept), False, ()),
                      (tuple(batch), tuple(b_kept), tuple(a_kept), True, ())]
        # ... and with each side's kept axes in its own order, then a transpose of the result:
        # a weight gradient from a kept im2col copy x_cols[n,h,w,u,v,c] reads it as stored.
        own_a, own_b = tuple(x for x in a if x in a_kept), tuple(x for x in b if x in b_kept)
        if (own_a, own_b) != (tuple(a_kept), tuple(b_kept)):
            candidates += [(tuple(batch), own_a, own_b, False, ()),
                           (tuple(batch), own_b, own_a, True, ())]
        for p in range(len(result) + 1):
            group = result[:p]
            if not set(batch) <= set(group):
                continue
            for q in range(p, len(result) + 1):
                first, second = set(result[p:q]), set(result[q:])
                if first <= set(a_kept) and second <= set(b_kept):
                    candidates.append((group, result[p:q], result[q:], False, ()))
                if first <= set(b_kept) and second <= set(a_kept) and (first or second):
                    candidates.append((group, result[p:q], result[q:], True, ()))
        # A batch of the result's leading axes, one side's only (the other broadcasts along
        # them), then a transpose: the input gradient of a 1-channel convolution GEMMs each
        # image's dy[o, h*w] instead of copying dy into one [o, n*h*w] operand first.
        for p in range(1, len(result)):
            group = result[:p]
            if not set(batch) <= set(group) or set(group) <= set(batch):
                continue
            rest_a = tuple(x for x in a_kept if x not in group)
            rest_b = tuple(x for x in b_kept if x not in group)
            candidates += [(group, rest_a, rest_b, False, ()), (group, rest_b, rest_a, True, ())]
        # One contracted axis as the batch, summed after the matmul: a weight gradient
        # dk[o,c,u,v] = dy[n,o,h,w] * x[n,c,h+u,w+v] as GEMMs per image, each reading dy[n]
        # as it is stored, where one GEMM over (n,h,w) needs dy copied into [n*h*w, o].
        if not batch and len(contracted) > 1:
            for axis in contracted:
                summed = (axis,)
                candidates += [(summed, tuple(a_kept), tuple(b_kept), False, summed),
                               (summed, tuple(b_kept), tuple(a_kept), True, summed)]
        # The contracted axes in the order above, or as a whole operand stores them: a
        # convolution reading an im2col copy x_cols[n,h,w,u,v,c] contracts (u,v,c) as stored
        # and copies the small kernel instead.
        orders = [contracted]
        for axes, kind in ((a, kind_a), (b, kind_b)):
            own = tuple(x for x in axes if x in contracted)
            if kind == "whole" and own not in orders:
                orders.append(own)
        kinds = {"a": kind_a, "b": kind_b}
        candidates = list(dict.fromkeys(candidates))  # (the splits repeat some: cost each once)
        best = None  # the cheapest so far; a candidate whose estimate passes it is dropped
        for j, order in enumerate(orders):
            for i, c in enumerate(candidates):
                costed = self.layout_cost(a, b, kinds, tuple(x for x in order if x not in c[4]),
                                          result, *c[:4], result_may_be_view=result_may_be_view,
                                          summed=c[4], bound=best[0][0] if best else None)
                if costed is not None and (best is None or (costed, j, i) < best[:3]):
                    best = (costed, j, i, c, order)
        (cost, copies), _, _, (group, first, second, swap, summed), contracted = best
        layout = tuple(x for x in group if x not in summed) + first + second
        transpose = None if layout == result else tuple(layout.index(x) for x in result)
        step = PairStep(left, right, a, b, result, "gemm", group, first,
                        tuple(x for x in contracted if x not in summed), second, presum_a,
                        presum_b, swap, transpose, flops,
                        sum(n for n, _, _ in copies) * self.itemsize,
                        result_elements * self.itemsize)
        step.summed = summed
        if summed:  # the matmul's result before the sum
            self.allocate(result_elements * math.prod(self.sizes[x] for x in summed))
        step.estimated_ns = cost
        step.windows = ((kind_b if swap else kind_a) == "strided",
                        (kind_a if swap else kind_b) == "strided")
        step.chunk = self.chunk_for(step, b if swap else a, b if not swap else a,
                                    kinds["b" if swap else "a"], kinds["a" if swap else "b"])
        step.short_runs = any(short for _, _, short in copies)
        for elements, axes, _ in copies:  # a chunked copy only ever holds one chunk
            if step.chunk is not None and step.chunk_axis in axes:
                elements = -(-elements * step.chunk // self.sizes[step.chunk_axis])
            self.allocate(elements)
        return step

    def layout_cost(self, a: tuple[str, ...], b: tuple[str, ...], kinds: dict[str, str],
                    contracted: tuple[str, ...], result: tuple[str, ...],
                    group: tuple[str, ...], first: tuple[str, ...], second: tuple[str, ...],
                    swap: bool, result_may_be_view: bool = False,
                    summed: tuple[str, ...] = (),
                    bound: float | None = None) -> tuple[float, list[int]] | None:
        """Estimated nanoseconds of one GEMM layout, and the copies it makes (elements, axes,
        whether it is an im2col copy in short runs). `summed`: leading axes of `group` that
        are contracted, summed after the matmul. None as soon as the estimate exceeds
        `bound` (the cheapest layout so far: every term added is positive)."""
        size = self.count
        left, right = (b, a) if swap else (a, b)
        left_kind, right_kind = (kinds["b"], kinds["a"]) if swap else (kinds["a"], kinds["b"])
        m, n, k = size(first), size(second), size(contracted)
        efficiency = _gemm_efficiency(m, n, k, batched=size(group) > 1)
        threaded = m * n * k > OPENBLAS_THREADED_MNK
        call = GEMM_CALL_NS + (GEMM_THREADED_CALL_NS if size(group) > 1 and threaded else 0.0)
        speed = GEMM_FLOPS_PER_NS * (efficiency if threaded else
                                     min(efficiency, 1 / GEMM_CORES))
        cost = size(group) * (call + 2 * m * n * k / speed)
        if bound is not None and cost > bound:
            return None
        copies, window_elements = [], 0
        for axes, kind, inner, outer in ((left, left_kind, contracted, first),
                                         (right, right_kind, second, contracted)):
            present = tuple(x for x in group if x in axes)
            arranged = present + tuple(outer) + tuple(inner)
            if kind == "strided":  # im2col: fast when the innermost copied axes are long runs
                elements = size(arranged)
                run, gapped = self.copy_run(self.window_strides.get(axes, {}), arranged)
                short = run < PACK_SHORT_RUN or gapped
                # Costed as threaded only when gapped (strided windows): for stride-1 windows
                # NumPy's channels-last copies were as fast, and the layouts stay NumPy's.
                if self.pack == "always" or self.pack == "auto" and gapped \
                        and elements * self.itemsize >= PACK_MIN_BYTES:
                    innermost = self.sizes[arranged[-1]]  # a threaded loop (tensorc[jit])
                    cost += elements * (THREADED_COPY_NS + THREADED_COPY_LOOP_NS / innermost)
                else:
                    cost += elements * (WINDOW_COPY_NS + WINDOW_COPY_RUN_NS / run
                                        + (WINDOW_GAPPED_NS if gapped else 0.0))
                copies.append((elements, arranged, short))
                window_elements += elements
            elif axes not in (arranged, present + tuple(inner) + tuple(outer)) \
                    and (max(len(outer), len(inner)) > 1 or self.unit_axis_batched(axes, present)):
                elements = size(arranged)  # a transpose that reshape (or matmul) must copy
                cost += elements * self.transposed_copy_ns(axes, arranged)
                copies.append((elements, arranged, False))
        if bound is not None and cost > bound:
            return None
        if summed:  # the matmul's results per summed entry, added up after it
            cost += size(group) * m * n * BATCH_SUM_NS
        # What chunk_for makes of an im2col copy larger than chunk_bytes: where a batch is
        # summed after the matmul, no chunks (one fresh buffer); without a batch, unless
        # the chunks are the GEMM's rows, chunks of a contracted axis, each chunk's product
        # added to the result (a strided convolution's forward, 28.9 MB of windows in 4
        # such chunks, took 1.17x as long as in chunks of images)
        copied = sum(e for e, _, _ in copies) if window_elements else 0  # as chunk_for's
        chunks = -(-copied * self.itemsize // self.chunk_bytes)
        if chunks > 1 and summed:
            cost += window_elements * FRESH_WINDOW_COPY_NS
        elif chunks > 1 and not group and not chunks_rows(
                left_kind == "strided" and right_kind != "strided", m, k):
            cost += (chunks - 1) * size(result) * BATCH_SUM_NS
        layout = tuple(x for x in group if x not in summed) + first + second
        if self.scatter_inner and result_may_be_view and layout[-1:] != tuple(self.scatter_inner):
            # the scatter reads it across the grain (NumPy's), or adds it across the planes
            cost += size(result) * (SCATTER_ACROSS_NS if self.threaded_scatter
                                    else TRANSPOSED_COPY_NS)
        if layout != result:
            # The result is read transposed later; a statement's own result may stay a view,
            # but still loses ties against a layout that needs no transpose.
            cost += size(result) * (TRANSPOSED_VIEW_NS if result_may_be_view
                                    else TRANSPOSED_COPY_NS)
        return cost, copies

    def innermost(self, axes: tuple[str, ...], count: int = 1) -> list[str]:
        """The last `count` of `axes` that have more than one entry (an array laid out in
        `axes` order steps along the last of them element by element)."""
        return [a for a in axes if self.sizes[a] > 1][-count:]

    def unit_axis_batched(self, axes: tuple[str, ...], batch: list[str]) -> bool:
        """Whether the axis an operand is stored along (its last of more than one entry) is
        a batch axis of the matmul: no matrix of the batch then steps by one element along
        a row or a column, as BLAS needs, and NumPy's matmul takes about as long as a copy
        and a GEMM (96 x [96x48]@[48x48] batched along it: 0.77 ms; copied first, 0.74 ms;
        batched as stored, 0.59 ms)."""
        return any(x in batch for x in self.innermost(axes))

    def transposed_copy_ns(self, source: tuple[str, ...], arranged: tuple[str, ...]) -> float:
        """Nanoseconds per element of copying an array laid out in `source` order into
        `arranged` order."""
        if self.scattered_copy(source, arranged):
            return TRANSPOSED_SCATTER_NS
        inner = self.innermost(arranged)
        if inner and inner == self.innermost(source):
            return TRANSPOSED_RUNS_NS
        return TRANSPOSED_COPY_NS

    def scattered_copy(self, source: tuple[str, ...], arranged: tuple[str, ...]) -> bool:
        """Whether copying an array laid out in `source` order into `arranged` order steps at
        least a cache line through the source along both of the copy's innermost axes."""
        step, strides = 1, {}
        for axis in reversed(source):
            strides[axis] = step
            step *= self.sizes[axis]
        inner = self.innermost(arranged, 2)
        return len(inner) == 2 and all(strides[a] >= CACHE_LINE_ELEMENTS for a in inner)

    def chunk_for(self, step: PairStep, left: tuple[str, ...], right: tuple[str, ...],
                  left_kind: str, right_kind: str) -> int | None:
        """Entries per chunk of one axis when an im2col copy should be done in pieces that
        fit `chunk_bytes` (reused buffers beat fresh large ones), else None. The axis
        is the first batch axis, the window's first row axis (the GEMM's rows: chunks of
        the result), or the first contracted axis (a weight gradient: chunks summed)."""
        strided = [axes for axes, kind in ((left, left_kind), (right, right_kind))
                   if kind == "strided"]
        if not strided or step.summed:
            return None
        size = self.count
        if step.batch and step.final_transpose is None:
            axis = step.batch[0]
        elif step.batch or step.copy_bytes <= self.chunk_bytes:
            return None
        elif step.kept_left and chunks_rows(strided == [left], size(step.kept_left),
                                            size(step.contracted)):
            axis = step.kept_left[0]
        elif step.contracted:
            axis = step.contracted[0]
        else:
            return None
        if any(axis not in axes for axes in strided):
            return None
        step.chunk_axis = axis
        per_entry = step.copy_bytes // self.sizes[axis]
        return max(1, min(self.sizes[axis], self.chunk_bytes // max(1, per_entry)))

    def peak_bytes(self) -> int:
        # Conservative: every temporary of the statement alive at once.
        return sum(self.temporaries)


@dataclass
class _FFTCandidate:
    plan: FFTPlan
    step: PairStep  # the product of the transforms
    estimated_ns: float
    flops: int
    temporaries: list[int]  # elements
    description: str


@dataclass
class _Candidate:
    plan: ShiftedPlan
    estimated_ns: float
    flops: int
    temporaries: list[int]  # elements
    description: str


GEMM_NARROW_ROWS = 32  # a result narrower than this is written in short rows: slower


def chunks_rows(left_window_only: bool, rows: int, depth: int) -> bool:
    """Whether an im2col copy over chunk_bytes without a batch axis is chunked along the
    GEMM's rows (its result in pieces) rather than along a contracted axis (each chunk's
    product added up): where the window is the left operand only and has more rows than
    the GEMM's depth."""
    return left_window_only and rows > depth


def _pair(positions: Sequence[int]) -> tuple[int, int]:
    """An opt_einsum path entry as (left, right) positions; a lone operand pairs with itself."""
    positions = tuple(sorted(positions))
    return (positions[0], positions[-1])


def _gemm_efficiency(m: int, n: int, k: int, batched: bool = False) -> float:
    """The fraction of full GEMM speed at these sizes (~ the square root of the smallest
    dimension's share of GEMM_FULL_SPEED_DIMENSION); for a batch of GEMMs, less when their
    results come in narrow rows (n): 64 x [576x16]@[16x25] took 0.71 ms here, the same
    FLOPs as 64 x [25x16]@[16x576] 0.28 ms."""
    rows = min(1.0, n / GEMM_NARROW_ROWS) ** 0.5 if batched else 1.0
    return max(1e-3, min(1.0, min(m, n, k) / GEMM_FULL_SPEED_DIMENSION) ** 0.5 * rows)


def fft_length(size: int) -> int:
    """The smallest 5-smooth number (2^a 3^b 5^c) at least `size`: pocketfft and cuFFT are
    fast there, and slow on large prime factors (58 = 2*29 took 1.8x as long as 60)."""
    best = 1 << max(0, (size - 1).bit_length())
    power3 = 1
    while power3 < best:
        power5 = power3
        while power5 < best:
            candidate = power5
            while candidate < size:
                candidate *= 2
            best = min(best, candidate)
            power5 *= 5
        power3 *= 3
    return best


def _factors(expr: Expr) -> tuple[float, list[Expr]]:
    """Split a product into (constant scale, factors): `-2*a*b` -> (-2, [a, b])."""
    if isinstance(expr, Apply) and expr.op == "mul":
        scale_left, left = _factors(expr.args[0])
        scale_right, right = _factors(expr.args[1])
        return scale_left * scale_right, left + right
    if isinstance(expr, Apply) and expr.op == "neg":
        scale, factors = _factors(expr.args[0])
        return -scale, factors
    if isinstance(expr, Apply) and expr.op == "div" and isinstance(expr.args[1], Constant) \
            and expr.args[1].value != 0:
        scale, factors = _factors(expr.args[0])
        return scale / expr.args[1].value, factors
    return 1, [expr]


def _naive_flops(operands: list[Node], sizes: dict[str, int]) -> int:
    """opt_einsum's naive cost: one pass over the full index space per product term."""
    union = {a for o in operands for a in o.axes}
    return math.prod(sizes[a] for a in union) * max(len(operands) - 1, 1) * 2


def _node_flops(node: Node, naive: bool = False) -> int:
    """FLOPs of a planned expression: contractions as planned (or naively), plus one per
    element of every elementwise result and of every reduced body."""
    if isinstance(node, ContractNode):
        own = node.naive_flops if naive else node.flops
        return own + sum(_node_flops(o, naive) for o in node.operands)
    if isinstance(node, ElementwiseNode):
        return math.prod(node.shape) + sum(_node_flops(a, naive) for a in node.args)
    if isinstance(node, ReduceNode):
        return math.prod(node.body.shape) + _node_flops(node.body, naive)
    return 0


def _substitute(m: IndexMap, index: str, by: IndexMap) -> IndexMap:
    """m with `index` replaced by the affine map `by`."""
    coefficient = dict(m.terms).get(index, 0)
    if not coefficient:
        return m
    terms: dict[str, int] = {n: c for n, c in m.terms if n != index}
    for n, c in by.terms:
        terms[n] = terms.get(n, 0) + coefficient * c
    return IndexMap(tuple((n, c) for n, c in terms.items() if c), m.offset + coefficient * by.offset)


def without_unit_offsets(statement: Statement, shape: tuple[int, ...]) -> Statement:
    """`statement` with each window offset that takes one value (u in x[n,c,h+u,w+v] with
    u < 1) dropped from the positions it shifts: a 1x1 convolution then reads x whole and
    contracts by GEMM, instead of copying windows of one element (im2col). An offset is
    dropped only where another map still reads it (k[o,c,u,v]), so that it keeps an axis,
    and not where it would leave a plain target index short of its dimension (`shape`):
    dx[n,c,3*w+v] with w < 1 and v < 3 writes 3 of dx's 5 positions, or name one index
    in two of the target's dimensions."""
    maps = [*statement.target_maps,
            *(m for r in walk(statement.value) if isinstance(r, Read) for m in r.maps)]
    shifts = {n for m in maps if len(m.terms) > 1 for n, _ in m.terms
              if statement.ranges[n] == 1}
    value = statement.value
    outer = value.body if isinstance(value, Reduce) and value.implicit else value
    # (an index a reduction inside binds, sum[i](...), is another variable there)
    inner = {n for node in walk(outer) if isinstance(node, Reduce) for n in node.indices}
    unit = {n for n in shifts - inner if any(m.terms == ((n, 1),) for m in maps)}
    if not unit:
        return statement

    def dropped(m: IndexMap) -> IndexMap:
        if len(m.terms) == 1:
            return m
        return IndexMap(tuple((n, c) for n, c in m.terms if n not in unit), m.offset)

    value = map_reads(value, lambda read: replace(read, maps=tuple(map(dropped, read.maps))))
    target_maps = tuple(map(dropped, statement.target_maps))
    named = [n for m in target_maps for n in m.indices()]
    if len(set(named)) < len(named) or any(
            m.is_plain and not old.is_plain and statement.ranges[m.terms[0][0]] != size
            for m, old, size in zip(target_maps, statement.target_maps, shape)):
        return statement  # (y[i+j,i+j] would become a diagonal, y[i,i])
    # An offset the target no longer names is summed (over its one value), like any other
    # index the right side alone reads.
    kept = {n for m in target_maps for n in m.indices()}
    freed = tuple(dict.fromkeys(n for m in statement.target_maps for n in m.indices()
                                if n not in kept))
    if freed:
        if isinstance(value, Reduce) and value.op == "sum" and value.implicit:
            value = replace(value, indices=(*value.indices, *freed))
        else:
            value = Reduce("sum", freed, value, True)
    return replace(statement, target_maps=target_maps, value=value)


def gather_form(statement: Statement, shape: tuple[int, ...]) -> Statement | None:
    """An accumulation through windows, rewritten to read through them instead.

    `dx[n,c,h+u-1,w+v-1] += dy[n,o,h,w]*k[o,c,u,v]` (the input gradient of a stride-1
    convolution, as tc.grad writes it) is `dx[n,c,i,j] += dy[n,o,i-u+1,j-v+1]*k[o,c,u,v]`
    with dy read as zero outside its bounds: a convolution with the flipped kernel, which
    im2col + GEMM computes without adding a contribution back per window offset. Each
    substituted position index (h = i - u + 1) must be read only whole, in factors, so that
    the zero boundary restores its range exactly.
    """
    if not statement.accumulate or statement.target_boundary not in (None, "zero") \
            or all(m.is_plain for m in statement.target_maps):
        return None
    value = statement.value
    outer = isinstance(value, Reduce) and value.op == "sum" and value.implicit
    body = value.body if outer else value
    factor_reads = [f for f in _factors(body)[1] if isinstance(f, Read)]
    if any(isinstance(n, IndexValue) for n in walk(value)):
        return None
    target_indices = {n for m in statement.target_maps for n in m.indices()}
    if any(isinstance(n, Reduce) and set(n.indices) & target_indices for n in walk(body)):
        return None  # a reduction inside shadows a target index: keep the scatter form
    maps, ranges = list(statement.target_maps), dict(statement.ranges)
    replaced: dict[str, IndexMap] = {}
    for dim, m in enumerate(statement.target_maps):
        if m.is_plain:
            continue
        # the position is the longest index of the dimension (h in h+u): substituting a
        # window offset instead would turn the kernel into the image
        if not m.terms:
            return None  # a fixed position: nothing to read back through
        longest = max(m.terms, key=lambda term: ranges[term[0]])
        for position, coefficient in [longest]:
            others = [o for i, o in enumerate(statement.target_maps) if i != dim]
            reads = [r for r in walk(value) if isinstance(r, Read) and position in r.indices()]
            if coefficient != 1 or any(position in o.indices() for o in others) or not reads:
                continue
            whole = all(sum(position in rm.indices() for rm in r.maps) == 1 and any(
                rm.is_plain and rm.terms[0][0] == position for rm in r.maps) for r in reads)
            # every read of the position is a factor of the product, so a zero read outside
            # its range zeroes the term (inside a function, 0 could give inf: 0^-0.5)
            gating = all(any(r is f for f in factor_reads) for r in reads)
            if whole and gating and all(r.boundary in (None, "zero") for r in reads):
                break
        else:
            return None
        new = f"{position}_at"
        while new in ranges:
            new += "_"
        rest = [(n, -c) for n, c in m.terms if n != position]
        replaced[position] = IndexMap(((new, 1), *rest), -m.offset)
        maps[dim] = IndexMap(((new, 1),))
        ranges[new] = shape[dim]
        del ranges[position]

    def rewrite(node: Read) -> Read:
        if not set(replaced) & set(node.indices()):
            return node
        new_maps = node.maps
        for position, by in replaced.items():
            new_maps = tuple(_substitute(rm, position, by) for rm in new_maps)
        return replace(node, maps=new_maps, boundary="zero")

    # Window offsets were target positions; now they are summed like any other index.
    new_value = map_reads(value, rewrite)
    kept = {m.terms[0][0] for m in maps}
    summed = tuple(n for n in statement.index_order() if n in ranges and n not in kept)
    inner = new_value.body if outer else new_value
    new_value = Reduce("sum", summed, inner, True)
    order = {n: ranges[n] for n in [*(m.terms[0][0] for m in maps), *ranges]}
    return replace(statement, target_maps=tuple(maps), value=new_value, ranges=order,
                   target_boundary=None)


def scatter_slices(maps: tuple[IndexMap, ...], sizes: dict[str, int]) -> list[str | None]:
    """How a '+=' through windows addresses its target: per dimension, the index that is
    sliced (the longest one only that dimension uses, h in 2*h+u), or None; the target's
    other indices (the window offsets u) are looped over, one strided add per offset."""
    sliced: list[str | None] = []
    for m in maps:
        only_here = [n for n, c in m.terms if c > 0
                     and sum(n in other.indices() for other in maps) == 1 and n not in sliced]
        sliced.append(max(only_here, key=lambda n: sizes[n]) if only_here else None)
    return sliced


def reads_in(node: Node) -> list[ViewNode]:
    """The reads of an elementwise tree."""
    if isinstance(node, ViewNode):
        return [node]
    if isinstance(node, ElementwiseNode):
        return [v for arg in node.args for v in reads_in(arg)]
    return []


def elementwise_only(node: Node) -> bool:
    """True for a tree of reads, constants, index values and elementwise operations."""
    if isinstance(node, ElementwiseNode):
        return all(elementwise_only(arg) for arg in node.args)
    return isinstance(node, (ViewNode, ConstNode, IndexNode))


def _check_total_memory(program: CheckedProgram, itemsize: int) -> None:
    """Fail before anything is allocated when the tensors a program defines could not fit in
    the machine's memory at all (they are alive together until the kernel returns)."""
    defined = {s.target: s for s in program.statements}
    total = sum(math.prod(program.tensors[name].shape) for name in defined) * itemsize
    available = physical_memory()
    if total > available:
        largest = max(defined, key=lambda name: math.prod(program.tensors[name].shape))
        raise MemoryBudgetError(
            f"this program defines {format_size(total)} of tensors ('{largest}' alone is "
            f"{format_size(math.prod(program.tensors[largest].shape) * itemsize)}), more than "
            f"this machine's {format_size(available)} of memory; compile it for smaller inputs",
            defined[largest].span)


def tiles_exactly(statement: Statement, shape: tuple[int, ...]) -> bool:
    """Whether a '+=' through windows reaches every target element exactly once: each
    dimension is a whole index, or s*h + u with u < s and h covering the size (pooling)."""
    indices = [n for m in statement.target_maps for n in m.indices()]
    if statement.target_boundary is not None or len(indices) != len(set(indices)):
        return False
    for m, size in zip(statement.target_maps, shape):
        if m.offset != 0:
            return False
        if m.is_plain:
            if statement.ranges[m.terms[0][0]] != size:
                return False
            continue
        if len(m.terms) != 2:
            return False
        (position, stride), (offset, step) = sorted(m.terms, key=lambda term: -term[1])
        if step != 1 or statement.ranges[offset] != stride \
                or statement.ranges[position] * stride != size:
            return False
    return True


def _estimated_ns(node: Node) -> float:
    return sum(c.estimated_ns for c in contractions_in(node))


def plan_program(program: CheckedProgram, dtype: str = "float64", itemsize: int = 8,
                 budget: int | None = None, fft: str = "auto",
                 in_one_process: bool = True, pack: str = "off",
                 gemv_sums: bool = True, shift: str = "off",
                 given_windows: tuple[KeptWindow, ...] = ()) -> ProgramPlan:
    """Plan every statement. `budget` bounds each statement's temporaries in bytes (default:
    tensorc.budget.memory_budget()); im2col copies are chunked to fit a quarter of it.
    `fft`: "auto" lets the cost model choose FFT convolutions, "off" never uses them,
    "always" uses them wherever they apply (for tests). `in_one_process=False` (the Dask
    backend's whole-program plan, which no process runs whole) skips the memory checks.
    `pack` (for the NumPy backend with Numba): "auto" threads the copies around GEMMs that
    are large enough to pay (PACK_MIN_BYTES, SCATTER_MIN_BYTES), "always" every one,
    "off" none. `gemv_sums`: large sums may run as GEMVs with ones (ONES_GEMV_MIN; the
    CPU's BLAS; on a GPU, CuPy's tree reductions serve them). `shift`: shifted GEMMs by
    cost ("auto"), never ("off": where NumPy's BLAS cannot be called directly) or wherever
    they apply ("always"). `given_windows`: im2col copies another kernel kept
    (keep_windows), read instead of the windows they hold."""
    program, readers = reading_kept_windows(program, given_windows)
    budget = memory_budget() if budget is None else budget
    settings = PlanSettings(itemsize, budget, max(64 << 10, min(IM2COL_CHUNK_BYTES, budget // 4)),
                            fft, pack, gemv_sums and dtype in ("float32", "float64"), shift,
                            in_one_process)
    if in_one_process:
        _check_total_memory(program, itemsize)
    plans = []
    defined = set(program.inputs)
    for number, statement in enumerate(program.statements):
        read = [(w, "the copy in GEMM order its forward kept") for w in readers.get(number, ())]
        plans.append(_plan_statement(program, number, statement, statement.target in defined,
                                     settings, read))
        defined.add(statement.target)
    return ProgramPlan(program, dtype, plans, settings)


def _plan_statement(program: CheckedProgram, number: int, statement: Statement,
                    defined_before: bool, settings: PlanSettings,
                    windows_read: Sequence[tuple[KeptWindow, str]] = ()) -> StatementPlan:
    """The plan of one statement of `program` (`defined_before`: whether an input or an
    earlier statement gave its target a value). `windows_read`: the copies of windows it
    reads instead of the windows (reading_kept_windows), each with who made it."""
    statement = without_unit_offsets(statement, program.tensors[statement.target].shape)
    fresh = not defined_before and not any(
        isinstance(n, Read) and n.tensor == statement.target for n in walk(statement.value))
    budget = settings.budget
    planner = _StatementPlanner(program, statement, settings, fresh)
    root = planner.plan(statement.value)
    estimated = _estimated_ns(root) + planner.scatter_ns()
    # An accumulation through windows either adds each window's contribution back
    # (col2im) or reads back through the windows (gather form): planned both ways, the
    # cheaper by the cost model is kept, unless only the other fits the budget.
    gathered = gather_form(statement, program.tensors[statement.target].shape)
    if gathered is not None:
        gather_planner = _StatementPlanner(program, gathered, settings)
        gather_root = gather_planner.plan(gathered.value)
        fits = (planner.peak_bytes() <= budget, gather_planner.peak_bytes() <= budget)
        cheaper = _estimated_ns(gather_root) < estimated
        if fits[1] and (cheaper or not fits[0]):
            statement, planner, root = gathered, gather_planner, gather_root
            planner.strategies.insert(0, GATHER_FORM)
            estimated = _estimated_ns(root)
    if settings.in_one_process and planner.peak_bytes() > budget:
        raise MemoryBudgetError(
            f"this statement needs about {format_size(planner.peak_bytes())} of "
            f"temporaries (largest: {planner.largest:,} elements), more than the memory "
            f"budget of {format_size(budget)}; compile it for smaller inputs (a smaller "
            "batch), or raise the budget with tc.set_memory_budget(...) or "
            "TENSORC_MEMORY_BUDGET", statement.span)
    elementwise = _epilogue_ops(root)
    strategy = "; ".join(planner.strategies) or "elementwise"
    for window, made_by in windows_read:
        strategy = f"{window.read} read from {window.name}, {made_by} (no im2col); {strategy}"
    if elementwise and planner.strategies:
        strategy += f"; then elementwise {', '.join(elementwise)}"
    offset_loop: tuple[str, ...] = ()
    tiles = False
    maps = statement.target_maps
    if statement.accumulate and not all(m.is_plain for m in maps) \
            and elementwise_only(root):
        sliced = scatter_slices(maps, statement.ranges)
        looped = tuple(n for n in planner.order if n not in sliced
                       and any(n in m.indices() for m in maps))
        if set(looped) & set(root.axes):
            offset_loop = looped
            tiles = fresh and tiles_exactly(statement, program.tensors[statement.target].shape)
            strategy += (f", evaluated per window offset ({','.join(looped)}) and "
                         + ("written to its own strided slice (the windows tile "
                            f"{statement.target})" if tiles else
                            "added through strided slices"))
    if planner.target_order is not None and statement.accumulate:
        inner = statement.target_maps[planner.target_order[-1]].terms[0][0]
        strategy += (f"; contributions added into a buffer with {inner} innermost, so "
                     "that each add runs over whole rows of it")
    packing = tuple(name for name, threaded in (
        ("im2col", planner.copies_threaded(root)),
        ("col2im", planner.threaded_scatter and not offset_loop)) if threaded)
    if packing:
        strategy += "; " + " and ".join({"im2col": "im2col copies", "col2im": "col2im adds"}[p]
                                         for p in packing) + " by threaded Numba loops"
    return StatementPlan(number, statement, planner.order, root, strategy,
                         _node_flops(root, naive=True), _node_flops(root),
                         planner.largest, planner.peak_bytes(),
                         offset_loop=offset_loop, target_order=planner.target_order,
                         tiles_target=tiles, packing=packing, estimated_ns=estimated)


def reading_kept_windows(program: CheckedProgram, windows: tuple[KeptWindow, ...]
                         ) -> tuple[CheckedProgram, dict[int, list[KeptWindow]]]:
    """`program` with each read of a kept window replaced by a plain read of the copy
    (_reading_windows); and, per statement number, the windows it now reads. Inputs read
    only through such windows are dropped. A window of a tensor the program writes to, or
    named like one of its tensors, is not read."""
    targets = {s.target for s in program.statements}
    windows = tuple(w for w in windows if w.read.tensor not in targets
                    and w.name not in program.tensors)
    if not windows:
        return program, {}
    readers: dict[int, list[KeptWindow]] = {}
    statements = []
    for number, statement in enumerate(program.statements):
        statement, read = _reading_windows(statement, windows)
        if read:
            readers[number] = read
        statements.append(statement)
    if not readers:
        return program, {}
    now = _tensors_read(statements)
    unread = _tensors_read(program.statements) - now
    used = [w for w in windows if w.name in now]
    tensors = {**program.tensors, **{w.name: TensorInfo(w.name, w.shape) for w in used}}
    inputs = tuple(n for n in program.inputs if n not in unread) + tuple(w.name for w in used)
    return replace(program, statements=tuple(statements), tensors=tensors,
                   inputs=inputs), readers


def _reading_windows(statement: Statement, windows: Sequence[KeptWindow]
                     ) -> tuple[Statement, list[KeptWindow]]:
    """`statement` with each read of one of `windows` (the same tensor, maps and boundary,
    where the statement's ranges of the window's indices are the copy's sizes, so that it
    reads exactly what the copy holds) replaced by a plain read of the copy; and the
    windows it now reads."""
    value = statement.value
    read = []
    for window in windows:
        if all(statement.ranges.get(a) == size for a, size in zip(window.axes, window.shape)):
            copy = Read(window.name, tuple(IndexMap(((a, 1),)) for a in window.axes))
            replaced = map_reads(value, lambda r, w=window, c=copy: c if r == w.read else r)
            if replaced != value:
                value = replaced
                read.append(window)
    return replace(statement, value=value), read


def _tensors_read(statements) -> set[str]:
    return {n.tensor for s in statements for n in walk(s.value) if isinstance(n, Read)}


def full_window_copies(sp: StatementPlan, tensors: Collection[str], chunks: bool = False
                       ) -> Iterator[tuple[PairStep, int, ViewNode, tuple[str, ...]]]:
    """The GEMM operands of a statement's plan that are windows of `tensors` copied into
    GEMM order whole (not by FFT or shifted GEMMs, not inside a loop kernel), or, with
    `chunks`, in chunks of the copy's leading axis, each GEMMed into its part of the result
    (so that the chunks can go to their slices of one buffer; not chunks summed):
    each as its step, its side of the matmul (0 first, 1 second), the window and the axes
    of the copy in order. The working list follows the renderer's (render_contraction)."""
    if sp.loop_nest is not None or sp.computed_in is not None:
        return
    sizes = sp.statement.ranges
    for contraction in contractions_in(sp.root):
        if contraction.fft is not None or contraction.shifted is not None:
            continue
        working: list[Node | None] = list(contraction.operands)
        for step in contraction.steps:
            chunked = step.chunked(sizes)
            if step.kind == "gemm" and (chunks or not chunked) \
                    and not (chunked and step.chunk_axis in step.contracted):
                pairs = [(working[step.left], step.presum_left),
                         (working[step.right], step.presum_right)]
                if step.swap:
                    pairs.reverse()
                sides = ((step.kept_left, step.contracted), (step.contracted, step.kept_right))
                for side, ((node, presum), (first, second)) in enumerate(zip(pairs, sides)):
                    if isinstance(node, ViewNode) and node.kind == "strided" and not presum \
                            and node.read.tensor in tensors:
                        axes = tuple(g for g in step.batch if g in node.axes) + first + second
                        if not chunked or axes[0] == step.chunk_axis:
                            yield step, side, node, axes
            for position in sorted({step.left, step.right}, reverse=True):
                working.pop(position)
            working.append(None)  # a temporary


def _copy_name(tensor: str, taken: set[str]) -> str:
    """A new name for a copy of a window of `tensor` (x_cols, x_cols1, ...), then taken."""
    name = next(n for n in (f"{tensor}_cols{i or ''}" for i in range(len(taken) + 1))
                if n not in taken and n.isidentifier())
    taken.add(name)
    return name


def _names_taken(program: CheckedProgram) -> set[str]:
    return set(program.tensors) | {i for s in program.statements for i in s.ranges}


def _with_side(names: tuple[str | None, str | None], side: int,
               name: str) -> tuple[str | None, str | None]:
    return (name, names[1]) if side == 0 else (names[0], name)


def keep_windows(plan: ProgramPlan) -> ProgramPlan:
    """`plan` with the im2col copies of its inputs' windows kept: each GEMM operand that is
    a window of an input copied into GEMM order in full (full_window_copies) is copied into
    a fresh array that the kernel also returns, named in `kept_windows` (`x_cols`) and in
    its step's `kept` (steps are marked in place: call it on a plan just made). An adjoint
    kernel given them (plan_program's given_windows) reads them instead of copying those
    windows again: a convolution's weight gradient then needs no im2col of its own."""
    taken = _names_taken(plan.program)
    kept: list[KeptWindow] = []
    for sp in plan.statements:
        for step, side, node, axes in full_window_copies(sp, plan.program.inputs):
            # a copy a later statement reads (share_windows) keeps its name
            name = step.shared[side] or _copy_name(node.read.tensor, taken)
            kept.append(KeptWindow(name, node.read, axes,
                                   tuple(sp.statement.ranges[a] for a in axes)))
            step.kept = _with_side(step.kept, side, name)
    return replace(plan, kept_windows=tuple(kept)) if kept else plan


def _gemm_operand_only(sp: StatementPlan, tensor: str) -> bool:
    """Whether every read of `tensor` in the plan is an operand of a contraction by GEMMs,
    whose results are fresh arrays: no statement hands back a view of a shared buffer."""
    reads = sum(isinstance(n, Read) and n.tensor == tensor for n in walk(sp.statement.value))
    multiplied = sum(isinstance(o, ViewNode) and o.read.tensor == tensor
                     for c in contractions_in(sp.root) if any(s.kind == "gemm" for s in c.steps)
                     for o in c.operands)
    return reads == multiplied


def share_windows(plan: ProgramPlan) -> ProgramPlan:
    """`plan` with each statement that reads a window an earlier statement copies into GEMM
    order (full_window_copies, a forward's chunks of images included) reading that copy
    instead, where the cost model says it is cheaper: a convolution's forward and weight
    gradient in one kernel (compile_grad) then make one im2col copy of x, not two. The
    earlier statement copies into a buffer (`x_cols`, its step's `shared`: steps are marked
    in place, so call it on a plan just made), chunk by chunk into its slices if it
    chunks, that the later one reads as a tensor of the program. Only windows of tensors no
    statement writes are shared, and no copy a loop kernel would not make."""
    program, settings = plan.program, plan.settings
    if settings is None:
        return plan
    unwritten = set(program.tensors) - {s.target for s in program.statements}
    taken = _names_taken(program)
    held: list[tuple[KeptWindow, PairStep, int, int]] = []  # window, step, side, statement
    last_reader: dict[str, int] = {}  # a copy some statement reads: the last one so far
    statements, plans = list(program.statements), list(plan.statements)
    tensors = dict(program.tensors)
    defined = set(program.inputs)
    for number, sp in enumerate(plans):
        defined_before = statements[number].target in defined
        defined.add(statements[number].target)
        if sp.loop_nest is not None or sp.computed_in is not None:
            continue
        statement, read = _reading_windows(statements[number], [w for w, *_ in held])
        if read:
            sharing = replace(program, statements=tuple(statements), tensors={
                **tensors, **{w.name: TensorInfo(w.name, w.shape) for w in read}})
            holders = {w.name: (step, side, by) for w, step, side, by in held}
            candidate = _plan_statement(sharing, number, statement, defined_before, settings, [
                (w, f"the copy in GEMM order statement {holders[w.name][2] + 1} made")
                for w in read])
            # the statements that would newly hold each copy (until this one), and the bytes
            extra: dict[int, int] = {}
            for w in read:
                step, _, by = holders[w.name]
                size = math.prod(w.shape) * settings.itemsize
                for k in range(last_reader.get(w.name, by + 1), number):
                    extra[k] = extra.get(k, 0) + size
                if w.name not in last_reader and step.chunked(plans[by].statement.ranges):
                    # the holder copies its chunks into slices of the whole, not into one
                    extra[by] = extra.get(by, 0) + size - size * step.chunk // w.shape[0]
            fits = all(plans[k].peak_temporary_bytes + size <= settings.budget
                       for k, size in extra.items())
            if fits and candidate.estimated_ns < sp.estimated_ns \
                    and all(_gemm_operand_only(candidate, w.name) for w in read):
                plans[number] = sp = candidate
                statements[number] = statement
                for k, size in extra.items():  # (the statements in between hold the copy)
                    plans[k] = replace(plans[k],
                                       peak_temporary_bytes=plans[k].peak_temporary_bytes + size)
                for window in read:
                    step, side, by = holders[window.name]
                    step.shared = _with_side(step.shared, side, window.name)
                    tensors[window.name] = TensorInfo(window.name, window.shape)
                    plans[by] = replace(plans[by], strategy=(
                        f"{plans[by].strategy}; the im2col copy of {window.read} kept in "
                        f"{window.name} for statement {number + 1}"))
                    last_reader[window.name] = number
        for step, side, node, axes in full_window_copies(sp, unwritten, chunks=True):
            shape = tuple(sp.statement.ranges[a] for a in axes)
            if not any(w.read == node.read and w.axes == axes and w.shape == shape
                       for w, *_ in held):
                window = KeptWindow(_copy_name(node.read.tensor, taken), node.read, axes, shape)
                held.append((window, step, side, number))
    if not last_reader:
        return plan
    return replace(plan, program=replace(program, statements=tuple(statements), tensors=tensors),
                   statements=plans)


def boundary_pad(maps: tuple[IndexMap, ...], shape: tuple[int, ...],
                 sizes: dict[str, int]) -> tuple[tuple[int, int], ...]:
    """Per dimension, how far the maps reach before 0 and past the end of `shape`."""
    pad = []
    for m, size in zip(maps, shape):
        low, high = m.extent(sizes)
        pad.append((max(0, -low), max(0, high - (size - 1))))
    return tuple(pad)


def mode_from_environment(variable: str) -> str:
    """A lowering switch (TENSORC_FFT, TENSORC_JIT, TENSORC_PACK): 'auto' (the default, and
    what an unknown value means), 'off', or 'always' (for tests)."""
    mode = os.environ.get(variable, "auto").strip().lower()
    return mode if mode in ("auto", "off", "always") else "auto"


def fft_mode() -> str:
    """TENSORC_FFT: 'auto' (default: FFT convolutions where the cost model prefers them),
    'off', or 'always' (wherever a contraction has their shape: for tests)."""
    return mode_from_environment("TENSORC_FFT")


def shift_mode() -> str:
    """TENSORC_SHIFT: 'auto' (default: shifted GEMMs where the cost model prefers them),
    'off', or 'always' (wherever a contraction has their shape: for tests)."""
    return mode_from_environment("TENSORC_SHIFT")


def _epilogue_ops(node: Node) -> list[str]:
    ops = []
    while isinstance(node, ElementwiseNode):
        ops.append(node.op)
        node = node.args[0]
    return list(reversed(ops))


# ---- printing ----------------------------------------------------------------------------

def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _axes_text(axes: tuple[str, ...]) -> str:
    return f"[{','.join(axes)}]"


def step_text(step: PairStep, sizes: dict[str, int]) -> str:
    """One pairwise step in words: the plan's 'how' column and the generated comments."""
    def size(axes) -> int:
        return math.prod(sizes[a] for a in axes)
    if step.kind == "reduce":
        return f"sum over {','.join(step.presum_left)}"
    if step.kind == "multiply":
        return "broadcast multiply"
    calls = size(step.batch)
    gemm = f"[{size(step.kept_left)}x{size(step.contracted)}]@[{size(step.contracted)}x{size(step.kept_right)}]"
    text = f"GEMM {gemm}" if calls == 1 else f"batched GEMM {calls} x {gemm}"
    summed = ",".join(step.contracted)
    if step.summed:
        return f"{text}, sum over {summed}, then over the batch {','.join(step.summed)}"
    return f"{text}, sum over {summed}"


def format_plan(plan: ProgramPlan) -> str:
    program = plan.program
    lines = [f"tensorc plan: {len(plan.statements)} statement"
             f"{'s' if len(plan.statements) != 1 else ''}, dtype {plan.dtype}"]
    lines.append("  inputs:  " + ", ".join(f"{n}{list(program.tensors[n].shape)}"
                                           for n in program.inputs))
    lines.append("  outputs: " + ", ".join(f"{n}{list(program.tensors[n].shape)}"
                                           for n in program.outputs))
    if plan.kept_windows:
        lines.append("  kept:    " + ", ".join(map(str, plan.kept_windows))
                     + " (im2col copies, also returned for the adjoint)")
    lines.append(f"  total: {_si(plan.flops, 'FLOP')}, peak temporary "
                 f"{_si(plan.peak_temporary_bytes, 'B')} (estimated)")
    for sp in plan.statements:
        s = sp.statement
        lines.append("")
        lines.append(f"statement {sp.number + 1} (line {s.line}): {s.text}")
        lines.append("  ranges: " + " ".join(f"{n}={s.ranges[n]}" for n in sp.order))
        lines.append(f"  strategy: {sp.strategy}")
        speedup = sp.naive_flops / sp.flops if sp.flops else 1.0
        lines.append(f"  naive FLOPs: {sp.naive_flops:,}   planned FLOPs: {sp.flops:,}   "
                     f"speedup: {speedup:.3g}x")
        lines.append(f"  largest intermediate: {sp.largest_intermediate:,} elements   "
                     f"peak temporary: {_si(sp.peak_temporary_bytes, 'B')} (estimated)")
        sizes = axis_sizes(sp)
        steps = [(c, st) for c in contractions_in(sp.root) for st in c.steps]
        if steps and sp.loop_nest is None and sp.computed_in is None:
            lines.append(f"  {'step':<5} {'contraction':<40} {'FLOPs':>14}  how")
            for number, (_, step) in enumerate(steps, 1):
                text = (f"{_axes_text(step.left_axes)},{_axes_text(step.right_axes)}"
                        f"->{_axes_text(step.result_axes)}" if step.left != step.right
                        else f"{_axes_text(step.left_axes)}->{_axes_text(step.result_axes)}")
                how = step_text(step, sizes)
                if step.copy_bytes and step.chunked(s.ranges):
                    chunk_bytes = step.copy_bytes * step.chunk // s.ranges[step.chunk_axis]
                    summed = " (summed)" if step.chunk_axis in step.contracted else ""
                    held = next((name for name in step.shared if name), None)
                    how += (f", im2col in chunks of {step.chunk} along {step.chunk_axis}{summed} "
                            + (f"(each into its slice of {held})" if held else
                               f"({_si(chunk_bytes, 'B')} reused buffer)"))
                elif step.copy_bytes:
                    how += f", copies {_si(step.copy_bytes, 'B')} into GEMM layout"
                how += "".join(f", kept as {name}" for name in step.kept if name)
                lines.append(f"  {number:<5} {text:<40} {step.flops:>14,}  {how}")
        for contraction in contractions_in(sp.root):
            if contraction.shifted is not None and sp.loop_nest is None:
                lines.append(f"  GEMMs: {shifted_text(contraction.shifted, sizes)}")
    if plan.appendix is not None:
        lines.append(str(plan.appendix))
    return "\n".join(lines)


def shifted_text(shifted: ShiftedPlan, sizes: dict[str, int]) -> str:
    """'16 x 9 = 144 BLAS calls [64x64]@[64x3248], 3.84 GFLOP (rows 58 wide for 56
    outputs)'"""
    m, n, k = shifted.gemm_shape
    loops = [sizes[a] for a in shifted.looped] + [sizes[a] for a in shifted.offsets]
    calls = " x ".join(map(str, loops)) + f" = {shifted.gemms:,}" if len(loops) > 1 else \
        f"{shifted.gemms:,}"
    shape = f"[{m}x{k}]@[{k}x{n}]"
    last, width = shifted.positions[-1], shifted.padded[-1]
    wide = f" (rows {width} wide for {sizes[last]} positions)" if len(shifted.padded) > 1 \
        and width != sizes[last] else ""
    return f"{calls} BLAS calls {shape}, {_si(2 * m * n * k * shifted.gemms, 'FLOP')}{wide}"


def axis_sizes(sp: StatementPlan) -> dict[str, int]:
    """The sizes of every axis a statement's plan uses: its indices, and the frequency axes
    of FFT convolutions."""
    sizes = dict(sp.statement.ranges)
    for contraction in contractions_in(sp.root):
        if contraction.fft is not None:
            sizes.update(contraction.fft.sizes)
    return sizes


@dataclass(frozen=True)
class BlasCall:
    """One matmul a plan makes, `calls` times: [batch x] [m x k] @ [k x n]."""

    statement: int  # its number in the plan (from 0)
    calls: int
    batch: int
    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        return 2 * self.calls * self.batch * self.m * self.k * self.n


def blas_calls(plan: ProgramPlan) -> list[BlasCall]:
    """The matmuls a NumPy-backend plan makes per kernel call, in the order they run: its
    GEMM steps (a chunked one as one call per chunk) and its shifted GEMMs. Loop kernels,
    FFTs and elementwise work are not BLAS and are left out. The benchmarks time these
    alone to tell how much of a kernel is BLAS."""
    found = []
    for sp in plan.statements:
        if sp.loop_nest is not None or sp.computed_in is not None:
            continue
        sizes = axis_sizes(sp)
        for contraction in contractions_in(sp.root):
            if contraction.shifted is not None:
                m, n, k = contraction.shifted.gemm_shape
                found.append(BlasCall(sp.number, contraction.shifted.gemms, 1, m, k, n))
                continue
            if contraction.fft is not None:
                continue
            for step in contraction.steps:
                if step.kind != "gemm":
                    continue
                dims = {"batch": step.batch, "m": step.kept_left, "k": step.contracted,
                        "n": step.kept_right}  # (kept_left: the matmul's left operand)
                shape = {key: math.prod(sizes[a] for a in axes) for key, axes in dims.items()}
                if not step.chunked(sizes):
                    found.append(BlasCall(sp.number, 1, **shape))
                    continue
                # chunks of the chunk axis: equal ones, then what is left
                key = next(key for key, axes in dims.items() if step.chunk_axis in axes)
                whole, left = divmod(sizes[step.chunk_axis], step.chunk)
                per_entry = shape[key] // sizes[step.chunk_axis]
                for calls, entries in ((whole, step.chunk), (1, left)):
                    if calls and entries:
                        found.append(BlasCall(sp.number, calls,
                                              **{**shape, key: per_entry * entries}))
    return found


def contractions_in(node: Node) -> list[ContractNode]:
    """Every contraction in a planned expression, in the order they run."""
    found: list[ContractNode] = []
    if isinstance(node, ContractNode):
        for operand in node.operands:
            found += contractions_in(operand)
        found.append(node)
    elif isinstance(node, ElementwiseNode):
        for arg in node.args:
            found += contractions_in(arg)
    elif isinstance(node, ReduceNode):
        found += contractions_in(node.body)
    return found
