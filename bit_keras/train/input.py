"""Upstream input pipeline: Inception crop + flip at one resolution, multi-hot targets, resumable.

The example stream is a pure function of (source, seed, position): epoch `e` is the source
shuffled with seed (seed, e), and every example's crop and flip come from stateless ops
seeded by its index in the stream. A restart at update `s` therefore rebuilds the stream
from epoch floor(s * B / N) and skips only the examples of that epoch already used, and
sees exactly the batches the interrupted run would have seen (`start_example`).
"""

from __future__ import annotations

import tensorflow as tf

DEFAULT_SHUFFLE_BUFFER = 10_000  # decoded images: ~4 GB at ImageNet sizes
CROP_AREA = (0.08, 1.0)        # Inception-style crop: 8%-100% of the image area ...
CROP_ASPECT = (3 / 4, 4 / 3)   # ... at an aspect ratio between 3:4 and 4:3


def inception_crop(image, size, seed, *, area_range=CROP_AREA, aspect_range=CROP_ASPECT):
    """A random crop of random area and aspect ratio, resized to `size` x `size` (float [0, 1])."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=area_range[0], aspect_ratio_range=aspect_range, area_range=area_range,
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, crop_size)
    image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, [size, size], method="bilinear")
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0), [size, size, 3])


def targets(label, num_classes):
    """Float targets [num_classes]: one-hot for a class index, multi-hot for a vector of indices.

    Padding entries (< 0) in a vector of indices are ignored, so padded label lists work.
    """
    label = tf.cast(label, tf.int64)
    if label.shape.rank == 0:
        return tf.one_hot(label, num_classes, dtype=tf.float32)
    label = tf.boolean_mask(label, label >= 0)
    return tf.minimum(tf.reduce_sum(tf.one_hot(label, num_classes, dtype=tf.float32), axis=0), 1.0)


def example_stream(source, *, train_size, seed=0, start_example=0, shuffle_buffer=DEFAULT_SHUFFLE_BUFFER,
                   max_epochs=None):
    """(index, image, label) for every example from `start_example` on, epoch after epoch.

    Only the partly-used epoch is skipped into; whole epochs before it are never read.
    Per-epoch shuffle seeds are tensors, which tf.data refuses while TensorFlow's global seed
    is exactly 0; `loop.train` clears the global seed for that reason.
    """
    start_epoch, offset = divmod(int(start_example), int(train_size))
    epochs = tf.data.Dataset.range(start_epoch, max_epochs if max_epochs is not None else 2 ** 62)

    def one_epoch(epoch):
        ds = source
        if shuffle_buffer and shuffle_buffer > 1:
            ds = ds.shuffle(shuffle_buffer, seed=_epoch_seed(seed, epoch), reshuffle_each_iteration=False)
        first = tf.where(epoch == start_epoch, tf.constant(offset, tf.int64), tf.constant(0, tf.int64))
        indices = tf.data.Dataset.range(epoch * train_size + first, (epoch + 1) * train_size)
        return tf.data.Dataset.zip((indices, ds.skip(first)))

    return epochs.flat_map(one_epoch).map(lambda index, example: (index, *example))


def upstream_dataset(source, *, num_classes, train_size, image_size, batch_size, seed=0, start_example=0,
                     flip=True, shuffle_buffer=DEFAULT_SHUFFLE_BUFFER, crop_area=CROP_AREA,
                     input_context=None, augment=None):
    """Batches of (float32 images [B, size, size, 3] in [0, 1], float32 targets [B, num_classes]).

    `batch_size` is the batch of this input pipeline (the global batch with one pipeline, a
    host's share with several); with an `input_context` each pipeline keeps every n-th
    example of the common stream, so hosts never see the same image in one step.
    `augment`: (layers, magnitude) of RandAugment after the crop and flip (`randaugment`), or None.
    """
    stream = example_stream(source, train_size=train_size, seed=seed, start_example=start_example,
                            shuffle_buffer=shuffle_buffer)
    if input_context is not None and input_context.num_input_pipelines > 1:
        stream = stream.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)

    rand_augment = randaugment(*augment, seed=seed) if augment else None

    def prepare(index, image, label):
        crop_seed = tf.stack([tf.cast(seed, tf.int64), index])
        image = inception_crop(image, image_size, crop_seed, area_range=crop_area)
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=crop_seed + [0, 2 ** 40])
        if rand_augment is not None:
            image = tf.clip_by_value(tf.cast(rand_augment(image), tf.float32), 0.0, 1.0)
        return image, targets(label, num_classes)

    ds = stream.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def eval_dataset(source, *, num_classes, image_size, batch_size, num_examples, input_context=None):
    """Held-out batches (float32 images [b, size, size, 3] in [0, 1], float32 one-hot targets, float32 weights).

    The fine-tuning evaluation pipeline (`bit_keras.data.preprocess.eval_pipeline`: resize to
    the crop, no augmentation) at the training crop size. With several input pipelines each
    keeps every n-th example, so the split is counted once. The end is padded with blank
    examples of weight 0 until every replica of every pipeline gets the same number of full
    batches: no replica waits on an empty batch, shapes stay static for TPUs, and the weights
    make each real example count exactly once.
    """
    import types

    from bit_keras.data.preprocess import eval_pipeline
    from bit_keras.errors import ConfigError

    if source.element_spec[1].shape.rank != 0:
        raise ConfigError("Held-out evaluation takes one class index per example; this split has label vectors. "
                          "Pass --eval-split none.")
    pipelines, pipeline, replicas = 1, 0, 1
    if input_context is not None:
        pipelines, pipeline = input_context.num_input_pipelines, input_context.input_pipeline_id
        replicas = max(1, input_context.num_replicas_in_sync // pipelines)
    mine = len(range(pipeline, int(num_examples), pipelines))
    group = int(batch_size) * replicas
    padded = -(-len(range(0, int(num_examples), pipelines)) // group) * group   # pipeline 0 holds the most
    blank = source.take(1).map(lambda image, label: (tf.zeros_like(image), tf.zeros_like(label)))
    if pipelines > 1:
        source = source.shard(pipelines, pipeline)
    rule = types.SimpleNamespace(crop=int(image_size))   # what eval_pipeline reads of a HyperRule
    batches = eval_pipeline(source.concatenate(blank.repeat(padded - mine)), rule, batch_size=int(batch_size),
                            num_classes=int(num_classes))
    weights = tf.data.Dataset.range(padded).map(lambda i: tf.cast(i < mine, tf.float32)).batch(int(batch_size))
    return tf.data.Dataset.zip((batches, weights)).map(lambda batch, weight: (batch[0], batch[1], weight))


def randaugment(layers, magnitude, *, seed=0):
    """Keras' `RandAugment` for images in [0, 1], `layers` operations per image at `magnitude` (0-30).

    Keras 3.15 takes one normalised strength `factor` in [0, 1] instead of the paper's
    integer magnitude, and its sub-layers read it in their own units, each drawing a
    strength from [0, factor] per call: rotation by up to factor * 360 degrees (one way),
    shear and translation up to factor (of the side), brightness shift up to factor of the
    value range, contrast x [1, 1 + factor], posterization to max(1, int(8 * factor)) bits.
    Those ranges are not the paper's (e.g. +-30 degrees of rotation at its magnitude 10).
    We map the paper's magnitude scale, which ends at 30, linearly: factor = magnitude / 30,
    so magnitude 10 -> 0.33 and 15 -> 0.5 (Keras' default). Applied per image (before
    batching), so every image draws its own operations. Its random state is the layer's own
    seed generator, not the example's position: a resumed run sees other augmentations than
    the interrupted one would have.
    """
    import keras

    return keras.layers.RandAugment(value_range=(0.0, 1.0), num_ops=int(layers), factor=float(magnitude) / 30.0,
                                    seed=seed)


def _epoch_seed(seed, epoch):
    return tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)
