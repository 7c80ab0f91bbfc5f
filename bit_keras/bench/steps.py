"""One benchmarked configuration and the step that runs it (inference, training or a SavedModel call)."""

from __future__ import annotations

import dataclasses
import os
import tempfile

from bit_keras.errors import ConfigError, SetupError
from bit_keras.precision import PRECISION_POLICIES

MODES = ("infer", "train", "savedmodel")
PRECISIONS = tuple(PRECISION_POLICIES)  # float32, bfloat16: a benchmark names its precision, never "auto"


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmarked configuration.

    `fold` folds weight standardization into plain convolutions (`inference.py`); for
    "savedmodel" it exports the folded model as the serving signature. `jit` compiles the
    step with XLA (for "savedmodel", the loaded serving function is called under XLA).
    `straightforward` swaps bit_keras's GroupNormalization for Keras core's (same math with
    epsilon 1e-5, a reduction over the grouped view): the plain implementation that the
    speed-ups are measured against.
    """

    variant: str = "r50x1"
    size: int = 224
    batch: int = 16
    mode: str = "infer"
    precision: str = "float32"
    jit: bool = False
    fold: bool = False
    straightforward: bool = False
    num_classes: int = 1000

    def label(self) -> str:
        knobs = [self.precision] + (["jit"] if self.jit else []) + (["fold"] if self.fold else [])
        return f"{self.mode} {'+'.join(knobs)}" + (" (straightforward: Keras core GN)" if self.straightforward else "")


def parse_variant(variant: str):
    """The `Architecture` of any model name (release or architecture); weights do not matter here."""
    from bit_keras import presets

    return presets.resolve(variant)[0]


def build_model(config: Config):
    from bit_keras.backbone import PRECISION_POLICIES, BiTBackbone
    from bit_keras.classifier import BiTImageClassifier

    architecture = parse_variant(config.variant)
    policy = PRECISION_POLICIES[config.precision]
    # Random kernels: speed does not depend on the values, and nothing is downloaded.
    backbone = BiTBackbone(architecture.block_units, architecture.width, dtype=policy)
    return BiTImageClassifier(backbone, config.num_classes, dtype=policy)


def with_keras_group_norm(model):
    """A copy of `model` whose GroupNormalization layers are Keras core's, weights copied."""
    import keras

    from bit_keras.inference import rebuild
    from bit_keras.layers import GroupNormalization

    def keras_group_norm(layer):
        if isinstance(layer, GroupNormalization):
            return keras.layers.GroupNormalization(groups=layer.groups, epsilon=layer.epsilon,
                                                   name=layer.name, dtype=layer.dtype_policy)
        return None

    return rebuild(model, keras_group_norm)


def make_step(config: Config, *, workdir: str | None = None):
    """A zero-argument callable that runs one batch of `config` to completion."""
    import keras
    import numpy as np

    if config.mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}; received {config.mode!r}.")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}; received {config.precision!r}.")
    if config.size < 32 or config.batch < 1:
        raise ConfigError(f"Need size >= 32 and batch >= 1; received size={config.size}, batch={config.batch}.")
    if config.fold and config.mode == "train":
        raise ConfigError("fold is for inference: a folded model has fixed kernels and cannot be fine-tuned.")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (config.batch, config.size, config.size, 3)).astype("float32")
    model = build_model(config)
    if config.straightforward:
        model = with_keras_group_norm(model)

    if config.mode == "train":
        labels = rng.integers(0, config.num_classes, (config.batch,))
        model.compile(optimizer=keras.optimizers.SGD(0.003, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=config.jit)
        return lambda: model.train_on_batch(images, labels)

    served = model
    if config.fold:
        from bit_keras.inference import fold_standardization

        served = fold_standardization(model)
    if config.mode == "infer":
        served.compile(jit_compile=config.jit)
        return lambda: served.predict_on_batch(images)
    return _savedmodel_step(model, served, config, images, workdir)


def _savedmodel_step(model, served, config, images, workdir):
    """Exports `model` (serving signature: `served`), loads it back and calls `serving_default`."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise SetupError("--mode savedmodel needs the TensorFlow backend (KERAS_BACKEND=tensorflow).")
    import tensorflow as tf

    from bit_keras.export import export_model

    directory = tempfile.mkdtemp(prefix="bit_keras_bench_", dir=workdir)
    path = export_model(model, os.path.join(directory, "export"),
                        serving_model=None if served is model else served)
    loaded = tf.saved_model.load(path)  # kept referenced: the signature uses its variables
    serving = loaded.signatures["serving_default"]
    if config.jit:
        call = tf.function(lambda x: serving(images=x), jit_compile=True)
    else:
        call = lambda x: serving(images=x)  # noqa: E731
    inputs = tf.constant(images)

    def step(_keep=loaded):
        return [value.numpy() for value in call(inputs).values()]

    return step
