"""`python -m benchmarks [--quick] [--markdown]` runs benchmarks/bench_core.py (the CPU);
`python -m benchmarks --gpu [...]` runs benchmarks/bench_gpu.py (CuPy against PyTorch CUDA);
`python -m benchmarks --dask [...]` runs benchmarks/bench_dask.py (the Dask backend on a
LocalCluster, and against the NumPy backend)."""

import sys

if "--gpu" in sys.argv[1:]:
    from .bench_gpu import main
    sys.exit(main([a for a in sys.argv[1:] if a != "--gpu"]))

if "--dask" in sys.argv[1:]:
    from .bench_dask import main
    sys.exit(main([a for a in sys.argv[1:] if a != "--dask"]))

from .bench_core import main  # noqa: E402

sys.exit(main())
