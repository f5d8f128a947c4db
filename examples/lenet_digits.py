"""Train a LeNet-5-style CNN, built from tensorc.nn layers, on scikit-learn's handwritten digits.

Run:  python examples/lenet_digits.py [--out lenet_digits.png] [--seed 0] [--epochs 30] [--quick]

The digits are scikit-learn's bundled 8x8 images (1,797 of them, no download). The script
prints the model (every layer is a tensorc program) and its summary, trains with
`nn.fit` (a progress line per epoch on stderr), prints the time per epoch, and writes the
training and validation loss and accuracy per epoch to a PNG. The split is fixed and the
seed fixes the initial weights and the order of the minibatches, so a run is repeatable.
The full run takes about 10 s on a 2-core CPU and must reach at least 97% test accuracy
(seed 0 gives about 99%). `--quick` trains 2 epochs on 300 images, for the tests; it checks
the numbers it prints but not the accuracy.
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")  # write files only; no display needed

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from tensorc import nn

SPLIT_SEED = 0          # the train/test split never changes with --seed
TEST_FRACTION = 0.25    # 450 test images, 1,347 training images
REQUIRED_ACCURACY = 0.97
QUICK_TRAIN_IMAGES = 300
QUICK_EPOCHS = 2


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits as float32 [N, 1, 8, 8] images standardized with the training statistics."""
    digits = load_digits()
    images = digits.images.astype(np.float32)[:, None]   # pixel values 0..16
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels)
    mean, std = x_train.mean(), x_train.std()
    return (x_train - mean) / std, (x_test - mean) / std, y_train, y_test


def lenet() -> nn.Sequential:
    """LeNet-5's shape scaled to 8x8 inputs: two 'same' 3x3 convolutions with 2x2 max pooling
    (8x8 -> 4x4 -> 2x2), then fully connected layers 128 -> 120 -> 84 -> 10."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )


def plot_history(history: dict[str, list[float]], test_accuracy: float, path: str) -> None:
    """Loss and accuracy per epoch, training and validation (the test set), side by side."""
    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axes.plot(epochs, history["loss"], "o-", label="training")
    loss_axes.plot(epochs, history["val_loss"], "s-", label="validation (test set)")
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log", title="Loss")
    accuracy_axes.plot(epochs, history["accuracy"], "o-", label="training")
    accuracy_axes.plot(epochs, history["val_accuracy"], "s-", label="validation (test set)")
    accuracy_axes.axhline(REQUIRED_ACCURACY, color="gray", linestyle=":", label="97%")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(f"LeNet-style CNN in tensorc.nn on the 8x8 digits: "
                    f"test accuracy {test_accuracy:.2%}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="lenet_digits.png", help="path of the PNG of the curves")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initial weights and the minibatch order")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_EPOCHS} epochs on {QUICK_TRAIN_IMAGES} images (for tests)")
    args = parser.parse_args()

    x_train, x_test, y_train, y_test = load_data()
    epochs = args.epochs
    if args.quick:
        x_train, y_train, epochs = x_train[:QUICK_TRAIN_IMAGES], y_train[:QUICK_TRAIN_IMAGES], \
            QUICK_EPOCHS
    print(f"digits: {len(x_train)} training and {len(x_test)} test images of "
          f"{x_train.shape[2]}x{x_train.shape[3]} pixels, {x_train.dtype}; seed {args.seed}")

    nn.manual_seed(args.seed)
    model = lenet()
    print("\n==== model (each layer is a tensorc program) ====")
    print(model)
    print("\n==== summary ====")
    print(model.summary(x_train.shape[1:]))

    loss_function = nn.CrossEntropyLoss()
    optimizer = nn.Adam(model.parameters(), lr=args.lr)
    print(f"\n==== training: Adam (lr {args.lr}), batch size {args.batch_size}, "
          f"{epochs} epochs ====", flush=True)
    start = time.perf_counter()
    history = nn.fit(model, loss_function, optimizer, x_train, y_train, epochs=epochs,
                     batch_size=args.batch_size, validation=(x_test, y_test), seed=args.seed)
    elapsed = time.perf_counter() - start
    print(f"trained in {elapsed:.1f} s: {elapsed / epochs:.2f} s per epoch "
          f"({-(-len(x_train) // args.batch_size)} steps, then validation)")

    # Check the figures: `evaluate` against the history and against the logits by hand.
    metrics = nn.evaluate(model, loss_function, x_test, y_test)
    model.eval()
    by_hand = float(np.mean(model(x_test).argmax(axis=1) == y_test))
    assert abs(metrics["accuracy"] - by_hand) < 1e-12, (metrics, by_hand)
    assert abs(metrics["accuracy"] - history["val_accuracy"][-1]) < 1e-12, (metrics, history)
    assert all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0], \
        f"the training loss did not go down: {history['loss']}"

    plot_history(history, metrics["accuracy"], args.out)
    print(f"wrote the loss and accuracy curves to {args.out}")
    if not args.quick:
        assert metrics["accuracy"] >= REQUIRED_ACCURACY, \
            f"test accuracy {metrics['accuracy']:.2%} is below {REQUIRED_ACCURACY:.0%}"
    print(f"test accuracy: {metrics['accuracy']:.2%} ({round(metrics['accuracy'] * len(y_test))}"
          f"/{len(y_test)}, test loss {metrics['loss']:.4f}, seed {args.seed})")


if __name__ == "__main__":
    main()
