"""keras-hub preprocessing for BiT: uint8 images of any size -> the float [0, 1] images BiT takes.

`BiTImageConverter` resizes to the preset's resolution and scales integer images by 1/255.
Float images are taken to be in [0, 1] already (the model's own convention, and what
bit_keras' input pipelines produce), so they are resized but not scaled: a float image is
never divided by 255 twice. `BiTImageClassifierPreprocessor` is keras-hub's classifier
preprocessor around it; `BiTImageClassifier(preprocessor=...)` maps it over the data of
`predict`, `fit` and `evaluate`. Calling the model directly (`model(x)`) skips it, as in
every keras-hub task.
"""

from __future__ import annotations

import keras
import keras_hub
import numpy as np

from bit_keras.backbone import BiTBackbone
from bit_keras.presets import EVALUATION_RESOLUTION as DEFAULT_RESOLUTION  # a converter for a name gets its release's


def _is_float(images) -> bool:
    dtype = getattr(images, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(images).dtype
        except ValueError:  # a list of images of different sizes
            return _is_float(images[0])
    return keras.backend.standardize_dtype(dtype).startswith(("float", "bfloat"))


@keras.saving.register_keras_serializable(package="bit_keras")
class BiTImageConverter(keras_hub.layers.ImageConverter):
    """Resizes images to `image_size` and scales integer images to [0, 1] (float ones stay).

    Args:
        image_size: (height, width) the model sees; None keeps each image's own size.
        scale: multiplier for integer images (1/255: uint8 -> [0, 1]).
        Other arguments: keras-hub's `ImageConverter` (interpolation, crop_to_aspect_ratio, ...).
    """

    backbone_cls = BiTBackbone

    def __init__(self, image_size=(DEFAULT_RESOLUTION, DEFAULT_RESOLUTION), scale=1.0 / 255.0, **kwargs):
        super().__init__(image_size=image_size, scale=scale, **kwargs)

    def call(self, inputs):
        if not _is_float(inputs):
            return super().call(inputs)
        scale, self.scale = self.scale, None  # read while tracing or running this call only
        try:
            return super().call(inputs)
        finally:
            self.scale = scale


@keras.saving.register_keras_serializable(package="bit_keras")
class BiTImageClassifierPreprocessor(keras_hub.models.ImageClassifierPreprocessor):
    """keras-hub's image classifier preprocessor with a `BiTImageConverter`."""

    backbone_cls = BiTBackbone
    image_converter_cls = BiTImageConverter


def for_preset(name, resolution=None) -> BiTImageClassifierPreprocessor:
    """The preprocessor of a BiT name: the release's evaluation resolution (224 for an
    architecture or BiT-S/BiT-M, 448/480 for the ILSVRC-2012 fine-tunes), or `resolution`."""
    from bit_keras import presets

    _, preset = presets.resolve(name)
    size = resolution or (preset.resolution if preset else DEFAULT_RESOLUTION)
    return BiTImageClassifierPreprocessor(image_converter=BiTImageConverter(image_size=(size, size)))
