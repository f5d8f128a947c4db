"""The CuPy backend: a GPU plan rendered as a Python module over an array namespace `xp`,
with CUDA C loop kernels for the statements GEMMs serve badly.

The module reads like the NumPy backend's (the same statement renderer writes its
array-level code, with `xp` for `np`), plus `CUDA_SOURCE`, the loop kernels' CUDA C, and
`bind(xp, special, launch)`, which points the module at its array library:

- on a GPU: CuPy, cupyx.scipy.special, and a launcher that compiles CUDA_SOURCE once
  (cupy.RawModule) and runs a kernel over a grid of threads;
- in tests, without a GPU (`emulate_on_numpy`): NumPy, scipy.special, and a launcher that
  runs each kernel's NumPy lane form (backends/cuda.py). This checks the generated program
  logic and the kernels' index arithmetic; it runs no CUDA, and says so.

Rendering needs neither CuPy nor a device, so `tc.compile(src, backend="cupy")` shows the
plan and the full source anywhere; only calling the kernel needs them.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Callable

from ..errors import BackendError
from ..plan import ProgramPlan, StatementPlan
from . import numpy as numpy_backend
from .cuda import render_cuda, render_lanes
from .numpy import _ModuleRenderer, _StatementRenderer

__all__ = ["render_module", "cuda_source", "bind_module", "device_namespace",
           "emulate_on_numpy", "emulating", "compile_cubin", "nvrtc_available", "INSTALL_HINT"]

INSTALL_HINT = ("install CuPy for your CUDA version: pip install 'tensorc[cuda12]' or "
                "'tensorc[cuda13]'")

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 65535  # kernels loop over their threads (grid-stride), so any grid covers them

_HELPERS = '''

def as_strided(a, shape, strides, writeable=False):
    """A strided view (CuPy's takes no `writeable`; views are only ever read here)."""
    return xp.lib.stride_tricks.as_strided(a, shape=shape, strides=strides)
'''

_SIGMOID_HELPER = '''

def _sigmoid(x):
    return xp.exp(-xp.logaddexp(0, -x))


def _softplus(x):
    return xp.logaddexp(0, x)
'''

# `np.` in the NumPy statement renderer's lines, which name only NumPy functions (a user
# name can never be followed by '.': the grammar has no such token).
_NUMPY_CALL = re.compile(r"\bnp\.")


def _on_device(code: str) -> str:
    """NumPy-module code (a rendered line, a helper) for the namespace `xp`; loops over
    window offsets stay on the host (numpy.ndindex)."""
    return _NUMPY_CALL.sub("xp.", code.replace("np.ndindex", "numpy.ndindex"))


# The NumPy module's helpers, over `xp`. (Each binding of a module runs its own copy of the
# source, so the scratch buffers of CuPy and of the emulation never mix.)
_SCRATCH_HELPER = "\n" + _on_device(numpy_backend._SCRATCH_HELPER)
_FOLD_HELPER = _on_device(numpy_backend._FOLD_HELPER)


class _CupyModuleRenderer(_ModuleRenderer):
    def __init__(self, plan: ProgramPlan) -> None:
        super().__init__(plan)
        self.nests = [sp.loop_nest for sp in plan.statements if sp.loop_nest is not None]

    def render_statement(self, sp: StatementPlan) -> list[str]:
        if sp.loop_nest is None:
            return [_on_device(line) for line in _StatementRenderer(self, sp).render_statement()]
        return self.render_loop_kernel(sp, "launch({name!r}, {threads}, {arguments})", "xp",
                                       "{0}")

    def render(self) -> str:
        body = self.render_body()
        dtype = self.plan.dtype
        cuda = render_cuda(self.nests)
        parts = [self.docstring("CuPy"), "import threading", "", "import numpy", "",
                 "xp = None  # the array namespace: set by bind()", "DTYPE = None",
                 f"CUDA_SOURCE = r'''\n{cuda}'''" if cuda else "CUDA_SOURCE = ''",
                 "", "",
                 "def bind(namespace, special, launcher):",
                 '    """Run over `namespace`: cupy (with cupyx.scipy.special and a launcher of',
                 "    CUDA_SOURCE's kernels) on a GPU; tensorc's tests pass numpy, scipy.special and",
                 '    the kernels\' NumPy lane form."""',
                 "    global xp, DTYPE, _erf, launch",
                 "    xp, launch = namespace, launcher",
                 f"    DTYPE = xp.{dtype}",
                 "    _erf = special.erf"]
        if any("as_strided(" in line for line in body):
            parts.append(_HELPERS.rstrip())
        if self.needs_scratch:
            parts.append(_SCRATCH_HELPER.rstrip())
        if self.needs_fold:
            parts.append(_FOLD_HELPER.rstrip())
        if self.needs_sigmoid:
            parts.append(_SIGMOID_HELPER.rstrip())
        parts += ["", "", self.signature()]
        parts += [("    " + line) if line else "" for line in body]
        return "\n".join(parts).rstrip() + "\n"


def render_module(plan: ProgramPlan) -> str:
    """The GPU plan as the source of a module defining `bind(...)` and `kernel(<inputs>)`."""
    return _CupyModuleRenderer(plan).render()


def cuda_source(plan: ProgramPlan) -> str:
    """The CUDA C of a GPU plan's loop kernels ('' when it has none)."""
    return render_cuda([sp.loop_nest for sp in plan.statements if sp.loop_nest is not None])


# ---- running ------------------------------------------------------------------------------

class emulate_on_numpy:
    """`with emulate_on_numpy():` CuPy-backend kernels run their generated module with NumPy
    as the array namespace and each CUDA kernel in its NumPy lane form, and return NumPy
    arrays (in every thread). For testing without a GPU: no CUDA runs."""

    _depth = 0
    _lock = threading.Lock()

    def __enter__(self) -> "emulate_on_numpy":
        with self._lock:
            type(self)._depth += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            type(self)._depth -= 1


def emulating() -> bool:
    return emulate_on_numpy._depth > 0


_DEVICE_FOUND: list = []  # CuPy, once a device has been found (every call asks)


def device_namespace():
    """CuPy, with a device; numpy when emulating; otherwise a BackendError saying why not."""
    if emulating():
        import numpy
        return numpy
    if _DEVICE_FOUND:
        return _DEVICE_FOUND[0]
    try:
        import cupy
    except ImportError:
        raise BackendError(f"backend='cupy' needs CuPy, which is not installed: {INSTALL_HINT}; "
                           "the source and plan can be read without it (kern.source)") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError and friends: no driver, no device
        raise BackendError(f"backend='cupy' needs a CUDA device, and CuPy {cupy.__version__} "
                           f"found none ({error}); the source and plan can be read without "
                           "one (kern.source), or use backend='numpy'") from None
    if count == 0:
        raise BackendError("backend='cupy' needs a CUDA device, and CuPy found none; "
                           "use backend='numpy'")
    _DEVICE_FOUND.append(cupy)
    return cupy


def _checked(name: str, arrays: tuple, dtype: str, xp: Any) -> tuple:
    """The arrays a kernel gets: C-contiguous (its indexing assumes it; the target, last, is
    made so by the module), and of the kernel's dtype. A wrong dtype is a tensorc bug, which
    the device would not notice: it would read the memory as the wrong type."""
    for array in arrays:
        if array.dtype != dtype:
            raise AssertionError(f"tensorc bug: kernel {name} got a {array.dtype} array, "
                                 f"compiled for {dtype}")
    return tuple(xp.ascontiguousarray(a) for a in arrays[:-1]) + arrays[-1:]


class _CudaLauncher:
    """Runs CUDA_SOURCE's kernels with CuPy: compiled once (RawModule, cached by CuPy)."""

    def __init__(self, source: str, dtype: str) -> None:
        import cupy
        self.cupy, self.dtype = cupy, dtype
        self.module = cupy.RawModule(code=source, options=("-std=c++17",)) if source else None
        self.functions: dict[str, Any] = {}

    def __call__(self, name: str, threads: int, *arrays: Any) -> None:
        function = self.functions.get(name)
        if function is None:
            function = self.functions[name] = self.module.get_function(name)
        arrays = _checked(name, arrays, self.dtype, self.cupy)
        blocks = min(MAX_BLOCKS, -(-threads // THREADS_PER_BLOCK))
        function((blocks,), (THREADS_PER_BLOCK,), arrays)


class _LaneLauncher:
    """Runs each kernel's NumPy lane form: every thread at once, as array lanes."""

    def __init__(self, lane_source: str, dtype: str) -> None:
        self.dtype = dtype
        namespace: dict[str, Any] = {"__name__": "tensorc_lanes"}
        exec(compile(lane_source, "<tensorc-lanes>", "exec"), namespace)  # noqa: S102 - ours
        self.functions = namespace

    def __call__(self, name: str, threads: int, *arrays: Any) -> None:
        import numpy
        self.functions[name](*_checked(name, arrays, self.dtype, numpy))


class _Special:
    """erf for the emulation: SciPy's when present, else math.erf elementwise."""

    def __init__(self) -> None:
        try:
            from scipy.special import erf
        except ImportError:  # pragma: no cover - depends on the machine
            import math

            import numpy
            erf = numpy.vectorize(math.erf)
        self.erf = erf


def bind_module(namespace: dict[str, Any], plan: ProgramPlan) -> Callable[..., Any]:
    """A freshly loaded module's `kernel`, bound to CuPy and the device, or to NumPy and the
    lane forms when emulating."""
    return bind_namespace(namespace, lanes_source(plan), plan.dtype)


def lanes_source(plan: ProgramPlan) -> str:
    """The NumPy lane forms of a GPU plan's loop kernels (what emulation runs)."""
    return render_lanes([sp.loop_nest for sp in plan.statements if sp.loop_nest is not None])


def bind_namespace(namespace: dict[str, Any], lanes: str, dtype: str) -> Callable[..., Any]:
    """bind_module, from the lane forms' source (which a Dask task carries to a worker)."""
    xp = device_namespace()
    if emulating():
        namespace["bind"](xp, _Special(), _LaneLauncher(lanes, dtype))
    else:
        import cupyx.scipy.special
        namespace["bind"](xp, cupyx.scipy.special, _CudaLauncher(namespace["CUDA_SOURCE"], dtype))
    return namespace["kernel"]


# ---- checking the CUDA C without a device ------------------------------------------------

def nvrtc_available() -> bool:
    try:
        from cuda.bindings import nvrtc
        return nvrtc.nvrtcVersion()[0] == nvrtc.nvrtcResult.NVRTC_SUCCESS
    except Exception:  # not installed, or the library is missing
        return False


def compile_cubin(source: str, arch: str = "sm_90") -> bytes:
    """Compile CUDA C to a cubin with NVRTC (cuda-bindings), no device needed; a
    BackendError carries NVRTC's log when it fails."""
    from cuda.bindings import nvrtc
    ok = nvrtc.nvrtcResult.NVRTC_SUCCESS
    error, program = nvrtc.nvrtcCreateProgram(source.encode(), b"tensorc.cu", 0, [], [])
    if error != ok:
        raise BackendError(f"NVRTC could not take the source: {error}")
    try:
        options = [f"--gpu-architecture={arch}".encode(), b"-std=c++17"]
        (status,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
        _, size = nvrtc.nvrtcGetProgramLogSize(program)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(program, log)
        if status != ok:
            raise BackendError(f"NVRTC failed to compile the CUDA C for {arch}:\n"
                               f"{log.decode(errors='replace').rstrip(chr(0))}")
        _, size = nvrtc.nvrtcGetCUBINSize(program)
        cubin = b" " * size
        nvrtc.nvrtcGetCUBIN(program, cubin)
        return cubin
    finally:
        nvrtc.nvrtcDestroyProgram(program)

