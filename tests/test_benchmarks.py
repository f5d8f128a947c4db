"""The benchmark runner works (it checks each case's numbers before timing it).

Timings are not asserted here: they belong to `python -m benchmarks`, not to unit tests.
"""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize("only", ["maxpool", "chain", "overhead", "compile", "fwd+bwd LeNet-2"])
def test_benchmark_runner_smoke(only):
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", only],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "SUMMARY" in run.stdout and "error" not in run.stdout.lower()
    if only.startswith("fwd+bwd"):  # the plan's GEMMs timed alone, by NumPy and by PyTorch
        assert "tensorc's GEMMs alone (NumPy BLAS)" in run.stdout
        assert "the same GEMMs by torch.matmul" in run.stdout
        assert "NumPy's BLAS / torch.matmul on the same GEMMs: median" in run.stdout
        assert "tensorc backward / its forward: " in run.stdout  # the forward, backward rows


def test_gpu_benchmark_says_what_is_missing_or_runs():
    """Without a GPU, `--gpu` explains why it cannot run (exit 2); with one, it runs."""
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--gpu", "--quick", "--only",
                          "maxpool"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_gpu import missing
    reason = missing()
    if reason:
        assert run.returncode == 2, run.stderr[-3000:]
        assert f"cannot run here: {reason}" in run.stderr
    else:
        assert run.returncode == 0, run.stderr[-3000:]
        assert "median ratio" in run.stdout


@pytest.mark.slow
def test_dask_benchmark_smoke():
    """`--dask --quick`: LocalClusters of 1 and 2 workers and the local schedulers (~20 s)."""
    pytest.importorskip("distributed")
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--dask", "--quick"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "SUMMARY" in run.stdout and "error" not in run.stdout.lower()
    assert "1 -> 2 workers speed-up" in run.stdout and "sync scheduler" in run.stdout
