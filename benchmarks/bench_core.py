"""Core benchmark: tensorc kernels against their natural peers, as ratios tensorc/peer.

    python -m benchmarks                # full run (~1 min on a quiet 2-core machine)
    python -m benchmarks --quick        # smoke test, ~20 s
    python -m benchmarks --markdown     # the table as markdown
    python -m benchmarks --threads 1    # both sides single-threaded (steadier when shared)
    python benchmarks/bench_core.py --only conv --show-source

Method (everything in one process, float32 inputs):
  * each kernel is compiled once (tc.compile / opt_einsum.contract_expression /
    np.einsum_path) outside the timing, and every side's result is checked against the
    peer (allclose, rtol 1e-3) before anything is timed;
  * every side is warmed up, then calibrated to a number of inner calls that takes at
    least --min-time (20 ms by default);
  * the sides of a case are timed in alternation, A B A B ... (with 3+ sides the order
    rotates every repeat: A B C, B C A, ...), so slow drifts of the machine hit all sides
    alike; a side's time is the median over --repeats of (repeat time / inner calls);
  * when the timing switches between NumPy (OpenBLAS) and PyTorch (OpenMP), it first
    pauses --pause seconds (0.25) so the other runtime's busy-waiting worker threads go to
    sleep, then makes one untimed call: otherwise, on 2 cores, each side is slowed by the
    other's spinning threads (PyTorch conv2d measured ~2x slower right after a matmul);
  * the CPU time other processes used while a case was timed is measured (/proc/stat);
    above 10% the case is timed again (--retries, default 2) and the quietest attempt is
    kept and flagged "!busy N%": with 2 cores, one busy core makes 2-thread GEMMs and
    convolutions wait for their descheduled second thread, often several times slower;
  * ratio = median tensorc time / median peer time; "best peer" is the fastest peer.
    "[view]" marks a side whose result is a non-contiguous view (np.einsum, opt_einsum
    return transposed views; tensorc returns dense arrays).
  * under each convolution forward+backward, the matmuls of tensorc's plan
    (tc.plan.blas_calls) are timed alone, on operands made once, by NumPy and by
    torch.matmul: a floor under tensorc's time, and how NumPy's BLAS compares with
    PyTorch's on those very shapes (a summary line, no target).

Targets (printed under the table):
  * every pure contraction: ratio <= 1.0 against the best of opt_einsum / np.einsum;
  * convolution forward, over the first five layers (FIRST_CONVS: LeNet-1 to strided, so
    the figures stay comparable with earlier runs): the median of the conv ratios against
    PyTorch NCHW <= 2.0;
  * convolution forward+backward (tc.compile_grad: output, input and weight gradients),
    the same five layers, against PyTorch autograd NCHW: median <= 2.0, and tensorc's
    backward (a tc.grad kernel) at most 3x its own forward on each layer;
  * every convolution forward+backward (all layers, the depthwise one too) against
    PyTorch's best layout (NCHW or channels-last): median <= 1.0, none above 1.5
    (depthwise <= 2.0);
  * max-pool forward: ratio < 1.0 against PyTorch NCHW (every forward case);
  * max-pool forward and forward+backward: ratio < 1.0 against PyTorch's best layout;
  * one training step of the LeNet (tensorc.nn: forward, loss, backward, SGD with
    momentum; batch 64 of 28x28) against the same step in PyTorch: ratio <= 1.5;
  * per-call overhead on tiny inputs (the "overhead" matmul): ratio <= 1.5 against
    opt_einsum.contract_expression (the tiny conv against F.conv2d is shown, no target);
  * compile time (a table of its own, `--only compile`): a cold tc.compile of each conv
    layer and a cold tc.compile_grad of its forward+backward (tensorc's kernel cache
    cleared first; median of 5 compiles) < 20 ms.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

RTOL = 1e-3
# extra rows under a convolution's forward+backward, which the summary reads
FORWARD_ONLY, BACKWARD_ONLY = "tensorc forward only", "tensorc backward only"
GEMMS_BY_NUMPY = "tensorc's GEMMs alone (NumPy BLAS)"
GEMMS_BY_TORCH = "the same GEMMs by torch.matmul"
BUSY = 0.10  # other processes' CPU share above which a case's timings are flagged

CONV_VALID = "y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]"
CONV_PAD1 = "y[n,o,h,w] = x[n,c,h+u-1,w+v-1] * k[o,c,u,v]   where h < {H}, w < {W}, x: zero"
CONV_S2P1 = "y[n,o,h,w] = x[n,c,2*h+u-1,2*w+v-1] * k[o,c,u,v]   where h < {H}, w < {W}, x: zero"
CONV_S2P3 = "y[n,o,h,w] = x[n,c,2*h+u-3,2*w+v-3] * k[o,c,u,v]   where h < {H}, w < {W}, x: zero"
MAXPOOL = "p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   where u < 2, v < 2"
# A padded max-pool: PyTorch pads with -inf; 'replicate' reads an edge element the window
# already holds, so the maximum is the same (and the gradient too: the two reads of that
# element count as a tie, and both halves go back to it).
MAXPOOL_PADDED = ("p[n,c,h,w] = max[u,v](y[n,c,{S}*h+u-{P},{S}*w+v-{P}])"
                  "   where u < {K}, v < {K}, h < {H}, w < {W}, y: replicate")


def window_positions(xshape: tuple[int, ...], window: int, stride: int,
                     padding: int) -> tuple[int, ...]:
    """The output's spatial sizes of a convolution or pool over NCHW `xshape`."""
    return tuple((n + 2 * padding - window) // stride + 1 for n in xshape[2:])


def maxpool_program(xshape: tuple[int, ...], window: int, stride: int, padding: int) -> str:
    if (window, stride, padding) == (2, 2, 0):
        return MAXPOOL
    height, width = window_positions(xshape, window, stride, padding)
    return MAXPOOL_PADDED.format(S=stride, P=padding, K=window, H=height, W=width)

# (name, input NCHW, out channels, kernel, stride, padding, tensorc program)
CONVS = [
    ("conv LeNet-1 N64 C1 28x28->16 k5", (64, 1, 28, 28), 16, 5, 1, 0, CONV_VALID),
    ("conv LeNet-2 N64 C16 12x12->32 k5", (64, 16, 12, 12), 32, 5, 1, 0, CONV_VALID),
    ("conv ResNet N16 C64 56x56->64 k3 p1", (16, 64, 56, 56), 64, 3, 1, 1,
     CONV_PAD1.format(H=56, W=56)),
    ("conv ResNet N16 C128 28x28->128 k3 p1", (16, 128, 28, 28), 128, 3, 1, 1,
     CONV_PAD1.format(H=28, W=28)),
    ("conv strided N16 C64 56x56->64 k3 s2 p1", (16, 64, 56, 56), 64, 3, 2, 1,
     CONV_S2P1.format(H=28, W=28)),
    ("conv 1x1 N16 C256 28x28->128", (16, 256, 28, 28), 128, 1, 1, 0, CONV_VALID),
    ("conv stem N8 C3 224x224->64 k7 s2 p3", (8, 3, 224, 224), 64, 7, 2, 3,
     CONV_S2P3.format(H=112, W=112)),
]
# Issue 6's target for pure contractions: at most the best peer's time on every case.
CONTRACTION_TARGET = 1.0
# The layers the conv forward and forward+backward vs NCHW targets were set on; they stay
# computed over these, so that their figures compare with earlier runs.
FIRST_CONVS = {name for name, *_ in CONVS[:5]}

DEPTHWISE = "y[n,c,h,w] = x[n,c,h+u-1,w+v-1] * k[c,u,v]   where h < {H}, w < {W}, x: zero"
# (name, input NCHW): depthwise 3x3, padding 1, one filter per channel (groups=C)
DEPTHWISES = [("depthwise 3x3 p1 N16 C64 56x56", (16, 64, 56, 56))]

# (name, input NCHW, window, stride, padding)
POOLS = [
    ("maxpool 2x2 s2 N64 C16 24x24", (64, 16, 24, 24), 2, 2, 0),
    ("maxpool 2x2 s2 N16 C64 56x56", (16, 64, 56, 56), 2, 2, 0),
    ("maxpool 3x3 s2 p1 N16 C64 112x112", (16, 64, 112, 112), 3, 2, 1),  # ResNet's, after the stem
]

# (name, batch shape): the classic two-block LeNet (5x5 convolutions with 16 and 32
# channels, ReLU, 2x2 max-pooling, then 512 and 10 units), one SGD+momentum step
TRAINING = [("train step LeNet N64 1x28x28 SGD+momentum", (64, 1, 28, 28))]

# (name, einsum equation, operand shapes, tensorc program over inputs A, B, C, ...)
CONTRACTIONS = [
    ("chain ij,jk,kl->il 256x512x128x512", "ij,jk,kl->il",
     [(256, 512), (512, 128), (128, 512)],
     "out[i,l] = A[i,j] * B[j,k] * C[k,l]"),
    ("bmm bij,bjk->bik b64 n256", "bij,bjk->bik",
     [(64, 256, 256), (64, 256, 256)],
     "out[b,i,k] = A[b,i,j] * B[b,j,k]"),
    ("ring ab,bc,cd,de,ea-> n256", "ab,bc,cd,de,ea->",
     [(256, 256)] * 5,
     "out = A[a,b] * B[b,c] * C[c,d] * D[d,e] * E[e,a]"),
    ("open ring aib,...,ema->ijklm bond6 phys12", "aib,bjc,ckd,dle,ema->ijklm",
     [(6, 12, 6)] * 5,
     "out[i,j,k,l,m] = A[a,i,b] * B[b,j,c] * C[c,k,d] * D[d,l,e] * E[e,m,a]"),
    ("tucker abc,ia,jb,kc->ijk core48 out96", "abc,ia,jb,kc->ijk",
     [(48, 48, 48), (96, 48), (96, 48), (96, 48)],
     "out[i,j,k] = A[a,b,c] * B[i,a] * C[j,b] * D[k,c]"),
    ("attention bhqd,bhkd->bhqk b8 h8 q256 d64", "bhqd,bhkd->bhqk",
     [(8, 8, 256, 64), (8, 8, 256, 64)],
     "out[b,h,q,k] = A[b,h,q,d] * B[b,h,k,d]"),
]

# Tiny inputs, where a call's fixed cost is the time (as CONTRACTIONS and CONVS; not in
# their targets): the matmul against opt_einsum.contract_expression, the conv against conv2d
TINY_CONTRACTIONS = [("overhead tiny matmul 2x3 @ 3x4", "ij,jk->ik", [(2, 3), (3, 4)],
                      "out[i,k] = A[i,j] * B[j,k]")]
TINY_CONVS = [("overhead tiny conv N1 C1 4x4 k2", (1, 1, 4, 4), 1, 2, 1, 0, CONV_VALID)]


# ---------------------------------------------------------------------------------------
# measurement

@dataclass
class Side:
    """One implementation of a case: a zero-argument callable and its timings."""

    name: str
    fn: Callable[[], Any]
    runtime: str = "numpy"  # whose thread pool runs it: "numpy" (OpenBLAS) or "torch"
    inner: int = 1
    times: list[float] = field(default_factory=list)  # seconds per call, one per repeat
    view: bool = False  # returns a non-contiguous view (a caller may still pay for a copy)
    checked: bool = True  # compared with the reference (off for partial work: backward only)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (a noise estimate)."""
        if len(self.times) < 4:
            return (max(self.times) - min(self.times)) / self.median
        q = statistics.quantiles(self.times, n=4)
        return (q[2] - q[0]) / self.median


@dataclass
class Case:
    group: str            # "contraction" | "conv" | "convgrad" | "pool" | "poolgrad" | ...
    name: str
    tensorc: Side | None
    peers: list[Side]
    extras: list[Side] = field(default_factory=list)  # extra tensorc variants (tc.einsum)
    target_peer: str | None = None  # the peer the target is defined against (None: best)
    error: str | None = None
    kernel: Any = None  # the tensorc Kernel, for --show-source
    busy: float | None = None  # share of the CPU other processes used while it was timed

    def best_peer(self) -> Side:
        return min(self.peers, key=lambda s: s.median)

    def peer(self, name: str) -> Side:
        return next(s for s in self.peers if s.name == name)

    def extra(self, name: str) -> Side | None:
        return next((s for s in self.extras if s.name == name), None)

    def target_ratio(self) -> float:
        peer = self.peer(self.target_peer) if self.target_peer else self.best_peer()
        return self.tensorc.median / peer.median


def _call_loop(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - start


class Settler:
    """Lets the previous block's thread pool go idle before timing a different runtime.

    OpenBLAS workers (NumPy: tensorc, opt_einsum, np.einsum) busy-wait ~0.1 s after a
    call and OpenMP workers (PyTorch) spin too; on 2 cores, a block timed right after the
    other runtime's block loses its cores to those spinning threads (PyTorch conv2d ran
    ~2x slower right after a NumPy matmul). So when the runtime changes, sleep `pause`
    seconds and make one untimed call, as if each side ran alone.
    """

    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.last: str | None = None

    def __call__(self, side: Side) -> None:
        if self.last is not None and self.last != side.runtime and self.pause > 0:
            time.sleep(self.pause)
            side.fn()
        self.last = side.runtime


def measure(sides: list[Side], repeats: int, min_time: float, warmup: int,
            pause: float) -> None:
    """Warm up, calibrate inner counts, then time the sides in rotating alternation."""
    settle = Settler(pause)
    for side in sides:
        settle(side)
        for _ in range(warmup):
            side.fn()
        one = _call_loop(side.fn, 1)
        side.inner = max(1, math.ceil(min_time / max(one, 1e-9)))
        elapsed = _call_loop(side.fn, side.inner)  # more warm-up, and a check of the count
        while elapsed < min_time:
            side.inner = max(side.inner + 1, math.ceil(side.inner * 1.2 * min_time / elapsed))
            elapsed = _call_loop(side.fn, side.inner)
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for repeat in range(repeats):
            shift = repeat % len(sides)
            for side in sides[shift:] + sides[:shift]:
                settle(side)
                side.times.append(_call_loop(side.fn, side.inner) / side.inner)
    finally:
        if gc_was_enabled:
            gc.enable()


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _dense(value: Any) -> bool:
    """Whether an output is laid out densely (C order, or a torch memory format)."""
    if isinstance(value, tuple):
        return all(_dense(item) for item in value)
    if hasattr(value, "is_contiguous"):
        import torch
        return value.is_contiguous() or (value.dim() == 4 and value.is_contiguous(
            memory_format=torch.channels_last))
    value = np.asarray(value)
    return value.ndim < 2 or value.flags.c_contiguous


def check_close(name: str, got: Any, ref: Any) -> str | None:
    """None if got matches ref (rtol 1e-3; atol 1e-5 of ref's largest magnitude); tuples
    (output and gradients) are compared item by item."""
    if isinstance(ref, tuple):
        problems = [check_close(f"{name} [{i}]", g, r) for i, (g, r) in enumerate(zip(got, ref))]
        return "; ".join(p for p in problems if p) or None
    got, ref = _as_numpy(got), _as_numpy(ref)
    if got.shape != ref.shape:
        return f"{name}: shape {got.shape}, expected {ref.shape}"
    scale = float(np.abs(ref).max()) if ref.size else 1.0
    if not np.allclose(got, ref, rtol=RTOL, atol=1e-5 * scale):
        worst = float(np.abs(got.astype(np.float64) - ref).max())
        return f"{name}: wrong result, max abs error {worst:.3g} (ref max {scale:.3g})"
    return None


# ---------------------------------------------------------------------------------------
# cases

def build_conv_case(tc, torch, rng, name, xshape, cout, ksize, stride, pad, src) -> Case:
    import torch.nn.functional as F
    x = rng.standard_normal(xshape, dtype=np.float32)
    k = (rng.standard_normal((cout, xshape[1], ksize, ksize), dtype=np.float32)
         / np.float32(math.sqrt(xshape[1] * ksize * ksize)))
    xt, kt = torch.from_numpy(x), torch.from_numpy(k)
    xc = xt.contiguous(memory_format=torch.channels_last)
    kc = kt.contiguous(memory_format=torch.channels_last)
    kern = tc.compile(src, dtype="float32", x=x.shape, k=k.shape)
    case = Case("conv", name,
                Side("tensorc", lambda: kern(x=x, k=k)),
                [Side("torch conv2d NCHW", lambda: F.conv2d(xt, kt, stride=stride, padding=pad),
                      "torch"),
                 Side("torch conv2d channels_last",
                      lambda: F.conv2d(xc, kc, stride=stride, padding=pad), "torch")],
                target_peer="torch conv2d NCHW")
    case.kernel = kern
    return case


def build_conv_grad_case(tc, torch, rng, name, xshape, cout, ksize, stride, pad, src) -> Case:
    """Forward + backward (input and weight gradients, cotangent dy) against torch autograd;
    the extras time tensorc's forward alone and its backward (tc.grad kernel) alone."""
    import torch.nn.functional as F
    x = rng.standard_normal(xshape, dtype=np.float32)
    k = (rng.standard_normal((cout, xshape[1], ksize, ksize), dtype=np.float32)
         / np.float32(math.sqrt(xshape[1] * ksize * ksize)))
    forward = tc.compile(src, dtype="float32", x=x.shape, k=k.shape)
    y_shape = forward(x=x, k=k).shape
    dy = rng.standard_normal(y_shape, dtype=np.float32)
    both = tc.compile_grad(src, wrt=["x", "k"], dtype="float32", x=x.shape, k=k.shape,
                           dy=dy.shape)
    backward = tc.compile(tc.grad(src, wrt=["x", "k"]), dtype="float32", x=x.shape,
                          k=k.shape, dy=dy.shape)

    def torch_side(memory_format):
        xt = torch.from_numpy(x).contiguous(memory_format=memory_format).requires_grad_()
        kt = torch.from_numpy(k).contiguous(memory_format=memory_format).requires_grad_()
        dyt = torch.from_numpy(dy).contiguous(memory_format=memory_format)

        def run():
            with torch.enable_grad():
                y = F.conv2d(xt, kt, stride=stride, padding=pad)
                dx, dk = torch.autograd.grad(y, (xt, kt), dyt)
            return y.detach(), dx, dk
        return run

    def tensorc_side():
        result = both(x=x, k=k, dy=dy)
        return result["y"], result["dx"], result["dk"]

    case = Case("convgrad", name,
                Side("tensorc", tensorc_side),
                [Side("torch NCHW fwd+bwd", torch_side(torch.contiguous_format), "torch"),
                 Side("torch channels_last fwd+bwd", torch_side(torch.channels_last), "torch")],
                extras=[Side(FORWARD_ONLY, lambda: forward(x=x, k=k), checked=False),
                        Side(BACKWARD_ONLY, lambda: backward(x=x, k=k, dy=dy),
                             checked=False),
                        *blas_sides(torch, both.plan)],
                target_peer="torch NCHW fwd+bwd")
    case.kernel = both
    return case


def blas_sides(torch, plan) -> list[Side]:
    """The matmuls of a tensorc plan alone (tc.plan.blas_calls), on operands made once: by
    NumPy (OpenBLAS, what the kernel calls) and by torch.matmul (PyTorch's BLAS). The first
    is a floor under the kernel's time; their ratio is what BLAS alone costs tensorc."""
    from tensorc.plan import blas_calls
    calls = blas_calls(plan)
    rng = np.random.default_rng(1)
    operands = [tuple(rng.standard_normal((c.batch,) * (c.batch > 1) + shape, dtype=np.float32)
                      for shape in ((c.m, c.k), (c.k, c.n), (c.m, c.n)))
                for c in calls]  # (2-D where unbatched: torch.matmul then calls its GEMM)
    tensors = [tuple(map(torch.from_numpy, arrays)) for arrays in operands]

    def numpy_side():
        for call, (a, b, out) in zip(calls, operands):
            for _ in range(call.calls):
                np.matmul(a, b, out=out)

    def torch_side():
        for call, (a, b, out) in zip(calls, tensors):
            for _ in range(call.calls):
                torch.matmul(a, b, out=out)
    return [Side(GEMMS_BY_NUMPY, numpy_side, checked=False),
            Side(GEMMS_BY_TORCH, torch_side, "torch", checked=False)]


def build_depthwise_case(tc, torch, rng, name, xshape, backward) -> Case:
    """Forward (or forward + input and weight gradients) against F.conv2d(groups=C)."""
    import torch.nn.functional as F
    channels = xshape[1]
    x = rng.standard_normal(xshape, dtype=np.float32)
    k = rng.standard_normal((channels, 3, 3), dtype=np.float32) / np.float32(3)
    src = DEPTHWISE.format(H=xshape[2], W=xshape[3])
    dy = rng.standard_normal(xshape, dtype=np.float32)
    if backward:
        kern = tc.compile_grad(src, wrt=["x", "k"], dtype="float32", x=x.shape, k=k.shape,
                               dy=dy.shape)
    else:
        kern = tc.compile(src, dtype="float32", x=x.shape, k=k.shape)

    def tensorc_side():
        if not backward:
            return kern(x=x, k=k)
        result = kern(x=x, k=k, dy=dy)
        return result["y"], result["dx"], result["dk"]

    def torch_side(memory_format):
        xt = torch.from_numpy(x).contiguous(memory_format=memory_format)
        kt = torch.from_numpy(k)[:, None].contiguous(memory_format=memory_format)
        dyt = torch.from_numpy(dy).contiguous(memory_format=memory_format)
        if not backward:
            return lambda: F.conv2d(xt, kt, padding=1, groups=channels)
        xt.requires_grad_()
        kt.requires_grad_()

        def run():
            with torch.enable_grad():
                y = F.conv2d(xt, kt, padding=1, groups=channels)
                dx, dk = torch.autograd.grad(y, (xt, kt), dyt)
            return y.detach(), dx, dk[:, 0]
        return run

    case = Case("depthwise", name, Side("tensorc", tensorc_side),
                [Side("torch NCHW", torch_side(torch.contiguous_format), "torch"),
                 Side("torch channels_last", torch_side(torch.channels_last), "torch")])
    case.kernel = kern
    return case


def build_pool_case(tc, torch, rng, name, xshape, window, stride, padding,
                    backward) -> Case:
    """Forward (or forward + input gradient, cotangent dp) against F.max_pool2d. tensorc
    splits a tied maximum's gradient equally, torch gives it to the first one: the random
    float inputs have no ties, so the gradients are compared as they are."""
    import torch.nn.functional as F
    source = maxpool_program(xshape, window, stride, padding)
    y = rng.standard_normal(xshape, dtype=np.float32)
    pooled = window_positions(xshape, window, stride, padding)
    dp = rng.standard_normal(xshape[:2] + pooled, dtype=np.float32)
    if backward:
        kern = tc.compile_grad(source, wrt=["y"], dtype="float32", y=y.shape, dp=dp.shape)
    else:
        kern = tc.compile(source, dtype="float32", y=y.shape)

    def tensorc_side():
        if not backward:
            return kern(y=y)
        result = kern(y=y, dp=dp)
        return result["p"], result["dy"]

    def torch_side(memory_format):
        yt = torch.from_numpy(y).contiguous(memory_format=memory_format)
        if not backward:
            return lambda: F.max_pool2d(yt, window, stride, padding)
        yt.requires_grad_()
        dpt = torch.from_numpy(dp).contiguous(memory_format=memory_format)

        def run():
            with torch.enable_grad():
                p = F.max_pool2d(yt, window, stride, padding)
                dy, = torch.autograd.grad(p, yt, dpt)
            return p.detach(), dy
        return run

    case = Case("pool", name, Side("tensorc", tensorc_side),
                [Side("torch max_pool2d NCHW", torch_side(torch.contiguous_format), "torch"),
                 Side("torch max_pool2d channels_last", torch_side(torch.channels_last),
                      "torch")],
                target_peer="torch max_pool2d NCHW")
    case.kernel = kern
    return case


def build_training_case(torch, rng, name, xshape) -> Case:
    """tensorc.nn's train_step against the same step in PyTorch, from the same weights."""
    from tensorc import nn
    model = nn.Sequential(nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    tnn = torch.nn
    reference = tnn.Sequential(tnn.Conv2d(1, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2),
                               tnn.Conv2d(16, 32, 5), tnn.ReLU(), tnn.MaxPool2d(2),
                               tnn.Flatten(), tnn.Linear(512, 512), tnn.ReLU(),
                               tnn.Linear(512, 10))
    model.load_state_dict({k: v.detach().numpy().copy()
                           for k, v in reference.state_dict().items()})
    x = rng.standard_normal(xshape, dtype=np.float32)
    y = rng.integers(0, 10, size=xshape[0])
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss_function = nn.CrossEntropyLoss()
    optimizer = nn.SGD(model.parameters(), lr=0.01, momentum=0.9)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9)

    def tensorc_step():  # the first call's loss is checked against PyTorch's
        return np.float32(nn.train_step(model, loss_function, optimizer, x, y)[0])

    def torch_step():
        with torch.enable_grad():
            reference_optimizer.zero_grad()
            loss = F.cross_entropy(reference(xt), yt)
            loss.backward()
            reference_optimizer.step()
        return loss.detach()

    import torch.nn.functional as F
    return Case("train", name, Side("tensorc", tensorc_step),
                [Side("torch (NCHW)", torch_step, "torch")], target_peer="torch (NCHW)")


def build_contraction_case(tc, rng, name, equation, shapes, src, with_einsum) -> Case:
    import opt_einsum
    ops = [rng.random(shape, dtype=np.float32) for shape in shapes]
    names = "ABCDEFGH"[:len(ops)]
    arrays = dict(zip(names, ops))
    kern = tc.compile(src, dtype="float32", **{n: a.shape for n, a in arrays.items()})
    expression = opt_einsum.contract_expression(equation, *shapes)
    # No memory limit, like opt_einsum's default (numpy's default caps intermediates at
    # the largest operand, which can force a worse order).
    path = np.einsum_path(equation, *ops, optimize=("optimal", 2 ** 62))[0]
    case = Case("contraction", name, Side("tensorc", lambda: kern(**arrays)),
                [Side("opt_einsum", lambda: expression(*ops)),
                 Side("np.einsum+path", lambda: np.einsum(equation, *ops, optimize=path))])
    if with_einsum:
        case.extras.append(Side("tc.einsum (per-call front end)",
                                lambda: tc.einsum(equation, *ops)))
    case.kernel = kern
    return case


def run_case(builder: Callable[[], Case], name: str, group: str, args) -> Case:
    try:
        case = builder()
    except Exception as error:  # noqa: BLE001 - report and go on with the other cases
        return Case(group, name, None, [], error=f"build failed: {type(error).__name__}: {error}")
    case.group = group  # main's list decides which target a case counts in
    sides = [case.tensorc] + case.peers + case.extras
    try:
        outputs = {id(side): side.fn() for side in sides}
        for side in sides:
            side.view = not _dense(outputs[id(side)])
        reference = outputs[id(case.peers[0])]
        if not isinstance(reference, tuple):
            reference = _as_numpy(reference)
        problems = [check_close(side.name, outputs[id(side)], reference)
                    for side in [case.tensorc] + case.peers[1:] + case.extras if side.checked]
        del outputs
        problems = [p for p in problems if p]
        if problems:
            case.error = "; ".join(problems)
            return case
        # Time it; if other processes were busy meanwhile, wait a little and time it again
        # (up to --retries times), keeping the quietest attempt.
        best_times, case.busy, busy = None, None, 0.0
        for attempt in range(1 + max(0, args.retries)):
            if attempt:
                print(f"    busy ({100 * busy:.0f}% other load): timing it again",
                      file=sys.stderr, flush=True)
                time.sleep(args.retry_wait)
            for side in sides:
                side.times = []
            monitor = LoadMonitor()
            measure(sides, args.repeats, args.min_time, args.warmup, args.pause)
            busy = monitor.other_load() or 0.0
            if case.busy is None or busy < case.busy:
                case.busy, best_times = busy, [list(side.times) for side in sides]
            if busy <= BUSY:
                break
        for side, times in zip(sides, best_times):
            side.times = times
    except Exception as error:  # noqa: BLE001
        case.error = f"{type(error).__name__}: {error}"
    if args.show_source and getattr(case, "kernel", None) is not None:
        print(f"\n===== {name} =====\n{case.kernel.source}", file=sys.stderr)
    return case


def compile_times(tc, convs, repeats: int) -> list[tuple[str, float, float]]:
    """(layer, forward, forward+backward) cold compile times in seconds: tc.compile of the
    layer, and tc.compile_grad (wrt x, k) of it, each the median of `repeats` compiles
    made right after clearing tensorc's kernel cache."""
    from tensorc import kernel

    def cold(compile_function, src: str, **arguments) -> float:
        times = []
        for _ in range(repeats):
            with kernel._CACHE_LOCK:
                kernel._CACHE.clear()
            start = time.perf_counter()
            compile_function(src, dtype="float32", **arguments)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    # The process's first compile also pays imports and the grammar: not a layer's cost.
    tc.compile_grad("out[i] = A[i,j] * B[j]", wrt=["A"], dtype="float32", A=(2, 3), B=(3,),
                    dout=(2,))
    rows = []
    for name, xshape, cout, ksize, stride, pad, src in convs:
        kshape = (cout, xshape[1], ksize, ksize)
        yshape = (xshape[0], cout, *window_positions(xshape, ksize, stride, pad))
        rows.append((name, cold(tc.compile, src, x=xshape, k=kshape),
                     cold(tc.compile_grad, src, wrt=["x", "k"], x=xshape, k=kshape, dy=yshape)))
    return rows


# ---------------------------------------------------------------------------------------
# threads and environment

def _openblas_function(names: tuple[str, ...]):
    """A function of the OpenBLAS that NumPy loaded (found via /proc/self/maps), or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()
                     and "numpy" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in names:
            function = getattr(lib, symbol, None)
            if function is not None:
                return function
    return None


def openblas_threads() -> str:
    """NumPy's OpenBLAS thread count, read from the loaded library (no threadpoolctl)."""
    function = _openblas_function(("scipy_openblas_get_num_threads64_",
                                   "openblas_get_num_threads64_", "openblas_get_num_threads"))
    if function is None:
        return "default (unknown)"
    function.restype = ctypes.c_int
    return str(function())


def set_openblas_threads(n: int) -> bool:
    function = _openblas_function(("scipy_openblas_set_num_threads64_",
                                   "openblas_set_num_threads64_", "openblas_set_num_threads"))
    if function is None:
        return False
    function.argtypes = [ctypes.c_int]
    function(n)
    return True


class LoadMonitor:
    """How much CPU other processes used while we ran (from /proc/stat and our own times).

    Background work steals cores from multi-threaded kernels: a 2-thread GEMM whose second
    thread is descheduled waits for it, so even modest load can slow a side several-fold.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as stat:
                fields = [int(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system irq softirq steal
        total = busy + fields[3] + fields[4]       # + idle iowait
        return busy, total, time.process_time()

    def other_load(self) -> float | None:
        """Fraction of all cores' time spent by other processes since the start."""
        end = self._sample()
        if self.start is None or end is None:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        busy = (end[0] - self.start[0]) / ticks
        total = (end[1] - self.start[1]) / ticks
        ours = end[2] - self.start[2]
        return max(0.0, busy - ours) / total if total > 0 else None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------
# output

def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.4f}" if ms < 0.1 else f"{ms:.3f}" if ms < 10 else f"{ms:.2f}"


def table_rows(cases: list[Case]) -> list[list[str]]:
    rows = []
    for case in cases:
        if case.error or case.tensorc is None:
            rows.append([case.name, "-", "-", "ERROR", case.error or "", ""])
            continue
        best = case.best_peer()
        tc_time = case.tensorc.median
        mark = lambda side: side.name + (" [view]" if side.view else "")  # noqa: E731
        busy = (f" !busy {100 * case.busy:.0f}%" if case.busy is not None and case.busy > BUSY
                else "")
        noise = max(case.tensorc.spread, best.spread)
        rows.append([case.name + (" [view]" if case.tensorc.view else ""), _ms(tc_time),
                     _ms(best.median), f"{tc_time / best.median:.2f}",
                     mark(best) + (" (best)" if len(case.peers) > 1 else ""),
                     f"{100 * noise:.0f}%{busy}"])
        for peer in case.peers:
            if peer is not best:
                rows.append(["  - tensorc vs " + peer.name.split(" ")[-1], _ms(tc_time),
                             _ms(peer.median), f"{tc_time / peer.median:.2f}", mark(peer),
                             f"{100 * max(case.tensorc.spread, peer.spread):.0f}%"])
        for extra in case.extras:
            rows.append(["  - " + extra.name, _ms(extra.median), _ms(best.median),
                         f"{extra.median / best.median:.2f}", mark(best),
                         f"{100 * max(extra.spread, best.spread):.0f}%"])
    return rows


HEADER = ["case", "tensorc ms", "peer ms", "ratio (tensorc/peer)", "peer", "noise (IQR)"]
COMPILE_HEADER = ["compile time (cold), conv layer", "tc.compile ms", "tc.compile_grad ms"]


def format_table(rows: list[list[str]], markdown: bool, header: list[str] = HEADER,
                 right: frozenset[int] = frozenset({1, 2, 3, 5})) -> str:
    """The rows under `header`; the columns in `right` are right-aligned (numbers)."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---:" if i in right else ":---" for i in range(len(header)))
                 + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

    def line(row):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    rule = "-" * len(line(header))
    return "\n".join([line(header), rule] + [line(r) for r in rows] + [rule])


def _best_ratio(case: Case) -> float:
    return case.tensorc.median / case.best_peer().median


def _ratios(values: list[float]) -> str:
    return ", ".join(f"{r:.2f}" for r in values)


def summary(cases: list[Case], compiles: list[tuple[str, float, float]] = ()) -> list[str]:
    """The targets' lines (see the module docstring), headed by how many were met;
    `compiles` are compile_times' rows."""
    ok = [c for c in cases if not c.error and c.tensorc is not None]
    broken = [c.name for c in cases if c.error or c.tensorc is None]
    lines = []
    verdicts = []

    contractions = [c for c in ok if c.group == "contraction"]
    if contractions:
        worst = max(contractions, key=Case.target_ratio)
        failing = [c.name.split(" ")[0] for c in contractions
                   if c.target_ratio() > CONTRACTION_TARGET]
        passed = not failing
        verdicts.append(passed)
        lines.append(f"  pure contractions vs best peer: max ratio {worst.target_ratio():.2f} "
                     f"({worst.name.split(' ')[0]}), target every ratio <= "
                     f"{CONTRACTION_TARGET}: "
                     f"{'PASS' if passed else 'FAIL (' + ', '.join(failing) + ')'}")
    convs = [c for c in ok if c.group == "conv" and c.name in FIRST_CONVS]
    if convs:
        ratios = [c.target_ratio() for c in convs]
        median = statistics.median(ratios)
        passed = median <= 2.0
        verdicts.append(passed)
        best_ratios = [_best_ratio(c) for c in convs]
        lines.append(f"  conv forward (first 5 layers) vs torch NCHW: median ratio {median:.2f} "
                     f"(cases: {_ratios(ratios)}; vs best layout median "
                     f"{statistics.median(best_ratios):.2f}), target median <= 2.0: "
                     f"{'PASS' if passed else 'FAIL'}")
    grads = [c for c in ok if c.group == "convgrad"
             and c.name.replace(" fwd+bwd", "", 1) in FIRST_CONVS]
    if grads:
        ratios = [c.target_ratio() for c in grads]
        median = statistics.median(ratios)
        own = [c.extra(BACKWARD_ONLY).median / c.extra(FORWARD_ONLY).median for c in grads]
        passed = median <= 2.0 and all(r <= 3.0 for r in own)
        verdicts.append(passed)
        lines.append(f"  conv forward+backward (first 5 layers) vs torch NCHW: median ratio "
                     f"{median:.2f} (cases: {_ratios(ratios)}); tensorc backward / its forward: "
                     f"{_ratios(own)}; target median <= 2.0 and each "
                     f"backward <= 3x forward: {'PASS' if passed else 'FAIL'}")
    grads = [c for c in ok if c.group == "convgrad"]
    depthwise = [c for c in ok if c.group == "depthwise" and "fwd+bwd" in c.name]
    if grads or depthwise:
        ratios = [_best_ratio(c) for c in grads]
        depthwise_ratios = [_best_ratio(c) for c in depthwise]
        median = statistics.median(ratios + depthwise_ratios)
        passed = (median <= 1.0 and all(r <= 1.5 for r in ratios)
                  and all(r <= 2.0 for r in depthwise_ratios))
        verdicts.append(passed)
        lines.append(f"  conv forward+backward vs PyTorch's best layout: median ratio "
                     f"{median:.2f} (cases: {_ratios(ratios)}"
                     + (f"; depthwise {_ratios(depthwise_ratios)}" if depthwise else "")
                     + f"), target median <= 1.0, none above 1.5 (depthwise <= 2.0): "
                       f"{'PASS' if passed else 'FAIL'}")
    blas = [c for c in grads if c.extra(GEMMS_BY_NUMPY) and c.extra(GEMMS_BY_TORCH)]
    if blas:  # how much of those ratios BLAS alone sets (blas_sides)
        floors = [c.extra(GEMMS_BY_NUMPY).median / c.best_peer().median for c in blas]
        gaps = [c.extra(GEMMS_BY_NUMPY).median / c.extra(GEMMS_BY_TORCH).median for c in blas]
        lines.append(f"  conv forward+backward, tensorc's GEMMs alone vs PyTorch's best layout: "
                     f"median {statistics.median(floors):.2f} (cases: {_ratios(floors)}); "
                     f"NumPy's BLAS / torch.matmul on the same GEMMs: median "
                     f"{statistics.median(gaps):.2f} (cases: {_ratios(gaps)}) (no target: a "
                     "floor under the ratios above)")
    training = [c for c in ok if c.group == "train"]
    if training:
        ratios = [c.target_ratio() for c in training]
        passed = all(r <= 1.5 for r in ratios)
        verdicts.append(passed)
        lines.append(f"  LeNet training step vs torch: ratio {', '.join(f'{r:.2f}' for r in ratios)}"
                     f", target <= 1.5: {'PASS' if passed else 'FAIL'}")
    depthwise = [c for c in ok if c.group == "depthwise"]
    if depthwise:
        ratios = ", ".join(f"{c.name.split(' 3x3')[0]} {_best_ratio(c):.2f}" for c in depthwise)
        lines.append(f"  depthwise vs PyTorch's best layout: {ratios} (target: at most 2.0)")
    pools = [c for c in ok if c.group == "pool"]
    if pools:
        ratios = [c.target_ratio() for c in pools]
        passed = all(r < 1.0 for r in ratios)
        verdicts.append(passed)
        lines.append(f"  max-pool forward vs torch NCHW: ratios {_ratios(ratios)}, "
                     f"target every ratio < 1.0: {'PASS' if passed else 'FAIL'}")
    pools = [c for c in ok if c.group in ("pool", "poolgrad")]
    if pools:
        ratios = [_best_ratio(c) for c in pools]
        passed = all(r < 1.0 for r in ratios)
        verdicts.append(passed)
        lines.append(f"  max-pool forward and forward+backward vs PyTorch's best layout: ratios "
                     f"{_ratios(ratios)}, target every ratio < 1.0: {'PASS' if passed else 'FAIL'}")
    tiny = [c for c in ok if c.group == "overhead"]
    if tiny:
        ratios = [c.tensorc.median / c.peer("opt_einsum").median for c in tiny]
        passed = all(r <= 1.5 for r in ratios)
        verdicts.append(passed)
        lines.append(f"  per-call overhead on tiny inputs vs opt_einsum.contract_expression: "
                     f"ratio {_ratios(ratios)}, target <= 1.5: {'PASS' if passed else 'FAIL'}")
    tiny_convs = [c for c in ok if c.group == "overhead conv"]
    if tiny_convs:
        lines.append(f"  tiny conv vs PyTorch's best layout: ratio "
                     f"{_ratios([_best_ratio(c) for c in tiny_convs])} (no target)")
    if compiles:
        worst = max(compiles, key=lambda row: max(row[1:]))
        slowest = max(worst[1:])
        passed = slowest < 0.020
        verdicts.append(passed)
        lines.append(f"  compile time per layer (cold; tc.compile and tc.compile_grad): max "
                     f"{1e3 * slowest:.1f} ms ({worst[0]}), target < 20 ms: "
                     f"{'PASS' if passed else 'FAIL'}")
    if broken:
        lines.append(f"  errors (not timed, not in the targets): {', '.join(broken)}")
    lines.insert(0, f"SUMMARY: {sum(verdicts)}/{len(verdicts)} targets met"
                    + (f"; {len(broken)} case(s) failed to run" if broken else ""))
    return lines


# ---------------------------------------------------------------------------------------

def add_timing_arguments(parser, quick: str, repeats: tuple[int, int],
                         min_time: tuple[float, float], warmup: tuple[int, int]) -> None:
    """--quick, --markdown, --repeats, --min-time and --warmup, each default given as (full
    run, --quick); timing_defaults fills them in after parsing."""
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--repeats", type=int,
                        help=f"timed repeats per side (default {repeats[0]}, quick {repeats[1]})")
    parser.add_argument("--min-time", type=float,
                        help=f"seconds each repeat must take at least (default {min_time[0]}, "
                             f"quick {min_time[1]})")
    parser.add_argument("--warmup", type=int,
                        help=f"warm-up calls per side (default {warmup[0]}, quick {warmup[1]})")
    parser.set_defaults(timing_defaults=dict(repeats=repeats, min_time=min_time, warmup=warmup))


def timing_defaults(args):
    """The parsed arguments with the timing options not given set to their defaults."""
    for name, (full, quick) in args.timing_defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    add_timing_arguments(parser, "few repeats and short timings: a smoke test (< 60 s)",
                         repeats=(11, 3), min_time=(0.02, 0.005), warmup=(3, 1))
    parser.add_argument("--pause", type=float, default=0.25,
                        help="seconds to let the other runtime's spinning threads go idle "
                             "when timing switches between NumPy and PyTorch (default 0.25)")
    parser.add_argument("--threads", type=int,
                        help="use this many threads on both sides (PyTorch and NumPy's OpenBLAS); "
                             "default: PyTorch = number of cores, OpenBLAS left at its default")
    parser.add_argument("--retries", type=int,
                        help="re-time a case up to this many times when other processes used "
                             f"more than {100 * BUSY:.0f}%% of the CPU meanwhile (default 2, quick 0)")
    parser.add_argument("--retry-wait", type=float, default=5.0,
                        help="seconds to wait before re-timing a busy case (default 5)")
    parser.add_argument("--only", action="append", default=[],
                        help="run only cases whose name contains this text (repeatable)")
    parser.add_argument("--no-einsum", action="store_true", help="skip the tc.einsum rows")
    parser.add_argument("--show-source", action="store_true",
                        help="print each tensorc kernel's generated source to stderr")
    args = timing_defaults(parser.parse_args(argv))
    if args.retries is None:
        args.retries = 0 if args.quick else 2
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import tensorc as tc

    n_cores = cores()
    torch_threads = args.threads or n_cores
    torch.set_num_threads(torch_threads)
    blas_note = "default, not set"
    if args.threads:
        blas_note = ("set by --threads" if set_openblas_threads(args.threads)
                     else "could not be set")
    blas_threads = openblas_threads()
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    load = LoadMonitor()

    builders = []
    for name, xshape, cout, ksize, stride, pad, src in CONVS:
        builders.append((name, "conv", lambda a=(name, xshape, cout, ksize, stride, pad, src):
                         build_conv_case(tc, torch, rng, *a)))
    for name, xshape, cout, ksize, stride, pad, src in CONVS:
        grad_name = name.replace("conv ", "conv fwd+bwd ", 1)
        builders.append((grad_name, "convgrad",
                         lambda a=(grad_name, xshape, cout, ksize, stride, pad, src):
                         build_conv_grad_case(tc, torch, rng, *a)))
    for name, xshape in DEPTHWISES:
        for backward in (False, True):
            full = name.replace("depthwise", "depthwise fwd+bwd" if backward else "depthwise")
            builders.append((full, "depthwise", lambda a=(full, xshape, backward):
                             build_depthwise_case(tc, torch, rng, *a)))
    for backward in (False, True):
        for name, xshape, window, stride, padding in POOLS:
            full = name.replace("maxpool", "maxpool fwd+bwd", 1) if backward else name
            builders.append((full, "poolgrad" if backward else "pool",
                             lambda a=(full, xshape, window, stride, padding, backward):
                             build_pool_case(tc, torch, rng, *a)))
    for name, xshape in TRAINING:
        builders.append((name, "train", lambda a=(name, xshape): build_training_case(torch, rng, *a)))
    for group, contractions in (("contraction", CONTRACTIONS), ("overhead", TINY_CONTRACTIONS)):
        for name, equation, shapes, src in contractions:
            builders.append((name, group, lambda a=(name, equation, shapes, src):
                             build_contraction_case(tc, rng, *a, with_einsum=not args.no_einsum)))
    for name, xshape, cout, ksize, stride, pad, src in TINY_CONVS:
        builders.append((name, "overhead conv",
                         lambda a=(name, xshape, cout, ksize, stride, pad, src):
                         build_conv_case(tc, torch, rng, *a)))

    def selected(name: str) -> bool:
        return not args.only or any(o.lower() in name.lower() for o in args.only)
    builders = [b for b in builders if selected(b[0])]

    cases = []
    with torch.no_grad():
        for name, group, builder in builders:
            print(f"  running {name} ...", file=sys.stderr, flush=True)
            cases.append(run_case(builder, name, group, args))
            gc.collect()
    compiles, compile_repeats = [], 3 if args.quick else 5
    if selected("compile time"):
        print("  running compile time ...", file=sys.stderr, flush=True)
        compiles = compile_times(tc, CONVS, compile_repeats)

    import opt_einsum
    print(f"tensorc {tc.__version__} benchmark: ratio = tensorc time / peer time "
          f"(< 1 means tensorc is faster); float32; median of {args.repeats} repeats, each "
          f">= {args.min_time * 1e3:g} ms of calls, sides alternated (with a {args.pause:g} s "
          f"pause when switching NumPy <-> PyTorch); {args.warmup} warm-up calls"
          + (" [--quick]" if args.quick else ""))
    print(f"machine: {platform.machine()} {n_cores} cores | python {platform.python_version()}, "
          f"numpy {np.__version__}, torch {torch.__version__}, opt_einsum {opt_einsum.__version__}")
    print(f"threads: torch {torch.get_num_threads()} (torch.set_num_threads({torch_threads})); "
          f"NumPy/OpenBLAS {blas_threads} ({blas_note}) - shared by tensorc's generated "
          f"NumPy code, opt_einsum and np.einsum; NumPy's copies/elementwise ufuncs "
          f"(im2col, pad, max) run on 1 thread")
    if cases:
        print()
        print(format_table(table_rows(cases), args.markdown))
    if any(side.view for case in cases if not case.error and case.tensorc
           for side in [case.tensorc] + case.peers + case.extras):
        print("[view]: that side returns a non-contiguous (transposed) view of its result; the "
              "others return dense arrays, which can cost an extra copy")
    if any(c.busy is not None and c.busy > BUSY for c in cases):
        print("!busy N%: other processes used N% of the CPU while that case was timed "
              "(multi-threaded sides then wait for descheduled threads); rerun it")
    if compiles:
        print()
        print(format_table([[name, f"{1e3 * fwd:.2f}", f"{1e3 * both:.2f}"]
                            for name, fwd, both in compiles], args.markdown,
                           COMPILE_HEADER, frozenset({1, 2})))
        print(f"(tensorc's kernel cache cleared before each compile; median of "
              f"{compile_repeats} compiles; tc.compile_grad wrt x and k)")
    print()
    print("\n".join(summary(cases, compiles)))
    other = load.other_load()
    print(f"(wall time {time.perf_counter() - started:.0f} s"
          + (f"; other processes used {100 * other:.0f}% of the machine's CPU meanwhile"
             + (" - timings are unreliable, rerun on a quiet machine" if other > BUSY else "")
             if other is not None else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
