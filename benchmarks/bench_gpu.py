"""GPU benchmark: tensorc's CuPy backend against PyTorch on CUDA (cuDNN), as ratios.

    python -m benchmarks --gpu              # every layer of the CPU benchmark, on the device
    python -m benchmarks --gpu --quick      # smoke test
    python -m benchmarks --gpu --only pool  # cases whose name contains 'pool'

Needs a CUDA device, CuPy (pip install -e ".[cuda12]" or ".[cuda13]") and a CUDA build of
PyTorch; without them it says what is missing and exits with status 2. No GPU was available
where this was written, so no GPU figures are claimed anywhere in this repository.

Method, as in the CPU benchmark (bench_core.py): float32; tensorc and PyTorch read the same
device memory (DLPack, no copies); every side's result is checked against PyTorch's
before it is timed; sides are warmed up, calibrated to --min-time per repeat and timed in
alternation; every timed block ends with a device synchronize, so a time covers completed
work, not just queued launches; ratio = median tensorc time / median PyTorch time.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import numpy as np

from .bench_core import (
    CONV_VALID, CONVS, POOLS, RTOL, Case, Side, maxpool_program, measure,
)

DEPTHWISE = "y[n,c,h,w] = x[n,c,h+u-1,w+v-1] * k[c,u,v]   where h < {H}, w < {W}, x: zero"
# (name, input NCHW, kernel size): depthwise 3x3, padding 1 (GEMM-poor: a loop kernel)
DEPTHWISES = [("depthwise 3x3 p1 N16 C64 56x56", (16, 64, 56, 56), 3)]
ONE_BY_ONE = [("conv 1x1 N16 C64 56x56->128", (16, 64, 56, 56), 128, 1, 1, 0, CONV_VALID)]


def missing() -> str | None:
    """What this machine lacks for the GPU benchmark, or None."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} sees no CUDA device (a CPU build, or no GPU)"
    import tensorc as tc
    from tensorc.backends.cupy import device_namespace
    try:
        device_namespace()
    except tc.TensorcError as error:
        return error.message
    return None


def _close(got: Any, want: Any) -> str | None:
    got, want = np.asarray(got.get()), want.detach().cpu().numpy()
    scale = float(np.abs(want).max()) if want.size else 1.0
    if got.shape != want.shape or not np.allclose(got, want, rtol=RTOL, atol=1e-5 * scale):
        return f"wrong result (max abs error {float(np.abs(got - want).max()):.3g})"
    return None


def _synchronized(fn, synchronize):
    def run():
        result = fn()
        synchronize()
        return result
    return run


def build_cases(tc, torch, cupy, only: list[str]) -> list[tuple[Case, Any, Any]]:
    """(case, tensorc result, torch result) for each case, results from one untimed call."""
    import torch.nn.functional as F
    generator = torch.Generator(device="cuda").manual_seed(0)
    synchronize = torch.cuda.synchronize
    cases = []

    def randn(*shape):
        return torch.randn(*shape, device="cuda", generator=generator)

    def add(name, tensorc_fn, torch_fn, kernel):
        if only and not any(o.lower() in name.lower() for o in only):
            return
        case = Case("gpu", name, Side("tensorc (CuPy)", _synchronized(tensorc_fn, synchronize),
                                      "cuda"),
                    [Side("torch CUDA", _synchronized(torch_fn, synchronize), "cuda")],
                    target_peer="torch CUDA")
        case.kernel = kernel
        cases.append((case, tensorc_fn(), torch_fn()))

    for name, xshape, cout, ksize, stride, pad, src in CONVS + ONE_BY_ONE:
        x = randn(*xshape)
        k = randn(cout, xshape[1], ksize, ksize) / math.sqrt(xshape[1] * ksize * ksize)
        xc, kc = cupy.from_dlpack(x), cupy.from_dlpack(k)
        forward = tc.compile(src, backend="cupy", dtype="float32", x=xshape, k=tuple(k.shape))
        add(name, lambda f=forward, xc=xc, kc=kc: f(x=xc, k=kc),
            lambda x=x, k=k, s=stride, p=pad: F.conv2d(x, k, stride=s, padding=p), forward)
        both = tc.compile_grad(src, wrt=["x", "k"], backend="cupy", dtype="float32")
        dy = randn(*F.conv2d(x, k, stride=stride, padding=pad).shape)
        dyc = cupy.from_dlpack(dy)
        xg, kg = x.clone().requires_grad_(), k.clone().requires_grad_()

        def torch_grad(xg=xg, kg=kg, dy=dy, s=stride, p=pad):
            with torch.enable_grad():
                y = F.conv2d(xg, kg, stride=s, padding=p)
                return torch.autograd.grad(y, (xg, kg), dy)[0]

        add(name.replace("conv ", "conv fwd+bwd ", 1),
            lambda f=both, xc=xc, kc=kc, dyc=dyc: f(x=xc, k=kc, dy=dyc)["dx"], torch_grad, both)
    for name, xshape, ksize in DEPTHWISES:
        x, k = randn(*xshape), randn(xshape[1], ksize, ksize) / ksize
        src = DEPTHWISE.format(H=xshape[2], W=xshape[3])
        kern = tc.compile(src, backend="cupy", dtype="float32", x=xshape, k=tuple(k.shape))
        xc, kc = cupy.from_dlpack(x), cupy.from_dlpack(k)
        add(name, lambda f=kern, xc=xc, kc=kc: f(x=xc, k=kc),
            lambda x=x, k=k: F.conv2d(x, k[:, None], padding=1, groups=k.shape[0]), kern)
    for name, xshape, window, stride, padding in POOLS:
        y = randn(*xshape)
        kern = tc.compile(maxpool_program(xshape, window, stride, padding), backend="cupy",
                          dtype="float32", y=xshape)
        yc = cupy.from_dlpack(y)
        add(name, lambda f=kern, yc=yc: f(y=yc),
            lambda y=y, a=(window, stride, padding): F.max_pool2d(y, *a), kern)
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks --gpu",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke test")
    parser.add_argument("--only", action="append", default=[],
                        help="run only cases whose name contains this text (repeatable)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--show-source", action="store_true",
                        help="print each tensorc kernel's generated source to stderr")
    args = parser.parse_args(argv)
    reason = missing()
    if reason:
        print(f"python -m benchmarks --gpu: cannot run here: {reason}", file=sys.stderr)
        return 2
    import cupy
    import torch

    import tensorc as tc
    repeats, min_time, warmup = (3, 0.005, 1) if args.quick else (11, 0.02, 3)
    rows = [["case", "tensorc ms", "torch ms", "ratio (tensorc/torch)", "tensorc plan"]]
    with torch.no_grad():
        for case, ours, theirs in build_cases(tc, torch, cupy, args.only):
            print(f"  running {case.name} ...", file=sys.stderr, flush=True)
            if args.show_source:
                print(case.kernel.source, file=sys.stderr)
            problem = _close(ours, theirs)
            if problem:
                rows.append([case.name, "-", "-", f"error: {problem}", ""])
                continue
            measure([case.tensorc, *case.peers], repeats, min_time, warmup, pause=0)
            kinds = {"loop kernel" if sp.loop_nest is not None else "cuBLAS/array"
                     for sp in case.kernel.plan.statements}
            rows.append([case.name, f"{case.tensorc.median * 1e3:.3f}",
                         f"{case.peers[0].median * 1e3:.3f}",
                         f"{case.tensorc.median / case.peers[0].median:.2f}",
                         ", ".join(sorted(kinds))])
    device = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"tensorc {tc.__version__} GPU benchmark on {device}: float32, median of {repeats} "
          f"repeats, synchronized; torch {torch.__version__} (cuDNN "
          f"{torch.backends.cudnn.version()}), CuPy {cupy.__version__}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for number, row in enumerate(rows):
        if args.markdown:
            print("| " + " | ".join(row) + " |")
            if number == 0:
                print("|" + "|".join("---" for _ in row) + "|")
        else:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    ratios = [float(row[3]) for row in rows[1:] if row[3][0].isdigit()]
    if ratios:
        print(f"median ratio {float(np.median(ratios)):.2f} over {len(ratios)} cases")
    return 0 if len(ratios) == len(rows) - 1 else 1
