"""`load_backbone`: an export as a Keras 3 layer that fine-tunes inside any Keras 3 model.

`hub.KerasLayer` is a tf-keras layer and cannot go into a Keras 3 model; Keras 3's
`TFSMLayer` can, and it shares (not copies) the SavedModel's variables, so training the
layer trains the export. `ExportedBackbone` is a TFSMLayer pointed at the export's `serve`
and `serve_training` endpoints that also knows its output size and metadata.
"""

from __future__ import annotations

import os

import keras

from bit_keras.export.metadata import read_metadata
from bit_keras.export.savedmodel import SERVE_ENDPOINT, TRAINING_ENDPOINT
from bit_keras.errors import SetupError


@keras.saving.register_keras_serializable(package="bit_keras")
class ExportedBackbone(keras.layers.TFSMLayer):
    """A `bit_keras export` SavedModel as a Keras 3 layer: images in [0, 1] -> features (or logits)."""

    def __init__(self, filepath, trainable=True, name=None, **kwargs):
        kwargs.pop("call_endpoint", None)
        kwargs.pop("call_training_endpoint", None)
        metadata = read_metadata(filepath)
        super().__init__(os.fspath(filepath), call_endpoint=SERVE_ENDPOINT,
                         call_training_endpoint=TRAINING_ENDPOINT, trainable=trainable,
                         name=name or _layer_name(metadata), **kwargs)
        self._bit_metadata = metadata

    @property
    def metadata(self) -> dict:
        return dict(self._bit_metadata)

    @property
    def variant(self):
        return self._bit_metadata.get("variant")

    @property
    def block_units(self):
        units = self._bit_metadata.get("block_units")
        return tuple(units) if units else None

    @property
    def width(self):
        return self._bit_metadata.get("width")

    @property
    def num_features(self):
        return self._bit_metadata.get("num_features")

    @property
    def num_outputs(self) -> int:
        meta = self._bit_metadata
        return meta["num_classes"] if meta.get("outputs") == "logits" else meta["num_features"]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_outputs)


def _layer_name(metadata):
    variant = (metadata.get("variant") or "bit").lower().replace("-", "_")
    return f"{variant}_{metadata.get('outputs', 'features')}"


def load_backbone(directory, trainable=True) -> keras.layers.Layer:
    """Loads an export as a Keras 3 layer (TensorFlow backend) for use in any Keras 3 model.

    Args:
        directory: a SavedModel written by `bit_keras export` / `export_model`, or a
            `.keras` file written by `bit_keras export --format keras`.
        trainable: False gives a frozen feature extractor.

    A SavedModel comes back as one layer (`ExportedBackbone`). A `.keras` file comes back
    as the BiT model with its named blocks (feature output), so that
    `bit_keras.freeze_up_to(backbone, "block2")` can freeze part of it.

    Example:
        >>> backbone = load_backbone("exports/m-r50x1")
        >>> images = keras.Input((None, None, 3))
        >>> model = keras.Model(images, keras.layers.Dense(10)(backbone(images)))
    """
    path = os.fspath(directory)
    if path.endswith(".keras"):
        from bit_keras.export.keras_file import load_keras_backbone

        return load_keras_backbone(path, trainable=trainable)
    if keras.backend.backend() != "tensorflow":
        raise SetupError(f"A SavedModel loads into Keras 3 only on the TensorFlow backend (KERAS_BACKEND is "
                           f"{keras.backend.backend()!r}); export with --format keras for other backends.")
    return ExportedBackbone(path, trainable=trainable)
