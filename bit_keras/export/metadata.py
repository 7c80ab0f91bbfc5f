"""What an export says about itself: a JSON file inside the SavedModel directory.

The file is plain JSON at `DIR/assets/bit_keras.json`, so tools without bit_keras (or
without TensorFlow) can read which variant a directory holds, what it outputs, where its
weights came from and the HyperRule's parameters for fine-tuning it.
"""

from __future__ import annotations

import json
import os
from bit_keras.errors import ConfigError, MissingFileError

METADATA_PATH = os.path.join("assets", "bit_keras.json")
KERAS_SUFFIX = ".keras"
FORMAT = "bit_keras.savedmodel"
FORMAT_VERSION = 1

# How the exported function reads its input (TF Hub's image convention).
INPUT_CONVENTION = {
    "name": "images",
    "dtype": "float32",
    "shape": [None, None, None, 3],
    "layout": "NHWC, RGB",
    "range": [0.0, 1.0],
    "note": "Any height and width; the model maps [0, 1] to BiT's [-1, 1] inside.",
}


def check_export_target(path, *, overwrite) -> str:
    """`files.check_target` for exports: `overwrite` replaces only an earlier export (a folder with
    our metadata, or a .keras file) or an empty folder, never other work."""
    from bit_keras import files

    return files.check_target(path, overwrite=overwrite, markers=(METADATA_PATH,), suffixes=(KERAS_SUFFIX,),
                              kind="an earlier bit_keras export")


def hyperrule_parameters(architecture=None) -> dict:
    """The BiT-HyperRule's constants for fine-tuning `architecture`, read from `bit_keras.hyperrule`
    and the releases' own data (`presets`), not repeated here."""
    from bit_keras import hyperrule as rule
    from bit_keras import presets

    large = presets.hyperrule_resolution(architecture)

    return {
        "base_learning_rate": rule.BASE_LEARNING_RATE,
        "base_batch_size": rule.BASE_BATCH,
        "learning_rate_scaling": "linear in batch size: base_learning_rate * batch / base_batch_size",
        "optimizer": "SGD",
        "momentum": rule.MOMENTUM,
        "weight_decay": 0.0,
        "head_initializer": "zeros",
        "warmup": "linear",
        "decay_fractions": list(rule.DECAY_FRACTIONS),
        "decay_factor": rule.DECAY_FACTOR,
        "steps_at_base_batch": {name: {"warmup": steps[0], "total": steps[-1]}
                                for name, steps in rule.PUBLIC_SCHEDULES.items()},
        "dataset_thresholds": {"small_below": rule.SMALL_DATASET, "large_from": rule.LARGE_DATASET},
        "mixup_alpha": rule.MIXUP_ALPHA,
        "mixup_from_train_size": rule.SMALL_DATASET,
        "resolution": {
            "small_images_below_area": rule.SMALL_IMAGE_AREA,
            "small": dict(zip(("resize", "crop"), rule.SMALL_IMAGE_RESOLUTION)),
            "default": dict(zip(("resize", "crop"), large)),
        },
    }


def describe_model(model, *, serving_outputs: str) -> dict:
    """Metadata that follows from a BiTResNetV2 (or any model with its attributes)."""
    from bit_keras import __version__

    # A classifier (ours, or any model around a BiT backbone) describes its backbone; an
    # export's ExportedBackbone knows its own.
    bit = getattr(model, "backbone", None) or (model if hasattr(model, "block_units") else next(
        (layer for layer in getattr(model, "layers", []) if hasattr(layer, "block_units")), model))
    block_units = getattr(bit, "block_units", None)
    width = getattr(bit, "width", None)
    architecture = getattr(bit, "architecture", None)
    if architecture is None and block_units and width:
        from bit_keras.architecture import Architecture

        architecture = Architecture(tuple(block_units), width)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "variant": architecture.name if architecture else None,
        "architecture": architecture.name if architecture else None,
        "block_units": list(block_units) if block_units else None,
        "width": width,
        "num_features": getattr(bit, "num_features", None),
        "outputs": serving_outputs,
        "num_classes": _num_classes(model) if serving_outputs == "logits" else None,
        "num_parameters": int(sum(int(_size(v.shape)) for v in model.weights)),
        "upstream": None,
        "multi_label": None,
        "checkpoint": None,
        "input": dict(INPUT_CONVENTION),
        "signatures": {"serving_default": {"inputs": {"images": "float32 [batch, height, width, 3]"},
                                           "outputs": {serving_outputs: "float32 [batch, n]"}}},
        "hyperrule": hyperrule_parameters(architecture),
        "bit_keras_version": __version__,
        "tensorflow_version": _version("tensorflow"),
        "keras_version": _version("keras"),
    }


def _num_classes(model):
    if getattr(model, "num_classes", None):
        return model.num_classes
    shape = getattr(model, "output_shape", None)
    return int(shape[-1]) if isinstance(shape, tuple) and shape and shape[-1] else None


def _size(shape) -> int:
    total = 1
    for dim in shape:
        total *= int(dim)
    return total


def _version(module_name):
    import importlib

    try:
        return importlib.import_module(module_name).__version__
    except Exception:  # a missing optional library only leaves the field empty
        return None


def write_metadata(directory, metadata: dict) -> str:
    path = os.path.join(directory, METADATA_PATH)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(metadata, stream, indent=2, sort_keys=True)
        stream.write("\n")
    return path


def read_metadata(directory) -> dict:
    """The metadata of an export made by `bit_keras export` (a dict; see export/README.md).

    Raises FileNotFoundError naming the directory when it is not such an export.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise MissingFileError(f"{directory} is not a directory; expected a SavedModel written by "
                                "`bit_keras export`.")
    path = os.path.join(directory, METADATA_PATH)
    if not os.path.exists(path):
        saved_model = os.path.exists(os.path.join(directory, "saved_model.pb"))
        raise MissingFileError(
            f"{directory} has no {METADATA_PATH}: " + (
                "it is a SavedModel, but not one written by `bit_keras export`." if saved_model else
                "it is not a SavedModel directory (an interrupted export leaves only a hidden "
                "'.NAME.*.partial' directory; export again)."))
    with open(path, encoding="utf-8") as stream:
        try:
            return json.load(stream)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON ({error}); export the model again.") from None
