"""Held-out evaluation during `bit_keras train`: which split, the distributed count, EMA weights.

Counts, not averages of per-batch means: every replica returns how many of its examples
were right and how many it saw, `strategy.reduce` sums them, and the rate is their ratio.
The input pads the split's end with blank examples of weight 0 (`train.input.eval_dataset`)
so that every replica gets full batches; the weights make each real example count once.
Single-label runs report top-1 and top-5 (top-k with k = min(5, classes)); multi-label
runs report precision@1: the share of examples whose highest-scoring class is one of
their labels (with one label per example it equals top-1).
"""

from __future__ import annotations

import contextlib
import os
import re

from bit_keras.errors import ConfigError, MissingFileError

NONE = ("none", "off", "")


def default_split(dataset, train_split="train", *, data_dir=None):
    """The held-out split a dataset offers (tfds: "validation", else "test"; digits: "test"), or None.

    Only prepared tfds datasets are looked at (nothing is downloaded to find out).
    """
    scheme, _, name = str(dataset).partition(":")
    candidates = ("validation", "test")
    if dataset == "digits":
        names = ("train", "test")
    elif scheme == "tfds" and name:
        from bit_keras.data.sources import _tfds_builder

        builder = _tfds_builder(name, data_dir)
        names = tuple(builder.info.splits) if builder.is_prepared() else ()
    elif scheme == "folder" and name:
        names = tuple(d for d in candidates if os.path.isdir(os.path.join(os.path.expanduser(name), d)))
    else:
        names = ()
    base = str(train_split).split("[", 1)[0]
    return next((split for split in candidates if split in names and split != base), None)


def resolve_split(eval_split, dataset, train_split="train", *, data_dir=None):
    """`--eval-split` as given ("auto": `default_split`; None or "none": None, no evaluation)."""
    if eval_split is None or str(eval_split).strip().lower() in NONE:
        return None
    if str(eval_split).strip().lower() == "auto":
        return default_split(dataset, train_split, data_dir=data_dir)
    return str(eval_split)


def planned_split(eval_split, dataset, train_split="train", *, data_dir=None):
    """(the split a run will score, None), or ("auto", why) when that is known only once the data is prepared.

    A run resolves "auto" after loading (and so preparing) its training data; a dry run sees
    only what is on disk, and a tfds dataset not yet prepared shows no split names.
    """
    split = resolve_split(eval_split, dataset, train_split, data_dir=data_dir)
    scheme, _, name = str(dataset).partition(":")
    if split is None and str(eval_split).strip().lower() == "auto" and scheme == "tfds" and name:
        from bit_keras.data.sources import _tfds_builder

        if not _tfds_builder(name, data_dir).is_prepared():
            return "auto", (f"{dataset} is not prepared, so its split names are not known yet: the run scores its "
                            "'validation' split, else its 'test' split; name one with --eval-split to be sure")
    return split, None


@contextlib.contextmanager
def naming_eval_split(split):
    """An error loading the held-out split names `eval_split=` (on the command line --eval-split), not `split=`.

    The data sources name their argument `split=`, which a training command reads as its training split.
    """
    try:
        yield
    except (ConfigError, MissingFileError) as error:
        message = re.sub(r"\bsplit=", "eval_split=", str(error))
        if message == str(error):
            message += f" (eval_split={split!r})"
        raise type(error)(message) from None


def metric_names(multi_label):
    return ("precision_at_1",) if multi_label else ("top1", "top5")


def make_evaluator(model, strategy, dataset_fn, *, num_classes, multi_label):
    """A function returning {metric: rate, "examples": n} over the whole distributed split.

    `dataset_fn(input_context)` builds one pipeline's batches of (images, one-hot targets, weights),
    as `strategy.distribute_datasets_from_function` wants; the dataset is re-read each call.
    """
    import tensorflow as tf

    k = min(5, int(num_classes))
    distributed = strategy.distribute_datasets_from_function(dataset_fn)

    def replica_counts(images, targets, weights):
        logits = tf.cast(model(images, training=False), tf.float32)
        best = tf.math.top_k(logits, k=k).indices         # ties: the lower class index first, as np.argmax
        correct = tf.cast(tf.gather(targets, best, batch_dims=1) > 0, tf.float32)
        return tf.stack([tf.reduce_sum(correct[:, 0] * weights),
                         tf.reduce_sum(tf.reduce_max(correct, axis=1) * weights),
                         tf.reduce_sum(weights)])

    @tf.function
    def count_batch(images, targets, weights):
        counts = strategy.run(replica_counts, args=(images, targets, weights))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, counts, axis=None)

    def count():
        # Batches come from Python, as in Keras' evaluate: every batch is full (padded), so one trace.
        totals = tf.zeros([3], tf.float32)
        for images, targets, weights in distributed:
            totals += count_batch(images, targets, weights)
        return totals

    def evaluate():
        top1, top5, examples = (float(v) for v in count().numpy())
        if examples < 1:
            raise ConfigError("The evaluation split is empty; choose another --eval-split or pass --eval-split none.")
        result = {"examples": int(examples)}
        if multi_label:
            result["precision_at_1"] = top1 / examples
        else:
            result.update(top1=top1 / examples, top5=top5 / examples)
        return result

    return evaluate


def describe(result, multi_label):
    """'top-1 81.25% top-5 97.50% (360 examples)' for the progress log."""
    if multi_label:
        text = f"precision@1 {100 * result['precision_at_1']:.2f}%"
    else:
        text = f"top-1 {100 * result['top1']:.2f}% top-5 {100 * result['top5']:.2f}%"
    return f"{text} ({result['examples']} examples)"


def has_average(optimizer):
    """True when the optimizer keeps an EMA of the weights and has made at least one update.

    Keras starts the averages at zero and copies the weights at the first update, so before
    it there is no average to use.
    """
    return bool(getattr(optimizer, "use_ema", False)) and int(optimizer.iterations.numpy()) > 0


@contextlib.contextmanager
def average_weights(model, optimizer):
    """The model holds the optimizer's EMA weights inside the block and its own weights again after it.

    Only the trainable variables are averaged (Keras' `use_ema`); BatchNorm moving statistics
    stay as trained. Nothing changes when the optimizer keeps no average yet.
    """
    if not has_average(optimizer):
        yield False
        return
    variables = model.trainable_variables
    kept = [v.numpy() for v in variables]
    optimizer.finalize_variable_values(variables)   # assigns each average to its variable
    try:
        yield True
    finally:
        for variable, value in zip(variables, kept):
            variable.assign(value)
