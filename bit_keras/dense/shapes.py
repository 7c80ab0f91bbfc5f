"""A seeded synthetic shapes dataset: rectangles, ellipses and triangles with boxes and masks.

Offline, NumPy only, a few milliseconds per image: for tests, the demo and the dense
normalization study. Objects never overlap, so every box is exactly the tight box of its
object's pixels in the mask (and stays so under the augmentations in `augment.py`).
"""

from __future__ import annotations

import numpy as np

from bit_keras.errors import ConfigError

SHAPE_CLASSES = ("rectangle", "ellipse", "triangle")
# One colour per class whatever the seed (each object varies it by up to 20 per channel): the training
# and test splits are drawn with different seeds, and a colour drawn per seed taught a detector
# colours that the held-out images did not have.
CLASS_COLORS = {"rectangle": (225, 70, 70), "ellipse": (70, 210, 90), "triangle": (90, 120, 240)}
MIN_SIDE = 6  # pixels: the smallest object drawn


def _draw(kind: str, height: int, width: int) -> np.ndarray:
    """A boolean [height, width] footprint of one shape filling its box."""
    ys, xs = np.mgrid[0:height, 0:width]
    if kind == "rectangle":
        return np.ones((height, width), bool)
    if kind == "ellipse":
        cy, cx = (height - 1) / 2, (width - 1) / 2
        return ((ys - cy) / (height / 2)) ** 2 + ((xs - cx) / (width / 2)) ** 2 <= 1.0
    # An isosceles triangle with its apex on the top edge and its base on the bottom row.
    half = (width / 2) * (ys + 1) / height
    return np.abs(xs + 0.5 - width / 2) <= np.maximum(half, 0.5)


def _tight_box(footprint: np.ndarray, top: int, left: int) -> list:
    rows = np.flatnonzero(footprint.any(axis=1))
    cols = np.flatnonzero(footprint.any(axis=0))
    return [top + rows[0], left + cols[0], top + rows[-1] + 1, left + cols[-1] + 1]


def synthetic_shapes(num_examples: int, image_size: int = 64, max_objects: int = 3, seed: int = 0,
                     classes=SHAPE_CLASSES) -> list:
    """Returns `num_examples` dicts: image, boxes (yxyx pixels), classes, mask (0 = background).

    The mask holds `class + 1` per object pixel, so segmentation has `len(classes) + 1`
    labels; detection classes are 0-based. Same seed, same data.
    """
    if num_examples < 0 or image_size < 2 * MIN_SIDE or max_objects < 1:
        raise ConfigError(f"synthetic_shapes needs num_examples >= 0, image_size >= {2 * MIN_SIDE} and "
                          f"max_objects >= 1. Received: num_examples={num_examples}, "
                          f"image_size={image_size}, max_objects={max_objects}.")
    unknown = set(classes) - set(SHAPE_CLASSES)
    if unknown:
        raise ConfigError(f"Unknown shape classes {sorted(unknown)}; choose from {SHAPE_CLASSES}.")
    rng = np.random.default_rng(seed)
    palette = np.array([CLASS_COLORS[name] for name in classes])
    examples = []
    for _ in range(num_examples):
        background = rng.integers(0, 40, 3)
        image = np.empty((image_size, image_size, 3), np.uint8)
        image[:] = background + rng.integers(0, 12, (image_size, image_size, 3))
        mask = np.zeros((image_size, image_size), np.int32)
        occupied = np.zeros((image_size, image_size), bool)
        boxes, labels = [], []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _attempt in range(20):
                height, width = rng.integers(MIN_SIDE, image_size // 2 + 1, 2)
                top, left = rng.integers(0, image_size - height + 1), rng.integers(0, image_size - width + 1)
                if not occupied[max(top - 1, 0):top + height + 1, max(left - 1, 0):left + width + 1].any():
                    break
            else:
                continue
            label = int(rng.integers(len(classes)))
            footprint = _draw(classes[label], int(height), int(width))
            window = (slice(top, top + height), slice(left, left + width))
            image[window][footprint] = np.clip(palette[label] + rng.integers(-20, 21, 3), 0, 255)
            mask[window][footprint] = label + 1
            occupied[window] = True
            boxes.append(_tight_box(footprint, top, left))
            labels.append(label)
        examples.append({"image": image, "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
                         "classes": np.asarray(labels, np.int32), "mask": mask})
    return examples


def as_dataset(examples, keys=("image", "boxes", "classes", "mask")):
    """A tf.data.Dataset of the examples' `keys` (boxes of any count per image)."""
    import tensorflow as tf

    specs = {"image": tf.TensorSpec([None, None, 3], tf.uint8), "boxes": tf.TensorSpec([None, 4], tf.float32),
             "classes": tf.TensorSpec([None], tf.int32), "mask": tf.TensorSpec([None, None], tf.int32)}
    examples = list(examples)
    return tf.data.Dataset.from_generator(lambda: ({k: e[k] for k in keys} for e in examples),
                                          output_signature={k: specs[k] for k in keys})
