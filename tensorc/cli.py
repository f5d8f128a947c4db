"""The `tensorc` command line: compile a program and show its plan, source or IR; run it;
print its adjoint."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

from .adjoint import grad
from .errors import TensorcError
from .kernel import compile as compile_program
from .parser import parse

__all__ = ["main"]

_SHOW = ("program", "ir", "plan", "source", "cuda")


def _program_text(argument: str) -> tuple[str, str]:
    """A program given inline or as a file path: (text, name used in error messages)."""
    if os.path.isfile(argument):
        with open(argument, encoding="utf-8") as handle:
            return handle.read(), argument
    return argument, "<program>"


def _shapes(items: Sequence[str]) -> dict[str, object]:
    shapes: dict[str, object] = {}
    for item in items:
        name, sep, dims = item.partition("=")
        if not sep or not name.isidentifier():
            raise SystemExit(f"tensorc: --shape takes NAME=D1,D2,... (got {item!r})")
        try:
            values = tuple(int(d) for d in dims.split(",") if d.strip()) if dims.strip() else ()
        except ValueError:
            raise SystemExit(f"tensorc: --shape {item!r}: sizes must be integers") from None
        shapes[name] = values
    return shapes


def _sizes(items: Sequence[str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise SystemExit(f"tensorc: --size takes NAME=INT (got {item!r})")
        sizes[name] = int(value)
    return sizes


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("program", help="a program file, or the program text itself")
    parser.add_argument("--shape", action="append", default=[], metavar="NAME=D1,D2,...",
                        help="shape of an input, e.g. --shape x=2,3,32,32 (repeatable)")
    parser.add_argument("--size", action="append", default=[], metavar="NAME=INT",
                        help="value of a size name from a declaration, e.g. --size N=64")
    parser.add_argument("--dtype", default=None, choices=["float16", "float32", "float64"],
                        help="compute dtype (default: declared, else float64)")
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "dask"],
                        help="numpy (default), cupy (a GPU; its plan and source render "
                             "anywhere) or dask (chunked arrays, locally or on a cluster)")


def _compile(args: argparse.Namespace):
    text, filename = _program_text(args.program)
    program = parse(text, filename)
    shapes = _shapes(args.shape)
    shapes.update(_sizes(args.size))
    return compile_program(program, args.backend, dtype=args.dtype, **shapes)


def _cmd_compile(args: argparse.Namespace) -> int:
    kernel = _compile(args)
    shows = [s.strip() for part in args.show for s in part.split(",") if s.strip()] or ["plan"]
    for show in shows:
        if show not in _SHOW:
            raise SystemExit(f"tensorc: --show takes {', '.join(_SHOW)} (got {show!r})")
    for number, show in enumerate(shows):
        if len(shows) > 1:
            print(("\n" if number else "") + f"==== {show} ====")
        if show == "program":
            print(kernel.program)
        elif show == "ir":
            print(kernel.ir)
        elif show == "plan":
            print(kernel.plan)
        elif show == "cuda":
            from .backends.cupy import cuda_source
            print(cuda_source(kernel.plan) or "// no CUDA loop kernels: "
                  + ("every statement runs as array-level code" if kernel.backend == "cupy"
                     else "compile with --backend cupy"))
        else:
            print(kernel.source, end="")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import numpy as np
    kernel = _compile(args)
    program = kernel.ir
    rng = np.random.default_rng(args.seed)
    dtype = kernel.plan.dtype
    arrays = {name: rng.standard_normal(program.tensors[name].shape).astype(dtype)
              for name in program.inputs}
    def synchronize() -> None:
        pass
    if kernel.backend == "cupy":
        from .backends.cupy import device_namespace
        xp = device_namespace()
        arrays = {name: xp.asarray(a) for name, a in arrays.items()}
        if xp is not np:  # kernels run asynchronously: time each call to its completion
            synchronize = xp.cuda.Device().synchronize
    run = kernel
    if kernel.backend == "dask":  # lazy: time building the graph and computing it
        import dask

        def run(**inputs):
            result = kernel(**inputs)
            if isinstance(result, dict):
                return dict(zip(result, dask.compute(*result.values())))
            return dask.compute(result)[0]
    result = run(**arrays)  # first call: warm-up
    times = []
    for _ in range(args.repeat):
        synchronize()
        start = time.perf_counter()
        result = run(**arrays)
        synchronize()
        times.append(time.perf_counter() - start)
    results = result if isinstance(result, dict) else {program.outputs[0]: result}
    print(f"inputs (random normal, seed {args.seed}, {dtype}): "
          + ", ".join(f"{n}{list(a.shape)}" for n, a in arrays.items()))
    for name, value in results.items():
        value = value.get() if hasattr(value, "get") else np.asarray(value)  # CuPy: to host
        print(f"{name}{list(value.shape)}: mean {value.mean():.6g}  std {value.std():.6g}  "
              f"min {value.min():.6g}  max {value.max():.6g}")
    times.sort()
    median = times[len(times) // 2]
    flops = kernel.plan.flops
    print(f"time: median {median * 1e3:.3f} ms over {args.repeat} runs"
          + (f", {flops / median / 1e9:.2f} GFLOP/s" if median > 0 and flops else ""))
    return 0


def _cmd_grad(args: argparse.Namespace) -> int:
    text, filename = _program_text(args.program)
    wrt = [name.strip() for part in args.wrt for name in part.split(",") if name.strip()]
    if not wrt:
        raise SystemExit("tensorc: grad needs --wrt NAME[,NAME...] (the tensors to "
                         "differentiate with respect to)")
    print(grad(parse(text, filename), wrt))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tensorc",
        description="Compile tensorc programs (layers in Einstein notation) to NumPy code.",
        epilog="example: tensorc compile 'y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]' "
               "--shape x=2,3,32,32 --shape k=8,3,3,3 --show plan,source")
    commands = parser.add_subparsers(dest="command", required=True)
    compile_parser = commands.add_parser("compile", help="compile and show plan/source/ir")
    _add_common(compile_parser)
    compile_parser.add_argument("--show", action="append", default=[],
                                help="what to print: plan (default), source, ir, program, cuda (the "
                                     "CuPy backend's CUDA C); "
                                     "comma-separated or repeated")
    compile_parser.set_defaults(handler=_cmd_compile)
    run_parser = commands.add_parser("run", help="run on random inputs and time it")
    _add_common(run_parser)
    run_parser.add_argument("--repeat", type=int, default=10, help="timed runs (default 10)")
    run_parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run_parser.set_defaults(handler=_cmd_run)
    grad_parser = commands.add_parser("grad", help="print the adjoint program (tc.grad)")
    grad_parser.add_argument("program", help="a program file, or the program text itself")
    grad_parser.add_argument("--wrt", action="append", default=[], metavar="NAME[,NAME...]",
                             help="differentiate with respect to these tensors")
    grad_parser.set_defaults(handler=_cmd_grad)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except TensorcError as error:
        print(f"tensorc: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
