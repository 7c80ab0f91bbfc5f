"""`.keras` exports: the whole BiT model with named blocks, for partial fine-tuning.

A SavedModel is one opaque function; a `.keras` file reloads as `BiTBackbone` with every
layer named after its checkpoint key, so `freeze_up_to(model, "block2")` works on it, on
any Keras 3 backend.
"""

from __future__ import annotations

import os
import zipfile

from bit_keras import files
from bit_keras.errors import CheckpointError, ConfigError, MissingFileError
from bit_keras.export.metadata import check_export_target


def export_keras(model, path, *, overwrite=False) -> str:
    """Writes `model` to a `.keras` file atomically; returns its absolute path."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ConfigError(f"A Keras-format export needs a path ending in .keras. Received: {path}")
    path = check_export_target(path, overwrite=overwrite)
    with files.locked(path), files.staged_file(path, overwrite=overwrite) as staging:
        model.save(staging)
    return path


def load_keras_backbone(path, *, trainable=True):
    """The `BiTBackbone` in a `.keras` file (a classifier's own backbone when it has a head)."""
    import keras

    import bit_keras.classifier  # noqa: F401  registers the BiT classes for deserialisation

    if not os.path.isfile(path):
        raise MissingFileError(f"{path} does not exist; write it with `bit_keras export --format keras`.")
    try:
        model = keras.saving.load_model(path)
    except (ValueError, OSError, zipfile.BadZipFile) as error:  # a cut-short file: Keras says "File not found"
        raise CheckpointError(f"{path} is not a readable .keras file ({' '.join(str(error).split())}); "
                              "it may be truncated or corrupt: export it again.") from None
    model = getattr(model, "backbone", model)
    model.trainable = trainable
    return model
