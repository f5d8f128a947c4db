"""Planning: opt_einsum order, BLAS lowering, strategies and the printed plan."""

import numpy as np
import opt_einsum
import pytest

import tensorc as tc
from tensorc.plan import contractions_in

CONTRACTIONS = [
    ("out[i,l] = A[i,j] * B[j,k] * C[k,l]", {"A": (30, 40), "B": (40, 5), "C": (5, 60)},
     "ij,jk,kl->il"),
    ("out[b,i,k] = A[b,i,j] * B[b,j,k]", {"A": (4, 8, 9), "B": (4, 9, 7)}, "bij,bjk->bik"),
    ("s[b,h,q,k] = Q[b,h,q,d] * K[b,h,k,d]", {"Q": (2, 3, 5, 4), "K": (2, 3, 6, 4)},
     "bhqd,bhkd->bhqk"),
    ("r = A[a,b] * B[b,c] * C[c,d] * D[d,e] * E[e,a]",
     {"A": (3, 4), "B": (4, 5), "C": (5, 6), "D": (6, 7), "E": (7, 3)}, "ab,bc,cd,de,ea->"),
    ("t[i,m] = A[i,j,k] * B[j,l] * C[k,l,m] * D[m]",
     {"A": (5, 6, 7), "B": (6, 8), "C": (7, 8, 9), "D": (9,)}, "ijk,jl,klm,m->im"),
]


@pytest.mark.parametrize("source, shapes, equation", CONTRACTIONS)
def test_contractions_use_blas_and_opt_einsum_cost(source, shapes, equation):
    kern = tc.compile(source, **shapes)
    assert "np.einsum" not in kern.source
    assert "np.matmul" in kern.source
    _, info = opt_einsum.contract_path(equation, *shapes.values(), shapes=True,
                                       optimize="auto")
    statement = kern.plan.statements[0]
    # Same number of pairwise steps as opt_einsum's path, and the same FLOP count
    # (opt_einsum counts a multiply-add as 2).
    assert statement.flops == pytest.approx(int(info.opt_cost), rel=0.05)
    rng = np.random.default_rng(1)
    arrays = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    np.testing.assert_allclose(kern(**arrays), np.einsum(equation, *arrays.values()),
                               rtol=1e-10)


def test_convolution_plan_states_strategy_flops_and_memory():
    kern = tc.compile("y[n,o,h,w] = relu(x[n,c,h+u,w+v] * k[o,c,u,v] + b[o])",
                      x=(64, 1, 28, 28), k=(16, 1, 5, 5), b=(16,))
    text = str(kern.plan)
    assert "im2col" in text and "batched GEMM 64 x [16x25]@[25x576]" in text
    statement = kern.plan.statements[0]
    gemm_flops = 2 * 64 * 16 * 25 * 576
    assert statement.flops >= gemm_flops
    assert "naive FLOPs" in text and "peak temporary" in text
    assert statement.largest_intermediate == 64 * 25 * 576  # the im2col copy
    assert statement.peak_temporary_bytes >= 64 * 25 * 576 * 8


def test_weight_first_gemm_gives_nchw_without_transposing_the_result(monkeypatch):
    monkeypatch.setenv("TENSORC_PACK", "off")  # NumPy's own im2col copy (the reshape)
    kern = tc.compile("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]", x=(64, 1, 28, 28),
                      k=(16, 1, 5, 5))
    line = next(l for l in kern.source.splitlines() if "np.matmul" in l)
    assert line.strip() == ("y = np.matmul(k.reshape(16, 25), x_win.transpose(0, 3, 4, 5, 1, 2)"
                            ".reshape(64, 25, 576)).reshape(64, 16, 24, 24)")


def test_an_intermediate_is_laid_out_for_the_step_that_reads_it():
    """A Tucker product's middle step, planned with the step after it: t[j,i,c] from one GEMM
    on a copy of t1 (laid out [i,b,c], copied to [b, i*c]), which the last step reads as
    [c, j*i] without a copy, rather than t[i,j,c] from 96 GEMMs [96x48]@[48x48], each too
    small for OpenBLAS's threads (1.34 -> 1.13 ms). Values as np.einsum's."""
    shapes = dict(A=(48, 48, 48), B=(96, 48), C=(96, 48), D=(96, 48))
    kern = tc.compile("out[i,j,k] = A[a,b,c] * B[i,a] * C[j,b] * D[k,c]", **shapes)
    plan = str(kern.plan)
    assert "[j,b],[i,b,c]->[j,i,c]" in plan and "GEMM [96x48]@[48x4608]" in plan
    assert "[k,c],[j,i,c]->[i,j,k]" in plan and "batched" not in plan
    assert "np.matmul(D, t2.reshape(9216, 48).T)" in kern.source  # read as stored
    rng = np.random.default_rng(5)
    arrays = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    want = np.einsum("abc,ia,jb,kc->ijk", *arrays.values(), optimize=True)
    np.testing.assert_allclose(kern(**arrays), want, rtol=1e-10, atol=1e-9)


def test_intermediates_keep_the_canonical_order_on_a_tie():
    """A chain's intermediate stays in the order opt_einsum's step leaves it when no other
    order is cheaper with the step that reads it."""
    kern = tc.compile("out[i,l] = A[i,j] * B[j,k] * C[k,l]", A=(256, 512), B=(512, 128),
                      C=(128, 512))
    steps = [line.split()[1] for line in str(kern.plan).splitlines()
             if line.strip()[:1].isdigit()]
    assert steps == ["[i,j],[j,k]->[i,k]", "[k,l],[i,k]->[i,l]"], steps


def test_a_statement_result_may_be_a_transposed_view_as_numpy_einsum_returns():
    # The last GEMM of an open ring yields (k,l,i,j,m); copying it to (i,j,k,l,m) would
    # cost more than the contraction, so the output is a transposed view, as np.einsum's.
    equation = "aib,bjc,ckd,dle,ema->ijklm"
    shapes = dict(A=(6, 12, 6), B=(6, 12, 6), C=(6, 12, 6), D=(6, 12, 6), E=(6, 12, 6))
    kern = tc.compile("out[i,j,k,l,m] = A[a,i,b] * B[b,j,c] * C[c,k,d] * D[d,l,e] * E[e,m,a]",
                      **shapes)
    rng = np.random.default_rng(0)
    arrays = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    out = kern(**arrays)
    want = np.einsum(equation, *arrays.values(), optimize=True)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-9)
    assert "ascontiguousarray" not in kern.source
    assert out.shape == (12,) * 5


def test_pooling_runs_a_window_loop():
    kern = tc.compile("p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   where u < 2, v < 2",
                      y=(2, 3, 8, 8))
    assert "np.maximum(p, y_win[:, :, :, :, u, v], out=p)" in kern.source
    assert "running update over strided window slices" in str(kern.plan)


@pytest.mark.parametrize("layout", ["NCHW", "channels-last"])
def test_a_window_loop_keeps_its_input_memory_order(layout, monkeypatch):
    """The running update starts from a copy in the input's own memory order, so that every
    window slice is read along its storage: a channels-last input (a convolution's result,
    viewed NCHW) gives a channels-last result. Values as PyTorch's max_pool2d."""
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("TENSORC_JIT", "off")
    kern = tc.compile("p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   where u < 2, v < 2",
                      y=(4, 6, 8, 8))
    assert "p = y_win[:, :, :, :, 0, 0].copy(order='K')" in kern.source
    y = np.random.default_rng(4).standard_normal((4, 8, 8, 6))  # stored n, h, w, c
    y = y.transpose(0, 3, 1, 2) if layout == "channels-last" else np.ascontiguousarray(
        y.transpose(0, 3, 1, 2))
    p = kern(y=y)
    want = torch.nn.functional.max_pool2d(torch.from_numpy(y), 2).numpy()
    np.testing.assert_array_equal(p, want)
    innermost = int(np.argmin(p.strides))
    assert innermost == (1 if layout == "channels-last" else 3) and p.strides[innermost] == 8


@pytest.mark.parametrize("size, stride, width", [(2, 2, 12), (3, 3, 12), (2, 2, 11), (3, 1, 12),
                                                (3, 2, 12)])
def test_max_pool_gradient_runs_one_window_offset_at_a_time(size, stride, width):
    """The tie count and the routed gradient loop over window offsets (no broadcast over
    tiny trailing axes); overlapping windows (stride < size) add up across offsets."""
    import torch
    import torch.nn.functional as F
    source = (f"p[n,c,h,w] = max[u,v](y[n,c,{stride}*h+u,{stride}*w+v])   "
              f"where u < {size}, v < {size}")
    rng = np.random.default_rng(3)
    y = rng.standard_normal((4, 3, width, width))  # continuous values: no ties
    out = (width - size) // stride + 1
    dp = rng.standard_normal((4, 3, out, out))
    kern = tc.compile_grad(source, wrt=["y"], y=y.shape, dp=dp.shape)
    plan = str(kern.plan)
    assert "sum over u,v: running update over strided window slices" in plan
    tiles = size == stride and width % size == 0  # each element in exactly one window
    assert ("evaluated per window offset (u,v) and written to its own strided slice (the "
            "windows tile dy)" if tiles else
            "evaluated per window offset (u,v) and added through strided slices") in plan
    assert "for u, v in np.ndindex" in kern.source
    assert "t1 = dp / ties" in kern.source  # the offset-invariant part, computed once
    yt = torch.tensor(y, requires_grad=True)
    F.max_pool2d(yt, size, stride).backward(torch.tensor(dp))
    np.testing.assert_allclose(kern(y=y, dp=dp)["dy"], yt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_epilogue_is_in_place():
    kern = tc.compile("y[n,o] = relu(x[n,c] * w[o,c] + b[o])", x=(4, 3), w=(5, 3), b=(5,))
    body = kern.source.split("def kernel")[1]
    assert "y += b" in body and "np.maximum(y, 0, out=y)" in body


def test_generated_source_is_deterministic():
    args = dict(x=(2, 3, 9, 9), k=(4, 3, 3, 3))
    program = "y[n,o,h,w] = x[n,c,2*h+u-1,2*w+v-1] * k[o,c,u,v]   where h < 5, w < 5, x: zero"
    first = tc.compile(program, **args).source
    tc.kernel._CACHE.clear()
    assert tc.compile(program, **args).source == first


def test_chunked_im2col_is_correct_and_stated_in_the_plan(monkeypatch):
    monkeypatch.setenv("TENSORC_SHIFT", "off")  # by cost: shifted GEMMs, no im2col
    import torch
    import torch.nn.functional as F
    # a tensor named like a generated window view must not confuse the renderer
    kern = tc.compile("y[n,o,h,w] = x_win[n,c,h+u-1,w+v-1] * k[o,c,u,v]   "
                      "where h < 40, w < 40, x_win: zero", x_win=(5, 64, 40, 40), k=(8, 64, 3, 3))
    assert "im2col in chunks of" in str(kern.plan)
    assert "for n_start in range(0, 5," in kern.source
    rng = np.random.default_rng(0)
    x, k = rng.standard_normal((5, 64, 40, 40)), rng.standard_normal((8, 64, 3, 3))
    for _ in range(2):  # the second call reuses the scratch buffers
        np.testing.assert_allclose(kern(x_win=x, k=k), F.conv2d(torch.tensor(x), torch.tensor(k),
                                                                 padding=1).numpy(), rtol=1e-10,
                                   atol=1e-10)


def _torch_conv(x, k, stride=1, padding=0, mode="zeros"):
    import torch
    import torch.nn.functional as F
    xt = torch.tensor(x)
    if padding and mode != "zeros":
        xt = F.pad(xt, (padding,) * 4, mode=mode)
        padding = 0
    return F.conv2d(xt, torch.tensor(k), stride=stride, padding=padding).numpy()


def test_im2col_from_a_channels_last_copy_when_rows_are_short():
    # LeNet-2: output rows are 8 wide, so an NCHW im2col copies runs of 8; from a
    # channels-last copy of x it copies runs of v x c = 80
    kern = tc.compile("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]", dtype="float32",
                      x=(64, 16, 12, 12), k=(32, 16, 5, 5))
    assert "x first copied channels-last" in str(kern.plan)
    assert "x_last = _scratch('x_last', (64, 12, 12, 16)).transpose(0, 3, 1, 2)" in kern.source
    rng = np.random.default_rng(0)
    x, k = rng.standard_normal((64, 16, 12, 12)), rng.standard_normal((32, 16, 5, 5))
    kern64 = tc.compile("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]", x=x.shape, k=k.shape)
    assert "channels-last" in str(kern64.plan)
    for _ in range(2):  # the second call reuses the channels-last buffer
        np.testing.assert_allclose(kern64(x=x, k=k), _torch_conv(x, k), rtol=1e-10, atol=1e-10)


def test_single_channel_input_keeps_its_own_layout():
    kern = tc.compile("y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]", dtype="float32",
                      x=(64, 1, 28, 28), k=(16, 1, 5, 5))
    assert "channels-last" not in kern.source


def test_weight_gradient_avoids_a_scattered_transpose_of_dy():
    """Copying x batch-last would make the GEMM need dy as [h,w,n,o], a transpose whose two
    innermost axes both jump through dy (slow); for one channel that costs more than it
    saves. GEMMs per image, summed over the batch, read dy as it is stored."""
    source = "y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]"
    kern = tc.compile(tc.grad(source, wrt=["k"]), dtype="float32", x=(64, 1, 28, 28),
                      k=(16, 1, 5, 5), dy=(64, 16, 24, 24))
    assert "channels-last" not in str(kern.plan)
    assert "dy.transpose" not in kern.source and "dy.reshape(64, 16, 576)" in kern.source
    assert "then over the batch n" in str(kern.plan)


def test_gemms_large_enough_for_openblas_threads_are_not_batched_by_image():
    """Each entry of a batched matmul that OpenBLAS runs on several threads pays for their
    hand-over: LeNet-2's input gradient copies dy into [o, n*h*w] for one GEMM instead of 64
    (64 x [64x32]@[32x400]). Entries under OpenBLAS's threshold stay batched (LeNet-1's
    forward: 64 x [16x25]@[25x576]), and so does a strided convolution whose single GEMM
    would chunk its 28.9 MB of windows along c, adding each chunk's product to the result,
    and a weight gradient keeps its windows in chunks rather than batched by image into one
    fresh 57.8 MB copy. Values as np.einsum's."""
    conv = "y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]"
    lenet2 = tc.compile(tc.grad(conv, wrt=["x"]), dtype="float32", x=(64, 16, 12, 12),
                        k=(32, 16, 5, 5), dy=(64, 32, 8, 8))
    assert "GEMM [400x32]@[32x4096], sum over o, copies 524 kB" in str(lenet2.plan)
    lenet1 = tc.compile(conv, dtype="float32", x=(64, 1, 28, 28), k=(16, 1, 5, 5))
    assert "batched GEMM 64 x [16x25]@[25x576]" in str(lenet1.plan)
    strided = tc.compile("y[n,o,h,w] = x[n,c,2*h+u-1,2*w+v-1] * k[o,c,u,v]   where h < 28, "
                         "w < 28, x: zero", dtype="float32", x=(16, 64, 56, 56),
                         k=(64, 64, 3, 3))
    assert "batched GEMM 16 x [64x576]@[576x784]" in str(strided.plan)
    assert "chunks of 4 along n" in str(strided.plan)
    # a weight gradient's windows (57.8 MB) in chunks, not all at once into a fresh buffer
    dk = tc.compile(tc.grad("y[n,o,h,w] = x[n,c,h+u-1,w+v-1] * k[o,c,u,v]   where h < 28, "
                            "w < 28, x: zero", wrt=["k"]), dtype="float32",
                    x=(16, 128, 28, 28), k=(128, 128, 3, 3), dy=(16, 128, 28, 28))
    assert "GEMM [1152x12544]@[12544x128]" in str(dk.plan)
    assert "chunks of 3 along h (summed)" in str(dk.plan)
    rng = np.random.default_rng(12)
    k, dy = (rng.standard_normal(s).astype(np.float32) for s in ((32, 16, 5, 5), (64, 32, 8, 8)))
    want = np.zeros((64, 16, 12, 12))
    for u in range(5):
        for v in range(5):
            want[:, :, u:u + 8, v:v + 8] += np.einsum("nohw,oc->nchw", dy.astype(float),
                                                      k[:, :, u, v].astype(float))
    got = lenet2(x=np.zeros((64, 16, 12, 12), np.float32), k=k, dy=dy)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_gemms_summed_over_a_batch_match_numpy():
    """A contracted axis run as the matmul's batch and summed after it, checked against
    np.einsum in float64, forward and with a chain behind it."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((64, 1, 28, 28))
    dy = rng.standard_normal((64, 16, 24, 24))
    kern = tc.compile("dk[o,c,u,v] = dy[n,o,h,w] * x[n,c,h+u,w+v]", x=x.shape, dy=dy.shape)
    assert any(st.summed for sp in kern.plan.statements for c in contractions_in(sp.root)
               for st in c.steps), kern.plan
    windows = np.lib.stride_tricks.sliding_window_view(x, (5, 5), axis=(2, 3))
    want = np.einsum("nohw,nchwuv->ocuv", dy, windows, optimize=True)
    np.testing.assert_allclose(kern(x=x, dy=dy), want, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("mode, torch_mode", [("zero", "zeros"), ("reflect", "reflect"),
                                              ("circular", "circular"),
                                              ("replicate", "replicate")])
def test_channels_last_strided_chunked_rows_with_every_padding(mode, torch_mode, monkeypatch):
    monkeypatch.setenv("TENSORC_PACK", "off")  # NumPy's copies (threaded ones read NCHW)
    source = (f"y[n,o,h,w] = x[n,c,2*h+u-1,2*w+v-1] * k[o,c,u,v]   "
              f"where h < 20, w < 20, x: {mode}")
    kern = tc.compile(source, x=(8, 48, 40, 40), k=(24, 48, 3, 3))
    plan = str(kern.plan)
    assert "channels-last" in plan and "im2col in chunks of" in plan
    rng = np.random.default_rng(1)
    x, k = rng.standard_normal((8, 48, 40, 40)), rng.standard_normal((24, 48, 3, 3))
    for _ in range(2):
        np.testing.assert_allclose(kern(x=x, k=k), _torch_conv(x, k, 2, 1, torch_mode),
                                   rtol=1e-10, atol=1e-10)


def test_gradients_through_channels_last_windows_match_torch():
    import torch
    import torch.nn.functional as F
    source = "y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]"
    rng = np.random.default_rng(2)
    x, k = rng.standard_normal((32, 16, 12, 12)), rng.standard_normal((32, 16, 5, 5))
    dy = rng.standard_normal((32, 32, 8, 8))
    kern = tc.compile_grad(source, wrt=["x", "k"], x=x.shape, k=k.shape, dy=dy.shape)
    assert "channels-last" in str(kern.plan)
    out = kern(x=x, k=k, dy=dy)
    xt, kt = torch.tensor(x, requires_grad=True), torch.tensor(k, requires_grad=True)
    F.conv2d(xt, kt).backward(torch.tensor(dy))
    np.testing.assert_allclose(out["dx"], xt.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out["dk"], kt.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stride", [1, 2])
def test_a_one_by_one_convolution_reads_its_input_whole_without_im2col(stride):
    """u < 1 in x[n,c,h+u,w+v] takes one value: the read is x itself (strided for stride 2),
    contracted by GEMM in all three statements, values and gradients as PyTorch's."""
    import torch
    import torch.nn.functional as F
    at = "h+u, w+v" if stride == 1 else "2*h+u, 2*w+v"
    source = f"y[n,o,h,w] = x[n,c,{at}] * k[o,c,u,v]   where h < 6, w < 6"
    rng = np.random.default_rng(3)
    x, k = rng.standard_normal((4, 24, 6 * stride, 6 * stride)), rng.standard_normal((8, 24, 1, 1))
    dy = rng.standard_normal((4, 8, 6, 6))
    kern = tc.compile_grad(source, wrt=["x", "k"], x=x.shape, k=k.shape, dy=dy.shape)
    strategies = [line for line in str(kern.plan).splitlines() if "strategy:" in line]
    assert len(strategies) == 3
    if stride == 1:
        assert not any("window" in line for line in strategies)
        assert "as_strided(" not in kern.source and "copyto" not in kern.source
    else:  # a strided slice of x, copied once into GEMM order
        assert all("x[n,c,2*h,2*w]" in line for line in strategies[::2])
    out = kern(x=x, k=k, dy=dy)
    xt, kt = torch.tensor(x, requires_grad=True), torch.tensor(k, requires_grad=True)
    yt = F.conv2d(xt, kt, stride=stride)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(out["y"], yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out["dx"], xt.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out["dk"], kt.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("source, want", [
    # the offset is read nowhere else: it stays, and the window of one element is summed
    ("y[i] = x[i+u]   where i < 5, u < 1", lambda x: x[:5]),
    ("y[i] = x[i+u-1] * 2   where i < 5, u < 1, x: zero", lambda x: 2 * np.r_[0, x[:4]]),
    ("y: f64[6]\ny[i+u] += x[i] * k[u]   where u < 1", lambda x: 3 * x),
    # the position takes one value: y[v] would leave y[3:] to a reader of its range alone
    ("y: f64[5]\ny[3*w+v] += x[v] * k[w]   where w < 1, v < 3", lambda x: np.r_[3 * x[:3], 0, 0]),
    # (found by Hypothesis) dropping i from both maps would make the target a diagonal
    ("y: f64[1, 1]\ny[i+j,i+j] += x[i]   where i < 1, j < 1", lambda x: x[:1, None]),
])
def test_offsets_of_one_value_read_as_numpy_does(source, want):
    x = np.arange(1.0, 7.0)
    kern = tc.compile(source, x=(6,), **({"k": (1,)} if "k[" in source else {}))
    got = kern(x=x, **({"k": np.array([3.0])} if "k[" in source else {}))
    np.testing.assert_allclose(got, want(x))


GEMV = "products with a vector of ones (BLAS GEMV)"


@pytest.mark.parametrize("source, shape, axes, transposed", [
    ("db[o] = dy[n,o,h,w]", (64, 16, 24, 24), (0, 2, 3), False),           # a conv bias grad
    ("s[n] = sum[c,h,w](x[n,c,h,w])", (64, 16, 24, 24), (1, 2, 3), False),  # trailing only
    ("s[h,w] = x[n,c,h,w]", (32, 8, 16, 16), (0, 1), False),                # leading only
    ("m[c] = mean[n,h,w](x[n,c,h,w])", (8, 32, 20, 20), (0, 2, 3), False),
    ("t = sum[i,j](x[i,j])", (300, 400), (0, 1), False),                    # to a scalar
    ("r[c,n] = x[n,c,h,w]", (8, 16, 24, 24), (2, 3), True),                 # kept, transposed
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_large_sums_of_whole_tensors_run_as_gemv_with_ones(source, shape, axes, transposed,
                                                           dtype):
    kern = tc.compile(source, dtype=dtype, x=shape) if "x[" in source else \
        tc.compile(source, dtype=dtype, dy=shape)
    assert GEMV in kern.plan.statements[0].strategy
    assert "np.sum" not in kern.source and "np.ones(" in kern.source
    x = np.random.default_rng(8).standard_normal(shape).astype(dtype)
    want = x.astype(np.float64).sum(axis=axes)
    if "mean" in source:
        want = want / np.prod([shape[a] for a in axes])
    if transposed:
        want = want.T
    name = "x" if "x[" in source else "dy"
    tolerance = 1e-12 if dtype == "float64" else 2e-5
    for given in (x, np.asfortranarray(x)):  # a non-contiguous input is reshaped by a copy
        got = kern(**{name: given})
        assert np.shape(got) == want.shape and np.asarray(got).dtype == dtype
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * np.abs(want).max())


@pytest.mark.parametrize("source, shapes, dtype, why", [
    ("r[n,h] = x[n,c,h,w]", dict(x=(64, 16, 24, 24)), "float32", "kept dims not adjacent"),
    ("db[o] = dy[n,o,h,w]", dict(dy=(4, 16, 8, 8)), "float32", "too small to matter"),
    ("db[o] = dy[n,o,h,w]", dict(dy=(64, 16, 24, 24)), "float16", "no BLAS for halves"),
    ("s[n] = max[c,h,w](x[n,c,h,w])", dict(x=(64, 16, 24, 24)), "float32", "not a sum"),
])
def test_other_reductions_stay_numpy_axis_reductions(source, shapes, dtype, why):
    kern = tc.compile(source, dtype=dtype, **shapes)
    assert GEMV not in kern.plan.statements[0].strategy, why
    x = np.random.default_rng(9).integers(-5, 5, size=next(iter(shapes.values()))).astype(dtype)
    ops = {"r[n,h]": lambda a: a.sum(axis=(1, 3)), "db[o]": lambda a: a.sum(axis=(0, 2, 3)),
           "s[n]": lambda a: a.max(axis=(1, 2, 3))}
    want = ops[source.split(" =")[0]](x)  # in the same dtype: float16 sums round alike
    np.testing.assert_allclose(kern(**{next(iter(shapes)): x}), want, rtol=1e-3)


def test_blas_calls_lists_the_matmuls_a_plan_makes():
    """tc.plan.blas_calls (the benchmarks time them alone): one entry per GEMM step, chunks
    as equal calls plus the rest, shifted GEMMs as their calls; their FLOPs are the plan's."""
    from tensorc.plan import BlasCall, blas_calls
    conv = "y[n,o,h,w] = x[n,c,h+u,w+v] * k[o,c,u,v]"
    lenet2 = tc.compile_grad(conv, wrt=["x", "k"], dtype="float32", x=(64, 16, 12, 12),
                             k=(32, 16, 5, 5), dy=(64, 32, 8, 8))
    # as the source calls them: y [n*h*w, u*v*c] @ [u*v*c, o]; dx [c*u*v, o] @ [o, n*h*w]
    # (w innermost for the col2im); dk [o, n*h*w] @ [n*h*w, u*v*c] (dy copied in runs of
    # whole planes; x_cols: the copy the forward shares)
    assert blas_calls(lenet2.plan) == [BlasCall(0, 1, 1, 4096, 400, 32),
                                       BlasCall(1, 1, 1, 400, 32, 4096),
                                       BlasCall(2, 1, 1, 32, 4096, 400)]
    assert "np.matmul(dy.transpose(1, 0, 2, 3).reshape(32, 4096), x_cols.reshape(4096, 400))" \
        in lenet2.source
    assert sum(c.flops for c in blas_calls(lenet2.plan)) == lenet2.plan.flops
    # chunks of 3 along h (summed): 9 of 3 rows of 28, then one of 1
    padded = "y[n,o,h,w] = x[n,c,h+u-1,w+v-1] * k[o,c,u,v]   where h < 28, w < 28, x: zero"
    dk = tc.compile(tc.grad(padded, wrt=["k"]), dtype="float32", x=(16, 128, 28, 28),
                    k=(128, 128, 3, 3), dy=(16, 128, 28, 28))
    assert "GEMM [1152x12544]@[12544x128]" in str(dk.plan)
    assert "chunks of 3 along h (summed)" in str(dk.plan)
    calls = blas_calls(dk.plan)
    assert [(c.calls, c.k) for c in calls] == [(9, 16 * 3 * 28), (1, 16 * 28)]
    assert {(c.m, c.n) for c in calls} == {(1152, 128)}
    assert sum(c.flops for c in calls) == dk.plan.flops == 2 * 1152 * 12544 * 128
    # shifted GEMMs: 16 images x 9 offsets, rows 58 wide for 56 outputs
    shifted = tc.compile(padded.replace("28", "56"), dtype="float32", x=(16, 64, 56, 56),
                         k=(64, 64, 3, 3))
    assert "144 BLAS calls [64x64]@[64x3248]" in str(shifted.plan)
    assert blas_calls(shifted.plan) == [BlasCall(0, 144, 1, 64, 64, 3248)]
    # a loop kernel makes none
    pool = tc.compile("p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   where u < 2, v < 2",
                      y=(2, 3, 8, 8))
    assert blas_calls(pool.plan) == []
