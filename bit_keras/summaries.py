"""TensorBoard scalars without the `tensorboard` package (TensorFlow 2.21 no longer pulls it in).

`tf.summary.scalar` and Keras' TensorBoard callback need that package; the low-level
`tf.summary.write` with the "scalars" plugin's metadata writes the same event record, so
runs always leave logs that `tensorboard --logdir` reads once it is installed anywhere.
"""

from __future__ import annotations

import os

import keras
import numpy as np

from bit_keras import files


def write_scalar(name, value, step):
    """One scalar into the default summary writer (`with writer.as_default():`)."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=metadata.SerializeToString())


class ScalarLogger(keras.callbacks.Callback):
    """Writes `model.fit`'s epoch logs to LOG_DIR/train and LOG_DIR/validation (`val_` stripped).

    The step is the optimizer's update count (Keras' `iterations` counts real updates under
    gradient accumulation), and the learning rate in force after the epoch is logged too,
    so curves from a resumed run continue where the interrupted one stopped.
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir
        self._writers = {}

    def _writer(self, split):
        import tensorflow as tf

        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(os.path.join(self.log_dir, split))
        return self._writers[split]

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.model.optimizer
        step = int(np.asarray(optimizer.iterations))  # int() refuses a MirroredVariable
        scalars = {"train": {"learning_rate": float(np.asarray(optimizer.learning_rate))}, "validation": {}}
        for key, value in (logs or {}).items():
            if key in ("learning_rate", "updates"):  # the optimizer's own, above; the step
                continue
            split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            scalars[split][name] = float(value)
        for split, values in scalars.items():
            if values:
                with self._writer(split).as_default():
                    for name, value in values.items():
                        write_scalar(name, value, step)
                self._writer(split).flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def read_scalars(directory) -> dict:
    """{tag: {step: value}} from the event files in `directory` (local or gs://), for pictures and tests.

    A resumed run logs the steps after its last checkpoint again: the latest event wins.
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    directory = os.fspath(directory)
    if not tf.io.gfile.isdir(directory):
        return {}
    events = [event_pb2.Event.FromString(record.numpy()) for name in tf.io.gfile.listdir(directory)
              for record in tf.data.TFRecordDataset(files.join(directory, name))]
    values = {}
    for event in sorted(events, key=lambda event: event.wall_time):
        for value in event.summary.value:
            values.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return values
