"""`build_finetuner`: a BiT backbone + zero head, compiled with the BiT-HyperRule, in one call.

The HyperRule decides everything from the dataset (the paper): SGD with momentum
0.9, no weight decay, a zero-initialised head, linear warm-up then /10 at 30/60/90% of the
steps, resize/crop resolution, MixUp. `FineTuner` keeps the compiled model together with
that rule and the matching input pipelines, so a fine-tune is `ft.fit(train_ds)` or plain
`ft.model.fit(ft.train_dataset(ds), ...)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import warnings

import keras
import numpy as np

from bit_keras import runs
from bit_keras.hyperrule import HyperRule
from bit_keras.errors import ConfigError, MissingFileError, StoppedError
from bit_keras.precision import EmulatedBFloat16Warning, bfloat16_warning, precision_of_policy
from bit_keras.distribute import (built_in, is_default, is_multi_worker, is_tpu, per_replica_micro_batch,
                                  replicas_of, resolve_strategy)


@dataclasses.dataclass
class FineTuner:
    """A compiled fine-tuning model and the HyperRule that configured it.

    Attributes:
        model: the compiled `keras.Model` (images float [0, 1] -> logits [B, num_classes]).
        backbone: the feature extractor inside `model` (freeze it, inspect it, export it).
        rule: the `HyperRule` (steps, warm-up, decays, resolution, MixUp) at `batch_size`.
        micro_batch_size: examples per forward/backward pass on each replica; an update accumulates
            `accumulation_steps` of them on every replica, so
            batch_size = replicas x micro_batch_size x accumulation_steps.
        strategy: the `tf.distribute.Strategy` the model was built under (None: the default one).
        replicas: its replicas in sync (1 without a strategy, and for Keras' JAX distribution,
            which splits each batch itself).
        precision_warning: why the precision asked for is slow here (bfloat16 on a CPU that only
            emulates it), or None; `build_finetuner` also issues it as an `EmulatedBFloat16Warning`.
    """

    model: keras.Model
    backbone: object
    rule: HyperRule
    num_classes: int
    batch_size: int
    micro_batch_size: int
    flip: bool = True
    crop: bool = True
    multi_label: bool = False
    variant: str | None = None
    strategy: object = None
    replicas: int = 1
    precision_warning: str | None = None

    @property
    def accumulation_steps(self) -> int:
        return self.batch_size // (self.micro_batch_size * self.replicas)

    @property
    def step_batch_size(self) -> int:
        """Examples in one `model.fit` step (all replicas together): what the input pipeline batches."""
        return self.micro_batch_size * self.replicas

    @property
    def fit_steps(self) -> int:
        """`model.fit` steps (micro-batches) for the whole schedule: total updates x accumulation."""
        return self.rule.total_steps * self.accumulation_steps

    def train_dataset(self, ds, *, seed=0, mixup_alpha=None):
        """HyperRule training batches (resize, random crop, random flip, MixUp) of `step_batch_size`.

        `ds` yields (uint8 image [h, w, 3], integer label), as `bit_keras.data.load_source` does.
        It repeats forever: give `model.fit` `steps_per_epoch`. Under accumulation MixUp draws
        one lambda per micro-batch.
        """
        import tensorflow as tf

        from bit_keras.data import train_pipeline

        def pipeline(_):
            return train_pipeline(ds, self.rule, batch_size=self.step_batch_size, num_classes=self.num_classes,
                                  flip=self.flip, crop=self.crop, mixup_alpha=mixup_alpha, seed=seed)

        # Built afresh by every iterator, so each starts with the same order: `fit` peeks at a
        # batch and starts again (a distributed dataset is re-created too), and the steps must
        # see the same examples on one device and on many.
        return tf.data.Dataset.from_tensors(0).flat_map(pipeline).prefetch(tf.data.AUTOTUNE)

    def eval_dataset(self, ds, *, batch_size=None):
        """Evaluation batches: resized to the rule's crop size, no augmentation, every example kept."""
        from bit_keras.data.preprocess import eval_pipeline, with_known_length

        return with_known_length(eval_pipeline(ds, self.rule, batch_size=batch_size or self.step_batch_size,
                                               num_classes=self.num_classes))

    def scope(self):
        """The strategy's scope (a no-op without one): `fit`, `evaluate` and `predict` run inside it."""
        import contextlib

        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def splits_batches(self) -> bool:
        """Whether each batch is split over several replicas (tf.distribute) or devices (Keras' JAX distribution)."""
        from bit_keras.distribute import jax_devices_in_use

        return self.replicas > 1 or jax_devices_in_use() > 1

    def evaluate(self, ds) -> dict:
        """{"loss", "accuracy"} over every example of the split `ds` exactly once, on any strategy.

        `ds` yields (uint8 image, class index), as `bit_keras.data.load_source` does; a split that
        does not divide over the replicas is scored whole (`bit_keras.train.evaluation.score_split`).
        """
        from bit_keras.train.evaluation import score_split

        with self.scope(), self._lost_workers():
            if self.multi_label:   # sigmoid losses: Keras' own evaluation (score_split is single-label)
                scores = self.model.evaluate(self.eval_dataset(ds), verbose=0, return_dict=True)
                return {"loss": float(scores["loss"]), "accuracy": float(scores.get("accuracy", float("nan")))}
            return score_split(self.model, ds, crop=self.rule.crop, num_classes=self.num_classes,
                               batch_size=self.step_batch_size, strategy=self.strategy)

    @contextlib.contextmanager
    def _lost_workers(self, checkpoint=None):
        """A multi-worker step that fails because a task stopped answering becomes one line (ClusterError)."""
        from bit_keras.distribute import lost_worker_error

        try:
            yield
        except Exception as error:
            lost = lost_worker_error(error, self.strategy, checkpoint=checkpoint)
            if lost is None:
                raise
            raise lost from None

    def learning_rate(self) -> float:
        """The learning rate of the next update (what the optimizer will use)."""
        optimizer = self.model.optimizer
        return float(np.asarray(optimizer.learning_rate)) if optimizer.built else self.rule.learning_rate(0)

    def fit(self, ds, *, validation_data=None, eval_every=None, callbacks=(), seed=0, verbose="auto",
            initial_epoch=0):
        """Runs the whole HyperRule schedule with `model.fit` and returns its History.

        An "epoch" is `eval_every` updates (default: the whole schedule in 10 parts); the
        model is evaluated on `validation_data` after each one: an `eval_dataset`, or the split
        itself (unbatched, as `load_source` yields it), which is scored whole on every strategy
        (`evaluate`). The run stops after exactly `rule.total_steps` updates, counted by the
        optimizer, so a run restored by `keras.callbacks.BackupAndRestore` stops at the same place.
        """
        eval_every = eval_every or max(1, math.ceil(self.rule.total_steps / 10))
        epochs = math.ceil(self.rule.total_steps / eval_every)
        validation = []
        if validation_data is not None and _is_split(validation_data):
            if self.splits_batches() and not self.multi_label:
                validation, validation_data = [ValidationScores(self, validation_data)], None
            else:
                validation_data = self.eval_dataset(validation_data)
        # ValidationScores first (the loggers and checkpoints after it see its scores); StopOnSigterm
        # after it, so scores of an evaluation cut short by SIGTERM are dropped.
        callbacks = [*validation, StopOnSigterm(), StopAfterUpdates(self.rule.total_steps), LearningRateLogger(),
                     StopOnNonFiniteLoss(), *callbacks]
        checkpoint = next((c.backup_dir for c in callbacks if getattr(c, "backup_dir", None)), None)
        with self.scope(), self._lost_workers(checkpoint), runs.sigterm_deferred() as sigterm:
            history = self.model.fit(self.train_dataset(ds, seed=seed), validation_data=validation_data,
                                     steps_per_epoch=eval_every * self.accumulation_steps, epochs=epochs,
                                     initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose, shuffle=False)
        if sigterm.received:
            raise StoppedError(f"Stopped by SIGTERM after update {int(np.asarray(self.model.optimizer.iterations))} "
                               f"of {self.rule.total_steps}.")
        return history


class StopOnSigterm(keras.callbacks.Callback):
    """Ends `fit` after the step during which SIGTERM came (`runs.sigterm_deferred`); an evaluation cut short is not logged.

    A period whose training was complete still ends normally, so its checkpoint is written.
    """

    def on_train_batch_end(self, batch, logs=None):
        if runs.SIGTERM.received:
            self.model.stop_training = True

    def on_test_batch_end(self, batch, logs=None):
        if runs.SIGTERM.received:
            self.model.stop_evaluating = True

    def on_epoch_end(self, epoch, logs=None):
        if runs.SIGTERM.received:
            self.model.stop_training = True  # it may have come during the evaluation
            for key in [key for key in logs or {} if key.startswith("val_")]:
                del logs[key]


class ResumeCheckpoints(keras.callbacks.Callback):
    """Restores `restore` when fit starts; saves a checkpoint (`bit_keras.resume`) after every whole period.

    A period is `eval_every` updates (the last one may be shorter); a fit stopped inside one
    (SIGTERM) saves nothing for it, so every checkpoint ends where a period ends.
    """

    def __init__(self, directory, *, eval_every, total_updates, restore=None):
        super().__init__()
        self.directory, self.eval_every, self.total_updates, self.restore = directory, eval_every, total_updates, restore
        self.backup_dir = directory  # what FineTuner.fit names when a lost worker stops a multi-worker run

    def on_train_begin(self, logs=None):
        from bit_keras import resume
        from bit_keras.errors import CheckpointError

        if self.restore is None:
            return
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        try:
            self.model.load_weights(self.restore)
        except Exception as error:  # read whole before (resume.check_weights_file), so not a cut-off file
            moved = resume.move_into(self.restore, resume.damaged_dir(self.directory))
            raise CheckpointError(f"{self.restore} cannot be loaded ({' '.join(str(error).split())[:200]}); moved it "
                                  f"to {moved}. Run the same command again to resume from the one before it.") from None

    def on_epoch_end(self, epoch, logs=None):
        from bit_keras import resume

        updates = int(np.asarray(self.model.optimizer.iterations))
        if updates and (updates % self.eval_every == 0 or updates >= self.total_updates):
            resume.save(self.model, self.directory, updates)


def _is_split(ds) -> bool:
    """An unbatched split of (image [h, w, 3], label), as opposed to batches."""
    spec = getattr(ds, "element_spec", None)
    return isinstance(spec, tuple) and len(spec) == 2 and spec[0].shape.rank == 3


class ValidationScores(keras.callbacks.Callback):
    """Keras' val_loss and val_accuracy, from `FineTuner.evaluate`: every example once over any replicas.

    First in the callback list, so the loggers and checkpoints after it see the scores.
    """

    def __init__(self, finetuner, split):
        super().__init__()
        self.finetuner, self.split = finetuner, split

    def on_epoch_end(self, epoch, logs=None):
        scores = self.finetuner.evaluate(self.split)
        if logs is not None:
            logs["val_loss"], logs["val_accuracy"] = scores["loss"], scores["accuracy"]


class StopAfterUpdates(keras.callbacks.Callback):
    """Stops `fit` once the optimizer has made `total_updates` real updates."""

    def __init__(self, total_updates):
        super().__init__()
        self.total_updates = int(total_updates)

    def on_train_batch_end(self, batch, logs=None):
        if int(np.asarray(self.model.optimizer.iterations)) >= self.total_updates:
            self.model.stop_training = True


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises DivergedError at the first NaN/Inf loss, before a later callback can save the broken weights.

    keras.callbacks.TerminateOnNaN only stops `fit`, after which the caller would save them.
    """

    def on_train_batch_end(self, batch, logs=None):
        runs.check_finite((logs or {}).get("loss", 0.0), self.model.optimizer.iterations)

    def on_epoch_end(self, epoch, logs=None):
        for key in ("loss", "val_loss"):
            runs.check_finite((logs or {}).get(key, 0.0), self.model.optimizer.iterations)


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate and update count to the epoch logs (TensorBoard shows them)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))
            logs["updates"] = int(np.asarray(self.model.optimizer.iterations))  # np: also a MirroredVariable


def build_finetuner(source, *, num_classes, train_size=None, image_size=None, batch_size=512,
                    micro_batch_size=None, weights=None, load_weights=True, rule=None, steps=None,
                    resolution=None, base_learning_rate=None, flip=True, crop=True, multi_label=False,
                    trainable=True, cache_dir=None, dtype=None, jit_compile="auto", strategy=None) -> FineTuner:
    """A `BiTImageClassifier` compiled with the BiT-HyperRule, with the matching input pipelines.

    Args:
        source: a model name (a release such as "m-r50x1" means its released weights; an
            architecture such as "r50x1" random ones; see `bit_keras.weights`), an exported
            SavedModel directory or `.keras` file (`bit_keras export`), or a Keras backbone.
        num_classes: classes of the new, zero-initialised head.
        weights, load_weights: override the weights a name means (a file, URL or release name; False: random).
        multi_label: sigmoid cross-entropy (BiT-M style) instead of softmax cross-entropy.
        trainable: False freezes the backbone (linear probe).
        strategy: a `tf.distribute.Strategy` (or a name for `bit_keras.distribute.make_strategy`:
            "mirrored", "multi_worker", "tpu", ...). The model, optimizer and metrics are built in
            its scope; `batch_size` stays the global batch and `micro_batch_size` is per replica.
            None: the strategy in force (the default one outside any `strategy.scope()`).

    The other arguments are `BiTImageClassifier.compile_hyperrule`'s.

    Example:
        >>> ft = build_finetuner("r14x1", num_classes=10, train_size=1437, image_size=(8, 8),
        ...                      batch_size=64, steps=100, resolution=32)
        >>> ft.fit(bit_keras.data.load_source("digits")[0])     # the whole schedule through model.fit
    """
    from bit_keras.classifier import BiTImageClassifier

    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer. Received: num_classes={num_classes!r}")
    strategy = resolve_strategy(strategy)
    replicas = replicas_of(strategy)
    global_batch = rule.batch_size if rule is not None else batch_size
    micro_batch_size = per_replica_micro_batch(global_batch, micro_batch_size, replicas)
    requested_dtype = dtype
    if dtype is None and is_tpu(strategy):
        dtype = "mixed_bfloat16"  # as `bit_keras train` on TPU: the MXU computes in bfloat16
    if isinstance(source, (keras.layers.Layer, keras.Model)) and not built_in(strategy, source):
        raise ConfigError(f"The backbone {source.name} was built outside this strategy's scope; build it inside "
                          "`with strategy.scope():`, or pass a model name or an exported path instead.")
    with strategy.scope():
        backbone, variant = _load_backbone(source, weights=weights, load_weights=load_weights,
                                           trainable=trainable, cache_dir=cache_dir, dtype=dtype)
        if requested_dtype is not None:
            _check_backbone_policy(backbone, requested_dtype)
        model = BiTImageClassifier(backbone, num_classes, multi_label=multi_label, dtype=dtype,
                                   name=f"{backbone.name}_finetune")
        # The pass the HyperRule sees is all replicas' micro-batches together: one fit step.
        rule = model.compile_hyperrule(train_size=train_size, image_size=image_size, batch_size=batch_size,
                                       rule=rule, micro_batch_size=micro_batch_size * replicas, steps=steps,
                                       resolution=resolution, base_learning_rate=base_learning_rate,
                                       jit_compile=jit_compile)
    if is_multi_worker(strategy):
        # Keras peeks at the first batch with strategy.reduce, which MultiWorkerMirroredStrategy
        # cannot do on a batch; without a recorded strategy Keras takes the one in scope
        # (`FineTuner.scope()`) and builds when it traces the step instead.
        model._distribute_strategy = None
        # ...and it reduces each step's logs with strategy.reduce("MEAN", log, axis=0), which a
        # scalar cannot take: the steps return them as [1] vectors (the mean of equal values).
        model.train_step = _logs_as_vectors(model.train_step)
        model.test_step = _logs_as_vectors(model.test_step)
    model.micro_batch_size = micro_batch_size
    precision_warning = bfloat16_warning(precision_of_policy(backbone_policy(backbone)), strategy)
    if precision_warning:
        warnings.warn(precision_warning, EmulatedBFloat16Warning, stacklevel=2)
    return FineTuner(model=model, backbone=backbone, rule=rule, num_classes=num_classes, batch_size=rule.batch_size,
                     micro_batch_size=micro_batch_size, flip=flip, crop=crop, multi_label=multi_label,
                     variant=variant, strategy=None if is_default(strategy) else strategy, replicas=replicas,
                     precision_warning=precision_warning)


def _logs_as_vectors(step):
    def vector_step(data):
        return keras.tree.map_structure(lambda value: keras.ops.reshape(value, (1,)), step(data))

    return vector_step


def backbone_policy(backbone) -> str:
    """The dtype policy the backbone runs in (a `BiTBackbone`'s own, as keras-hub's `Backbone` sets it)."""
    return backbone.dtype_policy.name


def _check_backbone_policy(backbone, dtype):
    """A ready backbone (a Keras object, an export) keeps its own precision: refuse another one asked for."""
    from bit_keras.backbone import policy_name

    wanted, has = policy_name(dtype), backbone_policy(backbone)
    if has != wanted:
        raise ConfigError(f"The backbone {backbone.name} computes in {has}, but {wanted} was asked for: build or "
                          f"export it with dtype={wanted!r}, or leave the precision at its default.")


def _load_backbone(source, *, weights, load_weights, trainable, cache_dir, dtype):
    """(backbone, model name or None) from a model name, a `WeightsChoice`, an export or a Keras object."""
    from bit_keras import weights as weights_rule

    if isinstance(source, (keras.layers.Layer, keras.Model)):
        source.trainable = trainable
        return source, getattr(source, "variant", None) or getattr(getattr(source, "architecture", None), "name", None)
    if not isinstance(source, (str, os.PathLike, weights_rule.WeightsChoice)):
        raise ConfigError(f"source must be a model name, an exported directory or a Keras backbone. "
                         f"Received: {type(source).__name__}")
    if isinstance(source, weights_rule.WeightsChoice):
        choice = source
    elif weights_rule.is_export(source):
        from bit_keras.export import load_backbone

        if weights is not None or not load_weights:
            raise ConfigError(f"{source} is an exported model with its own weights; drop weights= and load_weights=False.")
        if not os.path.exists(source):
            raise MissingFileError(f"No exported model at {source}.")
        backbone = load_backbone(source, trainable=trainable)
        return backbone, getattr(backbone, "variant", None)
    else:
        choice = weights_rule.resolve(source, weights, load_weights=load_weights, cache_dir=cache_dir)
    from bit_keras.backbone import BiTBackbone

    backbone = BiTBackbone.from_weights(choice, dtype=dtype)
    backbone.trainable = trainable
    return backbone, choice.name
