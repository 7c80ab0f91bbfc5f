"""Augmentations that boxes and masks follow exactly: flip, resize, crop (tf.data-compatible).

Each function takes and returns an example dict (see `bit_keras.dense`): `image`, and any
of `boxes` + `classes` (detection) and `mask` (segmentation); other keys pass through.
Boxes are absolute pixels `[ymin, xmin, ymax, xmax]`, max exclusive, so a box covering
columns x0..x1-1 covers W-x1..W-x0-1 after a flip. Random versions take a stateless seed
(a shape-[2] int tensor), so a pipeline is reproducible; pair a dataset with
`tf.data.Dataset.random(seed).batch(2)` to give each example its own.
"""

from __future__ import annotations

import tensorflow as tf

from bit_keras.errors import ConfigError


def _shape(image):
    shape = tf.shape(image)
    return shape[0], shape[1]


def horizontal_flip(example: dict) -> dict:
    """Mirrors image, mask and boxes left to right."""
    example = dict(example)
    width = tf.cast(_shape(example["image"])[1], tf.float32)
    example["image"] = tf.reverse(example["image"], axis=[1])
    if "mask" in example:
        example["mask"] = tf.reverse(example["mask"], axis=[1])
    if "boxes" in example:
        ymin, xmin, ymax, xmax = tf.unstack(tf.cast(example["boxes"], tf.float32), 4, axis=-1)
        example["boxes"] = tf.stack([ymin, width - xmax, ymax, width - xmin], axis=-1)
    return example


def random_horizontal_flip(example: dict, seed, probability: float = 0.5) -> dict:
    """`horizontal_flip` with the given probability, drawn from a stateless `seed`."""
    flip = tf.random.stateless_uniform([], seed) < probability
    flipped = horizontal_flip(example)
    return {key: tf.cond(flip, lambda v=flipped[key]: v, lambda v=value: tf.convert_to_tensor(v))
            if key in ("image", "mask", "boxes") else value for key, value in example.items()}


def resize(example: dict, size) -> dict:
    """Resizes to `size` (height, width): image bilinear, mask nearest, boxes scaled.

    The image stays uint8 (rounded), as decoded images are. Mask pixels take the label of
    the source pixel whose centre is nearest (`tf.image.resize` nearest, half-pixel centres).
    """
    height, width = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height < 1 or width < 1:
        raise ConfigError(f"resize needs a positive size. Received: size={size}.")
    example = dict(example)
    old_height, old_width = _shape(example["image"])
    image = tf.image.resize(tf.cast(example["image"], tf.float32), [height, width], antialias=True)
    example["image"] = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), example["image"].dtype)
    if "mask" in example:
        mask = tf.convert_to_tensor(example["mask"])
        example["mask"] = tf.image.resize(mask[..., None], [height, width], method="nearest")[..., 0]
    if "boxes" in example:
        scale = tf.stack([height / tf.cast(old_height, tf.float32), width / tf.cast(old_width, tf.float32)] * 2)
        example["boxes"] = tf.cast(example["boxes"], tf.float32) * scale
    return example


def crop(example: dict, top, left, height: int, width: int, min_visible: float = 0.0) -> dict:
    """Cuts the window [top, top+height) x [left, left+width); boxes clipped to it.

    A box that keeps no area inside the window (or less than `min_visible` of its own
    area) is dropped with its class; `dropped_boxes` counts them, added to any earlier count.
    """
    example = dict(example)
    example["image"] = example["image"][top:top + height, left:left + width]
    if "mask" in example:
        example["mask"] = example["mask"][top:top + height, left:left + width]
    if "boxes" in example:
        boxes = tf.cast(example["boxes"], tf.float32)
        offset = tf.cast(tf.stack([top, left, top, left]), tf.float32)
        limit = tf.cast(tf.stack([height, width, height, width]), tf.float32)
        clipped = tf.clip_by_value(boxes - offset, 0.0, limit)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        kept_area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        keep = (kept_area > 0) & (kept_area >= min_visible * area)
        example["boxes"] = tf.boolean_mask(clipped, keep)
        example["classes"] = tf.boolean_mask(example["classes"], keep)
        dropped = tf.reduce_sum(tf.cast(~keep, tf.int32))
        example["dropped_boxes"] = example.get("dropped_boxes", 0) + dropped
    return example


def crop_offsets(seed, image_height, image_width, height: int, width: int):
    """The (top, left) a `random_crop` with this seed takes (uniform over valid windows)."""
    top = tf.random.stateless_uniform([], seed, 0, image_height - height + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seed + [0, 1], 0, image_width - width + 1, dtype=tf.int32)
    return top, left


def random_crop(example: dict, seed, size, min_visible: float = 0.0) -> dict:
    """A `crop` of `size` (height, width) at a window drawn from a stateless `seed`.

    The image must be at least `size` (resize first, as detection pipelines scale-jitter then crop).
    """
    height, width = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    image_height, image_width = _shape(example["image"])
    tf.debugging.assert_greater_equal(image_height, height, "random_crop: image shorter than the crop")
    tf.debugging.assert_greater_equal(image_width, width, "random_crop: image narrower than the crop")
    top, left = crop_offsets(tf.convert_to_tensor(seed, tf.int64), image_height, image_width, height, width)
    return crop(example, top, left, height, width, min_visible=min_visible)
