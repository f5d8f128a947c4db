"""Dask benchmark: tensorc's Dask backend on a LocalCluster (1 and 2 workers) and its
overhead against the NumPy backend, in one process.

    python -m benchmarks --dask              # full run (~2.5 min on a quiet 2-core machine)
    python -m benchmarks --dask --quick      # smoke test (~20 s)
    python -m benchmarks --dask --markdown   # the table as markdown

Cases (float32):
  * the volume filter of examples/volume_filter_dask.py (a 3x3x3 window, 'reflect'
    boundary) on a 256^3 volume, in chunks of 128^3 and of 64^3, on a LocalCluster of
    1 worker process and of 2 (1 thread each, no memory limit: the volume fits). The
    volume is generated on the workers and persisted before anything is timed; a call
    builds the graph (the kernel call) and persists the filtered volume on the workers,
    then releases it. Both clusters stay up and their sides alternate;
  * the same filter with Dask's local schedulers in this process (no cluster): the
    threaded scheduler and dask.config.set(scheduler="sync"), the volume a NumPy array
    wrapped by dask.array.from_array, computed back to one NumPy array;
  * a 2-D convolution layer, N16 C64 56x56 -> 64, 3x3, padding 1, the batch in 4 chunks,
    with both local schedulers.
Every ratio is dask time / NumPy backend time (the same program compiled for
backend="numpy", called on the whole NumPy array in this process; a block's kernel is
planned as the NumPy backend plans it, Numba loop kernels included, for the block's shape).
"speed-up" = 1-worker time / 2-worker time.

Method, as in the CPU benchmark (bench_core.py, whose measure() this uses): every result is
checked against the NumPy backend's (rtol 1e-3) before anything is timed; sides are warmed
up (the first call on a worker compiles its block kernels), calibrated to --min-time per
repeat and timed in rotating alternation; a side's time is the median over --repeats.
There is no target: the figures are for the record.

Read the 1 -> 2 worker speed-up knowing that a worker's Numba kernels run on every core
(Numba's thread count ignores the OMP_NUM_THREADS=1 Dask gives its workers), and that the
scheduler and this process share the machine's 2 cores with the workers.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bench_core import (
    BUSY, CONV_PAD1, LoadMonitor, Side, _ms, add_timing_arguments, check_close, cores,
    format_table, measure, timing_defaults,
)

FILTER = ("y[d,h,w] = x[d+a-1,h+u-1,w+v-1] * k[a,u,v]   "
          "where d < {D}, h < {H}, w < {W}, x: reflect")

# (volume side, chunk sides, conv input NCHW, conv batch chunk)
FULL = (256, (128, 64), (16, 64, 56, 56), 4)
QUICK = (128, (64,), (4, 64, 28, 28), 1)

HEADER = ["case", "dask ms", "NumPy backend ms", "ratio (dask/numpy)", "noise (IQR)"]


@dataclass
class Row:
    name: str
    dask: Side
    numpy: Side
    group: str  # "cluster 1" | "cluster 2" | "threads" | "sync"
    case: str   # what it computes: rows of one case share it (speed-ups pair them)

    @property
    def ratio(self) -> float:
        return self.dask.median / self.numpy.median


def _numpy_side(kernel, **arrays) -> Side:
    return Side("NumPy backend", lambda: kernel(**arrays))


def local_rows(tc, dask, da, name: str, src: str, arrays: dict[str, np.ndarray],
               chunks: dict[str, Any], args) -> list[Row]:
    """The threaded and the sync scheduler against the NumPy backend, on arrays in memory."""
    numpy_kernel = tc.compile(src, dtype="float32",
                              **{n: a.shape for n, a in arrays.items()})
    dask_kernel = tc.compile(src, backend="dask", dtype="float32")
    chunked = {n: da.from_array(a, chunks=chunks[n]) if n in chunks else a
               for n, a in arrays.items()}

    def on(scheduler):
        def run():
            with dask.config.set(scheduler=scheduler):
                return dask_kernel(**chunked).compute()
        return run

    numpy = _numpy_side(numpy_kernel, **arrays)
    threads, sync = Side("dask threads", on("threads")), Side("dask sync", on("sync"))
    want = numpy.fn()
    for side in (threads, sync):
        problem = check_close(f"{name} ({side.name})", side.fn(), want)
        if problem:
            raise AssertionError(problem)
    measure([numpy, threads, sync], args.repeats, args.min_time, args.warmup, pause=0)
    plan = str(dask_kernel.plan).splitlines()[-1].strip()
    print(f"    {name}: {plan}", file=sys.stderr, flush=True)
    return [Row(f"{name}, threaded scheduler", threads, numpy, "threads", name),
            Row(f"{name}, sync scheduler", sync, numpy, "sync", name)]


def cluster_rows(tc, da, size: int, chunk_sides: tuple[int, ...], args) -> list[Row]:
    """The volume filter on LocalClusters of 1 and 2 workers, against the NumPy backend."""
    from distributed import Client, LocalCluster, wait
    src = FILTER.format(D=size, H=size, W=size)
    k = np.full((3, 3, 3), 1 / 27, dtype=np.float32)
    numpy_kernel = tc.compile(src, dtype="float32", x=(size,) * 3, k=k.shape)
    dask_kernel = tc.compile(src, backend="dask", dtype="float32")
    rows = []
    clusters = []
    try:
        for workers in (1, 2):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   memory_limit=0, dashboard_address=None,
                                   silence_logs=logging.ERROR)
            clusters.append((workers, cluster, Client(cluster, set_as_default=False)))
        for chunk in chunk_sides:
            name = f"filter {size}^3 reflect, chunks {chunk}^3"
            sides, volumes = [], []
            for workers, _, client in clusters:
                # the same noise on every cluster, generated and kept on its workers
                x = client.persist(da.random.default_rng(0).standard_normal(
                    (size,) * 3, chunks=chunk, dtype=np.float32))
                with client.as_current():  # wait() asks for the current client
                    wait(x)
                volumes.append(x)

                def run(client=client, x=x):
                    y = client.persist(dask_kernel(x=x, k=k))
                    with client.as_current():
                        wait(y)
                    return y  # released on the workers when dropped
                sides.append(Side(f"{workers} worker{'s' * (workers > 1)}", run))
            whole = clusters[0][2].compute(volumes[0], sync=True)
            numpy = _numpy_side(numpy_kernel, x=whole, k=k)
            want = numpy.fn()
            for (_, _, client), side in zip(clusters, sides):
                problem = check_close(f"{name} ({side.name})",
                                      client.compute(side.fn(), sync=True), want)
                if problem:
                    raise AssertionError(problem)
            measure([numpy, *sides], args.repeats, args.min_time, args.warmup, pause=0)
            plan = str(dask_kernel.plan).splitlines()[-1].strip()
            print(f"    {name}: {plan}", file=sys.stderr, flush=True)
            for (workers, _, _), side in zip(clusters, sides):
                rows.append(Row(f"{name}, LocalCluster {side.name}", side, numpy,
                                f"cluster {workers}", name))
            del volumes, whole
    finally:
        # last started, first closed: each cluster restores the log levels it silenced
        for _, cluster, client in reversed(clusters):
            client.close()
            cluster.close()
    return rows


def summary(rows: list[Row]) -> list[str]:
    lines = ["SUMMARY (no targets; ratio = dask time / NumPy backend time):"]
    for case in dict.fromkeys(r.case for r in rows if r.group.startswith("cluster")):
        one, two = (next(r for r in rows if r.case == case and r.group == f"cluster {n}")
                    for n in (1, 2))
        lines.append(f"  {case}: 1 -> 2 workers speed-up {one.dask.median / two.dask.median:.2f}x "
                     f"({_ms(one.dask.median)} -> {_ms(two.dask.median)} ms); vs NumPy backend "
                     f"in one process: {one.ratio:.2f} (1 worker), {two.ratio:.2f} (2 workers)")
    for group, label in (("threads", "threaded scheduler"), ("sync", "sync scheduler")):
        chosen = [r for r in rows if r.group == group]
        if chosen:
            lines.append(f"  overhead, {label}: " + ", ".join(
                f"{r.case} {r.ratio:.2f}" for r in chosen)
                + f" (median {statistics.median(r.ratio for r in chosen):.2f})")
    return lines


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks --dask",
                                     description=__doc__.split("\n")[0])
    add_timing_arguments(parser, "small sizes and few repeats: a smoke test (< 60 s)",
                         repeats=(7, 3), min_time=(0.2, 0.02), warmup=(2, 1))
    return timing_defaults(parser.parse_args(argv))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import dask
        import dask.array as da
        import distributed
    except ImportError as error:
        print(f"python -m benchmarks --dask: cannot run here: {error}; "
              "pip install -e '.[dask]'", file=sys.stderr)
        return 2
    import tensorc as tc

    size, chunk_sides, conv_shape, batch_chunk = QUICK if args.quick else FULL
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    rows: list[Row] = []

    print("  running the volume filter on LocalClusters ...", file=sys.stderr, flush=True)
    rows += cluster_rows(tc, da, size, chunk_sides, args)

    print("  running the volume filter with the local schedulers ...", file=sys.stderr,
          flush=True)
    load = LoadMonitor()  # from here on no worker runs: other processes are not ours
    volume = rng.standard_normal((size,) * 3, dtype=np.float32)
    box = np.full((3, 3, 3), 1 / 27, dtype=np.float32)
    for chunk in chunk_sides:
        rows += local_rows(tc, dask, da, f"filter {size}^3 reflect, chunks {chunk}^3",
                           FILTER.format(D=size, H=size, W=size), dict(x=volume, k=box),
                           dict(x=chunk), args)

    print("  running the convolution layer with the local schedulers ...", file=sys.stderr,
          flush=True)
    n, c, h, w = conv_shape
    x = rng.standard_normal(conv_shape, dtype=np.float32)
    k = rng.standard_normal((c, c, 3, 3), dtype=np.float32) / np.float32(np.sqrt(9 * c))
    rows += local_rows(tc, dask, da,
                       f"conv N{n} C{c} {h}x{w}->{c} k3 p1, batch in {n // batch_chunk}",
                       CONV_PAD1.format(H=h, W=w), dict(x=x, k=k),
                       dict(x=(batch_chunk, c, h, w)), args)

    print(f"tensorc {tc.__version__} Dask benchmark: ratio = dask time / NumPy backend time "
          f"(> 1: the Dask backend is slower); float32; median of {args.repeats} repeats, each "
          f">= {args.min_time * 1e3:g} ms of calls, sides alternated; {args.warmup} warm-up "
          f"calls" + (" [--quick]" if args.quick else ""))
    print(f"machine: {platform.machine()} {cores()} cores | python "
          f"{platform.python_version()}, numpy {np.__version__}, dask {dask.__version__}, "
          f"distributed {distributed.__version__}")
    print()
    table = [[r.name, _ms(r.dask.median), _ms(r.numpy.median), f"{r.ratio:.2f}",
              f"{100 * max(r.dask.spread, r.numpy.spread):.0f}%"] for r in rows]
    print(format_table(table, args.markdown, HEADER, frozenset({1, 2, 3, 4})))
    print()
    print("\n".join(summary(rows)))
    other = load.other_load()
    print(f"(wall time {time.perf_counter() - started:.0f} s"
          + (f"; other processes used {100 * other:.0f}% of the machine's CPU during the "
             f"local-scheduler cases" + (" - timings are unreliable, rerun on a quiet machine"
                                         if other > BUSY else "")
             if other is not None else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
