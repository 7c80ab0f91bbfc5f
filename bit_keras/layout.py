"""The release's checkpoint key layout, as data.

Keras layer names are the release's module paths with "/" written as "-", so
`resnet/block1/unit01/a/standardized_conv2d/kernel` is the `kernel` of layer
`block1-unit01-a-standardized_conv2d`. Loading and saving are then a name lookup.
Not "/": Keras forbids it in names. Not ".": the PyTorch backend registers every
variable under its path, and torch refuses parameter names with a dot.
"""

from __future__ import annotations

import dataclasses

from bit_keras.errors import ConfigError

PREFIX = "resnet/"
SEPARATOR = "-"


def layer_name(*parts: str) -> str:
    """A Keras layer name from the parts of its release module path."""
    return SEPARATOR.join(parts)


HEAD_LAYER = layer_name("head", "conv2d")
ROOT_CONV = layer_name("root_block", "standardized_conv2d")
PRE_HEAD_NORM = "group_norm"

# Research switches (`BiTBackbone(normalization=..., weight_standardization=..., groups=...)`).
# The release is GroupNorm with 32 groups plus weight standardization; other networks keep
# the release's key layout and extend it:
# - batch norm: `.../a/batch_norm/{gamma,beta,moving_mean,moving_variance}` where the release
#   has `.../a/group_norm/{gamma,beta}` (pre-head: `resnet/batch_norm/...`);
# - no normalization: no norm keys at all;
# - plain convolutions (no weight standardization): the same `standardized_conv2d/kernel`
#   keys and shapes, holding the raw kernels.
# Such a file also holds NETWORK_KEY, a 0-d unicode array with the switches as JSON
# (`{"normalization": "batch", "weight_standardization": false, "groups": null}`), so a
# network loads only into its own kind. A file without it (every release) is BiT's network.
NORMALIZATIONS = ("group", "batch", "none")
NORM_LAYER = {"group": "group_norm", "batch": "batch_norm"}
NORM_WEIGHTS = {"group": ("gamma", "beta"), "batch": ("gamma", "beta", "moving_mean", "moving_variance"),
                "none": ()}
NETWORK_KEY = "bit_keras/network"
BIT_GROUPS = 32


def network_config(normalization="group", weight_standardization=True, groups=BIT_GROUPS) -> dict:
    """The checked switches that change a network's weights; `groups` is None unless GroupNorm."""
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"normalization must be one of {', '.join(map(repr, NORMALIZATIONS))}. "
                          f"Received: normalization={normalization!r}")
    if not isinstance(weight_standardization, bool):
        raise ConfigError(f"weight_standardization must be True or False. "
                          f"Received: weight_standardization={weight_standardization!r}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ConfigError(f"groups must be a positive integer. Received: groups={groups!r}")
    if normalization != "group" and groups != BIT_GROUPS:
        raise ConfigError(f"groups={groups} applies only to normalization='group'; "
                          f"drop it or pass normalization='group'.")
    return {"normalization": normalization, "weight_standardization": weight_standardization,
            "groups": groups if normalization == "group" else None}


BIT_NETWORK = network_config()


def describe_network(network: dict) -> str:
    """E.g. "GroupNorm (32 groups) + weight standardization", "BatchNorm, plain convolutions"."""
    norm = {"group": f"GroupNorm ({network['groups']} groups)", "batch": "BatchNorm",
            "none": "no normalization"}[network["normalization"]]
    return norm + (" + weight standardization" if network["weight_standardization"] else ", plain convolutions")


def network_switches(network: dict) -> str:
    """The constructor arguments that build `network`, e.g. "normalization='batch', weight_standardization=False"."""
    parts = [f"normalization={network['normalization']!r}",
             f"weight_standardization={network['weight_standardization']}"]
    if network["normalization"] == "group":
        parts.append(f"groups={network['groups']}")
    return ", ".join(parts)


def norm_layer(*parts: str, normalization: str = "group") -> str | None:
    """The Keras layer name of the norm at module path `parts` (pre-head: no parts); None without one."""
    kind = NORM_LAYER.get(normalization)
    return layer_name(*parts, kind) if kind else None


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


def _norm(layer, channels, normalization="group"):
    if layer is None:
        return []
    return [LayoutEntry(layer_to_key(layer, w), (channels,), layer, w) for w in NORM_WEIGHTS[normalization]]


def unit_layer(unit, *parts: str) -> str:
    """The Keras layer name of a part of `unit` (an `architecture.Unit`)."""
    return layer_name(*unit.name.split("/"), *parts)


def checkpoint_layout(architecture, num_classes: int | None, normalization: str = "group"):
    """Every array of a BiT checkpoint for `architecture`, in network order.

    `num_classes=None` leaves the head out (a feature extractor). `normalization` other
    than "group" gives the extended layout described above (no NETWORK_KEY entry: it is
    not a weight).
    """
    def norm(*parts):
        return norm_layer(*unit.name.split("/"), *parts, normalization=normalization)

    entries = [_conv(ROOT_CONV, (7, 7, 3, architecture.root_channels))]
    for unit in architecture.units():
        cin, mid, out = unit.in_channels, unit.mid_channels, unit.out_channels
        entries += _norm(norm("a"), cin, normalization)
        entries.append(_conv(unit_layer(unit, "a", "standardized_conv2d"), (1, 1, cin, mid)))
        entries += _norm(norm("b"), mid, normalization)
        entries.append(_conv(unit_layer(unit, "b", "standardized_conv2d"), (3, 3, mid, mid)))
        entries += _norm(norm("c"), mid, normalization)
        entries.append(_conv(unit_layer(unit, "c", "standardized_conv2d"), (1, 1, mid, out)))
        if unit.projection:
            entries.append(_conv(unit_layer(unit, "a", "proj", "standardized_conv2d"), (1, 1, cin, out)))
    features = architecture.num_features
    entries += _norm(norm_layer(normalization=normalization), features, normalization)
    if num_classes is not None:
        entries.append(LayoutEntry(layer_to_key(HEAD_LAYER, "kernel"), (1, 1, features, num_classes), HEAD_LAYER, "kernel"))
        entries.append(LayoutEntry(layer_to_key(HEAD_LAYER, "bias"), (num_classes,), HEAD_LAYER, "bias"))
    return entries
