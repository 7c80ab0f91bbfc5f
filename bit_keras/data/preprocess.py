"""BiT-HyperRule input pipelines: resize, random crop, random flip, MixUp; eval resizes to the crop.

Images come out float32 in [0, 1] (the models rescale to BiT's [-1, 1] inside) with one-hot
float32 labels, so MixUp's soft labels and plain labels share one loss. Randomness is
stateless and derived from `seed`: a fixed seed gives the same stream every run.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bit_keras.data.mixup import mixup
from bit_keras.errors import ConfigError

DEFAULT_SHUFFLE_BUFFER = 10_000


def train_pipeline(ds, rule, *, batch_size, num_classes, flip=True, crop=True, mixup_alpha=None, seed=None,
                   shuffle_buffer=DEFAULT_SHUFFLE_BUFFER, repeat=True):
    """Batches of (float32 [B, crop, crop, 3] in [0, 1], float32 one-hot [B, num_classes]) for training.

    Resize to rule.resize, random-crop rule.crop (crop=False: resize straight to rule.crop),
    flip left-right with probability 1/2 (flip=False for tasks where mirroring changes the
    label), then MixUp with alpha `mixup_alpha` (None: rule.mixup_alpha; 0: off).
    Incomplete final batches are dropped so every step sees `batch_size` examples.
    """
    _check_inputs(ds, batch_size, num_classes)
    alpha = float(rule.mixup_alpha if mixup_alpha is None else mixup_alpha)
    if alpha < 0:
        raise ConfigError(f"mixup_alpha must be >= 0 (0 turns MixUp off). Received: mixup_alpha={alpha}")
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    # One random int64 per example; stateless ops derive crop/flip/MixUp seeds from it.
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed)))

    def augment(example, example_seed):
        image, label = example
        image = _to_float(image)
        if crop:
            image = tf.image.resize(image, [rule.resize, rule.resize])
            image = tf.image.stateless_random_crop(image, [rule.crop, rule.crop, 3], seed=_seed(example_seed, 1))
        else:
            image = tf.image.resize(image, [rule.crop, rule.crop])
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=_seed(example_seed, 2))
        return tf.clip_by_value(image, 0.0, 1.0), _one_hot(label, num_classes), example_seed

    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True)
    if alpha > 0:
        def mix(images, labels, seeds):
            images, labels = mixup(images, labels, alpha, _seed(seeds[0], 3))
            return tf.clip_by_value(images, 0.0, 1.0), labels  # rounding may step 1 ulp outside

        ds = ds.map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda images, labels, seeds: (images, labels))
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_pipeline(ds, rule, *, batch_size, num_classes):
    """Batches of (float32 [B, crop, crop, 3] in [0, 1], one-hot labels): resize to rule.crop, no augmentation.

    Keeps the final partial batch so every example is scored.
    """
    _check_inputs(ds, batch_size, num_classes)

    def prepare(image, label):
        image = tf.image.resize(_to_float(image), [rule.crop, rule.crop])
        return tf.clip_by_value(image, 0.0, 1.0), _one_hot(label, num_classes)

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE)


def with_known_length(ds):
    """`ds` with its length known to tf.data, counted once when it cannot tell (a folder drops what fails to decode).

    Keras reads a dataset of unknown length to its end and then warns "Your input ran out of
    data; interrupting training"; with the length known it stops there, and says nothing.
    """
    if int(ds.cardinality()) >= 0:
        return ds
    count = int(ds.reduce(np.int64(0), lambda count, _: count + 1))
    return ds.apply(tf.data.experimental.assert_cardinality(count))


def _check_inputs(ds, batch_size, num_classes):
    # Checked before tracing: an error raised inside `map` comes back wrapped by autograph.
    image_spec = ds.element_spec[0] if isinstance(ds.element_spec, tuple) else None
    if image_spec is not None and image_spec.dtype != tf.uint8:
        raise ConfigError(f"Pipelines take uint8 images (what load_source yields). Received: {image_spec.dtype}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer. Received: num_classes={num_classes!r}")


def _to_float(image):
    return tf.cast(image, tf.float32) / 255.0


def _one_hot(label, num_classes):
    label = tf.cast(label, tf.int64)
    check = tf.debugging.assert_less(label, tf.constant(num_classes, tf.int64),
                                     message=f"label out of range for num_classes={num_classes}")
    with tf.control_dependencies([check]):
        return tf.one_hot(label, num_classes, dtype=tf.float32)


def _seed(value, stream):
    return tf.stack([tf.cast(value, tf.int64), tf.constant(stream, tf.int64)])
