"""`BiTImageClassifier`: a backbone plus BiT's zero-initialised head, compiled by the HyperRule.

This is the fine-tuning head wrapper: `compile_hyperrule(train_size=..., image_size=...,
batch_size=...)` picks the schedule, resolution and MixUp from the dataset alone (BiT's
"no hyper-parameter search") and compiles SGD with momentum and the warm-up/step-decay
learning rate, so fine-tuning is a plain `model.fit`.

It is a keras-hub `ImageClassifier` (a `Task`): `keras_hub.models.ImageClassifier.from_preset`
finds it for a BiT preset, `save_to_preset` writes one, and an optional `preprocessor`
(`BiTImageClassifierPreprocessor`) lets `predict`/`fit` take uint8 images of any size.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import keras_hub

from bit_keras.backbone import BiTBackbone, check_image_dtype, policy_name
from bit_keras.labels import ClassificationAccuracy, ClassificationLoss
from bit_keras.layout import HEAD_LAYER
from bit_keras.preprocessing import BiTImageClassifierPreprocessor
# Imported here so that loading a fine-tuned .keras file, which names both, finds them registered.
from bit_keras.optimizers import AccumulatingSGD
from bit_keras.learning_rates import WarmupStepDecay
from bit_keras.errors import ConfigError
from bit_keras.inference import standardized_kernels
from bit_keras.regularization import check_rate


def _image_shape(backbone):
    """The backbone's own image shape when it fixes one (any Keras model), else any height and width."""
    try:
        shape = backbone.input_shape
    except (AttributeError, ValueError):
        return (None, None, 3)
    return tuple(shape[1:]) if isinstance(shape, tuple) and len(shape) == 4 else (None, None, 3)


@keras.saving.register_keras_serializable(package="bit_keras")
class BiTImageClassifier(keras_hub.models.ImageClassifier):
    """Images in [0, 1] -> float32 logits [batch, num_classes]; a keras-hub `ImageClassifier`.

    Args:
        backbone: a `BiTBackbone`, or any Keras layer mapping images to features (e.g. an
            export loaded with `bit_keras.export.load_backbone`).
        num_classes: classes of the head. BiT initialises it to zeros, so fine-tuning starts
            from uniform predictions and the backbone's features stay intact at first.
        preprocessor: None (the model takes float images in [0, 1]) or a
            `BiTImageClassifierPreprocessor`: `predict`/`fit`/`evaluate` then resize and scale
            uint8 images of any size first (float images pass through it unchanged).
        multi_label: the head is read with sigmoids (BiT-M's ImageNet-21k head) rather than
            a softmax; `compile_hyperrule` picks the matching loss.
        dropout: rate of a `keras.layers.Dropout` on the features before the head (0: none,
            the default; ResNet-RS uses 0.25 on ImageNet). Active in training only.
        dtype: dtype policy of the head (default: the backbone's). Logits are float32.
        compile: compile with keras-hub's defaults on construction (Adam 5e-5, cross-entropy
            on integer class ids or one-hot labels); `compile_hyperrule` replaces them.

    Example:
        >>> model = BiTImageClassifier.from_preset("m-r50x1", num_classes=37)   # released backbone, zero head
        >>> rule = model.compile_hyperrule(train_size=3680, image_size=(500, 375), batch_size=64)
        >>> model.fit(train_batches, steps_per_epoch=rule.total_steps)
    """

    backbone_cls = BiTBackbone
    preprocessor_cls = BiTImageClassifierPreprocessor

    def __init__(self, backbone, num_classes, *, preprocessor=None, multi_label=False, dropout=0.0, dtype=None,
                 name=None, compile=True, **kwargs):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be a positive integer. Received: num_classes={num_classes!r}")
        dropout = check_rate(dropout, "dropout")
        dtype = policy_name(dtype if dtype is not None else getattr(backbone, "dtype_policy", None))
        # keras-hub's Task reads these before the functional graph exists.
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.multi_label = bool(multi_label)
        images = keras.Input(shape=_image_shape(backbone), name="images")
        features = backbone(images)
        if dropout > 0:  # absent at 0, so the default classifier's layers are exactly BiT's
            features = keras.layers.Dropout(dropout, dtype=dtype, name="head_dropout")(features)
        logits = keras.layers.Dense(num_classes, kernel_initializer="zeros", dtype=dtype, name=HEAD_LAYER)(features)
        # Logits stay float32 under mixed precision, as Keras recommends for the loss.
        logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
        # Task's constructor, not ImageClassifier's: that one adds a pooler and head of its own.
        keras_hub.models.Task.__init__(self, inputs=images, outputs=logits,
                                       name=name or f"{backbone.name}_classifier", compile=False, **kwargs)
        self.dtype_policy = keras.dtype_policies.get(dtype)
        self.num_classes = num_classes
        self.activation = None   # logits, as keras-hub's `activation=None`
        self.dropout = dropout
        self.hyperrule = None
        if compile:
            self.compile()
        self._compiled_by_constructor = compile  # keras-hub's defaults only: nothing to save or restore

    @property
    def architecture(self):
        return getattr(self.backbone, "architecture", None)

    @property
    def block_units(self):
        return getattr(self.backbone, "block_units", None)

    @property
    def width(self):
        return getattr(self.backbone, "width", None)

    @property
    def num_features(self):
        return getattr(self.backbone, "num_features", None)

    def get_layer(self, name=None, index=None):
        """Also finds the backbone's layers by name (`block3-unit01-b-standardized_conv2d`)."""
        try:
            return super().get_layer(name, index)
        except ValueError:
            if name is None or not isinstance(self.backbone, keras.Model):
                raise
            return self.backbone.get_layer(name)

    def call(self, inputs, training=None, mask=None):
        check_image_dtype(inputs)
        return super().call(inputs, training=training, mask=mask)

    # Without a preprocessor, Keras' own fit/evaluate/predict (any dataset, tf.distribute, JAX
    # data parallel, exactly as before); with one, keras-hub's, which map it over the data.
    def fit(self, *args, **kwargs):
        runner = super().fit if self.preprocessor is not None else keras.Model.fit.__get__(self)
        return runner(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        runner = super().evaluate if self.preprocessor is not None else keras.Model.evaluate.__get__(self)
        return runner(*args, **kwargs)

    def predict(self, *args, **kwargs):
        runner = super().predict if self.preprocessor is not None else keras.Model.predict.__get__(self)
        with standardized_kernels(self):  # each kernel standardized once per call, not once per batch
            return runner(*args, **kwargs)

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """keras-hub's defaults (Adam 5e-5), with a loss and accuracy for integer or one-hot labels
        (sigmoid cross-entropy for a multi-label head)."""
        if loss == "auto":
            loss = (keras.losses.BinaryCrossentropy(from_logits=True) if self.multi_label
                    else ClassificationLoss(from_logits=True))
        if metrics == "auto":
            metrics = [keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy") if self.multi_label
                       else ClassificationAccuracy(name="accuracy")]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        self._compiled_by_constructor = False
        if metrics is None and kwargs.get("weighted_metrics") is None:
            # Keras keeps the previous compile's metrics when given none: drop the constructor's.
            self._compile_metrics = None

    def get_compile_config(self):
        # The constructor's default compile is not saved: loading compiles the same way again, and an
        # unbuilt default optimizer is not restored into a built one (Keras warns of that mismatch).
        return None if getattr(self, "_compiled_by_constructor", False) else super().get_compile_config()

    def compile_from_config(self, config):
        # Keras skips this for a model whose compile() is overridden; ours takes compile's arguments
        # as they are, so a saved model comes back compiled (optimizer state, schedule and all).
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        # Task's (backbone, preprocessor, name) plus the model's dtype policy and our arguments.
        return {**keras_hub.models.Task.get_config(self), "trainable": self.trainable,
                "dtype": keras.dtype_policies.serialize(self.dtype_policy), "num_classes": self.num_classes,
                "multi_label": self.multi_label, "dropout": self.dropout}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.get(config["dtype"])
        return super().from_config(config)

    @classmethod
    def from_preset(cls, preset, *, num_classes=None, load_weights: bool = True, weights=None, dtype=None,
                    cache_dir=None, name=None, dropout=0.0, preprocessor=None,
                    **backbone_kwargs) -> "BiTImageClassifier":
        """A classifier by model name, with the weights rule of `bit_keras.weights`.

        A release (`m-r50x1`) comes with its weights; its head is loaded when `num_classes`
        is the release's (the default), otherwise the head starts at zero. An architecture
        (`r50x1`) gets random weights. `weights=` overrides; `load_weights=False` gives
        random weights for a release name. `dropout` is the classifier's; other keyword
        arguments go to `BiTBackbone` (research switches; see `BiTBackbone.from_preset`).

        `preprocessor=True` attaches the name's `BiTImageClassifierPreprocessor` (resize to the
        release's resolution, uint8 -> [0, 1]) for `predict`/`fit` on raw images; or pass one.
        A keras-hub preset (a directory `save_to_preset` wrote, `kaggle://...`, `hf://...`)
        loads through keras-hub's own loader.
        """
        from bit_keras import weights as weights_rule
        from bit_keras.export import keras_hub as hub_presets

        if hub_presets.is_keras_hub_handle(preset):
            extra = {"num_classes": num_classes} if num_classes is not None else {}
            return super().from_preset(preset, load_weights=load_weights, dtype=dtype, **extra)
        if load_weights:
            weights_rule.refuse_release_into(preset, weights, **backbone_kwargs)
        choice = weights_rule.resolve(preset, weights, load_weights=load_weights, cache_dir=cache_dir)
        weights_rule.warn_if_random(choice, asked=not load_weights)
        if preprocessor is True:
            from bit_keras.preprocessing import for_preset

            preprocessor = for_preset(choice.preset or choice.architecture)
        return cls.from_weights(choice, num_classes, dtype=dtype, name=name, dropout=dropout,
                                preprocessor=preprocessor, **backbone_kwargs)

    @classmethod
    def from_weights(cls, choice, num_classes=None, *, dtype=None, name=None, dropout=0.0, preprocessor=None,
                     **backbone_kwargs) -> "BiTImageClassifier":
        """A classifier of a `weights.WeightsChoice`; the file's head is loaded when its class count is `num_classes`.

        `backbone_kwargs` go to `BiTBackbone` (research switches), `dropout` to the classifier."""
        from bit_keras import checkpoint

        num_classes = choice.default_num_classes() if num_classes is None else num_classes
        backbone = BiTBackbone.from_weights(choice, dtype=dtype, load=False, **backbone_kwargs)
        model = cls(backbone, num_classes, dtype=dtype, multi_label=choice.multi_label(num_classes), name=name,
                    dropout=dropout, preprocessor=preprocessor)
        if choice.path:
            checkpoint.load_weights(model, choice.path)
        model.release = choice.preset
        return model

    def _not_task_weights(self) -> list:
        # A preset holds weights, not training state: the optimizer stays out, as the backbone's layers do.
        return list(self.backbone._flatten_layers()) + ([self.optimizer] if self.optimizer is not None else [])

    def save_task_weights(self, filepath):
        keras.saving.save_weights(self, filepath=filepath, objects_to_skip=self._not_task_weights())

    def load_task_weights(self, filepath):
        keras.saving.load_weights(self, filepath, objects_to_skip=self._not_task_weights())

    def save_to_preset(self, preset_dir, max_shard_size=10):
        """keras-hub's task preset (`task.json`, head weights, the backbone's preset) plus
        `bit_keras.json`: resolution, class names where the release has them, HyperRule defaults."""
        from bit_keras.export import keras_hub as hub_presets

        super().save_to_preset(preset_dir, max_shard_size=max_shard_size)
        hub_presets.write_metadata(self, preset_dir)

    def compile_hyperrule(self, *, train_size=None, image_size=None, batch_size=512, rule=None,
                          micro_batch_size=None, steps=None, resolution=None, base_learning_rate=None,
                          jit_compile="auto"):
        """Compiles with the BiT-HyperRule for a dataset and returns the rule (also `self.hyperrule`).

        Args:
            train_size, image_size: training-set size and (height, width): all the rule needs.
            batch_size: images per update (512 in the paper); the learning rate and step
                counts scale with it as the HyperRule says.
            rule: a ready `bit_keras.hyperrule.HyperRule` instead (its batch size wins).
            micro_batch_size: images per forward/backward pass when `batch_size` does not fit
                in memory; `batch_size // micro_batch_size` are accumulated into one update.
            steps: shorten the schedule to this many updates (warm-up and decays keep their
                fractions); resolution: crop size instead of the rule's.
            base_learning_rate: replaces the rule's peak (sensible only without pre-trained
                weights: the rule's 0.003 x batch/512 is tuned for BiT features).
        """
        from bit_keras import hyperrule as rules
        from bit_keras import presets

        if rule is None:
            if train_size is None or image_size is None:
                raise ConfigError("compile_hyperrule needs train_size and image_size (the HyperRule's inputs), "
                                 "or a ready rule=bit_keras.hyperrule.hyperrule(...).")
            rule = rules.hyperrule(train_size, image_size, batch_size=batch_size,
                                   large_resolution=presets.hyperrule_resolution(self.architecture))
        batch_size = rule.batch_size
        micro_batch_size = batch_size if micro_batch_size is None else micro_batch_size  # 0 is refused
        if micro_batch_size < 1 or batch_size % micro_batch_size:
            raise ConfigError(f"micro_batch_size must divide batch_size. Received: batch_size={batch_size}, "
                             f"micro_batch_size={micro_batch_size}")
        if steps is not None:
            rule = rules.shorten(rule, steps)
        if resolution is not None:
            rule = rules.at_resolution(rule, resolution)
        if base_learning_rate is not None:
            if not 0 < base_learning_rate < math.inf:  # also refuses NaN
                raise ConfigError(f"base_learning_rate must be a positive finite number. Received: {base_learning_rate}")
            rule = dataclasses.replace(rule, base_learning_rate=float(base_learning_rate))
        accumulation = batch_size // micro_batch_size
        # Micro-batches accumulate in the momentum buffer (no weight-sized accumulator; works under
        # tf.distribute and JAX alike): see bit_keras.optimizers.
        optimizer = AccumulatingSGD(learning_rate=WarmupStepDecay.from_rule(rule, steps_per_update=accumulation),
                                    momentum=rule.momentum, accumulation_steps=accumulation)
        self.compile(optimizer=optimizer, jit_compile=jit_compile)  # loss and accuracy: compile's own
        # Built eagerly: inside fit's graph, TFSMLayer variables (names ending ":0") make invalid
        # name scopes for the momentum slots; eagerly they are fine.
        optimizer.build(self.trainable_variables)
        self.hyperrule = rule
        self.micro_batch_size = micro_batch_size
        return rule
