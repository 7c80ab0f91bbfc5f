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


def unit_name(block: int, unit: int) -> str:
    return layer_name(f"block{block}", f"unit{unit:02d}")


def _conv(layer, shape):
    return LayoutEntry(layer_to_key(layer, "kernel"), tuple(shape), layer, "kernel")


def _norm(layer, channels):
    return [LayoutEntry(layer_to_key(layer, w), (channels,), layer, w) for w in ("gamma", "beta")]


def checkpoint_layout(block_units, width: int, num_classes: int | None):
    """Every array of a BiT checkpoint for this architecture, in network order.

    `num_classes=None` leaves the head out (a feature extractor).
    """
    entries = [_conv(ROOT_CONV, (7, 7, 3, 64 * width))]
    in_channels = 64 * width
    for block, units in enumerate(block_units, start=1):
        mid = 64 * width * 2 ** (block - 1)
        out = 4 * mid
        for unit in range(1, units + 1):
            name = unit_name(block, unit)
            entries += _norm(layer_name(name, "a", "group_norm"), in_channels)
            entries.append(_conv(layer_name(name, "a", "standardized_conv2d"), (1, 1, in_channels, mid)))
            entries += _norm(layer_name(name, "b", "group_norm"), mid)
            entries.append(_conv(layer_name(name, "b", "standardized_conv2d"), (3, 3, mid, mid)))
            entries += _norm(layer_name(name, "c", "group_norm"), mid)
            entries.append(_conv(layer_name(name, "c", "standardized_conv2d"), (1, 1, mid, out)))
            if unit == 1:  # The first unit changes stride or channels in every block.
                entries.append(_conv(layer_name(name, "a", "proj", "standardized_conv2d"), (1, 1, in_channels, out)))
            in_channels = out
    entries += _norm(PRE_HEAD_NORM, in_channels)
    if num_classes is not None:
        entries.append(LayoutEntry(layer_to_key(HEAD_LAYER, "kernel"), (1, 1, in_channels, num_classes), HEAD_LAYER, "kernel"))
        entries.append(LayoutEntry(layer_to_key(HEAD_LAYER, "bias"), (num_classes,), HEAD_LAYER, "bias"))
    return entries
