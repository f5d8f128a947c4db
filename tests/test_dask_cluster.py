"""The Dask backend on a dask.distributed LocalCluster of worker processes with memory limits.

- A 3-D filter with a boundary mode over a volume larger than each worker's memory limit:
  the input is generated on the workers (never whole in one process), and no worker's peak
  memory (its process's maximum resident set) reaches its limit, nor is any worker
  restarted. The result agrees with the NumPy backend run on the whole volume in this
  process: reductions of the whole result, and every element of slabs across chunk
  boundaries (where blocks read their neighbours' halos).
- Data-parallel gradients of a small CNN with the batch in chunks on the cluster equal the
  single-process gradients.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import tensorc as tc
from reference import SMALL_CNN, small_cnn_inputs

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.slow

LIMIT = 400 * 2**20  # bytes per worker
VOLUME = (112, 1024, 1024)  # float32: 470 MB, more than LIMIT
CHUNKS = (16, 512, 512)
FILTER = ("y[d,h,w] = x[d+a-1,h+u-1,w+v-1] * k[a,u,v]   "
          f"where d < {VOLUME[0]}, h < {VOLUME[1]}, w < {VOLUME[2]}, x: reflect")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       memory_limit=LIMIT, dashboard_address=None,
                                       silence_logs=40)
    with distributed.Client(cluster) as client:
        yield client
    cluster.close()


def _peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM, which, unlike getrusage's
    ru_maxrss, starts afresh in a new process image (ru_maxrss carries the parent's peak
    across fork and exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    raise AssertionError("no VmHWM in /proc/self/status")


def test_volume_larger_than_a_worker_is_filtered_within_the_limits(client):
    assert np.prod(VOLUME) * 4 > LIMIT
    workers = set(client.scheduler_info()["workers"])
    x = da.random.RandomState(0).standard_normal(VOLUME, chunks=CHUNKS).astype(np.float32)
    k = np.random.default_rng(1).standard_normal((3, 3, 3)).astype(np.float32)
    kern = tc.compile(FILTER, backend="dask")
    y = kern(x=x, k=k)
    # slabs across chunk boundaries along d (16) and h, w (512)
    slabs = (np.s_[14:18, 500:520, :], np.s_[:3, :, 505:515], np.s_[-2:, 510:514, -3:])
    total, squares, *parts = client.compute(
        [y.astype(np.float64).sum(), (y.astype(np.float64) ** 2).sum()]
        + [y[s] for s in slabs], sync=True)
    assert set(client.scheduler_info()["workers"]) == workers, "a worker was restarted"
    peaks = client.run(_peak_rss)
    assert all(peak < LIMIT for peak in peaks.values()), peaks
    assert "block tasks" in str(kern.plan) and "halo" in str(kern.plan)

    want = tc.compile(FILTER)(x=x.compute(scheduler="threads"), k=k)  # here, not on a worker
    np.testing.assert_allclose(total, want.astype(np.float64).sum(), rtol=1e-6)
    np.testing.assert_allclose(squares, (want.astype(np.float64) ** 2).sum(), rtol=1e-6)
    for s, part in zip(slabs, parts):
        np.testing.assert_allclose(part, want[s], rtol=1e-5, atol=1e-5)


def test_data_parallel_gradients_on_the_cluster(client):
    src = SMALL_CNN.format(S=12)
    arrays = small_cnn_inputs(np.random.default_rng(2), batch=64, channels=3, size=12,
                              filters=4, classes=5)
    chunked = dict(arrays, x=da.from_array(arrays["x"], chunks=(16, 3, 12, 12)),
                   t=da.from_array(arrays["t"], chunks=(16, 5)))
    kern = tc.compile_grad(src, wrt=["k", "b", "W"], backend="dask")
    got = kern(**chunked)
    computed = dict(zip(got, client.compute(list(got.values()), sync=True)))
    want = tc.compile_grad(src, wrt=["k", "b", "W"])(**arrays)
    for name in ("loss", "dk", "db", "dW"):
        np.testing.assert_allclose(computed[name], want[name], rtol=1e-10, atol=1e-9,
                                   err_msg=name)
    # dk and db: per chunk of the batch, then a tree (dW runs as dask.array.einsum)
    assert len(re.findall(r"partial results over \d+ chunks of n, combined by a tree",
                          str(kern.plan))) == 2, kern.plan
