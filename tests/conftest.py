"""`--cupy-emulated` and `--dask-chunked`: run the conformance tests through another backend.

`--dask-chunked`: every kernel that a test compiles for backend="numpy" is compiled for
backend="dask" instead; its NumPy inputs are cut into two chunks along each dimension, so
that chunks cut through windows and contracted indices, and its outputs
are computed back to NumPy arrays for the test's own checks.

`--cupy-emulated`:

With the option, every kernel that a test compiles for backend="numpy" is compiled for
backend="cupy" instead and runs emulated (tensorc.backends.cupy.emulate_on_numpy): the
generated CuPy-backend module with NumPy as its array namespace, and each CUDA loop kernel
in its NumPy lane form. Each CUDA source the run produces is also compiled to an sm_90 cubin
with NVRTC (when cuda-bindings and the NVRTC library are installed), so the suite checks the
program logic numerically and the CUDA C by its compiler. Nothing here runs on a GPU: tests
marked `gpu` do, and skip where there is none.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    parser.addoption("--cupy-emulated", action="store_true",
                     help="run kernels through the CuPy backend emulated on NumPy (no GPU), and "
                          "compile its CUDA C with NVRTC")
    parser.addoption("--dask-chunked", action="store_true",
                     help="run kernels through the Dask backend, inputs cut into small chunks")


def _other_backend(config) -> str | None:
    for option in ("--cupy-emulated", "--dask-chunked"):
        if config.getoption(option):
            return option
    return None


def pytest_collection_modifyitems(config, items):
    option = _other_backend(config)
    if option is None:
        return
    skip = pytest.mark.skip(reason=f"{option} runs only the tests marked conformance")
    numpy_only = pytest.mark.skip(reason="pins the NumPy backend's own behaviour")
    for item in items:
        if "conformance" not in item.keywords:
            item.add_marker(skip)
        elif "numpy_backend" in item.keywords:
            item.add_marker(numpy_only)


def pytest_runtest_setup(item):
    if "gpu" in item.keywords:
        reason = gpu_missing()
        if reason:
            pytest.skip(reason)


def gpu_missing() -> str | None:
    """Why the tests marked gpu cannot run here (no CuPy, no device), or None."""
    import tensorc as tc
    from tensorc.backends.cupy import device_namespace, emulating
    if emulating():
        return "emulating the CuPy backend on NumPy"
    try:
        device_namespace()
    except tc.TensorcError as error:
        return f"no GPU: {error.message}"
    return None


@pytest.fixture(autouse=True)
def _cupy_emulated(request, monkeypatch):
    if not request.config.getoption("--cupy-emulated"):
        yield
        return
    import tensorc.kernel as kernel_module
    from tensorc.backends import cupy as cupy_backend

    _compile_numpy_kernels_for(monkeypatch, "cupy")
    monkeypatch.setattr(kernel_module, "_DeviceFunction", _compiled_then(
        kernel_module._DeviceFunction, cupy_backend))
    before = len(_COMPILED)
    with cupy_backend.emulate_on_numpy():
        yield
    # reported with the test (also across xdist workers) and counted in the summary
    request.node.user_properties.append(("cuda_sources_compiled", len(_COMPILED) - before))


@pytest.fixture(autouse=True)
def _dask_chunked(request, monkeypatch):
    if not request.config.getoption("--dask-chunked"):
        yield
        return
    import dask
    import numpy as np
    import tensorc.kernel as kernel_module

    original_call = kernel_module.Kernel.__call__

    def chunked_call(self, *args, **arrays):
        args = [_chunked(a) for a in args]
        arrays = {name: _chunked(a) for name, a in arrays.items()}
        result = original_call(self, *args, **arrays)
        if isinstance(result, dict):
            return dict(zip(result, dask.compute(*result.values())))
        return np.asarray(dask.compute(result)[0])

    _compile_numpy_kernels_for(monkeypatch, "dask")
    monkeypatch.setattr(kernel_module.Kernel, "__call__", chunked_call)
    yield


def _compile_numpy_kernels_for(monkeypatch, other: str) -> None:
    """Every kernel a test compiles for backend="numpy" is compiled for `other` instead."""
    import tensorc.kernel as kernel_module
    original = kernel_module.Kernel.__init__

    def on_backend(self, program, backend="numpy", *args, **kwargs):
        original(self, program, other if backend == "numpy" else backend, *args, **kwargs)

    monkeypatch.setattr(kernel_module.Kernel, "__init__", on_backend)


def _chunked(value):
    """A NumPy array as a dask array in two chunks along each dimension (of size 2 or more)."""
    import dask.array as da
    import numpy as np
    if not isinstance(value, np.ndarray) or value.ndim == 0:
        return value
    return da.from_array(value, chunks=tuple(max(1, -(-n // 2)) for n in value.shape))


def pytest_terminal_summary(terminalreporter, config):
    if not config.getoption("--cupy-emulated"):
        return
    from tensorc.backends.cupy import nvrtc_available
    if not nvrtc_available():
        terminalreporter.write_line("--cupy-emulated: NVRTC is not installed: the CUDA C was "
                                    "NOT compiled (pip install cuda-bindings nvidia-cuda-nvrtc)")
        return
    compiled = sum(value for reports in terminalreporter.stats.values() for report in reports
                   for key, value in getattr(report, "user_properties", ())
                   if key == "cuda_sources_compiled" and report.when == "teardown")
    terminalreporter.write_line(f"--cupy-emulated: {compiled} CUDA sources compiled to sm_90 "
                                "cubins with NVRTC (each distinct source once per worker)")


_COMPILED: set[str] = set()


def _compiled_then(device_function, cupy_backend):
    """_DeviceFunction that first compiles the module's CUDA C with NVRTC (once per source)."""
    check = cupy_backend.nvrtc_available()

    def make(source, plan):
        cuda = cupy_backend.cuda_source(plan)
        if check and cuda and cuda not in _COMPILED:
            cupy_backend.compile_cubin(cuda)  # raises with NVRTC's log on an error
            _COMPILED.add(cuda)
        return device_function(source, plan)
    return make
