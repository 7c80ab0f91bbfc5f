"""Few-shot subsets as in BiT's 1/5/10/25-shot results: k examples per class, fixed seed."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from bit_keras.errors import ConfigError


def few_shot(ds, k: int, *, num_classes, seed=0):
    """The examples of `ds` kept by drawing `k` per class with `seed` (dataset order is kept).

    `ds` must be finite and iterate in the same order every time (load_source's sources do):
    the labels are read once to choose the examples, then the choice filters `ds`.
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k (examples per class) must be a positive integer. Received: k={k!r}")
    labels = np.fromiter(ds.map(lambda image, label: label).as_numpy_iterator(), dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(f"labels must lie in [0, {num_classes}). Received: labels from {labels.min()} "
                         f"to {labels.max()}")
    counts = np.bincount(labels, minlength=num_classes)
    short = [f"class {c} has {counts[c]}" for c in range(num_classes) if counts[c] < k]
    if short:
        raise ConfigError(f"{k}-shot needs {k} examples of every class, but {'; '.join(short[:10])}"
                         f"{' ...' if len(short) > 10 else ''}.")
    rng = np.random.default_rng(seed)
    keep = np.zeros(labels.size, bool)
    for c in range(num_classes):
        keep[rng.choice(np.flatnonzero(labels == c), size=k, replace=False)] = True
    keep = tf.constant(keep)
    return (ds.enumerate()
            .filter(lambda index, example: keep[index])
            .map(lambda index, example: example))
