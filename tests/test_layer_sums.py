"""On TensorFlow, GroupNorm's and weight standardization's statistics (forward and backward) sum
with a matrix product by a row of ones, never with TF's reduction over the full activation or
kernel (2-4x slower on CPUs; BENCHMARKS.md, "Against PyTorch BiT", round 3)."""

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a TensorFlow graph property")


def _full_size_reductions(fn, *args):
    import tensorflow as tf

    graph = tf.function(fn).get_concrete_function(*args).graph
    size = max(arg.shape.num_elements() for arg in args)
    return [op.name for op in graph.get_operations()
            if op.type in ("Mean", "Sum") and not op.name.startswith("loss") and op.inputs[0].shape.num_elements() in (None, size)]


def test_group_norm_and_its_gradient_reduce_by_products():
    import tensorflow as tf

    from bit_keras.layers import GroupNormalization

    layer = GroupNormalization()
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 8, 8, 64)).astype("float32"))
    layer(x)

    def forward_and_backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        return tape.gradient(tf.reduce_sum(y * y, name="loss"), [x, *layer.trainable_weights])

    assert _full_size_reductions(forward_and_backward, x) == []


def test_weight_standardization_and_its_gradient_reduce_by_products():
    import tensorflow as tf

    from bit_keras.layers import standardize_kernel

    kernel = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 16, 32)).astype("float32"))

    def forward_and_backward(kernel):
        with tf.GradientTape() as tape:
            tape.watch(kernel)
            w = standardize_kernel(kernel)
        return tape.gradient(tf.reduce_sum(w * w * kernel, name="loss"), kernel)

    assert _full_size_reductions(forward_and_backward, kernel) == []


def test_plain_reductions_trace_no_products_for_the_converters():
    """Exports to ONNX/LiteRT/OpenVINO fold, convert and check inside `plain_reductions`: plain
    reductions there, the same outputs within float32 rounding."""
    import tensorflow as tf

    from bit_keras.layers import GroupNormalization, plain_reductions

    layer = GroupNormalization()
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 8, 8, 64)).astype("float32"))
    want = layer(x)
    with plain_reductions():
        graph = tf.function(layer).get_concrete_function(x).graph
        got = layer(x)
    assert not [op.name for op in graph.get_operations() if op.type.startswith("BatchMatMul")]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not _full_size_reductions(lambda x: layer(x), x)  # outside the context: products again
