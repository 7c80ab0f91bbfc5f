"""keras-hub presets: a BiT model as a directory `keras_hub.models.*.from_preset` loads.

keras-hub writes the preset itself (`config.json`, `model.weights.h5`, `task.json`, ...,
`metadata.json`); we add `bit_keras.json`: the model name, the resolution the preprocessor
resizes to, the class names where the release has them (ILSVRC-2012) and the HyperRule's
defaults, as plain JSON. Loading a preset deserializes only registered classes, with Keras'
safe mode on (keras-hub's loader), and reads weights from `.h5`: no stored code runs.
"""

from __future__ import annotations

import os

from bit_keras import files
from bit_keras.errors import ConfigError

METADATA_FILE = "bit_keras.json"
FORMAT = "bit_keras.keras_hub_preset"


REMOTE_SCHEMES = ("kaggle://", "hf://", "modelscope://")


def is_preset_directory(path) -> bool:
    """A local directory keras-hub would load (it has keras-hub's `config.json`)."""
    return isinstance(path, (str, os.PathLike)) and os.path.isfile(os.path.join(os.fspath(path), "config.json"))


def is_keras_hub_handle(preset) -> bool:
    """A keras-hub preset: a local preset directory or a Kaggle/Hugging Face/ModelScope handle
    (timm's BiT repositories, `hf://timm/...`, are read by bit_keras itself: `timm.py`)."""
    if isinstance(preset, str) and preset.startswith(REMOTE_SCHEMES):
        return not preset.startswith("hf://timm/")
    return is_preset_directory(preset)


def class_names(release, num_classes) -> list | None:
    """ILSVRC-2012's 1000 names for a release whose head is an ILSVRC-2012 head, else None."""
    if release is None or num_classes != 1000 or release.num_classes != 1000:
        return None
    from keras_hub.src.utils.imagenet.imagenet_utils import IMAGENET_NAMES

    return [IMAGENET_NAMES[index][1] for index in range(1000)]


def describe(model) -> dict:
    """`bit_keras.json` of a backbone or classifier."""
    from bit_keras import __version__
    from bit_keras.export.metadata import hyperrule_parameters
    from bit_keras.presets import EVALUATION_RESOLUTION

    backbone = getattr(model, "backbone", model)
    release = getattr(model, "release", None) or getattr(backbone, "release", None)
    converter = getattr(getattr(model, "preprocessor", None), "image_converter", None)
    resolution = (converter.image_size if converter is not None and converter.image_size else
                  (release.resolution,) * 2 if release else (EVALUATION_RESOLUTION,) * 2)
    num_classes = getattr(model, "num_classes", None)
    return {
        "format": FORMAT,
        "bit_keras_version": __version__,
        "model": release.name if release else getattr(getattr(backbone, "architecture", None), "name", None),
        "upstream": release.upstream if release else None,
        "num_features": getattr(backbone, "num_features", None),
        "num_classes": num_classes,
        "multi_label": getattr(model, "multi_label", None),
        "resolution": list(resolution),
        "input": "uint8 RGB images of any size through the preprocessor, or float32 [0, 1] straight to the model",
        "class_names": class_names(release, num_classes),
        "hyperrule": hyperrule_parameters(getattr(backbone, "architecture", None)),
    }


def write_metadata(model, directory) -> None:
    files.write_json(os.path.join(directory, METADATA_FILE), describe(model))


def read_metadata(directory) -> dict | None:
    """A preset's `bit_keras.json`, or None (a preset bit_keras did not write)."""
    return files.read_json(os.path.join(os.fspath(directory), METADATA_FILE))


def check_preset_target(directory, *, overwrite=False) -> str:
    """`files.check_target` for presets: `overwrite` replaces only an earlier preset of ours or an empty folder."""
    directory = os.path.abspath(os.fspath(directory))
    if directory.endswith(".keras"):
        raise ConfigError(f"A keras-hub preset is a directory; {directory} ends in .keras.")
    return files.check_target(directory, overwrite=overwrite, markers=(METADATA_FILE,),
                              kind="an earlier bit_keras keras-hub preset")


def export_preset(model, directory, *, overwrite=False) -> str:
    """Writes `model`'s keras-hub preset to `directory` atomically (a staged folder renamed into place)."""
    directory = check_preset_target(directory, overwrite=overwrite)
    with files.locked(directory), files.staged_directory(directory, overwrite=overwrite) as staging:
        model.save_to_preset(staging)
    return directory
