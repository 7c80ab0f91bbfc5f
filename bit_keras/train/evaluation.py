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
import weakref

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
        from bit_keras.data.tfds import tfds_builder

        builder = tfds_builder(name, data_dir)
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
        from bit_keras.data.tfds import tfds_builder

        if not tfds_builder(name, data_dir).is_prepared():
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


def make_evaluator(model, strategy, dataset_fn, *, num_classes, multi_label, loss=False):
    """A function returning {metric: rate, "examples": n} over the whole distributed split.

    `dataset_fn(input_context)` builds one pipeline's batches of (images, one-hot targets, weights),
    as `strategy.distribute_datasets_from_function` wants; the dataset is re-read each call.
    `loss=True` adds "loss", the mean softmax cross-entropy (single-label).
    """
    import tensorflow as tf

    k = min(5, int(num_classes))
    distributed = strategy.distribute_datasets_from_function(dataset_fn)

    def replica_counts(images, targets, weights):
        logits = tf.cast(model(images, training=False), tf.float32)
        best = tf.math.top_k(logits, k=k).indices         # ties: the lower class index first, as np.argmax
        correct = tf.cast(tf.gather(targets, best, batch_dims=1) > 0, tf.float32)
        losses = tf.nn.softmax_cross_entropy_with_logits(targets, logits) if loss else tf.zeros_like(weights)
        return tf.stack([tf.reduce_sum(correct[:, 0] * weights),
                         tf.reduce_sum(tf.reduce_max(correct, axis=1) * weights),
                         tf.reduce_sum(weights), tf.reduce_sum(losses * weights)])

    @tf.function
    def count_batch(images, targets, weights):
        counts = strategy.run(replica_counts, args=(images, targets, weights))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, counts, axis=None)

    def count():
        # Batches come from Python, as in Keras' evaluate: every batch is full (padded), so one trace.
        totals = tf.zeros([4], tf.float32)
        for images, targets, weights in distributed:
            totals += count_batch(images, targets, weights)
        return totals

    def evaluate():
        top1, top5, examples, loss_sum = (float(v) for v in count().numpy())
        if examples < 1:
            raise ConfigError("The evaluation split is empty; choose another --eval-split or pass --eval-split none.")
        result = {"examples": int(examples)}
        if loss:
            result["loss"] = loss_sum / examples
        if multi_label:
            result["precision_at_1"] = top1 / examples
        else:
            result.update(top1=top1 / examples, top5=top5 / examples)
        return result

    return evaluate


def score_split(model, source, *, crop, num_classes, batch_size, strategy=None) -> dict:
    """{"loss", "accuracy"} of a compiled single-label classifier over every example of `source` once.

    `source` yields (uint8 image, class index), unbatched. On one device this is Keras'
    `evaluate` over `eval_pipeline` batches. Over several replicas a batch that does not divide
    over them (the split's last) would crash or leave a replica empty, so: a tf.distribute
    strategy counts through `make_evaluator` (the end padded with blank examples of weight 0),
    and Keras' JAX distribution scores padded batches and drops the padding's logits; both
    also return the "examples" they counted.
    """
    import types

    from bit_keras.distribute import jax_devices_in_use

    replicas = int(getattr(strategy, "num_replicas_in_sync", 1)) if strategy is not None else 1
    if jax_devices_in_use() > 1:
        return _score_padded(model, source, crop=crop, num_classes=num_classes, batch_size=batch_size,
                             devices=jax_devices_in_use())
    if replicas > 1:
        from bit_keras.train.input import eval_dataset

        examples = _count(source)
        per_replica = max(1, int(batch_size) // replicas)

        def dataset_fn(input_context):
            return eval_dataset(source, num_classes=num_classes, image_size=crop, batch_size=per_replica,
                                num_examples=examples, input_context=input_context)

        result = make_evaluator(model, strategy, dataset_fn, num_classes=num_classes, multi_label=False,
                                loss=True)()
        return {"loss": result["loss"], "accuracy": result["top1"], "examples": result["examples"]}
    from bit_keras.data import eval_pipeline
    from bit_keras.data.preprocess import with_known_length

    # A known length: Keras warns "ran out of data" over a dataset of unknown length (folders).
    batches = with_known_length(eval_pipeline(source, types.SimpleNamespace(crop=int(crop)),
                                              batch_size=int(batch_size), num_classes=int(num_classes)))
    scores = model.evaluate(batches, verbose=0, return_dict=True)
    return {"loss": float(scores["loss"]), "accuracy": float(scores["accuracy"])}


def _score_padded(model, source, *, crop, num_classes, batch_size, devices):
    """Keras' JAX DataParallel: each batch padded with zero images to a multiple of `devices`; their logits dropped."""
    import types

    import numpy as np

    from bit_keras.data import eval_pipeline
    from bit_keras.data.preprocess import with_known_length

    # A known length: Keras warns "ran out of data" over a dataset of unknown length (folders).
    batches = with_known_length(eval_pipeline(source, types.SimpleNamespace(crop=int(crop)),
                                              batch_size=int(batch_size), num_classes=int(num_classes)))
    loss_sum, correct, examples = 0.0, 0, 0
    for images, targets in batches.as_numpy_iterator():
        n = len(images)
        padded = np.concatenate([images, np.zeros((-n % devices, *images.shape[1:]), images.dtype)])
        logits = np.asarray(model.predict_on_batch(padded), np.float64)[:n]
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss_sum += float(-(targets * log_probs).sum())
        correct += int((logits.argmax(axis=1) == targets.argmax(axis=1)).sum())
        examples += n
    if examples < 1:
        raise ConfigError("The evaluation split is empty; choose another --eval-split or pass --eval-split none.")
    return {"loss": loss_sum / examples, "accuracy": correct / examples, "examples": examples}


_COUNTED = weakref.WeakKeyDictionary()   # split -> examples, so that each evaluation of a fit counts once


def _count(source) -> int:
    import tensorflow as tf

    known = int(source.cardinality())
    if known >= 0:
        return known
    with contextlib.suppress(TypeError):
        if source in _COUNTED:
            return _COUNTED[source]
    counted = int(source.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
    with contextlib.suppress(TypeError):
        _COUNTED[source] = counted
    return counted


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
