"""StandardizedConv2D and GroupNormalization against plain NumPy, and their Keras contracts."""

import numpy as np
import pytest
import keras

import bit_keras
from bit_keras.layers import GroupNormalization, StandardizedConv2D


def numpy_group_norm(x, gamma, beta, groups, eps):
    n, h, w, c = x.shape
    g = x.astype(np.float64).reshape(n, h, w, groups, c // groups)
    normed = (g - g.mean(axis=(1, 2, 4), keepdims=True)) / np.sqrt(g.var(axis=(1, 2, 4), keepdims=True) + eps)
    return normed.reshape(x.shape) * gamma + beta


def numpy_standardized_conv_1x1(x, kernel):
    w = kernel.astype(np.float64)
    w = (w - w.mean(axis=(0, 1, 2), keepdims=True)) / np.sqrt(w.var(axis=(0, 1, 2), keepdims=True) + 1e-10)
    return np.einsum("nhwc,co->nhwo", x.astype(np.float64), w[0, 0])


def test_group_norm_defaults_are_bits():
    layer = GroupNormalization()
    assert layer.groups == 32 and layer.epsilon == 1e-5


def test_group_norm_matches_numpy_on_low_variance_inputs():
    rng = np.random.default_rng(0)
    # Low variance is where Keras core's default epsilon (1e-3) goes wrong.
    x = (rng.normal(0, 0.01, (2, 5, 7, 64)) + rng.normal(0, 1, 64)).astype("float32")
    layer = GroupNormalization()
    layer.build(x.shape)
    gamma, beta = rng.uniform(0.5, 1.5, 64), rng.normal(0, 0.3, 64)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    expected = numpy_group_norm(x, gamma, beta, 32, 1e-5)
    np.testing.assert_allclose(np.asarray(layer(x)), expected, atol=2e-4 * np.abs(expected).max())


def test_group_norm_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="divisible by groups=32"):
        GroupNormalization(name="gn")(np.zeros((1, 4, 4, 48), "float32"))


def test_standardized_conv_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 4, 8)).astype("float32")
    kernel = (rng.normal(2.0, 3.0, (1, 1, 8, 16))).astype("float32")
    layer = StandardizedConv2D(16, 1)
    layer.build(x.shape)
    layer.kernel.assign(kernel)
    assert layer.bias is None  # BiT convolutions have no bias
    expected = numpy_standardized_conv_1x1(x, kernel)
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-4, atol=1e-4)


def test_mixed_bfloat16_keeps_float32_weights_and_statistics():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 8, 8, 32)).astype("float32")
    conv32 = StandardizedConv2D(32, 3, padding="same")
    conv16 = StandardizedConv2D(32, 3, padding="same", dtype="mixed_bfloat16")
    norm16 = GroupNormalization(dtype="mixed_bfloat16")
    y32 = conv32(x)
    conv16.build(x.shape)
    conv16.kernel.assign(conv32.kernel)
    y16 = conv16(x)
    out16 = norm16(y16)
    assert conv16.kernel.dtype == "float32" and norm16.gamma.dtype == "float32"
    assert keras.backend.standardize_dtype(y16.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(out16.dtype) == "bfloat16"
    relative = np.abs(np.asarray(y16, "float32") - np.asarray(y32)).max() / np.abs(np.asarray(y32)).max()
    assert relative < 2e-2  # bfloat16 has 8 bits of mantissa


def _tiny_model(**kwargs):
    return bit_keras.BiTImageClassifier(bit_keras.BiTBackbone((1, 1, 1, 1), 1, **kwargs), 5, **kwargs)


def test_model_round_trips_through_keras_file(tmp_path):
    model = _tiny_model()
    x = np.random.default_rng(3).uniform(size=(2, 40, 40, 3)).astype("float32")
    # Give the zero-initialised head some weights so the comparison means something.
    head = model.get_layer("head-conv2d")
    head.kernel.assign(np.random.default_rng(4).normal(size=head.kernel.shape))
    model.save(tmp_path / "tiny.keras")
    restored = keras.saving.load_model(tmp_path / "tiny.keras")
    assert isinstance(restored, bit_keras.BiTImageClassifier) and isinstance(restored.backbone, bit_keras.BiTBackbone)
    assert restored.block_units == (1, 1, 1, 1) and restored.num_classes == 5
    assert isinstance(restored.get_layer("block1-unit01-a-standardized_conv2d"), StandardizedConv2D)
    np.testing.assert_allclose(restored(x), model(x), rtol=1e-5, atol=1e-5)


def test_jit_compiled_predict_matches_eager():
    model = _tiny_model()
    head = model.get_layer("head-conv2d")
    head.kernel.assign(np.random.default_rng(5).normal(size=head.kernel.shape))
    x = np.random.default_rng(6).uniform(size=(2, 48, 48, 3)).astype("float32")
    model.compile(jit_compile=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), model(x), rtol=1e-4, atol=1e-4)


def test_mixed_precision_model_outputs_float32_logits():
    model = _tiny_model(dtype="mixed_bfloat16")
    out = model(np.zeros((1, 32, 32, 3), "float32"))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_empty_batch_gives_empty_output():
    """TF Serving sends empty batches: eager and in a graph whose batch size is unknown."""
    import tensorflow as tf

    assert tuple(GroupNormalization()(np.zeros((0, 4, 4, 64), "float32")).shape) == (0, 4, 4, 64)
    conv = StandardizedConv2D(16, 3, strides=2, padding="same")
    assert tuple(conv(np.zeros((0, 7, 9, 8), "float32")).shape) == (0, 4, 5, 16)
    backbone = bit_keras.BiTBackbone((1, 1, 1, 1), 1)
    assert tuple(backbone(np.zeros((0, 32, 32, 3), "float32")).shape) == (0, 2048)
    assert tuple(bit_keras.BiTImageClassifier(backbone, 5)(np.zeros((0, 32, 32, 3), "float32")).shape) == (0, 5)
    graph = tf.function(backbone, input_signature=[tf.TensorSpec([None, None, None, 3])])
    for size in ((0, 40, 48), (0, 32, 32), (1, 40, 48)):
        assert tuple(graph(tf.zeros((*size, 3))).shape) == (size[0], 2048)


def test_feature_maps_and_partial_freezing():
    model = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone((1, 2, 1, 1), 1), 5)
    maps = bit_keras.feature_maps(model, blocks=(1, 2, 4))
    out = maps(np.zeros((1, 64, 64, 3), "float32"))
    # Stride 4 after the root, then 2 per block; channels 256 * 2**(block-1).
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "block1": (1, 16, 16, 256), "block2": (1, 8, 8, 512), "block4": (1, 2, 2, 2048)}
    frozen = bit_keras.freeze_up_to(model, "block2")
    assert "root_block-standardized_conv2d" in frozen and "block2-unit02-c-standardized_conv2d" in frozen
    assert not model.get_layer("block2-unit02-c-standardized_conv2d").trainable
    assert model.get_layer("block3-unit01-a-standardized_conv2d").trainable
    with pytest.raises(ValueError, match="has no block 7"):
        bit_keras.feature_maps(model, blocks=(7,))


@pytest.mark.parametrize("images, message", [
    (np.zeros((1, 32, 32, 3), "uint8"), "float images in \\[0, 1\\]; received dtype uint8"),
    (np.zeros((1, 32, 32, 1), "float32"), "RGB images of shape \\[batch, height, width, 3\\]; received shape \\(1, 32, 32, 1\\)"),
])
def test_bad_images_are_refused_with_a_clear_error(images, message):
    with pytest.raises(ValueError, match=message):
        _tiny_model()(images)


def test_bad_architecture_arguments():
    with pytest.raises(ValueError, match="four positive unit counts"):
        bit_keras.BiTBackbone((3, 4, 6), width=1)
    with pytest.raises(ValueError, match="num_classes must be a positive"):
        bit_keras.BiTImageClassifier(bit_keras.BiTBackbone((1, 1, 1, 1), 1), 0)
