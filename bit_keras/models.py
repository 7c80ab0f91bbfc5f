"""BiT's keras-hub classes in one import, and `create_model` for scripts that want "a BiT by name".

Importing this module registers every BiT class with Keras (and so with keras-hub), which
is what loading a saved preset or `.keras` file in a fresh process needs:
`import bit_keras.models` then `keras_hub.models.ImageClassifier.from_preset(DIR)`.
"""

from __future__ import annotations

from bit_keras.backbone import BiTBackbone
from bit_keras.classifier import BiTImageClassifier
from bit_keras.labels import ClassificationAccuracy, ClassificationLoss
from bit_keras.preprocessing import BiTImageClassifierPreprocessor, BiTImageConverter

__all__ = ["BiTBackbone", "BiTImageClassifier", "BiTImageConverter", "BiTImageClassifierPreprocessor",
           "ClassificationLoss", "ClassificationAccuracy", "create_model"]


def create_model(preset, *, include_top: bool = True, **kwargs):
    """`BiTImageClassifier.from_preset(preset, **kwargs)`, or the `BiTBackbone` when `include_top=False`."""
    return (BiTImageClassifier if include_top else BiTBackbone).from_preset(preset, **kwargs)
