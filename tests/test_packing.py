"""Threaded packing copies: im2col and col2im around NumPy's GEMMs as Numba loops.

- Forced wherever they apply (TENSORC_PACK=always), a third of the convolution sweep and
  of its gradient sweep match PyTorch in float64 (tests/test_conv_sweep.py and
  tests/test_grad_sweep.py run again): every boundary mode (zero by bounds checks, the others
  from the padded copy), strides, dilations, groups, channels-last copies; so do im2col
  copies made in chunks (of the GEMM's rows, and summed chunks of a weight gradient).
- By size (the default), the CNN layers of the benchmarks get them where they pay, small
  copies stay NumPy's, and without Numba (or with TENSORC_PACK=off) nothing changes.
- The plan says so, and the source shows the loops (a snapshot pins one).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tensorc as tc
from tensorc.backends.jit import numba_available
from tensorc.plan import contractions_in

pytestmark = pytest.mark.skipif(not numba_available(), reason="Numba is not installed")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_conv_sweep as sweep  # noqa: E402
import test_grad_sweep as grad_sweep  # noqa: E402

STRIDED = ("y[n,o,h,w] = x[n,c,2*h+u-1,2*w+v-1] * k[o,c,u,v]   where h < {H}, w < {W}, "
           "x: {mode}")


@pytest.fixture(scope="session")
def numba_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("numba-cache")


@pytest.fixture
def pack_always(monkeypatch, numba_cache):
    """Every im2col and col2im by a Numba loop; NumPy code otherwise (no loop kernels)."""
    monkeypatch.setenv("TENSORC_PACK", "always")
    monkeypatch.setenv("TENSORC_JIT", "auto")
    monkeypatch.setenv("TENSORC_CACHE_DIR", str(numba_cache))


def packing_of(kernel) -> set[str]:
    return {p for sp in kernel.plan.statements for p in sp.packing}


# A third of each sweep (the sweeps cycle through modes and shapes, so every third case
# still has every boundary mode): each new kernel costs a Numba compilation of about 1 s.
CONV_CASES = sweep.CASES[::3]
GRAD_CASES = list(grad_sweep._params())[::3]


@pytest.mark.parametrize("case", CONV_CASES, ids=[c.id for c in CONV_CASES])
def test_conv_sweep_with_threaded_copies(case, pack_always):
    sweep.test_conv_sweep(case)


@pytest.mark.parametrize("case", GRAD_CASES)
def test_grad_sweep_with_threaded_copies(case, pack_always):
    grad_sweep.test_grad_sweep(case)


def test_every_boundary_mode_gets_both_copies(pack_always):
    """The conv sweep above copies windows under every boundary mode; a strided
    convolution's input gradient adds through windows under every mode too: zero by
    bounds checks, the others through a padded buffer whose margins are folded back."""
    im2col = {mode for case in CONV_CASES for mode in sweep.MODES
              if mode in case.id and "im2col" in packing_of(tc.compile(case.src, **case.shapes))}
    assert im2col == set(sweep.MODES), im2col
    for mode in sweep.MODES:
        kern = tc.compile_grad(STRIDED.format(H=4, W=4, mode=mode), wrt=["x", "k"],
                               x=(2, 3, 8, 8), k=(4, 3, 3, 3), dy=(2, 4, 4, 4))
        assert packing_of(kern) == {"im2col", "col2im"}, (mode, kern.plan)
        assert ("_fold_margins" in kern.source) == (mode != "zero"), mode


def _torch_strided(x, k, mode):
    if mode == "zero":
        return F.conv2d(x, k, stride=2, padding=1)
    torch_mode = {"circular": "circular", "reflect": "reflect", "replicate": "replicate"}
    padded = F.pad(x, (1, 1, 1, 1), mode=torch_mode[mode])
    return F.conv2d(padded, k, stride=2)


@pytest.mark.parametrize("mode", ["zero", "circular", "reflect", "replicate"])
def test_chunked_copies_and_their_gradients_match_pytorch(mode, pack_always, request):
    """A small memory budget makes im2col run in chunks: of the GEMM's rows in the
    forward, summed chunks over the batch in the weight gradient."""
    tc.set_memory_budget(3 << 20)
    request.addfinalizer(lambda: tc.set_memory_budget(None))
    src = STRIDED.format(H=12, W=12, mode=mode)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 16, 24, 24))
    k = rng.standard_normal((8, 16, 3, 3))
    dy = rng.standard_normal((8, 8, 12, 12))
    kern = tc.compile_grad(src, wrt=["x", "k"], x=x.shape, k=k.shape, dy=dy.shape)
    chunked = [st for sp in kern.plan.statements for c in contractions_in(sp.root)
               for st in c.steps if st.chunk is not None]
    assert chunked and packing_of(kern) == {"im2col", "col2im"}, kern.plan
    got = kern(x=x, k=k, dy=dy)
    xt = torch.tensor(x, requires_grad=True)
    kt = torch.tensor(k, requires_grad=True)
    y = _torch_strided(xt, kt, mode)
    dx, dk = torch.autograd.grad(y, (xt, kt), torch.tensor(dy))
    for name, want in (("y", y), ("dx", dx), ("dk", dk)):
        np.testing.assert_allclose(got[name], want.detach().numpy(), rtol=1e-10, atol=1e-10,
                                   err_msg=name)


def test_zero_padding_is_read_by_bounds_checks(pack_always):
    """No padded copy of x is made: the loop reads 0 where the window leaves x."""
    kern = tc.compile(STRIDED.format(H=32, W=32, mode="zero"), x=(2, 3, 64, 64),
                      k=(4, 3, 3, 3))
    body = kern.source.split("def kernel")[1]
    assert "_jit.pack_x_1(x, " in body and "x_pad" not in body and "as_strided" not in body
    assert "0 <= p0 < 64" in kern.source


def test_the_plan_states_the_threaded_copies(pack_always):
    kern = tc.compile_grad(STRIDED.format(H=4, W=4, mode="zero"), wrt=["x", "k"],
                           x=(2, 3, 8, 8), k=(4, 3, 3, 3), dy=(2, 4, 4, 4))
    text = str(kern.plan)
    assert "im2col copies by threaded Numba loops" in text
    assert "col2im adds by threaded Numba loops" in text


# The benchmark layers, planned at their sizes in float32 (planning only: nothing runs).
def _plan_of(src, **shapes):
    return tc.compile(src, dtype="float32", **shapes)


def test_by_size_large_layers_get_them_and_small_copies_stay_numpys(monkeypatch):
    monkeypatch.setenv("TENSORC_JIT", "auto")
    monkeypatch.delenv("TENSORC_PACK", raising=False)
    strided = STRIDED.format(H=28, W=28, mode="zero")
    both = tc.compile_grad(strided, wrt=["x", "k"], dtype="float32", x=(16, 64, 56, 56),
                           k=(64, 64, 3, 3), dy=(16, 64, 28, 28))
    assert packing_of(both) == {"im2col", "col2im"}, both.plan
    lenet1 = _plan_of("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]", x=(64, 1, 28, 28),
                      k=(16, 1, 5, 5))
    assert packing_of(lenet1) == set(), lenet1.plan  # a 3.7 MB copy: NumPy's is as fast
    tiny = tc.compile_grad(strided.replace("28", "4"), wrt=["x", "k"], x=(1, 2, 8, 8),
                           k=(2, 2, 3, 3), dy=(1, 2, 4, 4))
    assert packing_of(tiny) == set(), tiny.plan


def test_col2im_reads_a_contribution_stored_plane_by_plane(monkeypatch):
    """The stem's dx (7x7 s2 p3, 8x3x224x224): the GEMM hands the contribution over as
    [n,c,u,v,h,w], so the threaded add runs along w within one plane of dx at a time; from
    [n,h,w,c,u,v] each step added into another plane (the layer's forward and backward:
    161-164 ms against 111-118 ms)."""
    monkeypatch.setenv("TENSORC_JIT", "auto")
    monkeypatch.delenv("TENSORC_PACK", raising=False)
    stem = "y[n,o,h,w] = x[n,c,2*h+u-3,2*w+v-3] * k[o,c,u,v]   where h < 112, w < 112, x: zero"
    both = tc.compile_grad(stem, wrt=["x", "k"], dtype="float32", x=(8, 3, 224, 224),
                           k=(64, 3, 7, 7), dy=(8, 64, 112, 112))
    assert "col2im" in packing_of(both), both.plan
    assert "+= g[i_n, i_c, i_u, i_v, i_h, i_w]" in both.source, both.source
    assert "batched GEMM 8 x [147x64]@[64x12544], sum over o" in str(both.plan)


@pytest.mark.parametrize("variable,value", [("TENSORC_PACK", "off"), ("TENSORC_JIT", "off")])
def test_off_leaves_numpys_copies(variable, value, monkeypatch):
    monkeypatch.setenv("TENSORC_PACK", "always")
    monkeypatch.setenv(variable, value)
    kern = tc.compile_grad(STRIDED.format(H=4, W=4, mode="zero"), wrt=["x", "k"],
                           x=(2, 3, 8, 8), k=(4, 3, 3, 3), dy=(2, 4, 4, 4))
    assert packing_of(kern) == set() and "JIT_SOURCE" not in kern.source


def test_generated_source_matches_snapshot(pack_always):
    from test_snapshots import check_snapshot
    kern = tc.compile_grad(STRIDED.format(H=14, W=14, mode="zero"), wrt=["x", "k"],
                           dtype="float32", x=(4, 16, 28, 28), k=(16, 16, 3, 3),
                           dy=(4, 16, 14, 14))
    check_snapshot("numba_packing_strided", kern.source)
