"""Image filters written as tensorc programs, under each of tensorc's boundary modes.

Run:  python examples/filters.py [--out filters.png] [--quick]

A Gaussian blur (a windowed contraction with a 31x31 kernel), the Sobel gradient magnitude
and the 5-point Laplacian (stencils written out by hand) are applied to scikit-learn's
bundled photograph `china.jpg` in grey levels, once per boundary mode: zero, circular,
reflect, symmetric and replicate. The script prints the programs, checks every result
against SciPy's `scipy.ndimage` filter with the matching mode (and the padded image
against `numpy.pad`), prints the largest difference, and writes a PNG grid: one row per
filter, one column per mode, each panel a zoomed bottom-left corner of the image, where
the modes differ. The first row shows what each mode reads outside the image.

Libraries disagree on the names of the modes; this is the mapping the script checks:

    tensorc     scipy.ndimage   numpy.pad
    zero        constant        constant     (zeros)
    circular    wrap            wrap         (periodic)
    reflect     mirror          reflect      (mirror about the edge sample: 2 1 | 0 1 2)
    symmetric   reflect         symmetric    (mirror repeating the edge sample: 1 0 | 0 1 2)
    replicate   nearest         edge         (repeat the edge sample: 0 0 | 0 1 2)

`--quick` uses the image downsampled 4 times (for the tests); the checks are the same.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # write files only; no display needed

import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage
from sklearn.datasets import load_sample_image

import tensorc as tc

# tensorc's boundary mode -> (scipy.ndimage's name, numpy.pad's name) for the same extension.
MODES = {
    "zero": ("constant", "constant"),
    "circular": ("wrap", "wrap"),
    "reflect": ("mirror", "reflect"),
    "symmetric": ("reflect", "symmetric"),
    "replicate": ("nearest", "edge"),
}

PAD = 16                 # pixels shown outside the image in the first row
SIGMA, RADIUS = 5.0, 15  # Gaussian blur: a (2*RADIUS+1)^2 = 31x31 kernel, 3 sigma wide
TOLERANCE = 1e-4         # float32 results against SciPy's (the image is in [0, 1])


@dataclass
class Filter:
    """One row of the figure: a program template (with `{mode}`), its oracle and its look."""

    label: str
    template: str
    oracle: Callable[[np.ndarray, str], np.ndarray]  # (image, tensorc mode) -> expected
    reach: int = 0     # how far from the edge the output depends on the boundary mode
    margin: int = 0    # the output extends the image by this many pixels on each side
    corner: int = 64   # size of the bottom-left corner of the image shown
    style: dict = field(default_factory=dict)  # imshow arguments


FILTERS = [
    Filter(
        label=f"padded by {PAD} px\n(what the mode reads)",
        template=f"""
img: f32[H, W]
padded[h,w] = img[h-{PAD},w-{PAD}]   where h < Hp, w < Wp, img: {{mode}}
""",
        oracle=lambda image, mode: np.pad(image, PAD, mode=MODES[mode][1]),
        margin=PAD, corner=16, style={"cmap": "gray"}),
    Filter(
        label=f"Gaussian blur, sigma {SIGMA:g}\n({2 * RADIUS + 1}x{2 * RADIUS + 1} kernel)",
        template=f"""
img: f32[H, W]
blur[h,w] = img[h+u-{RADIUS},w+v-{RADIUS}] * g[u,v]   where h < H, w < W, img: {{mode}}
""",
        oracle=lambda image, mode: ndimage.gaussian_filter(image, SIGMA, mode=MODES[mode][0],
                                                           radius=RADIUS),
        reach=RADIUS, corner=64, style={"cmap": "gray"}),
    Filter(
        label="Sobel gradient\nmagnitude",
        template="""
img: f32[H, W]
gx[h,w] = img[h-1,w+1] - img[h-1,w-1] + 2*img[h,w+1] - 2*img[h,w-1] + img[h+1,w+1] - img[h+1,w-1]   where h < H, w < W, img: {mode}
gy[h,w] = img[h+1,w-1] - img[h-1,w-1] + 2*img[h+1,w] - 2*img[h-1,w] + img[h+1,w+1] - img[h-1,w+1]   where h < H, w < W, img: {mode}
magnitude[h,w] = sqrt(gx[h,w]^2 + gy[h,w]^2)
""",
        oracle=lambda image, mode: np.hypot(ndimage.sobel(image, axis=1, mode=MODES[mode][0]),
                                            ndimage.sobel(image, axis=0, mode=MODES[mode][0])),
        reach=1, corner=16, style={"cmap": "magma"}),
    Filter(
        label="Laplacian\n(5-point)",
        template="""
img: f32[H, W]
laplacian[h,w] = img[h-1,w] + img[h+1,w] + img[h,w-1] + img[h,w+1] - 4*img[h,w]   where h < H, w < W, img: {mode}
""",
        oracle=lambda image, mode: ndimage.laplace(image, mode=MODES[mode][0]),
        reach=1, corner=16, style={"cmap": "RdBu_r"}),
]


def load_image(quick: bool) -> np.ndarray:
    """china.jpg (427x640) in grey levels in [0, 1], float32; every 4th pixel when quick."""
    rgb = load_sample_image("china.jpg").astype(np.float32) / 255
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.ascontiguousarray(grey[::4, ::4]) if quick else grey


def gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """The 2-D Gaussian weights scipy.ndimage.gaussian_filter uses (normalized to sum 1)."""
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    return np.outer(weights, weights).astype(np.float32)


def apply(template: str, mode: str, image: np.ndarray) -> np.ndarray:
    """Compile the filter for this mode and image size, and run it."""
    inputs = {"img": image}
    if "g[u,v]" in template:
        inputs["g"] = gaussian_kernel(SIGMA, RADIUS)
    height, width = image.shape
    kernel = tc.compile(template.format(mode=mode), Hp=height + 2 * PAD, Wp=width + 2 * PAD,
                        **{name: array.shape for name, array in inputs.items()})
    return kernel(**inputs)


def bottom_left(result: np.ndarray, flt: Filter) -> np.ndarray:
    """The bottom-left `corner` pixels of the image, plus the margin outside it if any."""
    rows = result.shape[0]
    return result[rows - flt.margin - flt.corner:, :flt.margin + flt.corner]


def plot_grid(results: dict[tuple[int, str], np.ndarray], shape: tuple[int, int],
              path: str) -> None:
    """Rows = filters, columns = modes; dashed = the image border, dotted = the band of
    pixels (left of and below it) whose value depends on the boundary mode."""
    figure, axes = plt.subplots(len(FILTERS), len(MODES),
                                figsize=(2.6 * len(MODES) + 1.2, 2.7 * len(FILTERS)))
    for row, flt in enumerate(FILTERS):
        crops = {mode: bottom_left(results[row, mode], flt) for mode in MODES}
        # One colour scale per row, stretched to the reflect panel (1st..99th percentile).
        style = dict(flt.style)
        if style["cmap"] == "RdBu_r":   # signed: centred on zero
            limit = float(np.percentile(np.abs(crops["reflect"]), 99))
            style.update(vmin=-limit, vmax=limit)
        else:
            low, high = np.percentile(crops["reflect"], [1, 99])
            style.update(vmin=float(low), vmax=float(high))
        for column, mode in enumerate(MODES):
            panel = axes[row, column]
            crop = crops[mode]
            panel.imshow(crop, interpolation="nearest", **style)
            bottom, left = crop.shape[0] - flt.margin - 0.5, flt.margin - 0.5
            if flt.margin:
                panel.axhline(bottom, color="cyan", linestyle="--", linewidth=1)
                panel.axvline(left, color="cyan", linestyle="--", linewidth=1)
            if flt.reach:
                panel.axhline(bottom - flt.reach, color="gold", linestyle=":", linewidth=1.2)
                panel.axvline(left + flt.reach, color="gold", linestyle=":", linewidth=1.2)
            panel.set_xticks([])
            panel.set_yticks([])
            if row == 0:
                scipy_name, numpy_name = MODES[mode]
                panel.set_title(f"{mode}\nscipy '{scipy_name}', numpy '{numpy_name}'", fontsize=9)
            if column == 0:
                panel.set_ylabel(f"{flt.label}\n{flt.corner}x{flt.corner} corner", fontsize=9)
    figure.suptitle(f"tensorc boundary modes on the bottom-left corner of china.jpg "
                    f"({shape[0]}x{shape[1]}). Cyan dashed: the image border; gold dotted: "
                    f"outputs left of and below it depend on the mode", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="filters.png", help="path of the PNG grid")
    parser.add_argument("--quick", action="store_true",
                        help="use the image downsampled 4 times (for tests)")
    args = parser.parse_args()

    image = load_image(args.quick)
    print(f"image: china.jpg in grey levels, {image.shape[0]}x{image.shape[1]}, {image.dtype}")
    print("\n==== programs (shown with the reflect mode; the others differ only in it) ====")
    for flt in FILTERS:
        print(f"# {flt.label.replace(chr(10), ' ')}")
        print(tc.parse(flt.template.format(mode="reflect")))
        print()

    results: dict[tuple[int, str], np.ndarray] = {}
    width = max(len(flt.label.split("\n")[0]) for flt in FILTERS)
    print("==== max |tensorc - oracle| (scipy.ndimage with the matching mode; numpy.pad for "
          "the padding) ====")
    print(" " * width + "".join(f"{mode:>11}" for mode in MODES))
    start = time.perf_counter()
    worst = 0.0
    for row, flt in enumerate(FILTERS):
        cells = []
        for mode in MODES:
            result = apply(flt.template, mode, image)
            expected = flt.oracle(image, mode)
            assert result.shape == expected.shape, (flt.label, mode, result.shape)
            difference = float(np.abs(result - expected).max())
            worst = max(worst, difference)
            cells.append(f"{difference:11.1e}")
            results[row, mode] = result
        print(f"{flt.label.split(chr(10))[0]:<{width}}" + "".join(cells))
    elapsed = time.perf_counter() - start
    print(f"{len(results)} filter runs (compile + call + oracle) in {elapsed:.1f} s; "
          f"largest difference {worst:.1e}")
    assert worst < TOLERANCE, f"tensorc disagrees with the oracle by {worst:.1e}"

    # The modes must actually differ near the edge (and agree away from it).
    blur = {mode: results[1, mode] for mode in MODES}
    inner = (slice(RADIUS, -RADIUS), slice(RADIUS, -RADIUS))
    for mode in MODES:
        assert np.allclose(blur[mode][inner], blur["zero"][inner], atol=1e-5), mode
        if mode != "zero":
            assert np.abs(blur[mode] - blur["zero"]).max() > 0.05, mode

    plot_grid(results, image.shape, args.out)
    print(f"wrote the grid (rows: filters, columns: boundary modes) to {args.out}")


if __name__ == "__main__":
    main()
