"""Export: BiT models as TF2 SavedModels (TF Hub's Reusable SavedModel API) or `.keras` files.

- `export_model(model, directory)`: any BiT Keras model -> a SavedModel with metadata.
- `export_variant(variant, directory, weights=...)`: the same from a variant name and checkpoint.
- `read_metadata(directory)`: the export's `assets/bit_keras.json` as a dict.
- `load_backbone(directory, trainable=True)`: the export as a Keras 3 layer.
"""

from bit_keras.export.metadata import METADATA_PATH, read_metadata
from bit_keras.export.savedmodel import export_model


def __getattr__(name):
    # Keras is imported on first use only.
    if name in ("load_backbone", "ExportedBackbone"):
        from bit_keras.export import layer

        return getattr(layer, name)
    if name == "export_variant":
        from bit_keras.export import variant

        return getattr(variant, name)
    if name in ("export_keras", "load_keras_backbone"):
        from bit_keras.export import keras_file

        return getattr(keras_file, name)
    raise AttributeError(f"module 'bit_keras.export' has no attribute {name!r}")


__all__ = ["METADATA_PATH", "read_metadata", "export_model", "export_variant", "load_backbone",
           "ExportedBackbone", "export_keras", "load_keras_backbone"]
