"""Quickstart: a CNN layer written as one line of Einstein notation, compiled by tensorc.

Run:  python examples/quickstart.py
Prints the layer's normalized program, its plan (strategy, FLOPs, memory), the generated
NumPy module, and the result on random data, checked against a direct NumPy loop.
"""

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
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)   # a batch of 28x28 images
    k = rng.standard_normal((16, 1, 5, 5)).astype(np.float32)     # 16 filters of 5x5
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
    expected = np.maximum(conv, 0).reshape(64, 16, 12, 2, 12, 2).max(axis=(3, 5))
    error = float(np.abs(pooled - expected).max())

    print("==== result ====")
    print(f"p: shape {pooled.shape}, dtype {pooled.dtype}, mean {pooled.mean():.4f}, "
          f"computed in {elapsed * 1e3:.2f} ms; max difference from NumPy: {error:.2e}")
    assert error < 1e-3, "tensorc disagrees with NumPy"


if __name__ == "__main__":
    main()
