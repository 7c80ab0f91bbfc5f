"""The BiT ResNet-v2 as a Keras functional model: pre-activation bottlenecks with GN + WS.

Every weighted layer is named after its checkpoint key (see `layout.py`), so weights map
by name, and every unit's output is a named `Add` layer (`block3-unit06-add`), so feature
maps are reachable with `feature_maps()`.
"""

from __future__ import annotations

import keras
from keras import ops

from bit_keras.layers import GroupNormalization, StandardizedConv2D
from bit_keras.layout import HEAD_LAYER, PRE_HEAD_NORM, ROOT_CONV, SEPARATOR, layer_name, unit_name


@keras.saving.register_keras_serializable(package="bit_keras")
class ImageRescaling(keras.layers.Layer):
    """Checks that images are float [0, 1] RGB and maps them to BiT's [-1, 1] range.

    Integer images are refused rather than silently treated as [0, 1] floats, because a
    uint8 image in [0, 255] would give a confidently wrong model.
    """

    def call(self, images):
        if images.shape[-1] != 3:
            raise ValueError(f"BiT models take RGB images of shape [batch, height, width, 3]; "
                             f"received shape {tuple(images.shape)}.")
        return ops.cast(images, self.compute_dtype) * 2.0 - 1.0

    def compute_output_shape(self, input_shape):
        return input_shape


def _conv(filters, kernel_size, name, stride=1, initializer="he_normal"):
    return StandardizedConv2D(filters, kernel_size, strides=stride, padding="valid",
                              kernel_initializer=initializer, name=name)


def apply_root_block(x, width, initializer):
    x = keras.layers.ZeroPadding2D(3, name=layer_name("root_block", "pad_conv"))(x)
    x = _conv(64 * width, 7, ROOT_CONV, stride=2, initializer=initializer)(x)
    # Zeros, not -inf: the release pads the pool input with zeros although it can be negative.
    x = keras.layers.ZeroPadding2D(1, name=layer_name("root_block", "pad_pool"))(x)
    return keras.layers.MaxPooling2D(3, strides=2, padding="valid", name=layer_name("root_block", "pool"))(x)


def apply_bottleneck_unit(x, mid_channels, stride, name, initializer):
    """One pre-activation bottleneck unit; the projection takes the pre-activated input."""
    out_channels = 4 * mid_channels
    h = GroupNormalization(name=layer_name(name, "a", "group_norm"))(x)
    h = keras.layers.ReLU(name=layer_name(name, "a", "relu"))(h)
    if stride != 1 or x.shape[-1] != out_channels:
        shortcut = _conv(out_channels, 1, layer_name(name, "a", "proj", "standardized_conv2d"), stride, initializer)(h)
    else:
        shortcut = x
    h = _conv(mid_channels, 1, layer_name(name, "a", "standardized_conv2d"), initializer=initializer)(h)
    h = GroupNormalization(name=layer_name(name, "b", "group_norm"))(h)
    h = keras.layers.ReLU(name=layer_name(name, "b", "relu"))(h)
    h = keras.layers.ZeroPadding2D(1, name=layer_name(name, "b", "pad"))(h)
    h = _conv(mid_channels, 3, layer_name(name, "b", "standardized_conv2d"), stride, initializer)(h)
    h = GroupNormalization(name=layer_name(name, "c", "group_norm"))(h)
    h = keras.layers.ReLU(name=layer_name(name, "c", "relu"))(h)
    h = _conv(out_channels, 1, layer_name(name, "c", "standardized_conv2d"), initializer=initializer)(h)
    return keras.layers.Add(name=layer_name(name, "add"))([h, shortcut])


@keras.saving.register_keras_serializable(package="bit_keras")
class BiTResNetV2(keras.Model):
    """A BiT ResNet-v2 (any units per block and width), with or without the class head.

    Args:
        block_units: units in each of the four blocks, e.g. (3, 4, 6, 3) for R50.
        width: width multiplier (1, 2, 3, 4 in the release).
        num_classes: classes of the head; ignored when `include_top=False`.
        include_top: logits when True, the pooled 2048*width feature vector when False.
        initializer: kernel initializer; "zeros" is much faster when weights are loaded next.

    Example:
        >>> model = BiTResNetV2((1, 1, 1, 1), width=1, num_classes=10)
        >>> model(np.zeros((2, 64, 64, 3), "float32")).shape
        (2, 10)
    """

    def __init__(self, block_units=(3, 4, 6, 3), width=1, num_classes=1000, include_top=True,
                 initializer="he_normal", name=None, **kwargs):
        block_units = tuple(int(u) for u in block_units)
        if len(block_units) != 4 or min(block_units) < 1:
            raise ValueError(f"block_units must be four positive unit counts, e.g. (3, 4, 6, 3). "
                             f"Received: block_units={block_units}")
        if int(width) < 1:
            raise ValueError(f"width must be a positive integer. Received: width={width}")
        if include_top and (num_classes is None or int(num_classes) < 1):
            raise ValueError(f"num_classes must be a positive integer when include_top=True. "
                             f"Received: num_classes={num_classes}")
        images = keras.Input(shape=(None, None, 3), name="images")
        x = ImageRescaling(name="rescale")(images)
        x = apply_root_block(x, width, initializer)
        for block, units in enumerate(block_units, start=1):
            mid = 64 * width * 2 ** (block - 1)
            for unit in range(1, units + 1):
                stride = 2 if (unit == 1 and block > 1) else 1
                x = apply_bottleneck_unit(x, mid, stride, unit_name(block, unit), initializer)
        x = GroupNormalization(name=PRE_HEAD_NORM)(x)
        x = keras.layers.ReLU(name=layer_name("pre_head", "relu"))(x)
        outputs = keras.layers.GlobalAveragePooling2D(name="pre_logits")(x)
        if include_top:
            outputs = keras.layers.Dense(int(num_classes), kernel_initializer="zeros",
                                         name=HEAD_LAYER)(outputs)
            # Logits stay float32 under mixed precision, as Keras recommends for the loss.
            outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(outputs)
        super().__init__(inputs=images, outputs=outputs, name=name or _default_name(block_units, width), **kwargs)
        self.block_units = block_units
        self.width = int(width)
        self.num_classes = int(num_classes) if include_top else None
        self.include_top = bool(include_top)
        self.initializer = initializer

    def call(self, inputs, training=None, mask=None):
        _check_image_dtype(inputs)
        return super().call(inputs, training=training, mask=mask)

    @property
    def num_features(self) -> int:
        return 2048 * self.width

    def get_config(self):
        return {"block_units": list(self.block_units), "width": self.width,
                "num_classes": self.num_classes, "include_top": self.include_top,
                "initializer": self.initializer, "name": self.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _check_image_dtype(images):
    dtype = keras.backend.standardize_dtype(getattr(images, "dtype", "float32"))
    if not dtype.startswith(("float", "bfloat")):
        raise ValueError(f"BiT models take float images in [0, 1]; received dtype {dtype}. "
                         f"Convert with `images.astype('float32') / 255`.")


def _default_name(block_units, width):
    depth = 2 + 3 * sum(block_units)
    return f"bit_resnet_v2_{depth}x{width}"


def feature_maps(model: keras.Model, blocks=(1, 2, 3, 4)) -> keras.Model:
    """A model from images to the output maps of the given blocks (a dict keyed "block{b}").

    The maps are pre-activation block outputs, as in the release (no norm after the add).
    """
    outputs = {}
    for block in blocks:
        adds = [layer for layer in model.layers if layer.name.startswith(f"block{block}{SEPARATOR}")
                and layer.name.endswith(SEPARATOR + "add")]
        if not adds:
            raise ValueError(f"Model {model.name!r} has no block {block}; it has blocks "
                             f"{sorted({l.name.split(SEPARATOR)[0] for l in model.layers if l.name.startswith('block')})}.")
        outputs[f"block{block}"] = adds[-1].output
    return keras.Model(model.input, outputs, name=f"{model.name}_feature_maps")


def freeze_up_to(model: keras.Model, block: str | int) -> list:
    """Freezes the root and every block up to and including `block` (e.g. 2 or "block2").

    Returns the names of the frozen layers. Partial fine-tuning of this kind is what the
    old TF-Hub models (one opaque layer) could not do.
    """
    last = int(str(block).replace("block", "")) if str(block) != "root" else 0
    frozen = []
    for layer in model.layers:
        prefix = layer.name.split(SEPARATOR)[0]
        index = 0 if prefix == "root_block" else int(prefix[5:]) if prefix.startswith("block") and prefix[5:].isdigit() else None
        if index is not None and index <= last:
            layer.trainable = False
            frozen.append(layer.name)
    if not frozen:
        raise ValueError(f"Nothing to freeze up to {block!r}; use 'root' or a block number 1-4.")
    return frozen
