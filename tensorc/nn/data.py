"""Minibatches over arrays and a training loop with a progress line and per-epoch metrics."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

import numpy as np

from .losses import Loss
from .module import Module
from .optim import Optimizer

__all__ = ["minibatches", "accuracy", "evaluate", "fit", "train_step"]


def minibatches(*arrays: Any, batch_size: int = 32, shuffle: bool = True, seed: Any = None,
                drop_last: bool = False) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield tuples of matching slices of `arrays` (split along the first dimension).

    With `shuffle`, the order is a permutation drawn from `seed` (an int or a Generator).
    """
    if not arrays:
        raise ValueError("minibatches needs at least one array")
    arrays = tuple(np.asarray(a) for a in arrays)
    count = len(arrays[0])
    if any(len(a) != count for a in arrays):
        raise ValueError("minibatches: arrays differ in length: "
                         + ", ".join(str(len(a)) for a in arrays))
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if shuffle:
        generator = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        order = generator.permutation(count)
    else:
        order = np.arange(count)
    stop = count - count % batch_size if drop_last else count
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        yield tuple(a[index] for a in arrays)


def accuracy(logits: Any, labels: Any) -> float:
    """Fraction of rows whose arg-max equals the label (or the target row's arg-max)."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if labels.ndim == logits.ndim:
        labels = labels.argmax(axis=-1)
    return float(np.mean(logits.argmax(axis=-1) == labels))


def train_step(model: Module, loss_function: Loss, optimizer: Optimizer, x: Any,
               y: Any) -> tuple[float, np.ndarray]:
    """One step: forward, loss, backward through the model, optimizer update."""
    optimizer.zero_grad()
    output = model(x)
    loss = loss_function(output, y)
    model.backward(loss_function.backward(), input_grad=False)
    optimizer.step()
    return loss, output


def evaluate(model: Module, loss_function: Loss, x: Any, y: Any,
             batch_size: int = 256) -> dict[str, float]:
    """Mean loss (and accuracy, for a classifier) over `x` in eval mode; restores the mode."""
    was_training = model.training
    model.eval()
    total_loss, total_correct, count = 0.0, 0.0, 0
    classify = _is_classifier(loss_function)
    try:
        for xb, yb in minibatches(x, y, batch_size=batch_size, shuffle=False):
            output = model(xb)
            total_loss += loss_function(output, yb) * len(xb)
            if classify:
                total_correct += accuracy(output, yb) * len(xb)
            count += len(xb)
    finally:
        model.train(was_training)
    metrics = {"loss": total_loss / count}
    if classify:
        metrics["accuracy"] = total_correct / count
    return metrics


def _is_classifier(loss_function: Loss) -> bool:
    from .losses import CrossEntropyLoss
    return isinstance(loss_function, CrossEntropyLoss)


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / max(total, 1))
    return "[" + "=" * filled + (">" if filled < width else "") + " " * (width - filled - 1) + "]"


def fit(model: Module, loss_function: Loss, optimizer: Optimizer, x: Any, y: Any, *,
        epochs: int = 1, batch_size: int = 32, validation: tuple[Any, Any] | None = None,
        seed: Any = 0, verbose: bool = True, stream: TextIO | None = None,
        max_steps_per_epoch: int | None = None) -> dict[str, list[float]]:
    """Train `model` with minibatches of (x, y); return the history of per-epoch metrics.

    Prints one progress line per epoch on stderr (updated in place): the bar, the step,
    the running loss and accuracy, the time; then the epoch's summary and, given
    `validation=(x_val, y_val)`, the validation loss and accuracy.
    """
    stream = stream or sys.stderr
    generator = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    x, y = np.asarray(x), np.asarray(y)
    steps = -(-len(x) // batch_size)
    if max_steps_per_epoch is not None:
        steps = min(steps, max_steps_per_epoch)
    classify = _is_classifier(loss_function)
    history: dict[str, list[float]] = {"loss": []}
    if classify:
        history["accuracy"] = []
    if validation is not None:
        history["val_loss"] = []
        if classify:
            history["val_accuracy"] = []
    interactive = getattr(stream, "isatty", lambda: False)()
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        total_loss, total_correct, count = 0.0, 0.0, 0
        for step, (xb, yb) in enumerate(minibatches(x, y, batch_size=batch_size, seed=generator),
                                        start=1):
            loss, output = train_step(model, loss_function, optimizer, xb, yb)
            total_loss += loss * len(xb)
            count += len(xb)
            line = (f"epoch {epoch}/{epochs} {_bar(step, steps)} {step}/{steps} "
                    f"loss {total_loss / count:.4f}")
            if classify:
                total_correct += accuracy(output, yb) * len(xb)
                line += f" acc {total_correct / count:.4f}"
            if verbose and (interactive or step == steps):
                stream.write("\r" + line + f" {time.perf_counter() - start:.1f}s")
                stream.flush()
            if step >= steps:
                break
        history["loss"].append(total_loss / count)
        if classify:
            history["accuracy"].append(total_correct / count)
        if validation is not None:
            metrics = evaluate(model, loss_function, *validation, batch_size=max(batch_size, 256))
            history["val_loss"].append(metrics["loss"])
            if classify:
                history["val_accuracy"].append(metrics["accuracy"])
            if verbose:
                stream.write(f" - val_loss {metrics['loss']:.4f}"
                             + (f" val_acc {metrics['accuracy']:.4f}" if classify else ""))
        if verbose:
            stream.write("\n")
            stream.flush()
    return history
