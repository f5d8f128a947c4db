"""Model summary: output shape, parameters, FLOPs and receptive field of every layer.

Nothing here knows what a convolution or a pooling layer is. For each layer defined by a
program, the program is checked and planned for the layer's actual input shape (the same
`tensorc.Kernel` forward would build), and

* the output shape comes from the checked program (reshaped by the layer's `output_shape`),
* the FLOPs are the plan's count (`kernel.plan.flops`): a multiply-add is 2 FLOPs, every
  elementwise operation, comparison or reduced element is 1,
* the receptive field comes from the index maps of the reads of the layer input `x`. An
  output position `h` along a spatial dimension reads the input positions
  `coef_h * h + sum(coef_u * u) + offset` over the window indices `u` (indices that are not
  output indices); reads through intermediate tensors (`mu[c]` in batch normalization) are
  composed by substituting the intermediate's indices. The layer's stride along the
  dimension is `|coef_h|`, its window `1 + max - min` of the window part. Across layers:
  `rf_out = rf_in + (window - 1) * jump_in`, `jump_out = jump_in * stride`.

Layers without a program (Flatten) pass their input through their own forward on a
zero-stride dummy array to learn the output shape; they cost 0 FLOPs. The summary is taken
in eval (inference) mode: dropout is the identity and batch normalization uses its running
statistics, as a deployed model does; the model's modes are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..check import program_inputs
from ..ir import CheckedProgram, IndexMap, Read, walk
from ..kernel import Kernel
from .module import Module, Sequential

__all__ = ["LayerSummary", "ModelSummary", "summarize", "summary"]

FLOP_CONVENTION = ("FLOPs as planned by the compiler: a multiply-add counts 2, each "
                   "elementwise op, comparison or reduced element counts 1")


@dataclass
class LayerSummary:
    """One row: `receptive_field` and `jump` per spatial dimension of the output (None when
    the output has no spatial dimensions; an entry is None when the maps do not determine it).
    `window` and `stride` are the layer's own, derived from its index maps."""

    name: str
    kind: str
    output_shape: tuple[int, ...]  # without the batch dimension
    params: int
    flops: int
    receptive_field: tuple[int | None, ...] | None = None
    jump: tuple[int | None, ...] | None = None
    window: tuple[int | None, ...] | None = None
    stride: tuple[int | None, ...] | None = None
    program: str | None = None


@dataclass
class ModelSummary:
    input_shape: tuple[int, ...]  # without the batch dimension
    batch_size: int
    layers: list[LayerSummary] = field(default_factory=list)

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def total_flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    def __getitem__(self, name: str) -> LayerSummary:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def table(self) -> str:
        def dims(values: Sequence[int | None] | None) -> str:
            if values is None:
                return "-"
            return "x".join("?" if v is None else str(v) for v in values)

        header = ("Layer", "Output shape", "Params", "FLOPs", "Receptive field", "Jump")
        rows = [(f"{layer.name} {layer.kind}", str(list(layer.output_shape)),
                 f"{layer.params:,}", f"{layer.flops:,}", dims(layer.receptive_field),
                 dims(layer.jump)) for layer in self.layers]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        rule = "-" * len(line(header))
        out = [f"Model summary: input {list(self.input_shape)}, batch size {self.batch_size} "
               "(shapes without the batch dimension), eval mode",
               FLOP_CONVENTION + f"; counted for the batch of {self.batch_size}",
               "Receptive field and jump (input pixels per output step) per spatial "
               "dimension, composed from the layers' index maps",
               rule, line(header), rule, *(line(r) for r in rows), rule,
               f"Total parameters: {self.total_params:,}",
               f"Total FLOPs: {self.total_flops:,}"]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def summarize(model: Module, input_shape: Sequence[int], *,
              batch_size: int | None = 1) -> ModelSummary:
    """The summary as data. `input_shape` excludes the batch dimension, which is
    `batch_size`; with `batch_size=None`, `input_shape` includes it (its first entry)."""
    shape = tuple(int(d) for d in input_shape)
    if batch_size is None:
        if not shape:
            raise ValueError("with batch_size=None, input_shape must include the batch size")
        batch_size, shape = shape[0], shape[1:]
    full = (int(batch_size),) + shape
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        spatial = full[2:] if len(full) >= 3 else ()
        field_ = _Field(spatial, tuple((1, 1) for _ in spatial) if spatial else None)
        result = ModelSummary(shape, int(batch_size))
        _analyze(model, "", full, field_, result.layers)
    finally:
        for module, mode in modes:
            object.__setattr__(module, "training", mode)
    return result


def summary(model: Module, input_shape: Sequence[int], *, batch_size: int | None = 1,
            show: bool = False) -> str:
    """The summary table as text (printed too when `show`)."""
    text = summarize(model, input_shape, batch_size=batch_size).table()
    if show:
        print(text)
    return text


# ---- walking the model ------------------------------------------------------------------------

@dataclass
class _Field:
    """The network input's spatial size and, per spatial dimension of the current
    activation, (receptive field, jump); None entries are unknown."""

    input_spatial: tuple[int, ...]
    dims: tuple[tuple[int | None, int | None], ...] | None


def _dummy(shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """A read-only zero array of any shape without allocating it (zero strides)."""
    return np.broadcast_to(np.zeros((), dtype=dtype), shape)


def _dtype(module: Module) -> np.dtype:
    parameters = module.parameters()
    return parameters[0].dtype if parameters else np.dtype(np.float32)


def _analyze(module: Module, name: str, shape: tuple[int, ...], field_: _Field,
             rows: list[LayerSummary]) -> tuple[tuple[int, ...], _Field]:
    from .layers import Dropout, Residual
    from .program import ProgramModule

    if isinstance(module, Sequential):
        for child_name, child in module._modules.items():
            shape, field_ = _analyze(child, f"{name}.{child_name}" if name else child_name,
                                     shape, field_, rows)
        return shape, field_
    kind = type(module).__name__
    label = name or kind
    if isinstance(module, Residual):
        inner: list[LayerSummary] = []
        body_shape, body_field = _analyze(module.body, f"{label}.body", shape, field_, inner)
        shortcut = module._modules.get("shortcut")
        if shortcut is not None:
            _, short_field = _analyze(shortcut, f"{label}.shortcut", shape, field_, inner)
        else:
            short_field = field_
        out_shape, merged = _analyze(module.merge, f"{label}.merge", body_shape, body_field,
                                     inner)
        merged = _Field(field_.input_spatial, _union(merged.dims, short_field.dims))
        rows.append(LayerSummary(label, kind, out_shape[1:], module.num_parameters(),
                                 sum(r.flops for r in inner), *_columns(merged),
                                 None, None))
        return out_shape, merged
    if isinstance(module, Dropout) or not isinstance(module, ProgramModule):
        # No program runs in eval mode (Dropout), or the layer has none (Flatten): its
        # own forward on a dummy gives the shape.
        out_shape = tuple(np.shape(module(_dummy(shape, _dtype(module)))))
        out_field = _Field(field_.input_spatial,
                           field_.dims if out_shape == shape else
                           None if len(out_shape) < 3 else
                           tuple((None, None) for _ in out_shape[2:]))
        rows.append(LayerSummary(label, kind, out_shape[1:], module.num_parameters(), 0,
                                 *_columns(out_field), None, None))
        return out_shape, out_field
    return _analyze_program(module, label, kind, shape, field_, rows)


def _columns(field_: _Field) -> tuple[Any, Any]:
    if field_.dims is None:
        return None, None
    return tuple(r for r, _ in field_.dims), tuple(j for _, j in field_.dims)


def _union(a, b):
    if a is None or b is None or len(a) != len(b):
        return a
    out = []
    for (ra, ja), (rb, jb) in zip(a, b):
        rf = None if ra is None or rb is None else max(ra, rb)
        out.append((rf, ja if ja == jb else None))
    return tuple(out)


def _analyze_program(module, label, kind, shape, field_, rows):
    variant = module.variant()
    x = _dummy(shape, _dtype(module))
    xs = (x,) * len(module.inputs)  # a merge takes two inputs of the same shape
    module.check_inputs(*xs)
    sizes = module.sizes(*xs)
    feed = module.feed(*xs)
    parsed = module._parsed[variant]
    output = module.output_name(variant)
    extra = module.extra_outputs(variant)
    names = program_inputs(parsed)
    kernel = Kernel(parsed, shapes={n: np.shape(feed[n]) for n in names}, sizes=dict(sizes),
                    outputs=(output,) + tuple(extra) if extra else None)
    ir = kernel.ir
    program_shape = ir.tensors[output].shape
    out_shape = tuple(module.output_shape(_dummy(program_shape), *xs))
    window, stride = _window_and_stride(ir, output, module.inputs[0], shape,
                                        np.shape(feed[module.inputs[0]]), out_shape)
    dims = None
    if window is not None and field_.dims is not None and len(window) == len(field_.dims):
        composed = []
        for (rf, jump), w, s, size in zip(field_.dims, window, stride, field_.input_spatial):
            if w == "all":
                composed.append((size, None if s is None or jump is None else jump * s))
            elif w is None or rf is None or jump is None:
                composed.append((None, None))
            else:
                composed.append((rf + (w - 1) * jump, jump * s))
        dims = tuple(composed)
    elif window is not None:
        dims = tuple((None, None) for _ in window)
    out_field = _Field(field_.input_spatial, dims)
    rows.append(LayerSummary(label, kind, out_shape[1:], module.num_parameters(),
                             kernel.plan.flops, *_columns(out_field),
                             None if window is None else
                             tuple(None if w == "all" else w for w in window),
                             stride, module.program))
    return out_shape, out_field


# ---- index maps ---------------------------------------------------------------------------

def _reads(ir: CheckedProgram, number: int, tensor: str, depth: int = 0):
    """Every read of `tensor` that statement `number` depends on, as (maps, ranges) over the
    statement's indices plus fresh window indices, composing through intermediates. None
    when an intermediate's target is not a plain index per dimension."""
    statement = ir.statements[number]
    found: list[tuple[tuple[IndexMap, ...], dict[str, int]]] = []
    for node in walk(statement.value):
        if not isinstance(node, Read):
            continue
        if node.tensor == tensor:
            found.append((node.maps, dict(statement.ranges)))
            continue
        definers = [i for i, s in enumerate(ir.statements[:number]) if s.target == node.tensor]
        for other in definers:
            if depth > 16:
                return None
            inner = _reads(ir, other, tensor, depth + 1)
            target = ir.statements[other].target_maps
            if inner is None or not all(m.is_plain for m in target):
                return None
            prefix = f"{node.tensor}{depth}."
            substitute = {m.terms[0][0]: by for m, by in zip(target, node.maps)}
            for maps, ranges in inner:
                composed = tuple(_compose(m, substitute, prefix) for m in maps)
                merged = dict(statement.ranges)
                merged.update({prefix + k: v for k, v in ranges.items() if k not in substitute})
                found.append((composed, merged))
    return found


def _compose(m: IndexMap, substitute: dict[str, IndexMap], prefix: str) -> IndexMap:
    terms: dict[str, int] = {}
    offset = m.offset
    for index, coefficient in m.terms:
        if index in substitute:
            by = substitute[index]
            offset += coefficient * by.offset
            for inner, c in by.terms:
                terms[inner] = terms.get(inner, 0) + coefficient * c
        else:
            terms[prefix + index] = terms.get(prefix + index, 0) + coefficient
    return IndexMap(tuple((k, c) for k, c in terms.items() if c), offset)


def _groups(a: tuple[int, ...], b: tuple[int, ...]):
    """For a reshape a -> b that only merges dimensions: per dim of a, (dim of b, alone)."""
    if a == b:
        return [(i, True) for i in range(len(a))]
    out: list[tuple[int, bool]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        group, pa, pb = [i], a[i], b[j]
        while pa != pb:
            if pa < pb and i + 1 < len(a):
                i += 1
                group.append(i)
                pa *= a[i]
            else:
                return None  # a split, or sizes that do not line up
        out += [(j, len(group) == 1) for _ in group]
        i, j = i + 1, j + 1
    while i < len(a) and a[i] == 1 and b:
        out.append((len(b) - 1, False))
        i += 1
    return out if len(out) == len(a) else None


def _window_and_stride(ir, output, x_name, x_shape, fed_shape, out_shape):
    """Per spatial dimension of the layer output: (window, stride) of the layer read from
    the maps; window "all" when an output depends on the whole input dimension, None when
    undetermined. (None, None) when the output has no spatial dimensions."""
    if len(out_shape) < 3:
        return None, None
    count = len(out_shape) - 2
    unknown = (tuple([None] * count), tuple([None] * count))
    numbers = [i for i, s in enumerate(ir.statements) if s.target == output]
    if len(x_shape) != len(out_shape) or not numbers:
        return unknown
    program_shape = ir.tensors[output].shape
    groups_in = _groups(tuple(x_shape), tuple(fed_shape))
    groups_out = _groups(tuple(out_shape), tuple(program_shape))
    if groups_in is None or groups_out is None:
        return unknown
    target_maps = ir.statements[numbers[0]].target_maps
    reads = []
    for number in numbers:
        found = _reads(ir, number, x_name)
        if found is None:
            return unknown
        reads += found
    target_indices = {name for m in target_maps for name in m.indices()}
    windows, strides = [], []
    for dim in range(2, len(out_shape)):
        (j, alone_in), (k, alone_out) = groups_in[dim], groups_out[dim]
        target = target_maps[k]
        if not target.is_plain:
            windows.append(None)
            strides.append(None)
            continue
        h = target.terms[0][0]
        window, stride = _dimension(reads, j, h, target_indices, fed_shape[j],
                                    alone_in and alone_out, program_shape[k])
        windows.append(window)
        strides.append(stride)
    return tuple(windows), tuple(strides)


def _dimension(reads, j, h, target_indices, size, alone, out_size):
    strides, lows, highs, everything = set(), [], [], False
    for maps, ranges in reads:
        m = maps[j]
        coefficients = dict(m.terms)
        coefficient = coefficients.pop(h, 0)
        if any(name in target_indices for name in coefficients):
            return None, None  # depends on another output index: not separable
        low, high = m.offset, m.offset
        for name, c in coefficients.items():
            reach = c * (ranges[name] - 1)
            low, high = low + min(0, reach), high + max(0, reach)
        if coefficient == 0:
            if low <= 0 and high >= size - 1:
                everything = True  # reads the whole dimension
                continue
            return None, None
        if not alone and (coefficient != 1 or coefficients or m.offset or size != out_size):
            return None, None  # a merged (reshaped) dimension read other than pointwise
        strides.add(abs(coefficient))
        lows.append(low)
        highs.append(high)
    if len(strides) > 1:
        return None, None
    stride = next(iter(strides)) if strides else None
    if everything:
        return "all", stride
    if not lows:
        return None, None
    return max(highs) - min(lows) + 1, stride
