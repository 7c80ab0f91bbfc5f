"""bit_keras: Big Transfer (BiT) ResNet-v2 models for Keras 3.

The pipeline, module by module: `architecture` (the shape and its one walk) and `presets`
(the releases, the name grammar) -> `layers` -> `backbone` (`BiTBackbone`) and `classifier`
(`BiTImageClassifier`, the HyperRule head) -> `weights` (which weights a name means) with
`checkpoint`/`download` (release .npz I/O) -> `hyperrule`/`learning_rates` -> data ->
fine-tuning, upstream training, export -> `cli`.

Heavy imports (Keras, keras-hub) happen on first use, so `bit_keras list` stays fast; the
first use of any model class (or `import bit_keras.models`) registers all of BiT's classes
with Keras and keras-hub.
"""

from bit_keras.architecture import Architecture
from bit_keras.errors import BiTError, CheckpointError, ConfigError, DownloadError
from bit_keras.presets import PRESETS

__version__ = "0.1.0"

_LAZY = {
    "BiTBackbone": "bit_keras.models",
    "BiTImageClassifier": "bit_keras.models",
    "BiTImageConverter": "bit_keras.models",
    "BiTImageClassifierPreprocessor": "bit_keras.models",
    "ClassificationLoss": "bit_keras.models",
    "ClassificationAccuracy": "bit_keras.models",
    "create_model": "bit_keras.models",
    "feature_maps": "bit_keras.backbone",
    "freeze_up_to": "bit_keras.backbone",
    "StandardizedConv2D": "bit_keras.layers",
    "GroupNormalization": "bit_keras.layers",
    "fold_standardization": "bit_keras.inference",
    "load_weights": "bit_keras.checkpoint",
    "save_weights": "bit_keras.checkpoint",
    "load_source": "bit_keras.data",
    "from_arrays": "bit_keras.data",
    "few_shot": "bit_keras.data",
    "DatasetInfo": "bit_keras.data",
    "export_model": "bit_keras.export",
    "export_variant": "bit_keras.export",
    "load_backbone": "bit_keras.export",
    "read_metadata": "bit_keras.export",
    "build_finetuner": "bit_keras.finetune",
    "WarmupStepDecay": "bit_keras.learning_rates",
    "AccumulatingSGD": "bit_keras.optimizers",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bit_keras' has no attribute {name!r}")


def __dir__():
    # The lazy names too, so tab completion and dir(bit_keras) show the classes.
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["Architecture", "PRESETS", "BiTError", "CheckpointError", "ConfigError", "DownloadError", *_LAZY]
