"""keras-hub's RetinaNet and DeepLabV3 on any feature-pyramid image encoder (BiTBackbone or keras-hub's own).

We write only what keras-hub lacks: building the task from an encoder whose
`pyramid_outputs` are keyed "P2".."P5" (stride 2^n), and turning our examples
(`bit_keras.dense`: image, pixel yxyx boxes + classes, or a mask) into the batches
keras-hub's tasks train on:

- RetinaNetObjectDetector: `x` float images, `y = {"boxes": [B, N, 4] "yxyx" pixels,
  "labels": [B, N]}`, rows past an image's objects padded with -1 (its label encoder
  matches no anchor to an all -1 box and gives label -1 nothing to learn).
Images are float [0, 1] (`scale=1/255` below): BiT maps them to [-1, 1] itself, so the
tasks get no keras-hub preprocessor (which would rescale a second time).

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
PRIOR_PROBABILITY = 0.01  # RetinaNet's initial foreground probability of every anchor


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


def _dtype(image_encoder, kwargs):
    """The task's dtype policy: the one asked for, else the encoder's (bfloat16 heads on a bfloat16 BiT)."""
    dtype = kwargs.pop("dtype", None)
    return dtype if dtype is not None else getattr(image_encoder, "dtype_policy", None)


def build_detector(image_encoder, num_classes: int, *, min_level: int = 3, max_level: int = 7,
                   use_p5: bool = False, head_conv_layers: int = 4, use_prediction_head_norm: bool = False,
                   bounding_box_format: str = "yxyx", anchor_size: float = 4, confidence_threshold: float = 0.05,
                   max_detections: int = 100, **kwargs):
    """A RetinaNetObjectDetector: FPN P`min_level`..P`max_level` over the encoder's P3..P5.

    Levels above P5 come from P5 (`use_p5`) or the FPN's P5 as in the RetinaNet paper.
    `use_prediction_head_norm` puts GroupNorm in the heads (what small batches want).
    The heads get the encoder's dtype policy unless `dtype=` says otherwise. `anchor_size`:
    anchors of level n are anchor_size * 2**n px (x 2**(0, 1/3, 2/3), 3 aspect ratios):
    keras-hub's 4 gives 32 px at P3; small objects in small images want less.
    `confidence_threshold`: detections scoring below it are dropped before non-max suppression.
    0.05, the COCO evaluation convention (AP integrates over every score), rather than
    keras-hub's 0.5, which keeps nothing from a detector early in training. At most
    `max_detections` boxes per image are kept.
    """
    keras_hub = _keras_hub()
    if num_classes < 1:
        raise ConfigError(f"A detector needs num_classes >= 1. Received: num_classes={num_classes}.")
    if getattr(image_encoder, "output_stride", 32) != 32:
        raise ConfigError(f"RetinaNet's feature pyramid needs the encoder at output_stride=32 (P3..P5); this "
                          f"one has output_stride={image_encoder.output_stride} (atrous blocks are for DeepLab).")
    _check_encoder(image_encoder, [f"P{level}" for level in range(max(min_level, 3), 6)])
    dtype = _dtype(image_encoder, kwargs)
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=image_encoder, min_level=min_level, max_level=max_level, use_p5=use_p5,
        image_shape=tuple(image_encoder.input.shape[1:]), dtype=dtype)
    if "anchor_generator" not in kwargs:
        kwargs["anchor_generator"] = keras_hub.layers.AnchorGenerator(
            bounding_box_format, min_level=min_level, max_level=max_level, num_scales=3,
            aspect_ratios=[0.5, 1.0, 2.0], anchor_size=anchor_size)
    if "label_encoder" not in kwargs:
        from keras_hub.src.models.retinanet.retinanet_label_encoder import RetinaNetLabelEncoder

        # Every object is the target of at least its best anchor (torchvision's allow_low_quality_matches):
        # keras-hub's default matches by IoU >= 0.5 only, and an object no anchor overlaps that much (small,
        # thin, or between anchor centres) is never learned, whatever the training.
        from bit_keras.dense.matching import match_every_object

        kwargs["label_encoder"] = match_every_object(RetinaNetLabelEncoder(
            kwargs["anchor_generator"], bounding_box_format=bounding_box_format, encoding_format="center_xywh"))
    if "prediction_decoder" not in kwargs:
        kwargs["prediction_decoder"] = keras_hub.layers.NonMaxSuppression(
            bounding_box_format, from_logits=True, iou_threshold=0.5, confidence_threshold=confidence_threshold,
            max_detections=max_detections)
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=num_classes, bounding_box_format=bounding_box_format,
        pre_logits_num_conv_layers=head_conv_layers, use_prediction_head_norm=use_prediction_head_norm,
        dtype=dtype, **kwargs)
    _focal_prior_init(detector, kwargs.get("classification_head_prior_probability", PRIOR_PROBABILITY))
    return detector


def _focal_prior_init(detector, prior: float) -> None:
    """The RetinaNet paper's head initialization: every conv kernel N(0, 0.01), classification
    logits biased to `prior` (each anchor starts as background with probability 1 - prior),
    box deltas to 0. keras-hub 0.32 gives the prior bias to the box head and zeros to the
    classification head, with kernels N(0, 0.05): on BiT's FPN features the anchors start at
    probability 0.5 or at random saturation, and the focal loss summed over every anchor
    swamps the few positives (a loss in the hundreds on the first steps)."""
    import math

    for head, value in ((detector.classification_head, -math.log((1 - prior) / prior)), (detector.box_head, 0.0)):
        seeds = keras.random.SeedGenerator()  # from keras.utils.set_random_seed's state
        for layer in [*head.conv_layers, head.prediction_layer]:
            layer.kernel.assign(keras.random.normal(layer.kernel.shape, stddev=0.01, dtype=layer.kernel.dtype,
                                                    seed=seeds))
        bias = head.prediction_layer.bias
        bias.assign(keras.ops.full(bias.shape, value, bias.dtype))


def build_segmenter(image_encoder, num_classes: int, *, output_level: int | None = None, low_level: int | None = 2,
                    dilation_rates=None, projection_filters: int = 48, **kwargs):
    """A DeepLabV3ImageSegmenter: ASPP on P`output_level`, low-level features from P`low_level`.

    `output_level` defaults to the encoder's deepest level: P5, or P4 / P3 for a BiT encoder
    with `output_stride=16` / 8 (atrous last blocks). `dilation_rates` of the ASPP default
    to DeepLabV3+'s (6, 12, 18) at output stride 16, scaled by 16 / stride (12, 24, 36 at 8).
    The ASPP output is upsampled to the low-level map's stride, then to the input size:
    logits [B, H, W, num_classes] for inputs whose sides are multiples of 2^output_level.
    """
    keras_hub = _keras_hub()
    if num_classes < 2:
        raise ConfigError(f"A segmenter needs num_classes >= 2 (background included). "
                          f"Received: num_classes={num_classes}.")
    if output_level is None:
        levels = [int(key[1:]) for key in getattr(image_encoder, "pyramid_outputs", None) or ()
                  if key[:1] == "P" and key[1:].isdigit()]
        output_level = max(levels) if levels else 5
    if dilation_rates is None:
        dilation_rates = [max(1, rate * 16 // 2 ** output_level) for rate in ASPP_DILATION_RATES]
    needed = [f"P{output_level}"] + ([f"P{low_level}"] if low_level else [])
    _check_encoder(image_encoder, needed)
    upsampling = 2 ** (output_level - low_level) if low_level else 2 ** output_level
    dtype = _dtype(image_encoder, kwargs)
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=image_encoder, spatial_pyramid_pooling_key=f"P{output_level}",
        upsampling_size=upsampling, dilation_rates=list(dilation_rates),
        low_level_feature_key=f"P{low_level}" if low_level else None, projection_filters=projection_filters,
        image_shape=tuple(image_encoder.input.shape[1:]), dtype=dtype)
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=num_classes, **kwargs)


def freeze_batch_norm(model) -> int:
    """Freezes every BatchNormalization layer of `model` (statistics and scale/offset), as detection
    codebases do at 1-2 images per device; returns how many. Keras runs a frozen one in inference mode."""
    frozen = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            frozen += 1
    return frozen


def _all_layers(model):
    for layer in model._flatten_layers(include_self=False, recursive=True):
        yield layer


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
    # Static shapes: keras-hub's label encoder branches in Python on the box count, and fails on an
    # unknown one when a replica gets one image (`--micro-batch 1`).
    return image, {"boxes": tf.ensure_shape(tf.pad(boxes, [[0, pad], [0, 0]], constant_values=-1.0), [max_boxes, 4]),
                   "labels": tf.ensure_shape(tf.pad(labels, [[0, pad]], constant_values=-1.0), [max_boxes])}


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
