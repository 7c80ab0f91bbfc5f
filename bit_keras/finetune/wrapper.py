"""`build_finetuner`: a BiT backbone + zero head, compiled with the BiT-HyperRule, in one call.

The HyperRule decides everything from the dataset (BIT_SPEC.md section 4): SGD with momentum
0.9, no weight decay, a zero-initialised head, linear warm-up then /10 at 30/60/90% of the
steps, resize/crop resolution, MixUp. `FineTuner` keeps the compiled model together with
that rule and the matching input pipelines, so a fine-tune is `ft.fit(train_ds)` or plain
`ft.model.fit(ft.train_dataset(ds), ...)`.
"""

from __future__ import annotations

import dataclasses
import math
import os

import keras

from bit_keras.finetune.schedule import HyperRuleSchedule
from bit_keras.hyperrule import HyperRule, hyperrule


@dataclasses.dataclass
class FineTuner:
    """A compiled fine-tuning model and the HyperRule that configured it.

    Attributes:
        model: the compiled `keras.Model` (images float [0, 1] -> logits [B, num_classes]).
        backbone: the feature extractor inside `model` (freeze it, inspect it, export it).
        rule: the `HyperRule` (steps, warm-up, decays, resolution, MixUp) at `batch_size`.
        micro_batch_size: examples per forward/backward pass; `batch_size // micro_batch_size`
            micro-batches are accumulated into one update (`accumulation_steps`).
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

    @property
    def accumulation_steps(self) -> int:
        return self.batch_size // self.micro_batch_size

    @property
    def fit_steps(self) -> int:
        """`model.fit` steps (micro-batches) for the whole schedule: total updates x accumulation."""
        return self.rule.total_steps * self.accumulation_steps

    def train_dataset(self, ds, *, seed=0, mixup_alpha=None):
        """HyperRule training batches (resize, random crop, random flip, MixUp) of `micro_batch_size`.

        `ds` yields (uint8 image [h, w, 3], integer label), as `bit_keras.data.load_source` does.
        It repeats forever: give `model.fit` `steps_per_epoch`. Under accumulation MixUp draws
        one lambda per micro-batch.
        """
        from bit_keras.data import train_pipeline

        return train_pipeline(ds, self.rule, batch_size=self.micro_batch_size, num_classes=self.num_classes,
                              flip=self.flip, crop=self.crop, mixup_alpha=mixup_alpha, seed=seed)

    def eval_dataset(self, ds, *, batch_size=None):
        """Evaluation batches: resized to the rule's crop size, no augmentation, every example kept."""
        from bit_keras.data import eval_pipeline

        return eval_pipeline(ds, self.rule, batch_size=batch_size or self.micro_batch_size,
                             num_classes=self.num_classes)

    def learning_rate(self) -> float:
        """The learning rate of the next update (what the optimizer will use)."""
        optimizer = self.model.optimizer
        return float(optimizer.learning_rate) if optimizer.built else self.rule.learning_rate(0)

    def fit(self, ds, *, validation_data=None, eval_every=None, callbacks=(), seed=0, verbose="auto",
            initial_epoch=0):
        """Runs the whole HyperRule schedule with `model.fit` and returns its History.

        An "epoch" is `eval_every` updates (default: the whole schedule in 10 parts); the
        model is evaluated on `validation_data` (an `eval_dataset`) after each one. The run
        stops after exactly `rule.total_steps` updates, counted by the optimizer, so a run
        restored by `keras.callbacks.BackupAndRestore` stops at the same place.
        """
        eval_every = eval_every or max(1, math.ceil(self.rule.total_steps / 10))
        epochs = math.ceil(self.rule.total_steps / eval_every)
        callbacks = [StopAfterUpdates(self.rule.total_steps), LearningRateLogger(), *callbacks]
        return self.model.fit(self.train_dataset(ds, seed=seed), validation_data=validation_data,
                              steps_per_epoch=eval_every * self.accumulation_steps, epochs=epochs,
                              initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose, shuffle=False)


class StopAfterUpdates(keras.callbacks.Callback):
    """Stops `fit` once the optimizer has made `total_updates` real updates."""

    def __init__(self, total_updates):
        super().__init__()
        self.total_updates = int(total_updates)

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) >= self.total_updates:
            self.model.stop_training = True


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate and update count to the epoch logs (TensorBoard shows them)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)
            logs["updates"] = int(self.model.optimizer.iterations)


def shorten(rule: HyperRule, total_steps: int) -> HyperRule:
    """The same rule compressed to `total_steps` updates: warm-up and decays keep their fractions."""
    if int(total_steps) < 1:
        raise ValueError(f"steps must be a positive integer. Received: steps={total_steps}")
    scale = int(total_steps) / rule.total_steps
    return dataclasses.replace(
        rule, total_steps=int(total_steps), warmup_steps=max(1, round(rule.warmup_steps * scale)),
        decay_boundaries=tuple(max(1, round(b * scale)) for b in rule.decay_boundaries))


def at_resolution(rule: HyperRule, crop: int) -> HyperRule:
    """The rule with crop size `crop` and the resize scaled to keep the rule's resize/crop ratio."""
    if int(crop) < 1:
        raise ValueError(f"resolution must be a positive integer. Received: resolution={crop}")
    return dataclasses.replace(rule, crop=int(crop), resize=max(int(crop), round(crop * rule.resize / rule.crop)))


def build_finetuner(source, *, num_classes, train_size=None, image_size=None, batch_size=512,
                    micro_batch_size=None, weights=None, rule=None, steps=None, resolution=None,
                    base_learning_rate=None, flip=True, crop=True, multi_label=False, trainable=True, cache_dir=None,
                    jit_compile="auto") -> FineTuner:
    """A compiled BiT fine-tuning model configured by the BiT-HyperRule.

    Args:
        source: an exported SavedModel directory or `.keras` file (`bit_keras export`; its
            metadata names the variant), a variant name ("m-r50x1", "r50x1", ...) built with `weights`, or a Keras
            backbone (model/layer mapping float [0, 1] images to features [B, F]).
        num_classes: classes of the new, zero-initialised head.
        train_size, image_size: training-set size and (height, width): the HyperRule's inputs.
            Not needed when `rule` is given.
        batch_size: the effective batch of one update (512 in the paper); the learning rate
            and step counts scale with it as the HyperRule says.
        micro_batch_size: examples per forward/backward pass when `batch_size` does not fit in
            memory; must divide `batch_size`. Gradients of `batch_size // micro_batch_size`
            micro-batches are averaged into one update, equal to the full batch's update.
        weights: for a variant name: None (random), "default" (the released checkpoint), a path or URL.
        rule: a ready `HyperRule` (its batch_size replaces `batch_size`; train_size and
            image_size are then not needed).
        steps: shorten the schedule to this many updates (warm-up and decays keep their fractions).
        resolution: train/eval crop size instead of the rule's (the resize keeps its ratio).
        base_learning_rate: replaces the rule's peak rate. Only for backbones without
            pre-trained weights: the HyperRule's 0.003 (x batch/512) is tuned for BiT features
            and is too small to train random weights in a short run.
        flip, crop: random flip / random crop; turn off where they change the label.
        multi_label: sigmoid cross-entropy (BiT-M style) instead of softmax cross-entropy.
        trainable: False freezes the backbone (linear probe).

    Example:
        >>> ft = build_finetuner("r50x1", num_classes=10, train_size=1437, image_size=(8, 8),
        ...                      batch_size=64, steps=100, resolution=32)
        >>> train, info = bit_keras.data.load_source("digits")
        >>> ft.fit(train)                           # the whole schedule through model.fit
        >>> ft.model.evaluate(ft.eval_dataset(bit_keras.data.load_source("digits", "test")[0]))
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer. Received: num_classes={num_classes!r}")
    if rule is not None:
        batch_size = rule.batch_size
    micro_batch_size = micro_batch_size or batch_size
    if micro_batch_size < 1 or batch_size % micro_batch_size:
        raise ValueError(f"micro_batch_size must divide batch_size. Received: batch_size={batch_size}, "
                         f"micro_batch_size={micro_batch_size}")
    if rule is None and (train_size is None or image_size is None):
        raise ValueError("build_finetuner needs train_size and image_size (the HyperRule's inputs), "
                         "or a ready rule=bit_keras.hyperrule.hyperrule(...).")
    backbone, variant = _load_backbone(source, weights=weights, trainable=trainable, cache_dir=cache_dir)
    if rule is None:
        rule = hyperrule(train_size, image_size, variant=variant, batch_size=batch_size)
    if steps is not None:
        rule = shorten(rule, steps)
    if resolution is not None:
        rule = at_resolution(rule, resolution)
    if base_learning_rate is not None:
        if base_learning_rate <= 0:
            raise ValueError(f"base_learning_rate must be positive. Received: {base_learning_rate}")
        rule = dataclasses.replace(rule, base_learning_rate=float(base_learning_rate))
    accumulation = batch_size // micro_batch_size

    images = keras.Input(shape=_input_shape(backbone), name="images")
    features = backbone(images)
    logits = keras.layers.Dense(num_classes, kernel_initializer="zeros", bias_initializer="zeros",
                                dtype="float32", name="head")(features)
    model = keras.Model(images, logits, name=f"{getattr(backbone, 'name', 'bit')}_finetune")
    optimizer = keras.optimizers.SGD(
        learning_rate=HyperRuleSchedule.from_rule(rule, steps_per_update=accumulation),
        momentum=rule.momentum, gradient_accumulation_steps=accumulation if accumulation > 1 else None)
    if multi_label:
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        metrics = [keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")]
    else:
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=jit_compile)
    # Built eagerly: inside fit's graph, TFSMLayer variables (names ending ":0") make invalid
    # name scopes for the momentum slots; eagerly they are fine.
    optimizer.build(model.trainable_variables)
    return FineTuner(model=model, backbone=backbone, rule=rule, num_classes=num_classes, batch_size=batch_size,
                     micro_batch_size=micro_batch_size, flip=flip, crop=crop, multi_label=multi_label,
                     variant=variant)


def _input_shape(backbone):
    """The backbone's own image shape when it fixes one (a Keras model), else any height and width."""
    try:
        shape = backbone.input_shape
    except (AttributeError, ValueError):
        return (None, None, 3)
    return tuple(shape[1:]) if isinstance(shape, tuple) and len(shape) == 4 else (None, None, 3)


def _load_backbone(source, *, weights, trainable, cache_dir):
    """(backbone, variant name or None) from a directory, a variant name or a Keras object."""
    if isinstance(source, (keras.layers.Layer, keras.Model)):
        source.trainable = trainable
        return source, getattr(source, "variant", None)
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"source must be an exported directory, a variant name or a Keras backbone. "
                         f"Received: {type(source).__name__}")
    if os.path.isdir(source) or os.fspath(source).endswith(".keras"):
        from bit_keras.export import load_backbone

        if weights is not None:
            raise ValueError(f"{source} is an exported model with its own weights; drop weights={weights!r}.")
        if not os.path.exists(source):
            raise FileNotFoundError(f"No exported model at {source}.")
        backbone = load_backbone(source, trainable=trainable)
        return backbone, getattr(backbone, "variant", None)
    from bit_keras.zoo import create_model

    backbone = create_model(source, weights=weights, include_top=False, cache_dir=cache_dir)
    backbone.trainable = trainable
    return backbone, str(source)
