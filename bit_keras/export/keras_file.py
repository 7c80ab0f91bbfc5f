"""`.keras` exports: the whole BiT model with named blocks, for partial fine-tuning.

A SavedModel is one opaque function; a `.keras` file reloads as `BiTResNetV2` with every
layer named after its checkpoint key, so `freeze_up_to(model, "block2")` works on it, on
any Keras 3 backend.
"""

from __future__ import annotations

import os

from bit_keras.export import atomic


def export_keras(model, path, *, overwrite=False) -> str:
    """Writes `model` to a `.keras` file atomically; returns its absolute path."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"A Keras-format export needs a path ending in .keras. Received: {path}")
    path = atomic.check_target(path, overwrite=overwrite)
    with atomic.staged_file(path, overwrite=overwrite) as staging:
        model.save(staging)
    return path


def load_keras_backbone(path, *, trainable=True):
    """The BiT model in a `.keras` file, cut at its pooled features when it has a head."""
    import keras

    import bit_keras.resnet_v2  # noqa: F401  registers BiTResNetV2 for deserialisation

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist; write it with `bit_keras export --format keras`.")
    model = keras.saving.load_model(path)
    if getattr(model, "include_top", False):
        # The same layers (shared weights), ending at the pooled features.
        model = keras.Model(model.input, model.get_layer("pre_logits").output, name=f"{model.name}_features")
    model.trainable = trainable
    return model
