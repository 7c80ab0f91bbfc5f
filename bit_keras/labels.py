"""Labels as keras-hub users pass them: integer class ids or one-hot (also MixUp-mixed) rows.

keras-hub's classifiers take integer class ids; BiT's input pipeline (and MixUp, which mixes
label rows) gives one-hot rows. The loss and accuracy of `compile_hyperrule` take both: a
label tensor one rank below the logits (or with a last axis of 1 against several classes)
holds class ids and is turned into one-hot rows first, so label smoothing and everything
else then follows one path. The choice is made on static ranks, so it costs nothing in the
compiled step and works on every backend; only TensorFlow's graphs can lose a label's rank
(`tf.function(reduce_retracing=True)` after labels of two ranks), and there the same test
runs in the graph.
"""

from __future__ import annotations

import keras
from keras import ops


def holds_class_ids(y_true, y_pred) -> bool:
    """Whether `y_true` holds integer class ids for `y_pred`'s logits (not one-hot rows)."""
    rank_true, rank_pred = len(y_true.shape), len(y_pred.shape)
    if rank_true == rank_pred - 1:
        return True
    return rank_true == rank_pred and y_true.shape[-1] == 1 and y_pred.shape[-1] != 1


def _unknown_rank(tensor) -> bool:
    return getattr(tensor.shape, "rank", 0) is None


def _one_hot_in_graph(y_true, y_pred):
    """`one_hot_labels` for a TensorFlow label of unknown rank: the same test, decided in the graph."""
    import tensorflow as tf

    classes, rank = y_pred.shape[-1], tf.rank(y_true)
    ids = tf.logical_or(tf.equal(rank, len(y_pred.shape) - 1),
                        tf.logical_and(tf.equal(rank, len(y_pred.shape)),
                                       tf.logical_and(tf.equal(tf.shape(y_true)[-1], 1), classes != 1)))
    rows = tf.cond(ids, lambda: tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), classes, dtype=y_pred.dtype),
                   lambda: tf.reshape(tf.cast(y_true, y_pred.dtype), tf.shape(y_pred)))
    rows.set_shape(y_pred.shape)
    return rows


def one_hot_labels(y_true, y_pred):
    """`y_true` as one-hot rows of `y_pred`'s class count (unchanged when it already is)."""
    if _unknown_rank(y_true):
        return _one_hot_in_graph(y_true, y_pred)
    if not holds_class_ids(y_true, y_pred):
        return y_true
    if len(y_true.shape) == len(y_pred.shape):
        y_true = ops.squeeze(y_true, axis=-1)
    return ops.one_hot(ops.cast(y_true, "int32"), y_pred.shape[-1], dtype=y_pred.dtype)


@keras.saving.register_keras_serializable(package="bit_keras")
class ClassificationLoss(keras.losses.CategoricalCrossentropy):
    """`CategoricalCrossentropy` that also takes integer class ids (as keras-hub's classifiers do)."""

    def call(self, y_true, y_pred):
        return super().call(one_hot_labels(y_true, y_pred), y_pred)


@keras.saving.register_keras_serializable(package="bit_keras")
class ClassificationAccuracy(keras.metrics.CategoricalAccuracy):
    """`CategoricalAccuracy` that also takes integer class ids."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(one_hot_labels(y_true, y_pred), y_pred, sample_weight)
