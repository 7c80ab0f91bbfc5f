"""bit_keras: Big Transfer (BiT) ResNet-v2 models for Keras 3.

The pipeline, module by module: `layers` -> `resnet_v2` (builders) and `variants` (the
registry) -> `checkpoint`/`download` (release .npz I/O) -> `hyperrule` -> data and
fine-tuning -> upstream training -> export -> `cli`.

Heavy imports (Keras) happen on first use, so `bit_keras list` stays fast.
"""

from bit_keras.variants import ARCHITECTURES, CHECKPOINTS, resolve_architecture, resolve_checkpoint

__version__ = "0.1.0"

_LAZY = {
    "create_model": "bit_keras.zoo",
    "BiTResNetV2": "bit_keras.resnet_v2",
    "feature_maps": "bit_keras.resnet_v2",
    "freeze_up_to": "bit_keras.resnet_v2",
    "StandardizedConv2D": "bit_keras.layers",
    "GroupNormalization": "bit_keras.layers",
    "fold_standardization": "bit_keras.inference",
    "load_weights": "bit_keras.checkpoint",
    "save_weights": "bit_keras.checkpoint",
    "CheckpointError": "bit_keras.checkpoint",
    "load_source": "bit_keras.data",
    "from_arrays": "bit_keras.data",
    "few_shot": "bit_keras.data",
    "DatasetInfo": "bit_keras.data",
    "export_model": "bit_keras.export",
    "export_variant": "bit_keras.export",
    "load_backbone": "bit_keras.export",
    "read_metadata": "bit_keras.export",
    "build_finetuner": "bit_keras.finetune",
    "HyperRuleSchedule": "bit_keras.finetune",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bit_keras' has no attribute {name!r}")


__all__ = ["ARCHITECTURES", "CHECKPOINTS", "resolve_architecture", "resolve_checkpoint", *_LAZY]
