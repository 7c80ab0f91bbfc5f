"""keras-hub's RetinaNet and DeepLabV3 on any feature-pyramid image encoder (BiT after issue 21).

We write only what keras-hub lacks: building the task from an encoder whose
`pyramid_outputs` are keyed "P2".."P5" (stride 2^n), and turning our examples
(`bit_keras.dense`: image, pixel yxyx boxes + classes, or a mask) into the batches
keras-hub's tasks train on:

- RetinaNetObjectDetector: `x` float images, `y = {"boxes": [B, N, 4] "yxyx" pixels,
  "labels": [B, N]}`, rows past an image's objects padded with -1 (its label encoder
  matches no anchor to an all -1 box and gives label -1 nothing to learn).
- DeepLabV3ImageSegmenter: `x` float images, `y` class per pixel; its "auto" loss wants
  one-hot labels, so `compile_segmenter` uses sparse cross-entropy that skips
  `IGNORE_LABEL` pixels instead.
"""

from __future__ import annotations

import keras

from bit_keras.dense import IGNORE_LABEL
from bit_keras.errors import ConfigError, SetupError

PYRAMID_KEYS = ("P2", "P3", "P4", "P5")
ASPP_DILATION_RATES = (6, 12, 18)  # DeepLabV3+ at output stride 16


def _keras_hub():
    try:
        import keras_hub
    except ImportError:
        raise SetupError("Detection and segmentation use keras-hub's task models: pip install keras-hub.") from None
    return keras_hub


def _check_encoder(image_encoder, needed):
    keys = tuple(getattr(image_encoder, "pyramid_outputs", None) or ())
    missing = [key for key in needed if key not in keys]
    if missing:
        raise ConfigError(f"The image encoder needs pyramid_outputs {', '.join(needed)} (a keras_hub "
                          f"FeaturePyramidBackbone); {type(image_encoder).__name__} has {keys or 'none'}.")


def build_detector(image_encoder, num_classes: int, *, min_level: int = 3, max_level: int = 7,
                   use_p5: bool = False, head_conv_layers: int = 4, use_prediction_head_norm: bool = False,
                   bounding_box_format: str = "yxyx", **kwargs):
    """A RetinaNetObjectDetector: FPN P`min_level`..P`max_level` over the encoder's P3..P5.

    Levels above P5 come from P5 (`use_p5`) or the FPN's P5 as in the RetinaNet paper.
    `use_prediction_head_norm` puts GroupNorm in the heads (what small batches want).
    """
    keras_hub = _keras_hub()
    if num_classes < 1:
        raise ConfigError(f"A detector needs num_classes >= 1. Received: num_classes={num_classes}.")
    _check_encoder(image_encoder, [f"P{level}" for level in range(max(min_level, 3), 6)])
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=image_encoder, min_level=min_level, max_level=max_level, use_p5=use_p5,
        image_shape=tuple(image_encoder.input.shape[1:]))
    return keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=num_classes, bounding_box_format=bounding_box_format,
        pre_logits_num_conv_layers=head_conv_layers, use_prediction_head_norm=use_prediction_head_norm,
        **kwargs)


def build_segmenter(image_encoder, num_classes: int, *, output_level: int = 5, low_level: int | None = 2,
                    dilation_rates=ASPP_DILATION_RATES, projection_filters: int = 48, **kwargs):
    """A DeepLabV3ImageSegmenter: ASPP on P`output_level`, low-level features from P`low_level`.

    The ASPP output is upsampled to the low-level map's stride, then to the input size:
    logits [B, H, W, num_classes] for inputs whose sides are multiples of 2^output_level.
    """
    keras_hub = _keras_hub()
    if num_classes < 2:
        raise ConfigError(f"A segmenter needs num_classes >= 2 (background included). "
                          f"Received: num_classes={num_classes}.")
    needed = [f"P{output_level}"] + ([f"P{low_level}"] if low_level else [])
    _check_encoder(image_encoder, needed)
    upsampling = 2 ** (output_level - low_level) if low_level else 2 ** output_level
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=image_encoder, spatial_pyramid_pooling_key=f"P{output_level}",
        upsampling_size=upsampling, dilation_rates=list(dilation_rates),
        low_level_feature_key=f"P{low_level}" if low_level else None, projection_filters=projection_filters,
        image_shape=tuple(image_encoder.input.shape[1:]))
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=num_classes, **kwargs)


def compile_segmenter(segmenter, optimizer="adam", **kwargs):
    """Sparse cross-entropy from logits that leaves IGNORE_LABEL pixels out; pixel accuracy."""
    segmenter.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE_LABEL),
                      **kwargs)
    return segmenter


def detection_inputs(example: dict, max_boxes: int, scale: float = 1 / 255.0):
    """(image float32 * scale, {"boxes": [max_boxes, 4], "labels": [max_boxes]}) padded with -1.

    tf.data-compatible. Images with more than `max_boxes` objects keep the first
    `max_boxes` (counted in `dropped_boxes`, which is kept in `y` for counting, ignored by the loss).
    """
    import tensorflow as tf

    boxes = tf.cast(example["boxes"], tf.float32)[:max_boxes]
    labels = tf.cast(example["classes"], tf.float32)[:max_boxes]
    pad = max_boxes - tf.shape(boxes)[0]
    image = tf.cast(example["image"], tf.float32) * scale
    return image, {"boxes": tf.pad(boxes, [[0, pad], [0, 0]], constant_values=-1.0),
                   "labels": tf.pad(labels, [[0, pad]], constant_values=-1.0)}


def segmentation_inputs(example: dict, scale: float = 1 / 255.0):
    """(image float32 * scale, mask int32 [h, w, 1]); tf.data-compatible."""
    import tensorflow as tf

    return tf.cast(example["image"], tf.float32) * scale, tf.cast(example["mask"], tf.int32)[..., None]


def detections_per_image(outputs) -> list:
    """keras-hub's decoded batch (`boxes`, `labels`, `confidence`, `num_detections`) -> one
    `{"boxes", "classes", "scores"}` per image, as `metrics.coco_map` takes."""
    import numpy as np

    counts = np.asarray(outputs["num_detections"]).reshape(-1)
    return [{"boxes": np.asarray(outputs["boxes"])[i, :n], "classes": np.asarray(outputs["labels"])[i, :n],
             "scores": np.asarray(outputs["confidence"])[i, :n]} for i, n in enumerate(counts)]
