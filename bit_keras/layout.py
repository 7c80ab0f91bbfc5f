"""The release's checkpoint key layout, as data.

Keras layer names are the release's module paths with "/" written as "-", so
`resnet/block1/unit01/a/standardized_conv2d/kernel` is the `kernel` of layer
`block1-unit01-a-standardized_conv2d`. Loading and saving are then a name lookup.
Not "/": Keras forbids it in names. Not ".": the PyTorch backend registers every
variable under its path, and torch refuses parameter names with a dot.
"""

from __future__ import annotations

import dataclasses

PREFIX = "resnet/"
SEPARATOR = "-"


def layer_name(*parts: str) -> str:
    """A Keras layer name from the parts of its release module path."""
    return SEPARATOR.join(parts)


HEAD_LAYER = layer_name("head", "conv2d")
ROOT_CONV = layer_name("root_block", "standardized_conv2d")
PRE_HEAD_NORM = "group_norm"


@dataclasses.dataclass(frozen=True)
class LayoutEntry:
    key: str          # full checkpoint key
    shape: tuple      # shape in the checkpoint
    layer: str        # Keras layer name
    weight: str       # attribute of that layer ("kernel", "bias", "gamma", "beta")


def layer_to_key(layer: str, weight: str) -> str:
    return PREFIX + layer.replace(SEPARATOR, "/") + "/" + weight


def _conv(layer, shape):
    return LayoutEntry(layer_to_key(layer, "kernel"), tuple(shape), layer, "kernel")


def _norm(layer, channels):
    return [LayoutEntry(layer_to_key(layer, w), (channels,), layer, w) for w in ("gamma", "beta")]


def unit_layer(unit, *parts: str) -> str:
    """The Keras layer name of a part of `unit` (an `architecture.Unit`)."""
    return layer_name(*unit.name.split("/"), *parts)


def checkpoint_layout(architecture, num_classes: int | None):
    """Every array of a BiT checkpoint for `architecture`, in network order.

    `num_classes=None` leaves the head out (a feature extractor).
    """
    entries = [_conv(ROOT_CONV, (7, 7, 3, architecture.root_channels))]
    for unit in architecture.units():
        cin, mid, out = unit.in_channels, unit.mid_channels, unit.out_channels
        entries += _norm(unit_layer(unit, "a", "group_norm"), cin)
        entries.append(_conv(unit_layer(unit, "a", "standardized_conv2d"), (1, 1, cin, mid)))
        entries += _norm(unit_layer(unit, "b", "group_norm"), mid)
        entries.append(_conv(unit_layer(unit, "b", "standardized_conv2d"), (3, 3, mid, mid)))
        entries += _norm(unit_layer(unit, "c", "group_norm"), mid)
        entries.append(_conv(unit_layer(unit, "c", "standardized_conv2d"), (1, 1, mid, out)))
        if unit.projection:
            entries.append(_conv(unit_layer(unit, "a", "proj", "standardized_conv2d"), (1, 1, cin, out)))
    features = architecture.num_features
    entries += _norm(PRE_HEAD_NORM, features)
    if num_classes is not None:
        entries.append(LayoutEntry(layer_to_key(HEAD_LAYER, "kernel"), (1, 1, features, num_classes), HEAD_LAYER, "kernel"))
        entries.append(LayoutEntry(layer_to_key(HEAD_LAYER, "bias"), (num_classes,), HEAD_LAYER, "bias"))
    return entries
