"""Reads TensorBoard event files back with TensorFlow alone, for tests of the logs runs leave."""

import os


def read_scalars(directory):
    """{tag: {step: value}} from every event file in `directory`."""
    import tensorflow as tf

    values = {}
    for name in os.listdir(directory):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            for value in event.summary.value:
                values.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return values
