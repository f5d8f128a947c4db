"""Filter a 3-D volume larger than any worker's memory limit on a Dask cluster, with tensorc.

Run:  python examples/volume_filter_dask.py [--quick]      (needs: pip install -e ".[dask]")

A 3x3x3 Gaussian blur with the 'reflect' boundary mode, one tensorc statement, is compiled
for the Dask backend and applied to a 576^3 float32 volume of white noise (729 MiB) on a
`dask.distributed.LocalCluster` of 2 worker processes with 1 thread and a 500 MiB memory
limit each. The volume is never whole in one process: its chunks (144^3) are generated on
the workers (`dask.array.random`), each block task reads its chunk and a 1-voxel halo cut
from its neighbours, and the result is reduced on the cluster to a few figures (mean,
standard deviation, three slabs of 4 planes). The full run takes about 11 s on 2 cores.

It prints the kernel's Dask plan (block tasks, halos, an estimate of the bytes moved
between workers), the cluster, the wall time, and for each worker its peak memory (its
process's peak resident set, VmHWM, which includes the ~150 MiB of Python, NumPy, Dask and
Numba it holds before any task; the Numba kernel's compilation adds ~80 MiB more), how
much it spilled to disk and how often it paused for memory; then it checks that no worker
was restarted and no peak reached its limit. The result is verified two ways:

  * the slabs (at the low boundary, across the first seam between chunks, at the high
    boundary) against plain NumPy (numpy.pad and 27 shifted sums) on the same noise;
  * white noise of variance 1 through a filter k has standard deviation ||k||_2 away from
    the boundary: the whole volume's must be within 1% of it.

Dask spills a worker's stored chunks to disk when its process passes 70% of its limit:
at these limits some do (the output says how much); none is ever whole in one process.

`--quick` (for the tests): a 480^3 volume (422 MiB) on workers of 400 MiB each, about 10 s.
It is not smaller because a worker's limit must leave room above the ~230 MiB a worker
holds once the libraries are loaded and the kernel compiled, and the volume must be larger
than that limit.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import tensorc as tc

# A sum over a, u, v (indices on the right only); `x: reflect` extends x by mirroring it
# about its edge voxels (numpy.pad's 'reflect'), so the output has the volume's shape.
PROGRAM = ("y[d,h,w] = x[d+a-1,h+u-1,w+v-1] * k[a,u,v]   "
           "where d < {D}, h < {H}, w < {W}, x: reflect")

SIZE, CHUNK, LIMIT = 576, 144, "500MiB"                    # a 729 MiB volume in 64 chunks
QUICK_SIZE, QUICK_CHUNK, QUICK_LIMIT = 480, 120, "400MiB"  # 422 MiB, 64 chunks
SEED = 0
SIGMA = 1.0           # of the Gaussian, in voxels
SLAB = 4              # planes per verified slab
TOLERANCE = 1e-5      # float32 sums against float64 ones, values of order 1
STD_TOLERANCE = 0.01  # relative: boundary voxels (about 1% of them) have a larger std


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A 3x3x3 Gaussian, normalized to sum 1."""
    weights = np.exp(-0.5 * (np.arange(-1, 2) / sigma) ** 2)
    weights /= weights.sum()
    return np.einsum("a,u,v->auv", weights, weights, weights).astype(np.float32)


def mebibytes(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def load_libraries() -> None:
    """Run on each worker first: what its tasks will import (Dask's arrays, tensorc, Numba
    for the block kernels), so that its memory "before the run" includes them."""
    import dask.array  # noqa: F401
    import tensorc.backends.dask  # noqa: F401
    try:
        import numba  # noqa: F401
    except ImportError:
        pass


def worker_memory(dask_worker) -> dict:
    """Run on each worker: its process id, resident set now and at its peak, and the bytes
    it spilled to disk so far. The peak is Linux's VmHWM: getrusage's ru_maxrss would
    carry over the peak of the process that started the worker."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    kib = lambda name: int(fields[name].split()[0]) * 1024  # noqa: E731
    metrics = getattr(dask_worker.data, "cumulative_metrics", {})
    return {"pid": os.getpid(), "rss": kib("VmRSS"), "peak": kib("VmHWM"),
            "spilled": int(metrics.get(("disk-write", "bytes"), 0))}


def worker_ids(client) -> dict[str, str]:
    """Address -> id of each worker: a restarted worker comes back with a new id."""
    return {address: info["id"] for address, info in client.scheduler_info()["workers"].items()}


def slab_starts(size: int, chunk: int) -> list[int]:
    """Slabs at the low boundary, across the first seam between chunks, at the high one."""
    return [0, min(chunk, size - SLAB) - SLAB // 2, size - SLAB]


def reference_slab(x_planes: np.ndarray, first: int, start: int, k: np.ndarray) -> np.ndarray:
    """Planes start..start+SLAB of the filtered volume by the definition, in plain NumPy
    and float64, from the input planes first..first+len(x_planes) (the slab and the planes
    its windows reach). The padding also mirrors the cut's own ends, but the planes kept
    only reach past an end that is the volume's."""
    padded = np.pad(x_planes.astype(np.float64), 1, mode="reflect")
    depth, height, width = x_planes.shape
    filtered = np.zeros(x_planes.shape)
    for a, u, v in np.ndindex(k.shape):
        filtered += k[a, u, v] * padded[a:a + depth, u:u + height, v:v + width]
    return filtered[start - first:start - first + SLAB]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"a {QUICK_SIZE}^3 volume on workers of {QUICK_LIMIT} (for tests)")
    parser.add_argument("--size", type=int,
                        help=f"voxels per side (default {SIZE}, quick {QUICK_SIZE})")
    parser.add_argument("--chunk", type=int,
                        help=f"voxels per side of a chunk (default {CHUNK}, quick {QUICK_CHUNK})")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--memory-limit",
                        help=f"per worker (default {LIMIT}, quick {QUICK_LIMIT})")
    parser.add_argument("--timeout", type=float,
                        help="seconds to wait for the result, then fail (a worker paused "
                             "for memory would wait forever; default 600, quick 120)")
    args = parser.parse_args()
    size = args.size or (QUICK_SIZE if args.quick else SIZE)
    chunk = args.chunk or (QUICK_CHUNK if args.quick else CHUNK)
    memory_limit = args.memory_limit or (QUICK_LIMIT if args.quick else LIMIT)
    timeout = args.timeout or (120 if args.quick else 600)

    import dask.array as da
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster, wait

    volume_bytes = size ** 3 * 4
    limit = parse_bytes(memory_limit)
    print(f"volume: {size}x{size}x{size} float32 = {mebibytes(volume_bytes)} of white noise, "
          f"in chunks of {chunk}^3 ({mebibytes(chunk ** 3 * 4)} each)")
    print(f"cluster: LocalCluster, {args.workers} worker processes, 1 thread and a "
          f"{mebibytes(limit)} memory limit each")
    if volume_bytes <= limit:
        print("note: at this size the volume would fit within one worker's memory limit")

    src = PROGRAM.format(D=size, H=size, W=size)
    k = gaussian_kernel(SIGMA)
    print(f"\n==== program ====\n{src}")

    print("\nstarting the cluster ...", flush=True)
    # dashboard_address=None: no web server (and no port to find) for a script
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      memory_limit=memory_limit, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.run(load_libraries)
        workers_before = worker_ids(client)
        before = client.run(worker_memory)

        # Lazy: each chunk of noise is drawn on a worker, from a seed derived from SEED.
        x = da.random.default_rng(SEED).standard_normal((size,) * 3, chunks=chunk,
                                                        dtype=np.float32)
        kernel = tc.compile(src, backend="dask")
        y = kernel(x=x, k=k)
        plan = str(kernel.plan)
        print("\n==== plan, dask part ====")
        print(plan[plan.index("dask, for the chunks"):])

        starts = slab_starts(size, chunk)
        # each slab's input planes: the slab and one plane either side, within the volume
        cuts = [(max(s - 1, 0), min(s + SLAB + 1, size)) for s in starts]
        wanted = ([y.mean(dtype=np.float64), y.std(dtype=np.float64)]
                  + [y[s:s + SLAB] for s in starts] + [x[lo:hi] for lo, hi in cuts])
        print(f"\ncomputing on the cluster: the filtered volume's graph has "
              f"{len(y.__dask_graph__()):,} tasks ({x.npartitions} chunks of noise, "
              f"{y.npartitions} blocks), reduced to mean, std and {len(starts)} slabs of "
              f"{SLAB} planes ({mebibytes(SLAB * size * size * 4)} each) ...", flush=True)
        start = time.perf_counter()
        futures = client.compute(wanted)
        wait(futures, timeout=timeout)  # a TimeoutError rather than a hang
        mean, std, *rest = client.gather(futures)
        slabs, x_planes = rest[:len(starts)], rest[len(starts):]
        elapsed = time.perf_counter() - start
        print(f"wall time: {elapsed:.1f} s ({volume_bytes / elapsed / 2**20:,.0f} MiB of "
              f"volume per second)")

        after = client.run(worker_memory)
        workers_after = worker_ids(client)
        pauses = sum("Pausing worker" in message for logs in client.get_worker_logs().values()
                     for _, message in logs)

    print("\n==== workers ====")
    for address, memory in sorted(after.items()):
        print(f"{address}: peak {mebibytes(memory['peak'])} = "
              f"{100 * memory['peak'] / limit:.0f}% of its limit ("
              f"{mebibytes(before[address]['rss'])} before the run, libraries loaded); "
              f"spilled to disk: {mebibytes(memory['spilled'])}")
    restarted = workers_after != workers_before or any(
        after[address]["pid"] != before[address]["pid"] for address in after)
    print(f"paused for memory: {pauses} time(s); restarted: "
          + ("YES" if restarted else "none (same addresses, ids and processes before and after)"))
    assert not restarted, f"{workers_before} -> {workers_after}"
    assert all(m["peak"] < limit for m in after.values()), "a worker reached its memory limit"

    print("\n==== results ====")
    expected_std = float(np.sqrt((k.astype(np.float64) ** 2).sum()))
    print(f"mean {mean:+.6f}, std {std:.6f} (white noise through the filter: "
          f"||k||_2 = {expected_std:.6f} away from the boundary)")
    assert abs(std / expected_std - 1) < STD_TOLERANCE, "unexpected standard deviation"
    worst = 0.0
    for first_plane, (lo, _), slab, planes in zip(starts, cuts, slabs, x_planes):
        difference = float(np.abs(slab - reference_slab(planes, lo, first_plane, k)).max())
        worst = max(worst, difference)
        print(f"slab d = {first_plane}..{first_plane + SLAB - 1}: checksum "
              f"{slab.astype(np.float64).sum():+.4f}, max |tensorc on dask - NumPy| "
              f"{difference:.1e}")
    assert worst < TOLERANCE, f"the result differs from NumPy's by {worst:.1e}"
    print(f"OK: the slabs match NumPy (largest difference {worst:.1e}); the volume was never "
          f"whole in one process; no worker was restarted")


if __name__ == "__main__":
    main()
