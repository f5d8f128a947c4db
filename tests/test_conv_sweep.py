"""A sweep of convolution and pooling programs, each compared with PyTorch in float64.

Every case is a tensorc program written in the notation of SPEC.md section 1
(windowed / affine accesses, `where` ranges and boundary modes) together with
an oracle built from real PyTorch (and NumPy for the `symmetric` boundary):

- convolutions 1-D/2-D/3-D, stride 1-3, dilation 1-2, odd sizes that leave
  remainders, non-square kernels and per-axis strides;
- padding with every boundary mode (zero, circular, reflect, replicate,
  symmetric) and their aliases, compared with ``F.pad``/``np.pad`` followed by
  the unpadded convolution; asymmetric ('same' with an even kernel, causal);
- grouped, depthwise (with and without a channel multiplier) and 1x1
  convolutions; bias + activation epilogues;
- max / average / min pooling 1-D/2-D/3-D with stride equal to and different
  from the window, padded and dilated pooling, global pooling;
- a few multi-statement programs (conv -> relu -> pool, conv -> conv).

The cases are generated programmatically; ``test_sweep_size`` checks that
there are at least 100 of them.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tensorc as tc

# Run as well through the CuPy backend, emulated on NumPy (tests/conftest.py).
pytestmark = pytest.mark.conformance

RTOL = ATOL = 1e-9

# ---------------------------------------------------------------------------
# notation helpers
# ---------------------------------------------------------------------------

OUT_IDX = {1: ["w"], 2: ["h", "w"], 3: ["d", "h", "w"]}  # output spatial indices
WIN_IDX = {1: ["v"], 2: ["u", "v"], 3: ["a", "u", "v"]}  # window (kernel) indices
SIZES = {1: (13,), 2: (11, 9), 3: (7, 6, 5)}  # odd / uneven spatial sizes
N, C, O = 2, 3, 4

# tensorc boundary mode -> oracle padding mode ("symmetric" is done by np.pad)
ORACLE_MODE = {
    "zero": "constant", "zeros": "constant",
    "circular": "circular", "cyclic": "circular", "wrap": "circular",
    "reflect": "reflect",
    "replicate": "replicate", "edge": "replicate", "hold": "replicate",
    "symmetric": "symmetric",
}

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def per_dim(value, dim: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dim
    value = tuple(value)
    assert len(value) == dim
    return value


def affine(terms: list[tuple[int, str]], offset: int = 0) -> str:
    """'2*h + 2*u - 2' from [(2, 'h'), (2, 'u')], -2 (unit coefficients and zero offsets left out)."""
    parts = []
    for coef, var in terms:
        if coef == 0:
            continue
        parts.append(var if coef == 1 else f"{coef}*{var}")
    text = " + ".join(parts) if parts else "0"
    if offset > 0:
        text += f" + {offset}"
    elif offset < 0:
        text += f" - {-offset}"
    return text


def out_size(size: int, kernel: int, stride: int, dilation: int, pad: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


@dataclass
class Geometry:
    """Spatial geometry of one windowed access, per axis."""

    dim: int
    size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pad: tuple[int, ...]          # left (low) padding, the offset in the access
    out: tuple[int, ...]          # output size
    mode: str | None              # boundary mode, None for a 'valid' program

    @classmethod
    def make(cls, dim, *, size=None, kernel=3, stride=1, dilation=1, pad=0, mode=None,
             out=None) -> "Geometry":
        size = per_dim(size if size is not None else SIZES[dim], dim)
        kernel, stride = per_dim(kernel, dim), per_dim(stride, dim)
        dilation, pad = per_dim(dilation, dim), per_dim(pad, dim)
        if out is None:
            out = tuple(out_size(*a) for a in zip(size, kernel, stride, dilation, pad))
        out = per_dim(out, dim)
        if mode is None:
            assert not any(pad), "padding needs a boundary mode"
        return cls(dim, size, kernel, stride, dilation, pad, out, mode)

    def accesses(self) -> list[str]:
        return [affine([(s, o), (d, w)], -p) for s, o, d, w, p in
                zip(self.stride, OUT_IDX[self.dim], self.dilation, WIN_IDX[self.dim], self.pad)]

    def pads(self) -> list[tuple[int, int]]:
        """(low, high) padding an oracle needs so the unpadded op sees every accessed sample."""
        result = []
        for n, k, s, d, p, o in zip(self.size, self.kernel, self.stride, self.dilation,
                                    self.pad, self.out):
            needed = s * (o - 1) + d * (k - 1) + 1  # samples from the low edge of the padded input
            result.append((p, max(0, needed - n - p)))
        return result

    def where(self, extra: list[str] | None = None, tensor: str = "x") -> str:
        clauses = list(extra or [])
        if self.mode is not None:
            clauses += [f"{o} < {n}" for o, n in zip(OUT_IDX[self.dim], self.out)]
            clauses.append(f"{tensor}: {self.mode}")
        return ("   where " + ", ".join(clauses)) if clauses else ""

    def crop(self, y: np.ndarray) -> np.ndarray:
        index = (Ellipsis,) + tuple(slice(0, o) for o in self.out)
        return y[index]

    def tag(self) -> str:
        def fmt(v):
            return str(v[0]) if len(set(v)) == 1 else "x".join(map(str, v))
        parts = [f"{self.dim}d", "n" + fmt(self.size), "k" + fmt(self.kernel),
                 "s" + fmt(self.stride), "d" + fmt(self.dilation)]
        if any(self.pad) or self.mode is not None:
            parts.append("p" + fmt(self.pad))
        if self.mode is not None:
            parts.append(self.mode)
        return "-".join(parts)


def pad_oracle(x: np.ndarray, geo: Geometry) -> torch.Tensor:
    """x padded as the boundary mode says, by F.pad (or np.pad for 'symmetric')."""
    pads = geo.pads()
    if geo.mode is None or not any(lo or hi for lo, hi in pads):
        return torch.from_numpy(x)
    mode = ORACLE_MODE[geo.mode]
    if mode == "symmetric":
        lead = [(0, 0)] * (x.ndim - geo.dim)
        return torch.from_numpy(np.pad(x, lead + pads, mode="symmetric"))
    flat = [amount for lo_hi in reversed(pads) for amount in lo_hi]  # last axis first
    if mode == "constant":
        return F.pad(torch.from_numpy(x), flat, mode="constant", value=0.0)
    return F.pad(torch.from_numpy(x), flat, mode=mode)


def conv_oracle(x: np.ndarray, weight: np.ndarray, geo: Geometry, bias=None,
                groups: int = 1) -> np.ndarray:
    xt = pad_oracle(x, geo)
    b = None if bias is None else torch.from_numpy(bias)
    y = CONV[geo.dim](xt, torch.from_numpy(weight), b, stride=geo.stride,
                      dilation=geo.dilation, groups=groups)
    return geo.crop(y.numpy())


# ---------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    src: str
    shapes: dict[str, tuple[int, ...]]
    oracle: Callable[[dict[str, np.ndarray]], np.ndarray]
    positive: tuple[str, ...] = field(default=())  # inputs drawn positive (none needed so far)

    def inputs(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(zlib.crc32(self.id.encode()))
        return {name: rng.standard_normal(shape) for name, shape in self.shapes.items()}


CASES: list[Case] = []


def add(case: Case) -> None:
    CASES.append(case)


def spatial(idx: list[str]) -> str:
    return ",".join(idx)


# --- plain convolutions ('valid', range inferred, no `where`) ---------------

def conv_case(geo: Geometry, prefix: str = "conv", *, cin: int = C, cout: int = O) -> Case:
    dim = geo.dim
    src = (f"y[n,o,{spatial(OUT_IDX[dim])}] = x[n,c,{', '.join(geo.accesses())}]"
           f" * k[o,c,{spatial(WIN_IDX[dim])}]" + geo.where())
    shapes = {"x": (N, cin) + geo.size, "k": (cout, cin) + geo.kernel}
    return Case(f"{prefix}-{geo.tag()}", src, shapes,
                lambda a, geo=geo: conv_oracle(a["x"], a["k"], geo))


VALID_KERNELS = {1: [3, 4], 2: [(3, 3), (3, 2)], 3: [(3, 3, 3), (2, 3, 2)]}
for dim, stride, dilation, kidx in itertools.product((1, 2, 3), (1, 2, 3), (1, 2), (0, 1)):
    add(conv_case(Geometry.make(dim, kernel=VALID_KERNELS[dim][kidx], stride=stride,
                                dilation=dilation)))

# per-axis strides / dilations and an input size that is exactly divisible
for dim, kernel, stride, dilation, size in [
    (2, (3, 2), (1, 2), (2, 1), None),
    (2, (2, 3), (3, 1), (1, 2), None),
    (3, (2, 2, 3), (1, 2, 3), (2, 1, 1), None),
    (2, (3, 3), 2, 1, (9, 9)),
    (1, 5, 2, 1, (12,)),
    (1, 1, 1, 1, (13,)),  # 1-wide kernel written with a window index
]:
    add(conv_case(Geometry.make(dim, kernel=kernel, stride=stride, dilation=dilation,
                                size=size)))

# --- padded convolutions, every boundary mode ------------------------------

MODES = ("zero", "circular", "reflect", "replicate", "symmetric")
# (kernel, stride, dilation, padding)
PAD_CONFIGS = [(3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2), (3, 3, 1, 2), (2, 2, 2, 3)]
for dim, mode, (kernel, stride, dilation, pad) in itertools.product((1, 2, 3), MODES, PAD_CONFIGS):
    add(conv_case(Geometry.make(dim, kernel=kernel, stride=stride, dilation=dilation, pad=pad,
                                mode=mode), prefix="pad"))

# spec example: stride 2, dilation 2, padding 2, explicit output size
add(conv_case(Geometry.make(2, size=(13, 12), kernel=3, stride=2, dilation=2, pad=2,
                            mode="reflect", out=(7, 6)), prefix="spec"))

# aliases of the boundary modes
ALIASES = ("zeros", "cyclic", "wrap", "edge", "hold")
for dim, mode in itertools.product((1, 2), ALIASES):
    add(conv_case(Geometry.make(dim, kernel=3, stride=2, dilation=1, pad=2, mode=mode),
                  prefix="alias"))
add(conv_case(Geometry.make(3, kernel=3, stride=1, dilation=1, pad=1, mode="wrap"),
              prefix="alias"))

# asymmetric padding: 'same' output with an even kernel (pads 1 low, 2 high)
for mode in MODES:
    add(conv_case(Geometry.make(2, kernel=4, stride=1, dilation=1, pad=1, mode=mode,
                                out=SIZES[2]), prefix="same-even"))
# causal 1-D convolution: pads only on the low side
for mode in ("zero", "replicate", "circular"):
    add(conv_case(Geometry.make(1, kernel=3, stride=1, dilation=2, pad=4, mode=mode,
                                out=SIZES[1]), prefix="causal"))
# only the high side leaves the bounds (offset 0, output as large as the input)
for mode in ("zero", "reflect", "symmetric"):
    add(conv_case(Geometry.make(2, kernel=3, stride=1, dilation=1, pad=0, mode=mode,
                                out=SIZES[2]), prefix="highpad"))
# a boundary mode on a program whose accesses stay inside: must equal 'valid'
add(conv_case(Geometry.make(2, kernel=3, stride=2, dilation=1, pad=0, mode="reflect"),
              prefix="inbounds"))

# --- grouped convolutions ----------------------------------------------------

def grouped_case(geo: Geometry, groups: int, cin: int, cout: int,
                 interleaved: bool = False) -> Case:
    dim = geo.dim
    channel = affine([(1, "g"), (groups, "c")]) if interleaved else affine([(cin, "g"), (1, "c")])
    src = (f"y[n,g,o,{spatial(OUT_IDX[dim])}] = x[n,{channel},{', '.join(geo.accesses())}]"
           f" * k[g,o,c,{spatial(WIN_IDX[dim])}]" + geo.where())
    shapes = {"x": (N, groups * cin) + geo.size, "k": (groups, cout, cin) + geo.kernel}

    def oracle(a, geo=geo):
        x = a["x"]
        if interleaved:  # make group g's channels contiguous, as PyTorch expects
            perm = [g + groups * c for g in range(groups) for c in range(cin)]
            x = np.ascontiguousarray(x[:, perm])
        weight = a["k"].reshape((groups * cout, cin) + geo.kernel)
        y = conv_oracle(x, weight, geo, groups=groups)
        return y.reshape((N, groups, cout) + y.shape[2:])

    name = f"group{groups}x{cin}to{cout}{'-interleaved' if interleaved else ''}-{geo.tag()}"
    return Case(name, src, shapes, oracle)


for stride, (pad, mode) in itertools.product((1, 2), [(0, None), (1, "zero"), (1, "reflect")]):
    add(grouped_case(Geometry.make(2, kernel=3, stride=stride, pad=pad, mode=mode), 2, 2, 3))
add(grouped_case(Geometry.make(1, kernel=3, stride=2, dilation=2), 2, 2, 3))
add(grouped_case(Geometry.make(3, kernel=2, stride=1), 2, 2, 3))
add(grouped_case(Geometry.make(2, kernel=3, stride=1, pad=1, mode="circular"), 3, 1, 2))
add(grouped_case(Geometry.make(2, kernel=(3, 2), stride=(2, 1)), 4, 1, 2))
add(grouped_case(Geometry.make(2, kernel=3, stride=1), 2, 2, 3, interleaved=True))
add(grouped_case(Geometry.make(1, kernel=3, stride=1, pad=1, mode="replicate"), 3, 2, 2,
                 interleaved=True))

# --- depthwise convolutions --------------------------------------------------

def depthwise_case(geo: Geometry, multiplier: int | None = None, channels: int = 4) -> Case:
    dim = geo.dim
    out, win, acc = spatial(OUT_IDX[dim]), spatial(WIN_IDX[dim]), ", ".join(geo.accesses())
    if multiplier is None:
        src = f"y[n,c,{out}] = x[n,c,{acc}] * k[c,{win}]" + geo.where()
        kshape = (channels,) + geo.kernel
    else:
        src = f"y[n,c,m,{out}] = x[n,c,{acc}] * k[c,m,{win}]" + geo.where()
        kshape = (channels, multiplier) + geo.kernel
    shapes = {"x": (N, channels) + geo.size, "k": kshape}

    def oracle(a, geo=geo):
        weight = a["k"].reshape((-1, 1) + geo.kernel)
        y = conv_oracle(a["x"], weight, geo, groups=channels)
        if multiplier is not None:
            y = y.reshape((N, channels, multiplier) + y.shape[2:])
        return y

    name = f"depthwise{'' if multiplier is None else f'-mult{multiplier}'}-{geo.tag()}"
    return Case(name, src, shapes, oracle)


for geo in [
    Geometry.make(1, kernel=3),
    Geometry.make(2, kernel=3),
    Geometry.make(3, kernel=2),
    Geometry.make(2, kernel=3, stride=2),
    Geometry.make(2, kernel=3, dilation=2),
    Geometry.make(2, kernel=3, pad=1, mode="zero"),
    Geometry.make(2, kernel=5, stride=2, pad=2, mode="reflect"),
    Geometry.make(1, kernel=3, pad=1, mode="circular"),
    Geometry.make(3, kernel=3, stride=2, pad=1, mode="symmetric"),
]:
    add(depthwise_case(geo))
add(depthwise_case(Geometry.make(2, kernel=3, stride=1), multiplier=2))
add(depthwise_case(Geometry.make(1, kernel=3, stride=2, pad=1, mode="replicate"), multiplier=3))

# --- 1x1 convolutions --------------------------------------------------------

def pointwise_case(dim: int, stride: int, bias: bool = False) -> Case:
    out = OUT_IDX[dim]
    acc = ", ".join(affine([(stride, o)]) for o in out)
    rhs = f"x[n,c,{acc}] * k[o,c]"
    src = f"y[n,o,{spatial(out)}] = " + (f"{rhs} + b[o]" if bias else rhs)
    size = SIZES[dim]
    shapes = {"x": (N, C) + size, "k": (O, C)}
    if bias:
        shapes["b"] = (O,)
    geo = Geometry.make(dim, kernel=1, stride=stride)

    def oracle(a, geo=geo):
        weight = a["k"].reshape((O, C) + (1,) * dim)
        return conv_oracle(a["x"], weight, geo, bias=a.get("b"))

    return Case(f"1x1-{dim}d-s{stride}{'-bias' if bias else ''}", src, shapes, oracle)


for dim, stride in itertools.product((1, 2, 3), (1, 2)):
    add(pointwise_case(dim, stride))
add(pointwise_case(2, 1, bias=True))
add(pointwise_case(2, 3, bias=True))

# --- bias + activation epilogues ---------------------------------------------

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "": lambda t: t,
    "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "silu": F.silu,
    "elu": F.elu, "softplus": F.softplus, "gelu": F.gelu,
}


def epilogue_case(geo: Geometry, act: str) -> Case:
    dim = geo.dim
    body = (f"x[n,c,{', '.join(geo.accesses())}] * k[o,c,{spatial(WIN_IDX[dim])}] + b[o]")
    rhs = f"{act}({body})" if act else body
    src = f"y[n,o,{spatial(OUT_IDX[dim])}] = {rhs}" + geo.where()
    shapes = {"x": (N, C) + geo.size, "k": (O, C) + geo.kernel, "b": (O,)}

    def oracle(a, geo=geo):
        y = conv_oracle(a["x"], a["k"], geo, bias=a["b"])
        return ACTIVATIONS[act](torch.from_numpy(y)).numpy()

    return Case(f"bias-{act or 'linear'}-{geo.tag()}", src, shapes, oracle)


for act in ACTIVATIONS:
    add(epilogue_case(Geometry.make(2, kernel=3), act))
add(epilogue_case(Geometry.make(1, kernel=3, stride=2), "relu"))
add(epilogue_case(Geometry.make(3, kernel=2, dilation=2), "relu"))
add(epilogue_case(Geometry.make(2, kernel=3, stride=2, pad=1, mode="reflect"), "relu"))
add(epilogue_case(Geometry.make(2, kernel=3, stride=1, pad=1, mode="zero"), "gelu"))
add(epilogue_case(Geometry.make(1, kernel=3, stride=1, pad=2, dilation=2, mode="circular"),
                  "tanh"))

# --- pooling -------------------------------------------------------------------

def pool_case(geo: Geometry, op: str) -> Case:
    dim = geo.dim
    out, win = OUT_IDX[dim], WIN_IDX[dim]
    windows = [f"{w} < {k}" for w, k in zip(win, geo.kernel)]
    src = (f"p[n,c,{spatial(out)}] = {op}[{spatial(win)}](x[n,c,{', '.join(geo.accesses())}])"
           + geo.where(windows))
    shapes = {"x": (N, C) + geo.size}

    def oracle(a, geo=geo):
        xt = torch.from_numpy(a["x"])
        pad = geo.pad
        if op == "max":
            y = MAXPOOL[dim](xt, geo.kernel, geo.stride, padding=pad, dilation=geo.dilation)
        elif op == "min":
            y = -MAXPOOL[dim](-xt, geo.kernel, geo.stride, padding=pad, dilation=geo.dilation)
        else:
            assert set(geo.dilation) == {1}
            y = AVGPOOL[dim](xt, geo.kernel, geo.stride, padding=pad, count_include_pad=True)
        return y.numpy()

    return Case(f"{op}pool-{geo.tag()}", src, shapes, oracle)


# (window, stride): stride equal to the window, and smaller / larger than it
POOL_2D = [((2, 2), 2), ((3, 3), 3), ((3, 3), 2), ((2, 2), 1), ((3, 3), 1), ((2, 3), (2, 1)),
           ((2, 2), 3)]
for op, (kernel, stride) in itertools.product(("max", "mean"), POOL_2D):
    add(pool_case(Geometry.make(2, kernel=kernel, stride=stride), op))
POOL_1D = [(2, 2), (3, 2), (3, 3), (4, 1), (2, 3)]
for op, (kernel, stride) in itertools.product(("max", "mean"), POOL_1D):
    add(pool_case(Geometry.make(1, kernel=kernel, stride=stride), op))
for kernel, stride in [(2, 2), (3, 2), ((2, 3, 2), (1, 2, 2))]:
    add(pool_case(Geometry.make(3, kernel=kernel, stride=stride), "max"))
add(pool_case(Geometry.make(3, kernel=2, stride=2), "mean"))
# padded pooling: a replicate boundary gives PyTorch's max pool padding (the edge sample is
# always in the window); a zero boundary gives avg_pool with count_include_pad=True
for dim in (1, 2):
    add(pool_case(Geometry.make(dim, kernel=3, stride=2, pad=1, mode="replicate"), "max"))
    add(pool_case(Geometry.make(dim, kernel=3, stride=2, pad=1, mode="zero"), "mean"))
add(pool_case(Geometry.make(2, kernel=2, stride=1, pad=1, mode="edge"), "max"))
add(pool_case(Geometry.make(2, kernel=3, stride=3, pad=1, mode="zeros"), "mean"))
# dilated pooling, min pooling
add(pool_case(Geometry.make(2, kernel=2, stride=2, dilation=2), "max"))
add(pool_case(Geometry.make(1, kernel=3, stride=1, dilation=2), "max"))
add(pool_case(Geometry.make(2, kernel=2, stride=2), "min"))


def global_pool_case(dim: int, op: str) -> Case:
    out = OUT_IDX[dim]
    src = f"g[n,c] = {op}[{spatial(out)}](x[n,c,{spatial(out)}])"
    axes = tuple(range(2, 2 + dim))

    def oracle(a):
        xt = torch.from_numpy(a["x"])
        if op == "mean":
            return F.adaptive_avg_pool2d(xt, 1).flatten(1).numpy() if dim == 2 \
                else xt.mean(dim=axes).numpy()
        return torch.amax(xt, dim=axes).numpy()

    return Case(f"global-{op}-{dim}d", src, {"x": (N, C) + SIZES[dim]}, oracle)


for dim in (1, 2, 3):
    add(global_pool_case(dim, "mean"))
add(global_pool_case(2, "max"))

# --- multi-statement programs --------------------------------------------------

def _conv_relu_pool(a):
    y = torch.relu(F.conv2d(torch.from_numpy(a["x"]), torch.from_numpy(a["k"]),
                            torch.from_numpy(a["b"])))
    return F.max_pool2d(y, 2, 2).numpy()


add(Case("chain-conv-relu-maxpool",
         "y[n,o,h,w] = relu(x[n,c,h+u,w+v] * k[o,c,u,v] + b[o])\n"
         "p[n,o,h,w] = max[u,v](y[n,o,2*h+u,2*w+v])   where u < 2, v < 2",
         {"x": (N, C, 11, 9), "k": (O, C, 3, 3), "b": (O,)}, _conv_relu_pool))


def _conv1d_avgpool(a):
    xt = F.pad(torch.from_numpy(a["x"]), (1, 1), mode="reflect")
    y = F.conv1d(xt, torch.from_numpy(a["k"]))
    return F.avg_pool1d(y, 3, 2).numpy()


add(Case("chain-conv1d-reflect-avgpool",
         "y[n,o,w] = x[n,c,w+v-1] * k[o,c,v]   where w < 13, x: reflect\n"
         "p[n,o,w] = mean[v](y[n,o,2*w+v])   where v < 3",
         {"x": (N, C, 13), "k": (O, C, 3)}, _conv1d_avgpool))


def _conv_conv(a):
    xt = F.pad(torch.from_numpy(a["x"]), (1, 1, 1, 1), mode="circular")
    y = F.conv2d(xt, torch.from_numpy(a["k"]), stride=2)
    y = F.pad(y, (1, 1, 1, 1), mode="replicate")
    return torch.relu(F.conv2d(y, torch.from_numpy(a["q"]))).numpy()


add(Case("chain-conv-circular-conv-replicate",
         "y[n,o,h,w] = x[n,c,2*h+u-1,2*w+v-1] * k[o,c,u,v]   where h < 6, w < 5, x: circular\n"
         "z[n,m,h,w] = relu(y[n,o,h+u-1,w+v-1] * q[m,o,u,v])   where h < 6, w < 5, y: replicate",
         {"x": (N, C, 11, 9), "k": (O, C, 3, 3), "q": (2, O, 3, 3)}, _conv_conv))


def _global_avg_head(a):
    y = torch.relu(F.conv2d(torch.from_numpy(a["x"]), torch.from_numpy(a["k"]), padding=1))
    return y.mean(dim=(2, 3)).numpy()


add(Case("chain-conv-zero-globalavg",
         "y[n,o,h,w] = relu(x[n,c,h+u-1,w+v-1] * k[o,c,u,v])   where h < 11, w < 9, x: zero\n"
         "g[n,o] = mean[h,w](y[n,o,h,w])",
         {"x": (N, C, 11, 9), "k": (O, C, 3, 3)}, _global_avg_head))

IDS = [case.id for case in CASES]

# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------


def test_sweep_size():
    assert len(CASES) >= 100, len(CASES)
    assert len(set(IDS)) == len(IDS), "case ids must be unique"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv_sweep(case: Case):
    inputs = case.inputs()
    want = case.oracle(inputs)
    context = f"\nprogram:\n{case.src}\nshapes: {case.shapes}"

    lazy = tc.compile(case.src)  # specialized on the first call
    got = lazy(**inputs)
    assert isinstance(got, np.ndarray), f"expected one output array, got {type(got)}" + context
    assert got.dtype == np.float64, context
    assert got.shape == want.shape, f"shape {got.shape} != PyTorch {want.shape}" + context
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=context)

    eager = tc.compile(case.src, **case.shapes)  # specialized at compile time
    got = eager(**inputs)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=context)
