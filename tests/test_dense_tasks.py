"""keras-hub RetinaNet and DeepLabV3 on a feature-pyramid encoder, trained a few steps on synthetic shapes.

The encoder is keras-hub's own ResNetBackbone, tiny; BiTBackbone plugs in once it is a
FeaturePyramidBackbone (issue 21).
"""

import numpy as np
import pytest

from bit_keras.errors import ConfigError

pytest.importorskip("keras_hub", reason="keras-hub is pinned with issue 21 (BiT as a keras-hub encoder)")

SIZE = 64
STEPS = 8


@pytest.fixture(scope="module")
def encoder():
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    return keras_hub.models.ResNetBackbone(  # keras-hub requires 64 filters in the stem and first stack
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 8, 16, 16],
        stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
        use_pre_activation=True, image_shape=(SIZE, SIZE, 3))


@pytest.fixture(scope="module")
def shapes():
    from bit_keras.dense.shapes import synthetic_shapes

    return synthetic_shapes(4, SIZE, seed=0)


def test_detection_inputs_pad_with_minus_one(shapes):
    from bit_keras.dense.tasks import detection_inputs

    example = shapes[2]
    image, y = detection_inputs(example, max_boxes=5)
    count = len(example["classes"])
    np.testing.assert_allclose(image, example["image"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y["boxes"][:count], example["boxes"])
    np.testing.assert_array_equal(y["boxes"][count:], -1)
    np.testing.assert_array_equal(y["labels"], list(example["classes"]) + [-1] * (5 - count))


def test_encoder_without_pyramid_is_refused():
    import keras
    from bit_keras.dense.tasks import build_detector, build_segmenter

    plain = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3)])
    with pytest.raises(ConfigError, match="needs pyramid_outputs P3, P4, P5"):
        build_detector(plain, 3)
    with pytest.raises(ConfigError, match="needs pyramid_outputs P5, P2"):
        build_segmenter(plain, 3)


def _loss_goes_down(model, x, y):
    """Training loss on one fixed batch, first step vs last (training mode throughout: the
    tiny encoder's BatchNorm moving statistics lag behind in a few steps)."""
    losses = model.fit(x, y, epochs=STEPS, batch_size=len(x), verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses


def test_retinanet_trains_on_shapes_and_scores_with_pycocotools(encoder, shapes):
    import keras
    from bit_keras.dense.metrics import coco_map
    from bit_keras.dense.shapes import as_dataset
    from bit_keras.dense.tasks import build_detector, detection_inputs, detections_per_image

    detector = build_detector(encoder, num_classes=3, max_level=5, head_conv_layers=1)
    detector.compile(optimizer=keras.optimizers.Adam(1e-3))
    x, y = next(iter(as_dataset(shapes).map(lambda e: detection_inputs(e, max_boxes=4)).batch(len(shapes))))
    _loss_goes_down(detector, x, y)
    predictions = detections_per_image(detector.predict(x, verbose=0))
    assert len(predictions) == len(shapes)
    scores = coco_map(shapes, predictions, num_classes=3)
    assert 0.0 <= scores["AP"] <= 1.0


def test_deeplab_trains_on_shapes_and_ignores_void_pixels(encoder, shapes):
    import keras
    from bit_keras.dense.metrics import SegmentationScores
    from bit_keras.dense.shapes import as_dataset
    from bit_keras.dense.tasks import build_segmenter, compile_segmenter, segmentation_inputs

    segmenter = compile_segmenter(build_segmenter(encoder, num_classes=4, dilation_rates=(2, 4)),
                                  keras.optimizers.Adam(1e-3))
    x, masks = next(iter(as_dataset(shapes, ("image", "mask")).map(segmentation_inputs).batch(len(shapes))))
    assert tuple(segmenter(x).shape) == (len(shapes), SIZE, SIZE, 4)
    _loss_goes_down(segmenter, x, masks)
    # Void pixels (255) are left out: the loss is the mean cross-entropy over the other pixels.
    void = masks.numpy().copy()
    void[:, :8] = 255
    logits = segmenter.predict(x, verbose=0).astype(np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    scored = void[..., 0] != 255
    labels = np.where(scored, void[..., 0], 0)
    expected = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0][scored].mean()
    loss = segmenter.evaluate(x, void, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(expected, rel=1e-4)
    scores = SegmentationScores(4)
    scores.update(masks.numpy(), np.argmax(segmenter.predict(x, verbose=0), -1))
    assert 0.0 <= scores.result()["mean_iou"] <= 1.0
