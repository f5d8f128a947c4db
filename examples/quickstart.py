"""Quickstart: a CNN layer written as one line of Einstein notation, compiled by tensorc.

Run:  python examples/quickstart.py [--quick]
Prints the layer's normalized program, its plan (strategy, FLOPs, memory), the generated
NumPy module, and the result on random data, checked against a direct NumPy loop. Then
prints the adjoint program `tc.grad` derives (the backward pass, in the same notation),
runs it, and checks its gradients against a finite difference. `--quick` uses a batch of
8 images instead of 64 (for the tests).
"""

import argparse
import time

import numpy as np

import tensorc as tc

# A convolution with bias and ReLU, then 2x2 max pooling. Indices on the right that are
# not on the left (c, u, v) are summed; `h+u` is a sliding window.
LAYER = """
y[n,o,h,w] = relu(x[n,c,h+u,w+v] * k[o,c,u,v] + b[o])
p[n,o,h,w] = max[u,v](y[n,o,2*h+u,2*w+v])   where u < 2, v < 2
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a batch of 8 images (for tests)")
    args = parser.parse_args()
    batch = 8 if args.quick else 64

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)  # a batch of 28x28 images
    k = rng.standard_normal((16, 1, 5, 5)).astype(np.float32)       # 16 filters of 5x5
    b = rng.standard_normal(16).astype(np.float32)

    kernel = tc.compile(LAYER, x=x.shape, k=k.shape, b=b.shape, dtype="float32")
    print("==== program ====")
    print(kernel.program)
    print("\n==== plan ====")
    print(kernel.plan)
    print("\n==== generated source ====")
    print(kernel.source)

    start = time.perf_counter()
    result = kernel(x=x, k=k, b=b)
    elapsed = time.perf_counter() - start
    pooled = result["p"] if isinstance(result, dict) else result

    # The same layer written as plain NumPy, to check the numbers.
    windows = np.lib.stride_tricks.sliding_window_view(x, (5, 5), axis=(2, 3))
    conv = np.einsum("nchwuv,ocuv->nohw", windows, k) + b[:, None, None]
    expected = np.maximum(conv, 0).reshape(batch, 16, 12, 2, 12, 2).max(axis=(3, 5))
    error = float(np.abs(pooled - expected).max())

    print("==== result ====")
    print(f"p: shape {pooled.shape}, dtype {pooled.dtype}, mean {pooled.mean():.4f}, "
          f"computed in {elapsed * 1e3:.2f} ms; max difference from NumPy: {error:.2e}")
    assert error < 1e-3, "tensorc disagrees with NumPy"

    show_adjoint(x, k, b, rng)


def show_adjoint(x: np.ndarray, k: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> None:
    """Print the derived backward pass and check it against a finite difference."""
    # The adjoint takes the forward inputs and the cotangent `dp` of the output and defines
    # dx, dk, db. Read `dx[n,c,h+u,w+v] += ...` as: each output position sends its gradient
    # back to the window of x it read -- a convolution of the gradient with the flipped kernel.
    adjoint = tc.grad(LAYER, wrt=["x", "k", "b"])
    print("\n==== adjoint: tc.grad(LAYER, wrt=['x', 'k', 'b']) ====")
    print(adjoint)

    # Check it in float64 on 8 images: the gradients of f = sum(dp * p) against a central
    # difference of f along a random direction (d/dt f(x + t*ex, k + t*ek, b + t*eb) at 0).
    # The step is small so that no ReLU or max crosses its kink within it.
    x, k, b = x[:8].astype(np.float64), k.astype(np.float64), b.astype(np.float64)
    dp = rng.standard_normal((8, 16, 12, 12))
    gradients = tc.compile(adjoint)(x=x, k=k, b=b, dp=dp)
    forward = tc.compile(LAYER)
    ex, ek, eb = (rng.standard_normal(a.shape) for a in (x, k, b))

    def f(t: float) -> float:
        return float(np.sum(dp * forward(x=x + t * ex, k=k + t * ek, b=b + t * eb)))

    step = 1e-7
    numeric = (f(step) - f(-step)) / (2 * step)
    analytic = float(np.sum(gradients["dx"] * ex) + np.sum(gradients["dk"] * ek)
                     + np.sum(gradients["db"] * eb))
    relative = abs(analytic - numeric) / abs(numeric)
    print("\n==== adjoint check ====")
    print(f"dx {gradients['dx'].shape}, dk {gradients['dk'].shape}, db {gradients['db'].shape}; "
          f"directional derivative: adjoint {analytic:.6f}, finite difference {numeric:.6f}, "
          f"relative difference {relative:.1e}")
    assert relative < 1e-5, "the adjoint disagrees with the finite difference"


if __name__ == "__main__":
    main()
