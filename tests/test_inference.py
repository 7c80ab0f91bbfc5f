"""fold_standardization: plain convolutions with pre-standardized kernels, same outputs."""

import keras
import numpy as np
import pytest

import bit_keras
from bit_keras.inference import fold_standardization
from bit_keras.layers import StandardizedConv2D
from tests import reference

UNITS, WIDTH, CLASSES = (1, 2, 1, 1), 1, 7


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.npz"
    params = reference.write_checkpoint(path, UNITS, WIDTH, CLASSES, seed=3)
    model = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone(UNITS, WIDTH), CLASSES)
    bit_keras.load_weights(model, path)
    return model, params, path


def _rel(actual, expected):
    expected = np.asarray(expected, np.float64)
    return np.abs(np.asarray(actual, np.float64) - expected).max() / np.abs(expected).max()


def test_folded_model_matches_the_model_and_numpy(loaded):
    model, params, _ = loaded
    images = np.random.default_rng(0).uniform(0, 1, (2, 72, 56, 3)).astype("float32")
    folded = fold_standardization(model)
    _, expected_logits = reference.forward(params, images)
    assert _rel(folded(images), model(images)) < 1e-5
    assert _rel(folded(images), expected_logits) < 1e-4


def test_folded_layers_are_plain_convs_with_standardized_kernels(loaded):
    model, params, _ = loaded
    folded = fold_standardization(model)
    # One flat graph: the backbone's layers, then the classifier's head, names kept.
    inner = [layer.name for layer in model.backbone.layers] + [layer.name for layer in model.layers[2:]]
    assert [layer.name for layer in folded.layers] == inner
    assert folded.name == model.name
    assert not any(isinstance(layer, StandardizedConv2D) for layer in folded.layers)
    conv = folded.get_layer("block2-unit01-b-standardized_conv2d")
    assert type(conv) is keras.layers.Conv2D and conv.strides == (2, 2)
    # Independent check of one kernel: NumPy standardization of the checkpoint's array.
    raw = params["resnet/block2/unit01/b/standardized_conv2d/kernel"].astype(np.float64)
    centered = raw - raw.mean(axis=(0, 1, 2), keepdims=True)
    expected = centered / np.sqrt(np.square(centered).mean(axis=(0, 1, 2), keepdims=True) + 1e-10)
    np.testing.assert_allclose(conv.get_weights()[0], expected, rtol=1e-4, atol=1e-5)
    # The head keeps its bias and the copy shares no variables with the original.
    np.testing.assert_array_equal(folded.get_layer("head-conv2d").get_weights()[1],
                                  model.get_layer("head-conv2d").get_weights()[1])
    assert not {id(v) for v in folded.variables} & {id(v) for v in model.variables}


def test_folding_backbones_feature_maps_and_bfloat16(loaded):
    _, _, path = loaded
    images = np.random.default_rng(1).uniform(0, 1, (1, 64, 64, 3)).astype("float32")
    backbone = bit_keras.BiTBackbone(UNITS, WIDTH)
    bit_keras.load_weights(backbone, path)
    assert _rel(fold_standardization(backbone)(images), backbone(images)) < 1e-5
    maps = bit_keras.feature_maps(backbone, (2, 4))
    folded_maps = fold_standardization(maps)(images)
    assert set(folded_maps) == {"block2", "block4"}
    assert _rel(folded_maps["block2"], maps(images)["block2"]) < 1e-5
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = bit_keras.BiTBackbone(UNITS, WIDTH)
    finally:
        keras.config.set_dtype_policy(previous)
    bit_keras.load_weights(mixed, path)
    folded = fold_standardization(mixed)
    assert folded.get_layer("block1-unit01-a-standardized_conv2d").dtype_policy.name == "mixed_bfloat16"
    # Same bfloat16 convolutions on the same (float32-standardized) kernels.
    assert _rel(folded(images), mixed(images)) < 1e-2


def test_refuses_what_is_not_a_functional_model():
    with pytest.raises(ValueError, match="functional Keras model"):
        fold_standardization(keras.layers.Dense(3))


def _numpy_logits(model, images, path):
    """The NumPy BiT's logits (its own standardization) from the model's weights as they are now."""
    bit_keras.save_weights(model, path)
    with np.load(path) as stored:
        return reference.forward(dict(stored), images)[1]


def test_predict_standardizes_once_per_call_and_follows_every_weight_change(tmp_path):
    keras.utils.set_random_seed(1)
    model = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone(UNITS, WIDTH), CLASSES)
    rng = np.random.default_rng(4)
    head = model.get_layer("head-conv2d")
    head.kernel.assign(rng.normal(size=head.kernel.shape).astype("float32"))  # a zero head says nothing
    images = rng.uniform(0, 1, (6, 32, 32, 3)).astype("float32")
    labels = np.arange(6) % CLASSES
    conv = model.get_layer("block2-unit01-b-standardized_conv2d")
    raw = [np.array(w) for w in model.get_weights()]
    raw_conv = np.array(conv.kernel)
    calls = []
    original = StandardizedConv2D.convolution_op

    def counting(self, inputs, kernel):  # how often the traced calls standardize
        calls.append(self.holds_standardized_kernel)
        return original(self, inputs, kernel)

    def check(label):
        want = _numpy_logits(model, images, tmp_path / f"{label}.npz")
        assert _rel(model.predict(images, batch_size=2, verbose=0), want) < 1e-4, label
        assert _rel(model.predict_on_batch(images), want) < 1e-4, label  # Keras' own function, untouched

    StandardizedConv2D.convolution_op = counting
    try:
        check("initial")
        assert any(calls) and not all(calls)  # predict traced the folded path, predict_on_batch the plain one
        np.testing.assert_array_equal(np.asarray(conv.kernel), raw_conv)  # the raw kernel is back, bit for bit
        assert not any(layer.holds_standardized_kernel for layer in model._flatten_layers()
                       if isinstance(layer, StandardizedConv2D))
        # Every way weights change: assignment, set_weights, a training step, load_weights.
        conv.kernel.assign(rng.normal(size=conv.kernel.shape).astype("float32") * 3 + 1)
        check("assigned")
        model.set_weights([w + rng.normal(scale=0.05, size=w.shape).astype("float32") for w in raw])
        check("set_weights")
        model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        before = np.array(conv.kernel)
        model.fit(images, labels, batch_size=6, epochs=1, verbose=0)
        assert not np.array_equal(np.asarray(conv.kernel), before)
        check("fit")  # a recompiled model gets a new folded predict function too
        model.save_weights(tmp_path / "trained.weights.h5")
        model.set_weights(raw)
        check("reset")
        model.load_weights(tmp_path / "trained.weights.h5")
        check("load_weights")
        # The backbone on its own (features), with an error inside predict: the raw kernels come back.
        features = model.backbone.predict(images, verbose=0)
        want = keras.ops.convert_to_numpy(model.backbone(images))
        assert _rel(features, want) < 1e-5
        kernels = [np.array(w) for w in model.get_weights()]
        with pytest.raises(Exception):
            model.predict(np.zeros((2, 32, 32, 3), "uint8"), verbose=0)
        for got, kept in zip(model.get_weights(), kernels):
            np.testing.assert_array_equal(got, kept)
    finally:
        StandardizedConv2D.convolution_op = original
