"""Fine-tune an exported BiT backbone with tf-keras, tensorflow-hub and `model.fit`.

The model and the training loop are plain TensorFlow, tf-keras and tensorflow-hub (what a
TF Hub user has): the export is one `hub.KerasLayer(DIR, trainable=True)`, read with its
plain-JSON metadata. The HyperRule's numbers (steps, warm-up, decays, learning rate) come
from `bit_keras.hyperrule`, the rule the library itself fine-tunes with.

    # A real backbone (export once; downloads the checkpoint once):
    bit_keras export --variant m-r50x1 --output /tmp/bit_m_r50x1
    python examples/finetune_hub_layer.py --export-dir /tmp/bit_m_r50x1 --image-size 128

    # Offline, about a minute on 2 CPU cores: exports a tiny random-weight BiT first
    python examples/finetune_hub_layer.py

Data: the 8x8 handwritten digits that ship with scikit-learn (1797 images, offline),
upscaled to --image-size and given as float32 RGB in [0, 1], TF Hub's image convention.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile

import numpy as np


def export_tiny_random_backbone(directory):
    """A BiT with one unit per block and random weights: fast, but not a pre-trained model."""
    import bit_keras
    from bit_keras.export import export_model

    model = bit_keras.BiTBackbone(block_units=(1, 1, 1, 1), width=1)
    export_model(model, directory, metadata={"variant": "tiny-random",
                                             "checkpoint": {"source": None, "random_weights": True}})
    return directory


def digits(image_size, seed=0):
    """(train, test) digits as float32 RGB images in [0, 1] at image_size x image_size."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype("float32")[..., None].repeat(3, axis=-1)
    images = tf.image.resize(images, (image_size, image_size)).numpy()
    order = np.random.default_rng(seed).permutation(len(images))
    split = int(0.8 * len(images))
    train, test = order[:split], order[split:]
    return (images[train], data.target[train]), (images[test], data.target[test])


def hyperrule_schedule(tf_keras, rule):
    """bit_keras's HyperRule learning rate (warm-up, /10 at each decay) as a tf-keras schedule."""
    import tensorflow as tf
    from bit_keras.learning_rates import learning_rate

    class HyperRuleSchedule(tf_keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return learning_rate(tf.cast(step, tf.float32), rule.base_learning_rate, rule.warmup_steps,
                                 rule.decay_boundaries, minimum=tf.minimum, where=tf.where)

        def get_config(self):
            return {}

    return HyperRuleSchedule()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export-dir", default=None,
                        help="A `bit_keras export` SavedModel. Default: export a tiny random-weight BiT first.")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60, help="Optimizer updates in all.")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="Peak rate. Default: the HyperRule's 0.003 x batch/512 from the export's metadata "
                             "(0.03 for the tiny random backbone, which has no pre-trained features to keep).")
    parser.add_argument("--freeze", action="store_true", help="trainable=False: a linear probe on frozen features.")
    args = parser.parse_args(argv)

    import tensorflow as tf
    import tensorflow_hub as hub
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory(prefix="bit_hub_example_") as scratch:  # removed again at the end
        export_dir = args.export_dir or export_tiny_random_backbone(os.path.join(scratch, "tiny_bit"))
        return _fine_tune(args, export_dir, tf, hub, tf_keras)


def _fine_tune(args, export_dir, tf, hub, tf_keras):

    # Plain JSON: no bit_keras needed to read what the export is and how to fine-tune it.
    with open(os.path.join(export_dir, "assets", "bit_keras.json")) as stream:
        meta = json.load(stream)
    random_weights = bool((meta.get("checkpoint") or {}).get("random_weights"))

    from bit_keras.hyperrule import hyperrule, shorten

    (x_train, y_train), (x_test, y_test) = digits(args.image_size)
    backbone = hub.KerasLayer(export_dir, trainable=not args.freeze, name="bit")
    model = tf_keras.Sequential([
        tf_keras.Input((args.image_size, args.image_size, 3)),
        backbone,
        tf_keras.layers.Dense(10, kernel_initializer="zeros", name="head"),  # BiT starts from a zero head
    ])
    # Whole epochs of (at most) one pass over the data, `total_steps` updates in all.
    epochs = -(-args.steps // max(1, len(x_train) // args.batch_size))
    steps_per_epoch = max(1, args.steps // epochs)
    rule = shorten(hyperrule(len(x_train), (args.image_size, args.image_size), batch_size=args.batch_size),
                   epochs * steps_per_epoch)
    if args.learning_rate or random_weights:  # the rule's rate is for pre-trained features
        rule = dataclasses.replace(rule, base_learning_rate=args.learning_rate or 0.03)
    print(f"Backbone: {meta['variant']} ({meta['num_features']} features), peak learning rate "
          f"{rule.base_learning_rate:g}, {rule.total_steps} updates (warm-up {rule.warmup_steps}, "
          f"/10 at {list(rule.decay_boundaries)})")
    schedule = hyperrule_schedule(tf_keras, rule)
    model.compile(optimizer=tf_keras.optimizers.SGD(schedule, momentum=rule.momentum),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    before = [v.numpy().copy() for v in backbone.variables]
    train = (tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(len(x_train), seed=0)
             .repeat().batch(args.batch_size, drop_remainder=True).prefetch(2))
    model.fit(train, epochs=epochs, steps_per_epoch=steps_per_epoch,
              validation_data=(x_test, y_test), verbose=2)
    changed = sum(not np.array_equal(b, v.numpy()) for b, v in zip(before, backbone.variables))
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"Backbone variables changed by fine-tuning: {changed} of {len(before)}")
    print(f"Test accuracy: {accuracy:.3f} (chance: 0.100)")
    return {"accuracy": accuracy, "backbone_variables_changed": changed, "backbone_variables": len(before)}


if __name__ == "__main__":
    main()
