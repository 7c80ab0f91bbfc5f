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
