"""`.keras` exports: the whole BiT model with named blocks, for partial fine-tuning.

A SavedModel is one opaque function; a `.keras` file reloads as `BiTBackbone` with every
layer named after its checkpoint key, so `freeze_up_to(model, "block2")` works on it, on
any Keras 3 backend.
"""

from __future__ import annotations

import os

from bit_keras import files
from bit_keras.errors import ConfigError, MissingFileError


def export_keras(model, path, *, overwrite=False) -> str:
    """Writes `model` to a `.keras` file atomically; returns its absolute path."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ConfigError(f"A Keras-format export needs a path ending in .keras. Received: {path}")
    path = files.check_target(path, overwrite=overwrite)
    with files.staged_file(path, overwrite=overwrite) as staging:
        model.save(staging)
    return path


def load_keras_backbone(path, *, trainable=True):
    """The `BiTBackbone` in a `.keras` file (a classifier's own backbone when it has a head)."""
    import keras

    import bit_keras.classifier  # noqa: F401  registers the BiT classes for deserialisation

    if not os.path.isfile(path):
        raise MissingFileError(f"{path} does not exist; write it with `bit_keras export --format keras`.")
    model = keras.saving.load_model(path)
    model = getattr(model, "backbone", model)
    model.trainable = trainable
    return model
