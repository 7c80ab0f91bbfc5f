"""`create_model`: one line over `from_preset` for scripts that want "a BiT by name"."""

from __future__ import annotations


def create_model(preset, *, include_top: bool = True, **kwargs):
    """`BiTImageClassifier.from_preset(preset, **kwargs)`, or the `BiTBackbone` when `include_top=False`."""
    from bit_keras.backbone import BiTBackbone
    from bit_keras.classifier import BiTImageClassifier

    return (BiTImageClassifier if include_top else BiTBackbone).from_preset(preset, **kwargs)
