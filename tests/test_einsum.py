"""tc.einsum against numpy.einsum: a corpus of equations, dtypes, call forms and errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

import tensorc as tc

# Run as well through the CuPy backend, emulated on NumPy (tests/conftest.py).
pytestmark = pytest.mark.conformance

# (equation, operand shapes). Sizes differ per index wherever possible so that a
# transposed or misplaced axis shows up as a shape or value mismatch.
CASES = [
    # ---- matrix products, explicit and implicit output
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("ij,jk", [(3, 4), (4, 5)]),
    ("ij,jk->ki", [(3, 4), (4, 5)]),
    ("ji,jk->ik", [(4, 3), (4, 5)]),
    ("ij,kj->ik", [(3, 4), (5, 4)]),
    ("ij,j->i", [(3, 4), (4,)]),
    ("ij,i->j", [(3, 4), (3,)]),
    ("ij,jk->", [(3, 4), (4, 5)]),
    ("ij,ji->", [(3, 4), (4, 3)]),
    ("ij,ji->i", [(3, 4), (4, 3)]),
    # ---- unary: transposes, sums, implicit ordering
    ("ba", [(3, 4)]),
    ("ab", [(3, 4)]),
    ("ij->ji", [(3, 4)]),
    ("ijk->kji", [(2, 3, 4)]),
    ("ijk->jik", [(2, 3, 4)]),
    ("ijk->kij", [(2, 3, 4)]),
    ("ijk", [(2, 3, 4)]),
    ("kji", [(2, 3, 4)]),
    ("ij->", [(3, 4)]),
    ("ij->i", [(3, 4)]),
    ("ij->j", [(3, 4)]),
    ("ijk->j", [(2, 3, 4)]),
    ("ijk->ki", [(2, 3, 4)]),
    # ---- repeated indices: traces and diagonals
    ("ii", [(4, 4)]),
    ("ii->", [(4, 4)]),
    ("ii->i", [(4, 4)]),
    ("iii->i", [(3, 3, 3)]),
    ("iii", [(3, 3, 3)]),
    ("iij->j", [(3, 3, 5)]),
    ("iij", [(3, 3, 5)]),
    ("iji->ij", [(3, 4, 3)]),
    ("iji->ji", [(3, 4, 3)]),
    ("jii->ij", [(4, 3, 3)]),
    ("iijj", [(3, 3, 4, 4)]),
    ("iijj->ij", [(3, 3, 4, 4)]),
    ("ii,ij->j", [(3, 3), (3, 4)]),
    ("iij,jk->ik", [(3, 3, 4), (4, 5)]),
    ("ij,ij->i", [(3, 4), (3, 4)]),
    # ---- elementwise, inner and outer products
    ("ij,ij->ij", [(3, 4), (3, 4)]),
    ("ij,ij->", [(3, 4), (3, 4)]),
    ("i,i", [(5,), (5,)]),
    ("i,i->i", [(5,), (5,)]),
    ("i,j", [(3,), (4,)]),
    ("i,j->ji", [(3,), (4,)]),
    ("i,j,k->ijk", [(2,), (3,), (4,)]),
    ("ij,kl->ijkl", [(2, 3), (4, 5)]),
    ("ij,kl->ljki", [(2, 3), (4, 5)]),
    ("i,jk->ijk", [(2,), (3, 4)]),
    ("ijk,k->ij", [(2, 3, 4), (4,)]),
    # ---- scalars (0-d operands)
    (",ij->ij", [(), (3, 4)]),
    (",ij", [(), (3, 4)]),
    ("ij,->ij", [(3, 4), ()]),
    ("i,->i", [(3,), ()]),
    (",", [(), ()]),
    (",->", [(), ()]),
    ("->", [()]),
    (",,", [(), (), ()]),
    (",i->", [(), (5,)]),
    # ---- ellipsis: leading, middle, trailing, broadcasting, size-1 dims
    ("...i,...i", [(1, 4), (3, 4)]),
    ("...i,...i->...", [(3, 4), (3, 4)]),
    ("...i,...i->...i", [(2, 1, 4), (3, 4)]),
    ("...", [(2, 3)]),
    ("...i->...", [(2, 3, 4)]),
    ("i...->...", [(3, 2, 4)]),
    ("i...", [(3, 2, 4)]),
    ("...i->i...", [(2, 3, 4)]),
    ("i...,i...->...", [(3, 2, 5), (3, 1, 5)]),
    ("i...j,j...k->...ik", [(3, 2, 4), (4, 2, 5)]),
    ("i...j,j...k", [(3, 2, 4), (4, 2, 5)]),
    ("a...b->b...a", [(2, 3, 4, 5)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 6)]),
    ("...ij,...jk", [(2, 3, 4), (4, 5)]),
    ("...ij,jk->...ik", [(2, 3, 4), (4, 5)]),
    ("...j,j->...", [(2, 3, 4), (4,)]),
    ("...ii->...i", [(2, 3, 3)]),
    ("...ii->...", [(2, 3, 3)]),
    ("...,...", [(2, 3), ()]),
    ("...,...->...", [(2, 1), (1, 3)]),
    ("ij,ij->ij", [(1, 4), (3, 4)]),
    ("ij,jk->ik", [(3, 1), (4, 5)]),
    # ---- batched matmul and attention
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bij,bjk", [(2, 3, 4), (2, 4, 5)]),
    ("bij,bkj->bik", [(2, 3, 4), (2, 5, 4)]),
    ("bij,jk->bik", [(2, 3, 4), (4, 5)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 5, 4), (2, 3, 6, 4)]),
    ("bhqk,bhkd->bhqd", [(2, 3, 5, 6), (2, 3, 6, 4)]),
    ("bqhd,bkhd->bhqk", [(2, 5, 3, 4), (2, 6, 3, 4)]),
    # ---- chains of 3-5 matrices, ring, tensor networks
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)]),
    ("ij,jk,kl", [(2, 3), (3, 4), (4, 5)]),
    ("ij,jk,kl,lm->im", [(2, 3), (3, 4), (4, 5), (5, 6)]),
    ("ab,bc,cd,de,ef->af", [(2, 3), (3, 4), (4, 5), (5, 6), (6, 7)]),
    ("ab,bc,cd,de,ea->", [(2, 3), (3, 4), (4, 5), (5, 6), (6, 2)]),
    ("ab,bc,cd,de,ea->ac", [(2, 3), (3, 4), (4, 5), (5, 6), (6, 2)]),
    ("abc,cde,efa->bdf", [(2, 3, 4), (4, 5, 6), (6, 7, 2)]),
    ("ia,ajb,bk->ijk", [(2, 3), (3, 4, 5), (5, 6)]),
    ("pqrs,tuqvr->pstuv", [(2, 3, 4, 5), (2, 3, 3, 2, 4)]),
    ("ea,fb,abcd,gc,hd->efgh", [(2, 3), (4, 5), (3, 5, 6, 7), (2, 6), (3, 7)]),
    ("ijkl,klmn->ijmn", [(2, 3, 4, 5), (4, 5, 3, 2)]),
    ("abcd,dcba->", [(2, 3, 4, 5), (5, 4, 3, 2)]),
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),
    ("ijk,jil->kl", [(2, 3, 4), (3, 2, 5)]),
    ("ijk,ikl->ijl", [(2, 3, 4), (2, 4, 5)]),
    ("i,ij,jk,k->", [(3,), (3, 4), (4, 5), (5,)]),
    # ---- upper and lower case letters
    ("aB,Bc->ac", [(2, 3), (3, 4)]),
    ("aB,Bc", [(2, 3), (3, 4)]),
    ("aB", [(2, 3)]),
    ("Ab", [(2, 3)]),
    ("iI,Ij->ij", [(2, 3), (3, 4)]),
    ("Aa,aB->BA", [(2, 3), (3, 4)]),
    ("XYZ->ZYX", [(2, 3, 4)]),
    # ---- separable factors, scalar factors and size-1 dims mixed into GEMMs
    ("f,db->bd", [(3,), (2, 4)]),
    ("f,db", [(3,), (2, 4)]),
    ("f,db,f", [(1,), (2, 1), (1,)]),
    ("ff,eA", [(1, 1), (2, 1)]),
    ("cAg,c,->g", [(3, 2, 4), (3,), ()]),
    ("cAg,c,->g", [(1, 2, 2), (1,), ()]),
    (",eb,ed", [(), (2, 2), (2, 1)]),
    (",ij,jk->ik", [(), (3, 4), (4, 5)]),
    ("ij,jk,->ik", [(3, 4), (4, 5), ()]),
    # ---- spaces and empty dimensions
    (" ij , jk -> ik ", [(3, 4), (4, 5)]),
    ("ij,jk->ik", [(0, 4), (4, 5)]),
    ("ij,jk->ik", [(3, 0), (0, 5)]),
]


def _case_id(case):
    equation, shapes = case
    return f"{equation}|{'x'.join(str(s) for s in shapes)}"


def _operands(shapes, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        if np.issubdtype(dtype, np.integer):
            out.append(rng.integers(-5, 6, size=shape).astype(dtype))
        else:
            out.append(rng.standard_normal(shape).astype(dtype))
    return out


def _compare(got, expected, rtol=1e-10, atol=1e-10):
    assert np.shape(got) == np.shape(expected)
    assert np.asarray(got).dtype == np.asarray(expected).dtype
    if np.ndim(expected) == 0:
        # numpy.einsum returns a NumPy scalar for a 0-d result, not a 0-d array.
        assert np.isscalar(got), f"0-d result should be a scalar, got {type(got)}"
        assert not isinstance(got, np.ndarray)
    else:
        assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


def test_corpus_is_large_enough():
    assert len(CASES) >= 60
    assert len({_case_id(c) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_float64_matches_numpy(case):
    equation, shapes = case
    operands = _operands(shapes)
    expected = np.einsum(equation, *operands)
    got = tc.einsum(equation, *operands)
    _compare(got, expected)


INT_CASES = [
    ("ij,jk->ik", [(3, 4), (4, 5)], [np.int64, np.int64]),
    ("ii", [(4, 4)], [np.int32]),
    ("ii->i", [(4, 4)], [np.int64]),
    ("i,i", [(5,), (5,)], [np.int8, np.int8]),
    ("ij,jk", [(3, 4), (4, 5)], [np.int32, np.int64]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)], [np.int16, np.int16]),
    ("ij->", [(3, 4)], [np.int64]),
    ("i,j->ij", [(3,), (4,)], [np.uint8, np.uint8]),
    ("ij,jk->ik", [(3, 4), (4, 5)], [np.int64, np.float64]),
    ("ij,jk->ik", [(3, 4), (4, 5)], [np.int32, np.float32]),
    (",ij->ij", [(), (3, 4)], [np.int64, np.int64]),
]


@pytest.mark.parametrize("equation,shapes,dtypes", INT_CASES,
                         ids=[f"{e}|{'-'.join(np.dtype(d).name for d in ds)}"
                              for e, _, ds in INT_CASES])
def test_integer_and_mixed_operands_match_numpy_dtype(equation, shapes, dtypes):
    rng = np.random.default_rng(1)
    operands = []
    for shape, dtype in zip(shapes, dtypes):
        if np.issubdtype(dtype, np.unsignedinteger):
            operands.append(rng.integers(0, 6, size=shape).astype(dtype))
        elif np.issubdtype(dtype, np.integer):
            operands.append(rng.integers(-5, 6, size=shape).astype(dtype))
        else:
            operands.append(rng.standard_normal(shape).astype(dtype))
    expected = np.einsum(equation, *operands)
    got = tc.einsum(equation, *operands)
    assert np.asarray(got).dtype == np.asarray(expected).dtype
    if np.issubdtype(np.asarray(expected).dtype, np.integer):
        np.testing.assert_array_equal(got, expected)
        assert np.shape(got) == np.shape(expected)
    else:
        rtol = 1e-5 if np.asarray(expected).dtype == np.float32 else 1e-10
        _compare(got, expected, rtol=rtol, atol=rtol)


FLOAT32_CASES = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 5, 4), (2, 3, 6, 4)]),
    ("ii", [(4, 4)]),
    ("...i,...i", [(1, 4), (3, 4)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)]),
    (",ij->ij", [(), (3, 4)]),
]


@pytest.mark.parametrize("case", FLOAT32_CASES, ids=_case_id)
def test_float32_stays_float32(case):
    equation, shapes = case
    operands = _operands(shapes, np.float32)
    expected = np.einsum(equation, *operands)
    got = tc.einsum(equation, *operands)
    assert np.asarray(got).dtype == np.float32
    _compare(got, expected, rtol=1e-5, atol=1e-5)


def _random_case(seed):
    """A random valid equation: 1-4 operands, repeated letters, explicit or implicit output."""
    r = np.random.default_rng(seed)
    pool = "abcdefgAB"
    sizes = {c: int(r.integers(1, 5)) for c in pool}
    words = []
    for _ in range(int(r.integers(1, 5))):
        rank = int(r.integers(0, 4))
        words.append("".join(r.choice(list(pool), size=rank)))
    used = sorted(set("".join(words)))
    equation = ",".join(words)
    if r.random() < 0.7:
        out = [c for c in used if r.random() < 0.5]
        r.shuffle(out)
        equation += "->" + "".join(out)
    return equation, [tuple(sizes[c] for c in w) for w in words]


FUZZ_CASES = [_random_case(seed) for seed in range(60)]


@pytest.mark.parametrize("case", FUZZ_CASES, ids=[f"seed{i}" for i in range(len(FUZZ_CASES))])
def test_random_equations_match_numpy(case):
    equation, shapes = case
    operands = _operands(shapes, seed=3)
    expected = np.einsum(equation, *operands)
    got = tc.einsum(equation, *operands)
    _compare(got, expected)


# ---- call forms -------------------------------------------------------------

def test_sublist_form():
    a, b = _operands([(3, 4), (4, 5)])
    expected = np.einsum(a, [0, 1], b, [1, 2], [0, 2])
    _compare(tc.einsum(a, [0, 1], b, [1, 2], [0, 2]), expected)


def test_sublist_form_implicit_output():
    a, b = _operands([(3, 4), (4, 5)])
    expected = np.einsum(a, [0, 1], b, [1, 2])
    _compare(tc.einsum(a, [0, 1], b, [1, 2]), expected)


def test_sublist_form_with_ellipsis():
    a, b = _operands([(2, 3, 4), (2, 4, 5)])
    expected = np.einsum(a, [Ellipsis, 0, 1], b, [Ellipsis, 1, 2], [Ellipsis, 0, 2])
    _compare(tc.einsum(a, [Ellipsis, 0, 1], b, [Ellipsis, 1, 2], [Ellipsis, 0, 2]), expected)


def test_sublist_form_trace_to_scalar():
    (a,) = _operands([(4, 4)])
    expected = np.einsum(a, [0, 0], [])
    _compare(tc.einsum(a, [0, 0], []), expected)


def test_out_argument():
    a, b = _operands([(3, 4), (4, 5)])
    out = np.empty((3, 5))
    result = tc.einsum("ij,jk->ik", a, b, out=out)
    assert result is out
    np.testing.assert_allclose(out, np.einsum("ij,jk->ik", a, b), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("optimize", [True, False, "greedy", "optimal"])
def test_optimize_argument_is_accepted(optimize):
    ops = _operands([(2, 3), (3, 4), (4, 5)])
    expected = np.einsum("ij,jk,kl->il", *ops, optimize=optimize)
    _compare(tc.einsum("ij,jk,kl->il", *ops, optimize=optimize), expected)


def test_dtype_argument():
    rng = np.random.default_rng(2)
    a = rng.integers(-5, 6, size=(3, 4))
    b = rng.integers(-5, 6, size=(4, 5))
    expected = np.einsum("ij,jk->ik", a, b, dtype=np.float64)
    got = tc.einsum("ij,jk->ik", a, b, dtype=np.float64)
    assert got.dtype == np.float64
    _compare(got, expected)


def test_python_scalars_and_lists():
    expected = np.einsum(",ij->ij", 2.5, [[1.0, 2.0], [3.0, 4.0]])
    _compare(tc.einsum(",ij->ij", 2.5, [[1.0, 2.0], [3.0, 4.0]]), expected)


def test_inputs_not_modified():
    a, b = _operands([(3, 4), (4, 5)])
    a0, b0 = a.copy(), b.copy()
    tc.einsum("ij,jk->ik", a, b)
    tc.einsum("ii->i", a[:3, :3])
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


def test_non_contiguous_operands():
    a, b = _operands([(4, 6), (10, 5)])
    a_view, b_view = a[:, ::2], b[::3, :].T  # (4, 3), (5, 4)
    expected = np.einsum("ij,kl->ijkl", a_view, b_view)
    _compare(tc.einsum("ij,kl->ijkl", a_view, b_view), expected)
    expected = np.einsum("ij,ki->jk", a_view, b_view)
    _compare(tc.einsum("ij,ki->jk", a_view, b_view), expected)


def test_repeated_calls_same_equation_different_shapes():
    for shapes in ([(2, 3), (3, 4)], [(5, 6), (6, 2)], [(1, 1), (1, 1)]):
        a, b = _operands(shapes)
        _compare(tc.einsum("ij,jk->ik", a, b), np.einsum("ij,jk->ik", a, b))


# ---- errors -----------------------------------------------------------------

ERROR_CASES = [
    # (equation, shapes, regex the message must match)
    ("ij,jk", [(3, 4), (4, 5), (5, 6)], r"operand"),                        # too many operands
    ("ij,jk,kl", [(3, 4), (4, 5)], r"operand"),                             # too few operands
    ("i1,1j", [(3, 4), (4, 5)], r"'1'|subscript|invalid|character"),       # bad character
    ("ij,j$->i", [(3, 4), (4,)], r"'\$'|subscript|invalid|character"),     # bad character
    ("ij,jk->il", [(3, 4), (4, 5)], r"'l'"),                                # output not in inputs
    ("ij,jk->ii", [(3, 4), (4, 5)], r"repeat|twice|more than once|'i'"),    # repeated output
    ("ij,jk->ik", [(3, 4), (5, 6)], r"'j'|size"),                           # mismatched sizes
    ("ii", [(3, 4)], r"'i'|size"),                                          # mismatched diagonal
    ("ijk", [(3, 4)], r"dimension|subscript"),                              # rank mismatch
    ("ij", [(3, 4, 5)], r"dimension|subscript"),                            # rank mismatch
    ("...i...", [(3, 4)], r"\.\.\.|ellipsis"),                              # two ellipses
    ("ij->j->i", [(3, 4)], r"->"),                                          # two arrows
]


@pytest.mark.parametrize("equation,shapes,pattern", ERROR_CASES,
                         ids=[f"{e}|{'x'.join(str(s) for s in sh)}" for e, sh, _ in ERROR_CASES])
def test_malformed_equations_raise(equation, shapes, pattern):
    operands = _operands(shapes)
    with pytest.raises(ValueError):  # the oracle rejects it too
        np.einsum(equation, *operands)
    with pytest.raises(tc.TensorcError) as info:
        tc.einsum(equation, *operands)
    assert isinstance(info.value, ValueError)
    assert re.search(pattern, str(info.value)), str(info.value)
    # The message should not be an internal traceback text.
    assert "Traceback" not in str(info.value)


def test_ellipsis_missing_from_output_is_rejected_like_numpy():
    x = np.ones((2, 3))
    with pytest.raises(ValueError):
        np.einsum("...->", x)
    with pytest.raises(tc.TensorcError, match="no '...'"):
        tc.einsum("...->", x)
    # an ellipsis that covers no dimension is fine, as in numpy
    np.testing.assert_allclose(tc.einsum("...i->", np.ones(3)), np.einsum("...i->", np.ones(3)))
