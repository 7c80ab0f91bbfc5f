"""keras-hub RetinaNet and DeepLabV3 on a tiny BiTBackbone, trained a few steps on synthetic shapes.

The encoder is BiT's own network (GroupNorm + WS) with one unit per block (r14x1); images
reach it as float [0, 1] and it rescales them itself, once (checked against NumPy).
"""

import numpy as np
import pytest

from bit_keras.errors import ConfigError

pytest.importorskip("keras_hub", reason="keras-hub provides the RetinaNet and DeepLabV3 task models")

SIZE = 64
STEPS = 8


@pytest.fixture(scope="module")
def encoder():
    import keras

    from bit_keras.backbone import BiTBackbone

    keras.utils.set_random_seed(0)
    return BiTBackbone((1, 1, 1, 1), 1)


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
    """Training loss on one fixed batch, first step vs last."""
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


def test_every_object_is_the_target_of_its_best_anchor(encoder):
    """An object that no anchor overlaps by IoU 0.5 is still the target of its best anchor (the
    initialization is `test_retinanet_starts_at_the_focal_prior`)."""
    from bit_keras.dense.tasks import build_detector

    detector = build_detector(encoder, num_classes=3, max_level=5, head_conv_layers=1, anchor_size=1)
    images = np.zeros((1, SIZE, SIZE, 3), np.float32)
    box = np.array([29.0, 30.0, 35.0, 33.0])  # 6 x 3 px, yxyx
    anchors = np.concatenate([np.asarray(a) for a in detector.anchor_generator(images).values()])
    top, left = np.maximum(anchors[:, :2], box[:2]), np.minimum(anchors[:, 2:], box[2:])
    overlap = np.prod(np.clip(left - top, 0, None), -1)
    iou = overlap / (np.prod(anchors[:, 2:] - anchors[:, :2], -1) + np.prod(box[2:] - box[:2]) - overlap)
    assert iou.max() < 0.4  # below both thresholds: by IoU alone, no anchor would learn it
    padded_boxes = np.array([[box, [-1, -1, -1, -1]]], np.float32)
    _, labels = detector.label_encoder(images=images, gt_boxes=padded_boxes, gt_classes=np.array([[2.0, -1.0]]))
    labels = np.asarray(labels).reshape(-1)
    assert np.flatnonzero(labels == 2).tolist() == [int(np.argmax(iou))]
    assert set(np.unique(labels)) <= {-2.0, -1.0, 2.0}  # the padding row is nobody's target
    # Without a padding row (every row a real object) keras-hub's own force-matching indexed past
    # the last object; this matcher gives the same answer as with one.
    _, unpadded = detector.label_encoder(images=images, gt_boxes=padded_boxes[:, :1], gt_classes=np.array([[2.0]]))
    np.testing.assert_array_equal(np.asarray(unpadded).reshape(-1), labels)


def test_the_detector_keeps_detections_scoring_above_five_percent(encoder):
    """keras-hub's default decoder drops scores under 0.5, so a young detector showed no boxes at all."""
    from bit_keras.dense.tasks import build_detector

    detector = build_detector(encoder, num_classes=2, max_level=5, head_conv_layers=1)
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]], np.float32)
    scores = np.array([[[0.3, 0.01], [0.01, 0.06], [0.04, 0.01]]])
    logits = np.log(scores / (1 - scores)).astype(np.float32)  # sigmoid(logits) == scores
    decoded = detector.prediction_decoder(boxes, logits)
    kept = int(np.asarray(decoded["num_detections"])[0])
    assert kept == 2, decoded
    np.testing.assert_allclose(np.sort(np.asarray(decoded["confidence"])[0, :kept]), [0.06, 0.3], rtol=1e-5)


def test_retinanet_starts_at_the_focal_prior(encoder, shapes):
    """RetinaNet's initialization: head kernels N(0, 0.01), every anchor starts as background,
    p(class) = 0.01, box deltas at 0. keras-hub 0.32 swaps the two biases and draws kernels
    N(0, 0.05): on BiT's features the median anchor started at p = 1e-5 with many saturated at 1."""
    import keras
    from bit_keras.dense.shapes import as_dataset
    from bit_keras.dense.tasks import build_detector, detection_inputs

    keras.utils.set_random_seed(1)
    detector = build_detector(encoder, num_classes=3, max_level=5, head_conv_layers=1)
    np.testing.assert_allclose(np.asarray(detector.classification_head.prediction_layer.bias), np.log(0.01 / 0.99),
                               rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(detector.box_head.prediction_layer.bias), 0.0)
    for head in (detector.classification_head, detector.box_head):
        for layer in [*head.conv_layers, head.prediction_layer]:
            assert abs(float(np.std(layer.kernel)) - 0.01) < 0.001, layer.name
    x, y = next(iter(as_dataset(shapes).map(lambda e: detection_inputs(e, max_boxes=4)).batch(len(shapes))))
    outputs = detector(x, training=False)
    probabilities = 1 / (1 + np.exp(-np.asarray(outputs["cls_logits"], np.float64)))
    assert 0.002 < np.median(probabilities) < 0.05, np.median(probabilities)


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


def test_images_reach_bit_once_rescaled(encoder, shapes, monkeypatch):
    """keras-hub's tasks add no preprocessing: BiT's own rescaling layer sees the pipeline's
    [0, 1] images (uint8 / 255) and hands on 2x - 1 (NumPy), inside both tasks."""
    from bit_keras.backbone import ImageRescaling
    from bit_keras.dense.shapes import as_dataset
    from bit_keras.dense.tasks import build_detector, build_segmenter, detection_inputs

    seen = []
    original = ImageRescaling.call

    def spy(self, images):
        result = original(self, images)
        seen.append((np.asarray(images), np.asarray(result)))
        return result

    monkeypatch.setattr(ImageRescaling, "call", spy)
    x, _ = next(iter(as_dataset(shapes).map(lambda e: detection_inputs(e, max_boxes=4)).batch(len(shapes))))
    expected = np.stack([e["image"] for e in shapes]).astype(np.float64) / 255.0
    for model in (build_detector(encoder, 3, max_level=5, head_conv_layers=1),
                  build_segmenter(encoder, 4, dilation_rates=(2, 4))):
        assert model.preprocessor is None
        seen.clear()
        model(x, training=False)
        assert len(seen) == 1
        images, rescaled = seen[0]
        np.testing.assert_allclose(images, expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(rescaled, 2.0 * expected - 1.0, rtol=0, atol=1e-6)


def _tiny(output_stride, normalization="group", block_units=(1, 1, 1, 1)):
    from bit_keras.backbone import BiTBackbone

    return BiTBackbone(block_units, 1, output_stride=output_stride, normalization=normalization)


def test_output_stride_loads_the_same_checkpoint_and_keeps_resolution(tmp_path):
    import keras

    from bit_keras import checkpoint

    keras.utils.set_random_seed(1)
    plain = _tiny(32)
    path = str(tmp_path / "bit.npz")
    checkpoint.save_weights(plain, path)
    x = np.random.default_rng(0).random((1, SIZE, SIZE, 3)).astype("float32")
    for stride, level in ((16, "P4"), (8, "P3")):
        atrous = _tiny(stride)
        checkpoint.load_weights(atrous, path)  # same names and kernel shapes: loads unchanged
        for a, b in zip(plain.weights, atrous.weights):
            assert a.path == b.path
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert max(atrous.pyramid_outputs) == level and atrous.output_stride == stride
        features = keras.Model(atrous.input, atrous.block_outputs[4])(x)
        assert tuple(features.shape) == (1, SIZE // stride, SIZE // stride, 2048)
        assert tuple(atrous(x).shape) == (1, 2048)
        clone = atrous.__class__.from_config(atrous.get_config())
        assert clone.output_stride == stride
    with pytest.raises(ConfigError, match="output_stride must be one of"):
        _tiny(4)


@pytest.mark.parametrize("stride", [16, 8])
def test_atrous_blocks_sampled_at_stride_32_equal_the_plain_network(stride):
    """The a trous identity: without normalization (whose statistics span all positions), the
    dilated network's last map, taken every 32/stride pixels, is the plain network's map."""
    import keras

    units = (1, 1, 2, 2)  # second units in blocks 3 and 4: dilated convolutions, not only dropped strides
    keras.utils.set_random_seed(2)
    plain = _tiny(32, "none", units)
    atrous = _tiny(stride, "none", units)
    atrous.set_weights(plain.get_weights())
    x = np.random.default_rng(1).random((2, SIZE, SIZE, 3)).astype("float32")
    expected = np.asarray(keras.Model(plain.input, plain.block_outputs[4])(x), np.float64)
    dense = np.asarray(keras.Model(atrous.input, atrous.block_outputs[4])(x), np.float64)
    step = 32 // stride
    assert dense.shape[1] == expected.shape[1] * step
    np.testing.assert_allclose(dense[:, ::step, ::step], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_deeplab_at_output_stride_16_predicts_full_size_masks(shapes):
    from bit_keras.dense.shapes import as_dataset
    from bit_keras.dense.tasks import build_detector, build_segmenter, segmentation_inputs

    encoder = _tiny(16)
    segmenter = build_segmenter(encoder, num_classes=4)
    assert segmenter.backbone.spatial_pyramid_pooling_key == "P4"
    assert list(segmenter.backbone.dilation_rates) == [6, 12, 18]
    x, _ = next(iter(as_dataset(shapes, ("image", "mask")).map(segmentation_inputs).batch(2)))
    assert tuple(segmenter(x).shape) == (2, SIZE, SIZE, 4)
    with pytest.raises(ConfigError, match="output_stride=32"):
        build_detector(encoder, 3)


def test_frozen_batch_norm_bit_has_no_trainable_norm_weights():
    from bit_keras.dense.tasks import build_segmenter, freeze_batch_norm

    segmenter = build_segmenter(_tiny(32, "batch"), num_classes=4, dilation_rates=(2, 4))
    before = len(segmenter.trainable_weights)
    frozen = freeze_batch_norm(segmenter.backbone.image_encoder)
    assert frozen == 1 + 3 * 4  # pre-head + three per unit
    assert len(segmenter.trainable_weights) == before - 2 * frozen
