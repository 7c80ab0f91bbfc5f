"""`BiTBackbone`: the BiT ResNet-v2 as a functional Keras model, images in [0, 1] -> features.

Every weighted layer is named after its checkpoint key (`layout.py`), so weights map by
name; every unit ends in a named `Add` (`block3-unit06-add`) and the four block outputs
are `pyramid_outputs` keyed as keras-hub's (`P2`..`P5`). `dtype` is handed to every layer
(Keras' functional constructor drops a model-level `dtype`) and keras-hub's `Backbone` sets
the model's own `dtype_policy` from it.
"""

from __future__ import annotations

import keras
import keras_hub
from keras import ops

from bit_keras import layout
from bit_keras.architecture import Architecture
from bit_keras.layers import GN_EPSILON, GroupNormalization, StandardizedConv2D
from bit_keras.layout import ROOT_CONV, SEPARATOR, layer_name, norm_layer, unit_layer
from bit_keras.errors import ConfigError
from bit_keras.inference import StandardizesOncePerPredict
from bit_keras.regularization import DropPath, check_rate, drop_path_rates

BN_MOMENTUM = 0.9        # moving statistics: the classic ResNet value (PyTorch's 0.1), not Keras' 0.99
BN_EPSILON = GN_EPSILON  # 1e-5, as BiT's GroupNorm and the classic ResNet BatchNorm


@keras.saving.register_keras_serializable(package="bit_keras")
class ImageRescaling(keras.layers.Layer):
    """Checks that images are float [0, 1] RGB and maps them to BiT's [-1, 1] range.

    Integer images are refused rather than silently treated as [0, 1] floats, because a
    uint8 image in [0, 255] would give a confidently wrong model.
    """

    def call(self, images):
        if images.shape[-1] != 3:
            raise ConfigError(f"BiT models take RGB images of shape [batch, height, width, 3]; "
                             f"received shape {tuple(images.shape)}.")
        return ops.cast(images, self.compute_dtype) * 2.0 - 1.0

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):  # no arguments of its own: saved even when `dtype` was a policy object
        return super().get_config()


# `--precision` of finetune, train and bench -> the Keras dtype policy every layer gets (one map, in precision.py).
from bit_keras.precision import PRECISION_POLICIES  # noqa: E402,F401


# keras-hub's pyramid level of each block: level n has stride 2**n (block1 is at stride 4).
PYRAMID_LEVELS = {1: "P2", 2: "P3", 3: "P4", 4: "P5"}
OUTPUT_STRIDES = (32, 16, 8)  # 32: BiT's network; 16 and 8: atrous last blocks (DeepLab)


def atrous_plan(units, output_stride: int = 32) -> list:
    """(stride, dilation) of each unit so that no map is smaller than 1/`output_stride` of the image.

    A unit that would take the stride past `output_stride` keeps stride 1 and its block's
    dilation so far; the units after it dilate by the stride it dropped (torchvision's and
    DeepLab's `replace_stride_with_dilation`). Same kernels, so the same weights load.
    """
    if isinstance(output_stride, bool) or output_stride not in OUTPUT_STRIDES:
        raise ConfigError(f"output_stride must be one of {OUTPUT_STRIDES} (32 is BiT's network; 16 and 8 dilate "
                          f"the last blocks). Received: output_stride={output_stride!r}")
    plan, current, dilation = [], 4, 1  # the root block leaves stride 4
    for unit in units:
        if unit.stride > 1 and current * unit.stride > output_stride:
            plan.append((1, dilation))
            dilation *= unit.stride
        else:
            plan.append((unit.stride, dilation))
            current *= unit.stride
    return plan


def policy_name(dtype) -> str:
    """The dtype policy every layer gets: the one asked for, else Keras' global policy now."""
    return (keras.dtype_policies.get(dtype) if dtype is not None else keras.config.dtype_policy()).name


def check_image_dtype(images):
    dtype = keras.backend.standardize_dtype(getattr(images, "dtype", "float32"))
    if not dtype.startswith(("float", "bfloat")):
        raise ConfigError(f"BiT models take float images in [0, 1]; received dtype {dtype}. "
                         f"Convert with `images.astype('float32') / 255`.")


class _Layers:
    """Makes the named layers of one network with one dtype policy, initializer and switches."""

    def __init__(self, dtype, initializer, normalization="group", weight_standardization=True,
                 groups=layout.BIT_GROUPS, sync_batch_norm=False, drop_path=None):
        self.dtype, self.initializer = dtype, initializer
        self.normalization, self.weight_standardization = normalization, weight_standardization
        self.groups, self.sync_batch_norm = groups, sync_batch_norm
        self.drop_path = drop_path or {}

    def conv(self, filters, kernel_size, name, stride=1, dilation=1):
        # Without weight standardization: a plain Conv2D under the same name (and checkpoint key).
        conv = StandardizedConv2D if self.weight_standardization else keras.layers.Conv2D
        return conv(filters, kernel_size, strides=stride, dilation_rate=dilation, padding="valid", use_bias=False,
                    kernel_initializer=self.initializer, dtype=self.dtype, name=name)

    def norm(self, x, *name):
        """The network's normalization at module path `name` (the identity for "none")."""
        layer = norm_layer(*name, normalization=self.normalization)
        if self.normalization == "group":
            return GroupNormalization(groups=self.groups, dtype=self.dtype, name=layer)(x)
        if self.normalization == "batch":
            return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                                   synchronized=self.sync_batch_norm, dtype=self.dtype,
                                                   name=layer)(x)
        return x

    def norm_relu(self, x, *name):
        x = self.norm(x, *name)
        return keras.layers.ReLU(dtype=self.dtype, name=layer_name(*name, "relu"))(x)

    def pad(self, x, amount, name):
        return keras.layers.ZeroPadding2D(amount, dtype=self.dtype, name=name)(x)

    def root(self, x, channels):
        x = self.pad(x, 3, layer_name("root_block", "pad_conv"))
        x = self.conv(channels, 7, ROOT_CONV, stride=2)(x)
        # Zeros, not -inf: the release pads the pool input with zeros although it can be negative.
        x = self.pad(x, 1, layer_name("root_block", "pad_pool"))
        return keras.layers.MaxPooling2D(3, strides=2, padding="valid", dtype=self.dtype,
                                         name=layer_name("root_block", "pool"))(x)

    def unit(self, x, unit, stride=None, dilation=1):
        """One pre-activation bottleneck; the projection takes the pre-activated input.

        `stride` (default: the unit's) and `dilation` of the 3x3 convolution (its zero padding
        grows with it, so the map keeps its size): the atrous blocks of `output_stride`.
        """
        stride = unit.stride if stride is None else stride
        h = self.norm_relu(x, unit_layer(unit, "a"))
        shortcut = x
        if unit.projection:
            shortcut = self.conv(unit.out_channels, 1, unit_layer(unit, "a", "proj", "standardized_conv2d"),
                                 stride)(h)
        h = self.conv(unit.mid_channels, 1, unit_layer(unit, "a", "standardized_conv2d"))(h)
        h = self.norm_relu(h, unit_layer(unit, "b"))
        h = self.pad(h, dilation, unit_layer(unit, "b", "pad"))
        h = self.conv(unit.mid_channels, 3, unit_layer(unit, "b", "standardized_conv2d"), stride, dilation)(h)
        h = self.norm_relu(h, unit_layer(unit, "c"))
        h = self.conv(unit.out_channels, 1, unit_layer(unit, "c", "standardized_conv2d"))(h)
        rate = self.drop_path.get(unit.name, 0.0)
        if rate > 0:  # absent at rate 0, so the default network's layers are exactly BiT's
            h = DropPath(rate, dtype=self.dtype, name=unit_layer(unit, "drop_path"))(h)
        return keras.layers.Add(dtype=self.dtype, name=unit_layer(unit, "add"))([h, shortcut])


@keras.saving.register_keras_serializable(package="bit_keras")
class BiTBackbone(StandardizesOncePerPredict, keras_hub.models.FeaturePyramidBackbone):
    """A BiT ResNet-v2 feature extractor: float images in [0, 1] of any size -> [batch, 2048*width].

    Args:
        block_units: units in each of the four blocks, e.g. (3, 4, 6, 3) for R50.
        width: width multiplier (1, 2, 3, 4 in the release).
        normalization: "group" (BiT's GroupNorm), "batch" (`keras.layers.BatchNormalization`,
            momentum 0.9, epsilon 1e-5) or "none" (no normalization layer; the ReLUs stay).
        weight_standardization: True (BiT) standardizes every convolution's kernel; False
            uses plain `Conv2D` layers under the same names, shapes and checkpoint keys.
        groups: groups of every GroupNorm (32 in BiT); only with normalization="group".
        stochastic_depth: drop-path rate r on the residual branch of each unit: unit i
            (0-based, in network order, of N units) drops with rate r * (i + 1) / N, so
            the last unit gets r (Huang et al.'s linear rule). Identity at inference.
        sync_batch_norm: with normalization="batch", statistics over the global batch under
            tf.distribute (`synchronized=True`); by default each replica uses its own batch.
        output_stride: 32 (BiT), or 16 / 8 for dense prediction (DeepLab): the last block (16) or
            the last two (8) keep the resolution and use dilated (atrous) 3x3 convolutions
            instead, so block4 has stride 16 (8). Same layers and kernel shapes:
            released weights load unchanged.
        initializer: kernel initializer; "zeros" is much faster when weights are loaded next.
        dtype: a dtype policy for every layer, e.g. "mixed_bfloat16" (bfloat16 compute,
            float32 variables and GroupNorm statistics). None: Keras' global policy.

    The defaults are BiT's network, the one the released checkpoints hold; those load only
    into it. Other settings are for research (see "Research switches" in the documentation).

    Attributes:
        pyramid_outputs: {"P2": block1, "P3": block2, "P4": block3, "P5": block4} (keras-hub's
            keys; strides 4, 8, 16, 32): each block's last `Add`, the pre-activation residual
            sum (not normalized: ResNet-v2 normalizes at the start of the next unit, and only
            the final map gets the "pre_head" GroupNorm + ReLU). Level n is always at stride 2**n:
            with `output_stride=16` block4 is "P4" (block3, at the same stride, is left out) and
            there is no "P5"; with 8, block4 is "P3". `block_outputs` keys every block by number. For
            `keras.Model(backbone.input, backbone.pyramid_outputs)` and keras-hub's
            RetinaNet/DeepLabV3 `image_encoder`.

    Example:
        >>> backbone = BiTBackbone.from_preset("r14x1")          # random weights
        >>> backbone(np.zeros((2, 64, 64, 3), "float32")).shape
        (2, 2048)
        >>> backbone = BiTBackbone.from_preset("m-r50x1")        # the released weights
    """

    def __init__(self, block_units=(3, 4, 6, 3), width=1, *, normalization="group", weight_standardization=True,
                 groups=layout.BIT_GROUPS, stochastic_depth=0.0, sync_batch_norm=False, output_stride=32,
                 initializer="he_normal", dtype=None, name=None, **kwargs):
        architecture = Architecture(tuple(block_units), width)
        network = layout.network_config(normalization, weight_standardization, groups)
        stochastic_depth = check_rate(stochastic_depth, "stochastic_depth")
        if not isinstance(sync_batch_norm, bool) or (sync_batch_norm and normalization != "batch"):
            raise ConfigError(f"sync_batch_norm=True applies only to normalization='batch'. "
                              f"Received: sync_batch_norm={sync_batch_norm!r}, normalization={normalization!r}")
        units = architecture.units()
        plan = atrous_plan(units, output_stride)
        rates = dict(zip((unit.name for unit in units), drop_path_rates(stochastic_depth, len(units))))
        layers = _Layers(dtype, initializer, normalization, weight_standardization, groups, sync_batch_norm, rates)
        images = keras.Input(shape=(None, None, 3), name="images")
        x = ImageRescaling(dtype=dtype, name="rescale")(images)
        x = layers.root(x, architecture.root_channels)
        blocks, strides, stride = {}, {}, 4
        for unit, (unit_stride, dilation) in zip(units, plan):
            x = blocks[unit.block] = layers.unit(x, unit, unit_stride, dilation)
            stride *= unit_stride
            strides[unit.block] = stride
        # Level n holds the deepest block at stride 2**n (with atrous blocks, several share one).
        pyramid = {f"P{strides[block].bit_length() - 1}": blocks[block] for block in sorted(blocks)}
        x = layers.norm(x)
        x = keras.layers.ReLU(dtype=dtype, name=layer_name("pre_head", "relu"))(x)
        features = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="pre_logits")(x)
        super().__init__(inputs=images, outputs=features, name=name or f"bit_{architecture.name}",
                         dtype=policy_name(dtype), **kwargs)
        self.architecture = architecture
        self.initializer = initializer
        self.normalization = normalization
        self.weight_standardization = weight_standardization
        self.groups = groups
        self.stochastic_depth = stochastic_depth
        self.sync_batch_norm = sync_batch_norm
        self.network = network
        self.drop_path_rates = rates
        self.pyramid_outputs = pyramid
        self.block_outputs = blocks
        self.output_stride = output_stride

    @property
    def block_units(self) -> tuple:
        return self.architecture.block_units

    @property
    def width(self) -> int:
        return self.architecture.width

    @property
    def num_features(self) -> int:
        return self.architecture.num_features

    def call(self, inputs, training=None, mask=None):
        check_image_dtype(inputs)
        if inputs.shape[0] == 0:  # eager TF's ops.add takes a [0, 1, 1, C] operand for a bias and fails
            return ops.zeros((0, self.num_features), self.compute_dtype)
        return super().call(inputs, training=training, mask=mask)

    def get_config(self):
        # keras-hub's Backbone config (name, trainable, the model's dtype policy) plus our arguments.
        return {**super().get_config(), "block_units": list(self.block_units), "width": self.width,
                "normalization": self.normalization, "weight_standardization": self.weight_standardization,
                "groups": self.groups, "stochastic_depth": self.stochastic_depth,
                "sync_batch_norm": self.sync_batch_norm, "initializer": self.initializer,
                **({"output_stride": self.output_stride} if self.output_stride != 32 else {})}

    @classmethod
    def from_preset(cls, preset, *, load_weights: bool = True, weights=None, dtype=None, cache_dir=None,
                    **kwargs) -> "BiTBackbone":
        """A backbone by name: a release (`m-r50x1`) comes with its weights, an architecture
        (`r50x1`, `r2-3-4-1x2`) with random ones. `weights=` (file, URL or release name)
        overrides; `load_weights=False` gives random weights for a release name.

        Other keyword arguments go to `BiTBackbone` (`normalization=`, `stochastic_depth=`, ...);
        a release's weights load only into BiT's own network (GroupNorm, 32 groups, weight
        standardization): asking for another with them is a ConfigError, before any download.
        """
        from bit_keras import weights as weights_rule
        from bit_keras.export import keras_hub as hub_presets

        if hub_presets.is_keras_hub_handle(preset):  # keras-hub's own loader: config + .h5 weights
            return super().from_preset(preset, load_weights=load_weights, dtype=dtype, **kwargs)
        if load_weights:
            weights_rule.refuse_release_into(preset, weights, **kwargs)
        choice = weights_rule.resolve(preset, weights, load_weights=load_weights, cache_dir=cache_dir)
        weights_rule.warn_if_random(choice, asked=not load_weights)
        return cls.from_weights(choice, dtype=dtype, **kwargs)

    @classmethod
    def from_weights(cls, choice, *, dtype=None, load: bool = True, **kwargs) -> "BiTBackbone":
        """A backbone of a `weights.WeightsChoice`'s architecture, its weights loaded (unless `load=False`)."""
        from bit_keras import checkpoint

        backbone = cls(choice.architecture.block_units, choice.architecture.width, dtype=dtype,
                       initializer="zeros" if choice.path else "he_normal", **kwargs)
        if choice.path and load:
            checkpoint.load_weights(backbone, choice.path)
        backbone.release = choice.preset  # what a keras-hub preset's metadata names
        return backbone

    def save_to_preset(self, preset_dir, max_shard_size=10):
        """keras-hub's preset (config, weights) plus an image converter at the release's
        resolution (so keras-hub's `ImageClassifier.from_preset(DIR, num_classes=...)` has a
        preprocessor) and `bit_keras.json` (resolution, class names, HyperRule defaults)."""
        from bit_keras.export import keras_hub as hub_presets
        from bit_keras.preprocessing import BiTImageConverter

        super().save_to_preset(preset_dir, max_shard_size=max_shard_size)
        resolution = hub_presets.describe(self)["resolution"]
        BiTImageConverter(image_size=tuple(resolution)).save_to_preset(preset_dir)
        hub_presets.write_metadata(self, preset_dir)


def feature_maps(model: keras.Model, blocks=(1, 2, 3, 4)) -> keras.Model:
    """A model from images to the output maps of the given blocks (a dict keyed "block{b}").

    The maps are `pyramid_outputs` (block b is keras-hub's level P{b+1}).
    """
    backbone = getattr(model, "backbone", model)
    pyramid = getattr(backbone, "pyramid_outputs", None)
    if not pyramid:
        raise ConfigError(f"{model.name!r} is not a BiT backbone or classifier; feature maps need one.")
    outputs = getattr(backbone, "block_outputs", None) or {
        b: pyramid[level] for b, level in PYRAMID_LEVELS.items() if level in pyramid}
    have = sorted(outputs)
    missing = [b for b in blocks if not isinstance(b, int) or isinstance(b, bool) or b not in have]
    if missing:
        raise ConfigError(f"Model {model.name!r} has no block {missing[0]!r}; it has blocks {have}.")
    return keras.Model(backbone.input, {f"block{b}": outputs[b] for b in blocks},
                       name=f"{backbone.name}_feature_maps")


def _block_index(block) -> int | None:
    """0 for "root", b for b, "b" or "block{b}" with b in 1..4, else None."""
    if block == "root":
        return 0
    if isinstance(block, str):
        digits = block[len("block"):] if block.startswith("block") else block
        block = int(digits) if digits.isdigit() else None
    return block if isinstance(block, int) and not isinstance(block, bool) and block in PYRAMID_LEVELS else None


def freeze_up_to(model: keras.Model, block: str | int) -> list:
    """Freezes the root and every block up to and including `block` (e.g. 2 or "block2").

    Returns the names of the frozen layers. Partial fine-tuning of this kind is what the
    old TF-Hub models (one opaque layer) could not do.
    """
    last = _block_index(block)
    if last is None:
        raise ConfigError(f"Nothing to freeze up to {block!r}: the blocks are 'root', 'block1', 'block2', "
                          f"'block3' and 'block4' (or 1-4).")
    frozen = []
    for layer in getattr(model, "backbone", model).layers:
        prefix = layer.name.split(SEPARATOR)[0]
        index = 0 if prefix == "root_block" else int(prefix[5:]) if prefix.startswith("block") and prefix[5:].isdigit() else None
        if index is not None and index <= last:
            layer.trainable = False
            frozen.append(layer.name)
    if not frozen:
        raise ConfigError(f"{model.name!r} has no BiT blocks to freeze; freeze_up_to needs a BiT backbone or classifier.")
    return frozen
