"""Property tests of tc.grad (SPEC section 2) on random programs.

Programs come from the generator of tests/test_properties.py (valid per SPEC section 1:
contractions, windows, boundary modes, elementwise functions, reductions, '+=').

1. The adjoint is the transpose of the derivative: for random v (on the inputs) and w (on
   the outputs, 1 for a scalar output), <J v, w> == <v, J^T w> to 1e-9 relative, where
   J^T w comes from the compiled tc.grad program (cotangents w) and J v from central finite
   differences of the forward kernel with Richardson extrapolation. Examples where the
   difference quotients do not converge (the perturbation crosses a kink of relu / abs /
   max / a comparison, or rounding swamps the derivative) are filtered with assume(): that
   test uses only the forward kernel, so it cannot hide a wrong adjoint.
2. tc.parse(str(g)) == g for the adjoints of random programs.
3. Second order: tc.grad of an adjoint program, against finite differences of the
   first-order gradient, for a few smooth programs.

Known bugs are recognized by narrow signatures (the functions below, each with its minimal
program) and filtered from the main property, with a hypothesis event per bug; the same
property without those filters is kept as a strict xfail, and each bug has a strict-xfail
regression test here or in test_grad_spec.py:
  A  sum/mean over k: a term that does not use k gets the cotangent once, not once per k
  B  a scalar's shape is declared 's: []', which does not parse (zero gradient of a scalar)
  C  a cotangent that only flows through comparisons is read although never defined
  D  StopIteration escapes tc.grad for a factor without a tensor read (sum[n](n))
  E  an adjoint statement loses, or re-infers differently, the range an index had
  F  tc.grad of an adjoint takes the first-order gradients (dx, dk) as inputs
  G  'where i in lo:hi' with lo > 0: the adjoint reads the cotangent at absolute positions
  H  'y = f(..)' then 'y += ..': the adjoint reads the final y as the value of f
  I  tc.grad refuses a mean over an index whose range is inferred from a window
  J  a forward tensor recomputed only for its declared size is returned as an output
  K  an index used as a value in a gradient statement becomes a tensor input
  L  the adjoint reduces an index twice (sum[i,q](.. / sum[q](..)))
  N  (lowering) 'y = t; y += ..' on 0-d tensors aliases y and t (and the caller's input)
'+=' into a result after a later statement read it is refused by tc.grad with a
TensorcError (a documented limitation); such programs are skipped.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest
from hypothesis import Phase, assume, event, given, settings
from hypothesis import note as _hypothesis_note
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_properties as TP  # noqa: E402  (the generator; its tests are not re-collected)

import tensorc as tc  # noqa: E402
from tensorc import syntax as S  # noqa: E402
from tensorc.check import program_inputs, structure  # noqa: E402
from tensorc.ir import Apply, IndexValue, Read, Reduce, walk  # noqa: E402
from tensorc.ops import COMPARE_OPS  # noqa: E402

SETTINGS = dict(TP.SETTINGS)


def note(text: str) -> None:
    """hypothesis.note inside a property test; ignored in plain tests."""
    try:
        _hypothesis_note(text)
    except Exception:  # hypothesis.errors.InvalidArgument outside a property test
        pass


REL = 1e-9


# ---- known bugs, recognized by narrow signatures ------------------------------------------------

def _free(node) -> set[str]:
    """Free index names of an IR expression."""
    if isinstance(node, Read):
        return set(node.indices())
    if isinstance(node, IndexValue):
        return {node.index}
    if isinstance(node, Apply):
        return set().union(*(_free(a) for a in node.args))
    if isinstance(node, Reduce):
        return _free(node.body) - set(node.indices)
    return set()


_ZERO_DERIVATIVE = set(COMPARE_OPS.values()) | {"sign"}


def _reads_without(node, reduced: set[str], present: set[str]) -> bool:
    """Some read under `node` gets a gradient contribution that lacks an index of `reduced`.

    `present`: indices that the local derivatives on the path from the reduction body down
    to `node` carry (the other factor of a product, a function's argument, ...).
    """
    if isinstance(node, Read):
        return not reduced <= present | set(node.indices())
    if isinstance(node, Apply):
        args = node.args
        if node.op in _ZERO_DERIVATIVE:
            return False
        if node.op in ("add", "sub", "neg"):
            return any(_reads_without(a, reduced, present) for a in args)
        if node.op == "mul":
            return (_reads_without(args[0], reduced, present | _free(args[1]))
                    or _reads_without(args[1], reduced, present | _free(args[0])))
        if node.op == "div":
            return (_reads_without(args[0], reduced, present | _free(args[1]))
                    or _reads_without(args[1], reduced, present | _free(node)))
        return any(_reads_without(a, reduced, present | _free(node)) for a in args)
    if isinstance(node, Reduce):
        if node.op in ("sum", "mean"):
            return _reads_without(node.body, reduced, present)
        return _reads_without(node.body, reduced, present | _free(node.body))
    return False  # constants, index values


def reduction_multiplicity_bug(program: S.Program) -> bool:
    """Bug A: in a sum or mean over k -- explicit, or an Einstein sum placed around a whole
    additive expression -- a read whose gradient contribution does not use k gets the
    cotangent once instead of once per k: y[i] = sum[k](x[i] + w[k]) gives dx = dy (should
    be K*dy); mean[k](x[i] + w[k]) gives dy/K (should be dy); y = x[i] + s - x[i] (= 3s for
    three i) gives ds = 1."""
    for item in structure(program).statements:
        for node in walk(item.value):
            if isinstance(node, Reduce) and node.op in ("sum", "mean"):
                if _reads_without(node.body, set(node.indices), set()):
                    return True
    return False


def accumulate_after_assignment_bug(program: S.Program) -> bool:
    """Bug H: for 'y = f(...)' followed by 'y += ...', the adjoint of the first statement
    reads y as the value of f (exp' = out, a/b, ...) although the '+=' changed it:
    y[i] = exp(x[i]); y[i] += x[i] gives dx = dy + dy*y instead of dy + dy*exp(x)."""
    assigned: set[str] = set()
    for statement in program.statements:
        if isinstance(statement, S.Assignment):
            if statement.accumulate and statement.target.tensor in assigned:
                return True
            if not statement.accumulate:
                assigned.add(statement.target.tensor)
    return False


def offset_output_range_bug(program: S.Program) -> bool:
    """Bug G: `y[i] = ... where i in 1:3` makes y of size 2 (y[0] holds i = 1), but the adjoint
    reads the cotangent at dy[i] for i in 1:3 (BoundsError or the wrong elements); the same
    for a hoisted temporary whose index has an offset range (max[j](..) where j in 1:2 ->
    't4_inner[k,j] = ... where j in 1:2', read at j = 1 of a size-1 tensor). Recognized
    as: any `where i in lo:hi` with lo > 0 (on '+=' statements too, for the temporaries)."""
    for statement in program.statements:
        if isinstance(statement, S.Assignment):
            for item in statement.where:
                if isinstance(item, S.RangeBound) and item.low != 0:
                    return True
    return False


MEAN_SIZE = "needs the size of"  # bug I


def mean_size_bug(error: Exception) -> bool:
    """Bug I: tc.grad refuses a mean over an index whose range is inferred from a window:
    'y[i] = mean[j](x[i+j]) where i < 2' -> RangeError 'tc.grad needs the size of j'."""
    return isinstance(error, tc.TensorcError) and MEAN_SIZE in str(error)


def extra_outputs_bug(out: dict, wrt: list[str], forward: S.Program) -> bool:
    """Bug J: a forward tensor the adjoint recomputes only for its declared size is returned
    as an extra output: 'h: f64[2]; h[i] = s where i < 2; y = h[i]' wrt s returns
    {'h': ..., 'ds': ...}."""
    extra = set(out) - {f"d{n}" for n in wrt}
    targets = {s.target.tensor for s in forward.statements if isinstance(s, S.Assignment)}
    return bool(extra) and extra <= targets


def scalar_shape_bug(error: Exception) -> bool:
    """Bug B: the adjoint declares a scalar input's shape as `s: []`, which does not parse
    (tc.grad raises ParseError on its own output), e.g. for a zero gradient of a scalar:
    tc.grad('y[i] = (x[i] > s) * x[i]', wrt=['s'])."""
    return isinstance(error, tc.ParseError) and re.search(r"^\w+: \[\]\s*$", str(error), re.M)


def index_value_crash(error: Exception) -> bool:
    """Bug D: tc.grad crashes with StopIteration (or RuntimeError 'generator raised
    StopIteration') on a factor without any tensor read: 'y = sum[n](n) * x[k] where n < 3'."""
    return isinstance(error, StopIteration) or (
        isinstance(error, RuntimeError) and "StopIteration" in str(error))


def undefined_cotangent_bug(g: S.Program, forward: S.Program, outputs: list[str]) -> str | None:
    """Bug C: an intermediate t whose only uses are through comparisons gets no cotangent,
    yet the adjoint still reads d<t> (it becomes a spurious input of the adjoint):
    'h[i] = exp(x[i]); z[i] = h[i] > 1; y[i] = z[i] * w[i]' wrt x reads dh."""
    intermediates = {s.target.tensor for s in forward.statements if isinstance(s, S.Assignment)}
    for name in program_inputs(g):
        if name.startswith("d") and name[1:] in intermediates and name[1:] not in outputs:
            return name
    return None


def lost_range_bug(error: Exception) -> bool:
    """Bug E: a statement of the adjoint -- a hoisted temporary (y_inner, sum_x, ...) or a
    gradient statement -- loses the range an index had in the forward statement, where it
    came from a part of the statement the adjoint statement does not contain, so compiling
    the (valid) program's adjoint fails with RangeError '... has no range':
    'y[i] = x[i] + relu(x[i+j-1]*k[j]) where x: zero' -> 'y_inner[i] = relu(...)';
    'y += a[j,i+1] + t[i] where a: zero, y: zero' -> 'da[j,i+1] += 1 where da: zero'.
    Or the temporary infers a different range from its own reads: 'y = exp(a[p+i])*b[p]
    where i < 2' wrt b -> 'y_inner[p] = exp(sum[i](a[p+i]))' makes db of size 4, not 2
    ('conflicting sizes' when another read pins the index)."""
    return isinstance(error, tc.TensorcError) and (
        "has no range" in str(error) or "conflicting sizes for index" in str(error))


def index_as_tensor_bug(unexpected: list[str], forward: S.Program) -> bool:
    """Bug K: an index used only as a value in a gradient statement is printed as a bare
    name, so it reads as a scalar tensor input: 'y[i] = sum[k](k*x[i]) where k < 3' wrt x
    gives 'dx[i] = dy[i]*k where k < 3', whose kernel wants an input named k."""
    indices = {i for item in structure(forward).statements for i in item.indices}
    # (or a fresh name for an index a reduction shadows: q -> q2)
    return any(re.fullmatch(r"([A-Za-z_]\w*?)\d*", n).group(1) in indices for n in unexpected)


def reduced_twice_bug(error: Exception) -> bool:
    """Bug L: an explicit sum the adjoint wraps around a gradient contains the ties count
    of a max over the same index: 't = sum[i](sign(s+i)*max[q](s*a[q])) where i < 3' wrt s
    gives 'ds = sum[i,q](... / sum[q](s*a[q] == max_s) ...)', which the checker refuses."""
    return isinstance(error, tc.RangeError) and "is already reduced here" in str(error)


def scalar_alias_bug(*programs: S.Program) -> bool:
    """Bug N (lowering, not tc.grad): for 0-d tensors, 'y = t' then 'y += ...' compiles to
    'y = np.asarray(t); y += ...', so y aliases t and the '+=' also changes t -- or the
    caller's 0-d input array. Arrays of rank >= 1 are copied. The adjoint of
    't = tanh(s); u = t*t' is 'dt = t; dt += t; ds = dt*(1 - t^2)': t is doubled before
    it is read, and ds is wrong."""
    for program in programs:
        copies: set[str] = set()
        for statement in program.statements:
            if not isinstance(statement, S.Assignment):
                continue
            target = statement.target.tensor
            if statement.accumulate and target in copies:
                return True
            if not statement.accumulate and not statement.target.indices \
                    and isinstance(statement.value, S.Name):
                copies.add(target)
    return False


def range_mismatch_bug(g: S.Program, feed: dict, checked) -> str | None:
    """Bug E, silent form: an adjoint statement re-infers an index's range from the reads it
    keeps, and gets a different (larger) range than the forward statement had, so it sums
    over extra values: in 'y = (x[k] - c[j+2]) * w[2*j]' with c of size 3 and w of size 4,
    j < 1, but the adjoint 'dx[k] = w[2*j]' takes j < 2 (dx = w[0] + w[2], not w[0]).
    Recognized as: an index of the adjoint whose range is not one the index has in the
    forward program."""
    forward_sizes: dict[str, set[int]] = {}
    for statement in checked.statements:
        for name, size in statement.ranges.items():
            forward_sizes.setdefault(name, set()).add(size)
    shapes = {n: np.shape(a) for n, a in feed.items() if n in program_inputs(g)}
    try:
        adjoint = tc.check(g, shapes)
    except tc.TensorcError:
        return None
    for statement in adjoint.statements:
        for name, size in statement.ranges.items():
            if name in forward_sizes and size not in forward_sizes[name]:
                return f"{name}: {size} in the adjoint, {sorted(forward_sizes[name])} forward"
    return None


def has_temporary(g: S.Program, forward: S.Program, wrt: list[str]) -> bool:
    """The adjoint computes a temporary (y_inner, sum_x, ...): see bug E."""
    known = {s.target.tensor for s in forward.statements if isinstance(s, S.Assignment)}
    known |= {f"d{n}" for n in known} | {f"d{n}" for n in wrt}
    return any(isinstance(s, S.Assignment) and s.target.tensor not in known
               for s in g.statements)


LIMITATION = "is read by a later statement"  # '+=' into a result after it was read


# ---- the adjoint-vs-finite-differences property ---------------------------------------------------

H0, LEVELS = 2.0 ** -4, 5
H_MIN = H0 / 2 ** (LEVELS - 1)


def _richardson(g, h0=H0, levels=LEVELS):
    """Central differences of g at 0 with steps h0/2^k, extrapolated; (estimate, error)."""
    table = [[(g(h0 / 2 ** k) - g(-h0 / 2 ** k)) / (2 * h0 / 2 ** k) for k in range(levels)]]
    for m in range(1, levels):
        prev = table[-1]
        table.append([(4 ** m * prev[i + 1] - prev[i]) / (4 ** m - 1)
                      for i in range(len(prev) - 1)])
    return table[-1][0], abs(table[-1][0] - table[-2][1])


def check_adjoint(gp, seed: int, choose, filter_known: bool) -> None:
    def known(bug: str, hit) -> None:
        """Filter an example that hits a known bug (when filtering)."""
        if filter_known and hit:
            event(f"filtered: {bug}")
            assume(False)

    note(gp.text)
    r = np.random.default_rng(seed)
    arrays = {n: np.asarray(r.uniform(-1.0, 1.0, size=s)) for n, s in gp.inputs.items()}
    assume(arrays)  # a program that reads no tensor has nothing to differentiate
    forward = tc.parse(gp.text)
    checked = tc.check(forward, gp.check_shapes)
    outputs = list(checked.outputs)
    wrt = choose(sorted(arrays))
    note(f"wrt={wrt}")
    try:
        g = tc.grad(forward, wrt=wrt)
    except tc.TensorcError as error:
        if LIMITATION in str(error):
            event("filtered: '+=' after a read (tc.grad refuses; a documented limitation)")
            assume(False)
        known("bug B (scalar declared 's: []')", scalar_shape_bug(error))
        known("bug I (mean over a window-inferred range)", mean_size_bug(error))
        raise AssertionError(f"tc.grad refused a valid program: {error}") from None
    except (StopIteration, RuntimeError) as error:
        known("bug D (StopIteration)", index_value_crash(error))
        raise
    note(str(g))
    known("bug N (0-d copy aliased by '+=')", scalar_alias_bug(forward, g))
    known("bug A (reduction multiplicity)", reduction_multiplicity_bug(forward))
    known("bug H ('=' then '+=' into one tensor)", accumulate_after_assignment_bug(forward))
    known("bug G (offset range)", offset_output_range_bug(forward))

    w = {}
    for name in outputs:
        shape = tuple(checked.tensors[name].shape)
        if shape:
            w[f"d{name}"] = r.standard_normal(shape)
    feed = {**arrays, **w}
    needed = program_inputs(g)
    unexpected = [n for n in needed if n not in feed]
    if unexpected:
        known("bug C (undefined cotangent read)", undefined_cotangent_bug(g, forward, outputs))
        known("bug K (index value read as a tensor)", index_as_tensor_bug(unexpected, forward))
    assert not unexpected, f"the adjoint reads {unexpected}, which are neither forward " \
                           f"inputs nor cotangents of the outputs {outputs}"
    pristine = {n: np.copy(a) for n, a in feed.items()}
    known("bug E (an adjoint statement re-infers a different range)",
          range_mismatch_bug(g, feed, checked))
    try:
        out = tc.compile(g, dtype="float64")(**{n: feed[n] for n in needed})
    except tc.TensorcError as error:
        known("bug E (an adjoint statement loses a range)", lost_range_bug(error))
        known("bug L (an index reduced twice)", reduced_twice_bug(error))
        raise AssertionError(f"the adjoint does not compile or run: {error}") from None
    mutated = [n for n in feed if not np.array_equal(feed[n], pristine[n])]
    assert not mutated, f"the adjoint kernel modified its inputs {mutated}"
    if not isinstance(out, dict):
        assert len(wrt) == 1
        out = {f"d{wrt[0]}": out}
    if filter_known and extra_outputs_bug(out, wrt, forward):
        event("filtered: bug J (extra recomputed output; gradients still checked)")
        out = {f"d{n}": out[f"d{n}"] for n in wrt}
    assert set(out) == {f"d{n}" for n in wrt}, (sorted(out), wrt)
    for n in wrt:
        shape_ok = np.shape(out[f"d{n}"]) == np.shape(arrays[n])
        if not shape_ok:
            known("bug E (a hoisted temporary re-infers a range)", has_temporary(g, forward, wrt))
        assert shape_ok, f"d{n} has shape {np.shape(out[f'd{n}'])}, {n} {np.shape(arrays[n])}"
    assert all(np.all(np.isfinite(out[k])) for k in out), "non-finite gradient"

    v = {n: r.standard_normal(np.shape(arrays[n])) for n in wrt}
    kern = tc.compile(forward, dtype="float64")

    def terms_at(t: float) -> list[np.ndarray]:  # (fresh arrays: see bug N)
        result = kern(**{n: arrays[n] + t * v[n] if n in v else np.copy(arrays[n])
                         for n in arrays})
        if not isinstance(result, dict):
            result = {outputs[0]: result}
        return [np.asarray(result[n]) * w.get(f"d{n}", 1.0) for n in outputs]

    with np.errstate(all="ignore"):
        jv_w, fd_error = _richardson(lambda t: sum(float(np.sum(x)) for x in terms_at(t)))
        magnitude = sum(float(np.sum(np.abs(x))) for x in terms_at(0.0))
    # rounding in the difference quotients: a few ulps of the objective's terms over h
    rounding = 16 * np.finfo(np.float64).eps * magnitude / H_MIN
    terms = [np.asarray(out[f"d{n}"]) * v[n] for n in wrt]
    v_jtw = float(sum(np.sum(t) for t in terms))
    scale = max(float(sum(np.sum(np.abs(t)) for t in terms)), abs(jv_w))
    note(f"<Jv,w> = {jv_w!r} (fd error {fd_error:.3g}), <v,J^T w> = {v_jtw!r}, "
         f"scale {scale:.3g}")
    if not np.isfinite(jv_w) or fd_error > 1e-2 * REL * scale or scale == 0 and fd_error > 0:
        event("filtered: finite differences did not converge (a kink)")
        assume(False)
    if rounding > 1e-1 * REL * scale:
        event("filtered: finite differences swamped by rounding")
        assume(False)
    event("checked")
    assert abs(jv_w - v_jtw) <= REL * scale, \
        f"<Jv,w> = {jv_w!r} but <v,J^T w> = {v_jtw!r} (scale {scale:.3g})"


def _chooser(data):
    def choose(names):
        return data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True), label="wrt")
    return choose


@settings(max_examples=60, **SETTINGS)
@given(gp=TP.programs(), seed=st.integers(0, 2 ** 32 - 1), data=st.data())
def test_adjoint_is_the_transpose_of_the_derivative(gp, seed, data):
    check_adjoint(gp, seed, _chooser(data), filter_known=True)


@pytest.mark.xfail(strict=True, reason="the known bugs A-N (module docstring) make the unfiltered "
                                       "property fail; remove the mark once they are fixed")
@settings(max_examples=60, derandomize=True, database=None, phases=[Phase.generate],
          **{k: v for k, v in SETTINGS.items() if k != "phases"})
@given(gp=TP.programs(), seed=st.integers(0, 2 ** 32 - 1), data=st.data())
def test_adjoint_is_the_transpose_of_the_derivative_without_known_bug_filters(gp, seed, data):
    check_adjoint(gp, seed, _chooser(data), filter_known=False)


# ---- the adjoint prints as a program that parses back to itself -----------------------------------

@settings(max_examples=100, **SETTINGS)
@given(gp=TP.programs(), data=st.data())
def test_adjoint_round_trips_through_its_text(gp, data):
    note(gp.text)
    forward = tc.parse(gp.text)
    names = program_inputs(forward)
    assume(names)
    wrt = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True), label="wrt")
    try:
        g = tc.grad(forward, wrt=wrt)
    except tc.TensorcError as error:
        assume(LIMITATION not in str(error) and not scalar_shape_bug(error)
               and not mean_size_bug(error))
        raise
    except (StopIteration, RuntimeError) as error:
        assume(not index_value_crash(error))
        raise
    text = str(g)
    note(text)
    again = tc.parse(text)
    assert again == g
    assert str(again) == text
    for name in wrt:
        assert any(isinstance(s, S.Assignment) and s.target.tensor == f"d{name}"
                   for s in g.statements), f"d{name} is not defined"


# ---- regression tests for the known bugs (strict xfail: they flip when a bug is fixed) -------------

def _grad_run(src, wrt, arrays):
    g = tc.grad(src, wrt=wrt)
    out = tc.compile(g, dtype="float64")(**{n: arrays[n] for n in program_inputs(g)})
    return out if isinstance(out, dict) else {f"d{wrt[0]}": out}


@pytest.mark.xfail(strict=True, raises=tc.ParseError, reason="bug B: scalar declared 's: []'")
def test_bug_b_zero_gradient_of_a_scalar():
    got = _grad_run("y[i] = (x[i] > s) * x[i]", ["s"], dict(x=np.ones(2), s=np.float64(0.5),
                                                             dy=np.ones(2)))
    np.testing.assert_array_equal(got["ds"], 0.0)


@pytest.mark.xfail(strict=True, reason="bug C: the adjoint reads an undefined cotangent dh")
def test_bug_c_cotangent_through_a_comparison_only():
    src = "h[i] = exp(x[i])\nz[i] = h[i] > 1\ny[i] = z[i] * w[i]"
    g = tc.grad(src, wrt=["x", "w"])
    assert set(program_inputs(g)) <= {"x", "w", "dy"}, program_inputs(g)  # observed: + 'dh'
    got = _grad_run(src, ["x", "w"], dict(x=np.array([-1.0, 1.0]), w=np.ones(2),
                                          dy=np.ones(2)))
    np.testing.assert_array_equal(got["dx"], [0.0, 0.0])
    np.testing.assert_array_equal(got["dw"], [0.0, 1.0])


@pytest.mark.xfail(strict=True, raises=(StopIteration, RuntimeError),
                   reason="bug D: StopIteration escapes tc.grad")
@pytest.mark.parametrize("src", ["y = sum[n](n) * x[k]   where n < 3",
                                 "y = min(sum[n](n), x[k])   where n < 3"])
def test_bug_d_factor_without_a_tensor_read(src):
    got = _grad_run(src, ["x"], dict(x=np.array([0.5, 5.0])))
    assert got["dx"].shape == (2,)


@pytest.mark.xfail(strict=True, raises=tc.RangeError,
                   reason="bug E: an adjoint statement loses an index range")
@pytest.mark.parametrize("src,shapes", [
    ("y[i] = x[i] + relu(x[i+j-1]*k[j])   where x: zero", dict(x=(5,), k=(3,))),
    ("t[j,n] = min(a[-j+3*m-1], b[j,n])   where a: zeros, m < 3", dict(a=(5,), b=(5, 2))),
    ("y = a[i+1] + c[i]   where a: zero", dict(a=(3,), c=(3,))),
], ids=["temporary-relu", "temporary-min", "gradient-statement"])
def test_bug_e_temporary_loses_range(src, shapes):
    r = np.random.default_rng(0)
    arrays = {n: r.uniform(0.5, 1.5, s) for n, s in shapes.items()}
    forward = tc.compile(src, dtype="float64")(**arrays)
    if np.ndim(forward):
        arrays[f"d{src[0]}"] = np.ones(np.shape(forward))
    got = _grad_run(src, list(shapes), arrays)
    assert set(got) == {f"d{n}" for n in shapes}


@pytest.mark.xfail(strict=True, reason="bug E: a hoisted temporary re-infers a range")
def test_bug_e_temporary_reinfers_a_different_range():
    a, b = np.arange(5.0) / 5, np.ones(2)
    got = _grad_run("y = exp(a[p+i])*b[p]   where i < 2", ["b"], dict(a=a, b=b))
    assert got["db"].shape == (2,), got["db"].shape  # observed (4,)
    np.testing.assert_allclose(got["db"], np.exp(a[:2] + a[1:3]))


@pytest.mark.xfail(strict=True, reason="bug E: a gradient statement re-infers a larger range")
def test_bug_e_gradient_statement_sums_over_a_larger_range():
    src = "y = (x[k] - c[j+2]) * w[2*j]"  # j < 1 (c has 3 elements), though 2*j < 4 allows 2
    x, c, w = np.ones(2), np.ones(3), np.array([1.0, 0.0, 10.0, 0.0])
    assert tc.compile(src, dtype="float64")(x=x, c=c, w=w) == 1.0
    got = _grad_run(src, ["x"], dict(x=x, c=c, w=w))
    np.testing.assert_allclose(got["dx"], [1.0, 1.0])  # observed [11, 11]: j < 2


@pytest.mark.xfail(strict=True, raises=tc.TensorcError,
                   reason="bug G: cotangent read at absolute positions of an offset range")
def test_bug_g_output_range_with_nonzero_low():
    x = np.arange(4.0)
    assert tc.compile("y[i] = x[i] * 2   where i in 1:3")(x=x).shape == (2,)
    got = _grad_run("y[i] = x[i] * 2   where i in 1:3", ["x"], dict(x=x, dy=np.array([1.0, 10.0])))
    np.testing.assert_allclose(got["dx"], [0.0, 2.0, 20.0, 0.0])


def test_known_bug_signatures_are_narrow():
    """The filters above must not match ordinary programs."""
    for src in ["y[i] = sum[k](x[i] * w[k])", "y[i] = sum[k](x[i,k]) + b[i]",
                "y[i] = max[k](x[i] + w[k])", "y[i] = sum[k](tanh(x[i] + w[k]))",
                "y[n,o] = x[n,i] * W[o,i] + b[o]", "y[i] = mean[k]((x[i] + w[k]) * v[k])"]:
        assert not reduction_multiplicity_bug(tc.parse(src)), src
    assert not offset_output_range_bug(tc.parse("y[i] = x[i+j]*k[j]   where i < 3"))
    assert offset_output_range_bug(tc.parse("y[i] = x[i]   where i in 1:3"))
    assert accumulate_after_assignment_bug(tc.parse("y[i] = exp(x[i])\ny[i] += x[i]"))
    assert not accumulate_after_assignment_bug(tc.parse("y: [3]\ny[i] += x[i]\ny[i] += x[i]"))
    assert reduction_multiplicity_bug(tc.parse("y[i] = sum[k](x[i] + w[k])"))
    assert reduction_multiplicity_bug(tc.parse("y = mean[k](s + w[k])"))
    assert reduction_multiplicity_bug(tc.parse("y = x[i] + s - x[i]"))
    for src in ["y[i] = x[i,j] + s", "y = a[j] + x[i]", "y[i] = w[j]*x[i] + b[i]",
                "y[i] = max[k](x[i,k]) * w[i]", "loss = -mean[n](sum[k](t[n,k]*log(p[n,k])))"]:
        assert not reduction_multiplicity_bug(tc.parse(src)), src
    assert not offset_output_range_bug(tc.parse("y[i] = x[i]   where i in 0:3"))


# ---- second order: tc.grad of an adjoint ---------------------------------------------------------

BUG_F = "bug F: tc.grad of an adjoint re-declares the first-order gradients (dx: [x_0]) and so " \
        "takes them as inputs, although it never reads them"
BUG_H_SECOND = "bug H: the first-order adjoint has 'de = ...' then 'de += ...'; its adjoint " \
               "reads the accumulated de as the value of the first statement"
BUG_A_SECOND = "bug A: the first-order adjoint has 'dmu[n] += sum[d](-(dvar[n]/a_1*...))', a " \
               "sum whose term dvar[n] does not use d"

SECOND_ORDER = {
    "tanh-loss": ("loss = sum[i](tanh(x[i,j]*w[j])^2)", dict(x=(3, 4), w=(4,)), {}),
    "mlp-mse": ("h[n,j] = tanh(x[n,i]*W[j,i] + b[j])\nloss = mean[n,j]((h[n,j] - t[n,j])^2)",
                dict(x=(4, 3), W=(5, 3), b=(5,), t=(4, 5)), {}),
    "softmax-xent": ("m[n] = max[j](z[n,j])\ne[n,j] = exp(z[n,j] - m[n])\n"
                     "p[n,j] = e[n,j] / sum[j](e[n,j])\n"
                     "loss = -mean[n](sum[k](t[n,k] * log(p[n,k])))", dict(z=(3, 4), t=(3, 4)),
                     {}),
    "layer-norm": ("mu[n] = mean[d](a[n,d])\nvar[n] = mean[d]((a[n,d] - mu[n])^2)\n"
                   "y[n,d] = g[d] * (a[n,d] - mu[n]) / sqrt(var[n] + 1e-5) + b[d]",
                   dict(a=(3, 5), g=(5,), b=(5,)), dict(y=(3, 5))),
    "conv-tanh": ("y[n,o,h,w] = tanh(x[n,c,h+u,w+v] * k[o,c,u,v])",
                  dict(x=(1, 2, 5, 4), k=(3, 2, 2, 2)), dict(y=(1, 3, 4, 3))),
    "reflect-window-product": ("y[i] = x[i+j-1] * k[j] * x[i]   where x: reflect",
                               dict(x=(6,), k=(3,)), dict(y=(6,))),
    "pow-softplus": ("y[i] = sigmoid(a[i])^b[i] + softplus(a[i] * b[i]) / (1 + b[i]^2)",
                     dict(a=(5,), b=(5,)), dict(y=(5,))),
    "normalized-exp": ("s[i] = sum[j](exp(z[i,j]))\n"
                       "loss = sum[i,k](t[i,k] * (exp(z[i,k])/s[i])^2)",
                       dict(z=(3, 4), t=(3, 4)), {}),
}


def second_order_cases(xfails: dict[str, str] | None = None, scalar_only: bool = False):
    """pytest params for SECOND_ORDER, with strict xfails for the named cases."""
    cases = []
    for name, case in SECOND_ORDER.items():
        if scalar_only and case[2]:
            continue
        marks = [pytest.mark.xfail(strict=True, reason=xfails[name])] \
            if xfails and name in xfails else []
        cases.append(pytest.param(*case, id=name, marks=marks))
    return cases


def _by_wrt(out, wrt: list[str]) -> dict:
    """Map a second-order kernel's outputs (dx2, ... when dx is taken) back to wrt names."""
    if not isinstance(out, dict):
        assert len(wrt) == 1
        return {wrt[0]: np.asarray(out)}
    result = {}
    for name in wrt:
        keys = [k for k in out if re.fullmatch(f"d{name}\\d*", k)]
        assert len(keys) == 1, (name, sorted(out))
        result[name] = np.asarray(out[keys[0]])
    return result


def _second_order_setup(src, shapes, cotangent_shapes, seed):
    r = np.random.default_rng(seed)
    arrays = {n: r.uniform(-1.0, 1.0, s) for n, s in shapes.items()}
    if "t" in arrays:
        arrays["t"] = np.abs(arrays["t"])  # nonnegative targets
    arrays.update({f"d{n}": r.standard_normal(s) for n, s in cotangent_shapes.items()})
    wrt = [n for n in shapes if n != "t"]
    g1 = tc.grad(src, wrt=wrt)
    # A gradient that depends on no input (layer norm's db = sum dy) leaves that input out of
    # g1: differentiate g1 with respect to the inputs it reads.
    wrt2 = [n for n in wrt if n in program_inputs(g1)]
    g2 = tc.grad(g1, wrt=wrt2)
    note(str(g2))
    return r, arrays, wrt, g1, wrt2, g2


def _cotangent_of(name: str, wrt: list[str]) -> str | None:
    """g2 takes the cotangent of g1's output d<x> as dd<x> (fresh names may add digits)."""
    match = re.fullmatch(r"d(d(\w+?))\d*", name)
    return match.group(2) if match and match.group(2) in wrt else None


@pytest.mark.parametrize("src,shapes,cotangent_shapes", second_order_cases(
    {"conv-tanh": BUG_F, "reflect-window-product": BUG_F}))
def test_second_order_adjoint_takes_first_order_inputs_and_cotangents(src, shapes,
                                                                      cotangent_shapes):
    _, _, wrt, g1, _, g2 = _second_order_setup(src, shapes, cotangent_shapes, 7)
    assert tc.parse(str(g2)) == g2
    first_inputs = set(program_inputs(g1))
    for name in program_inputs(g2):
        assert name in first_inputs or _cotangent_of(name, wrt), \
            f"g2 reads {name!r}: neither an input of g1 {sorted(first_inputs)} nor a cotangent"


@pytest.mark.parametrize("src,shapes,cotangent_shapes", second_order_cases(
    {"softmax-xent": BUG_H_SECOND, "layer-norm": BUG_A_SECOND}))
def test_second_order_hessian_vector_products(src, shapes, cotangent_shapes):
    """g1 = grad(P) computes G(theta); g2 = grad(g1) with cotangents u computes H u, which
    is the derivative of G along u (H is symmetric): checked against Richardson finite
    differences of the compiled g1, element by element."""
    r, arrays, wrt, g1, wrt2, g2 = _second_order_setup(src, shapes, cotangent_shapes, 7)
    k1 = tc.compile(g1, dtype="float64")
    inputs1 = program_inputs(g1)

    def first(theta):
        return _by_wrt(k1(**{n: theta.get(n, arrays.get(n)) for n in inputs1}), wrt)

    base = {n: arrays[n] for n in wrt}
    G = first(base)
    u = {n: r.standard_normal(np.shape(G[n])) for n in wrt}
    feed = dict(arrays)
    for name in program_inputs(g2):
        if name in feed:
            continue
        if _cotangent_of(name, wrt):
            feed[name] = u[_cotangent_of(name, wrt)]
        elif re.fullmatch(r"d\w+", name) and name[1:] in wrt:
            feed[name] = G[name[1:]]  # bug F (see the test above): an input g2 never reads
        else:
            raise AssertionError(f"g2 reads {name!r}")
    Hu = _by_wrt(tc.compile(g2, dtype="float64")(**{n: feed[n] for n in program_inputs(g2)}),
                 wrt2)

    h0, levels = 2.0 ** -5, 5
    table = []
    for k in range(levels):
        h = h0 / 2 ** k
        plus = first({n: base[n] + h * u[n] for n in wrt2})
        minus = first({n: base[n] - h * u[n] for n in wrt2})
        table.append({n: (plus[n] - minus[n]) / (2 * h) for n in wrt2})
    rows = [table]
    for m in range(1, levels):
        prev = rows[-1]
        rows.append([{n: (4 ** m * prev[i + 1][n] - prev[i][n]) / (4 ** m - 1) for n in wrt2}
                     for i in range(len(prev) - 1)])
    expected = rows[-1][0]
    for n in wrt2:
        assert Hu[n].shape == np.shape(arrays[n]), n
        scale = max(np.max(np.abs(expected[n])), 1e-3)
        np.testing.assert_allclose(Hu[n], expected[n], rtol=1e-7, atol=1e-8 * scale,
                                   err_msg=f"H u for {n}")


@pytest.mark.parametrize("src,shapes,cotangent_shapes", second_order_cases(scalar_only=True))
def test_second_order_hessian_is_symmetric(src, shapes, cotangent_shapes):
    """<u1, H u2> == <u2, H u1> for the scalar losses, both from tc.grad(tc.grad(P))."""
    r, arrays, wrt, _, wrt2, g2 = _second_order_setup(src, shapes, cotangent_shapes, 8)
    assert wrt2 == wrt
    kern = tc.compile(g2, dtype="float64")
    us = [{n: r.standard_normal(shapes[n]) for n in wrt} for _ in range(2)]
    products = []
    for u in us:
        feed = dict(arrays)
        for name in program_inputs(g2):
            if name not in feed:
                feed[name] = u[_cotangent_of(name, wrt)]
        products.append(_by_wrt(kern(**{n: feed[n] for n in program_inputs(g2)}), wrt))
    a = sum(float(np.sum(us[0][n] * products[1][n])) for n in wrt)
    b = sum(float(np.sum(us[1][n] * products[0][n])) for n in wrt)
    assert abs(a - b) <= 1e-10 * (abs(a) + abs(b) + 1e-12), (a, b)


@pytest.mark.xfail(strict=True, reason=BUG_F)
def test_bug_f_second_order_reads_no_first_order_gradient():
    g1 = tc.grad("y[i] = tanh(x[i+j] * k[j])", wrt=["x", "k"])
    g2 = tc.grad(g1, wrt=["x", "k"])
    assert "dx" not in program_inputs(g2) and "dk" not in program_inputs(g2), program_inputs(g2)


@pytest.mark.xfail(strict=True, raises=tc.RangeError,
                   reason="bug I: tc.grad needs the size of a window-inferred mean index")
def test_bug_i_mean_over_a_window_inferred_range():
    x = np.arange(5.0)
    got = _grad_run("y[i] = mean[j](x[i+j])   where i < 2", ["x"], dict(x=x, dy=np.ones(2)))
    np.testing.assert_allclose(got["dx"], [0.25, 0.5, 0.5, 0.5, 0.25])


@pytest.mark.xfail(strict=True, reason="bug J: a recomputed forward tensor is returned too")
def test_bug_j_no_extra_outputs():
    g = tc.grad("h: f64[2]\nh[i] = s   where i < 2\ny = h[i]", wrt=["s"])
    out = tc.compile(g, dtype="float64")(s=np.float64(1.0))
    assert not isinstance(out, dict), sorted(out)  # observed {'h': ..., 'ds': ...}
    np.testing.assert_allclose(out, 2.0)


@pytest.mark.xfail(strict=True, reason="bug K: an index used as a value becomes a tensor input")
@pytest.mark.parametrize("src,wrt,arrays,expected", [
    ("y[i] = sum[k](k*x[i])   where k < 3", ["x"], dict(x=np.ones(2), dy=np.ones(2)),
     [3.0, 3.0]),
    ("t[i] = sum[i](i*max[q](s*a[q]))   where i < 3", ["s"],
     dict(s=np.float64(1.0), a=np.array([0.0, 2.0, 1.0]), dt=np.ones(3)), 18.0),
], ids=["index-times-tensor", "shadowed-index"])
def test_bug_k_index_value_in_a_gradient(src, wrt, arrays, expected):
    g = tc.grad(src, wrt=wrt)
    assert set(program_inputs(g)) <= set(arrays), program_inputs(g)  # observed + 'k' / 'i2'
    np.testing.assert_allclose(_grad_run(src, wrt, arrays)[f"d{wrt[0]}"], expected)


@pytest.mark.xfail(strict=True, raises=tc.RangeError,
                   reason="bug L: the adjoint reduces an index twice (sum[i,q](../sum[q](..)))")
def test_bug_l_index_reduced_twice():
    a = np.array([0.0, 2.0, 1.0])
    got = _grad_run("t = sum[i](sign(s+i)*max[q](s*a[q]))   where i < 3", ["s"],
                    dict(s=np.float64(0.5), a=a))
    np.testing.assert_allclose(got["ds"], 3 * 2.0)


@pytest.mark.xfail(strict=True, reason="bug N: 'y = s; y += s' writes into the caller's 0-d s")
def test_bug_n_kernel_leaves_a_0d_input_alone():
    s = np.asarray(3.0)
    out = tc.compile("y = s\ny += s", dtype="float64")(s=s)
    np.testing.assert_allclose(out, 6.0)
    assert s == 3.0, f"the input was changed to {s}"


def test_known_bug_predicates_match_their_repros():
    assert scalar_alias_bug(tc.grad("t = tanh(s)\nu = t*t", wrt=["s"]))
    assert not scalar_alias_bug(tc.grad("t[i] = tanh(x[i])\nu[i] = t[i]*t[i]", wrt=["x"]))
    assert index_as_tensor_bug(["k"], tc.parse("y[i] = sum[k](k*x[i])   where k < 3"))
    assert index_as_tensor_bug(["q2"], tc.parse("y[q] = sum[q](q*x[q])"))
    assert not index_as_tensor_bug(["dh"], tc.parse("h[i] = x[i]\ny[i] = h[i] > 0"))

