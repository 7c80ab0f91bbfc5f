"""The two layers that make a ResNet-v2 into BiT: weight-standardized convolution and GroupNorm.

Both use `keras.ops` only, so they run on the TensorFlow, JAX and PyTorch backends, and
both keep their statistics in float32 under mixed precision.
"""

from __future__ import annotations

import keras
from keras import ops

WS_EPSILON = 1e-10  # BiT's release uses 1e-10 inside the square root in all frameworks.
GN_EPSILON = 1e-5   # Keras core's GroupNormalization defaults to 1e-3, which is not BiT's.


def standardize_kernel(kernel, epsilon: float = WS_EPSILON):
    """Standardizes an HWIO kernel per output channel over H, W and I (biased variance)."""
    kernel = ops.cast(kernel, "float32")
    mean = ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
    centered = kernel - mean
    variance = ops.mean(ops.square(centered), axis=(0, 1, 2), keepdims=True)
    return centered * ops.rsqrt(variance + epsilon)


@keras.saving.register_keras_serializable(package="bit_keras")
class StandardizedConv2D(keras.layers.Conv2D):
    """A Conv2D whose kernel is standardized before every convolution.

    Weight Standardization (Qiao et al.) is what lets GroupNorm match BatchNorm at large
    batch sizes. The stored kernel stays float32 (it is not autocast under mixed
    precision), is standardized in float32, and only then cast to the compute dtype.
    """

    def __init__(self, filters, kernel_size, *, epsilon: float = WS_EPSILON, **kwargs):
        kwargs.setdefault("use_bias", False)
        super().__init__(filters, kernel_size, **kwargs)
        self.epsilon = epsilon

    def add_weight(self, *args, **kwargs):
        # Standardization needs the float32 master weights, not a bfloat16 copy of them.
        kwargs["autocast"] = False
        return super().add_weight(*args, **kwargs)

    def convolution_op(self, inputs, kernel):
        kernel = ops.cast(standardize_kernel(kernel, self.epsilon), self.compute_dtype)
        return super().convolution_op(inputs, kernel)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="bit_keras")
class GroupNormalization(keras.layers.Layer):
    """Group normalization over channels-last inputs, with BiT's defaults (32 groups, eps 1e-5).

    Statistics are computed in float32 whatever the compute dtype, and the normalisation
    is folded into one per-channel multiply-add so the activations are read once for the
    statistics and once for the output.
    """

    def __init__(self, groups: int = 32, epsilon: float = GN_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels % self.groups:
            raise ValueError(
                f"GroupNormalization {self.name!r} needs a channel count divisible by "
                f"groups={self.groups}. Received input shape {tuple(input_shape)}."
            )
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones", autocast=False)
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros", autocast=False)

    def call(self, inputs):
        channels = inputs.shape[-1]
        per_group = channels // self.groups
        grouped = ops.reshape(ops.cast(inputs, "float32"), (ops.shape(inputs)[0], -1, self.groups, per_group))
        mean, variance = ops.moments(grouped, axes=(1, 3), keepdims=True)
        gamma = ops.reshape(self.gamma, (1, 1, self.groups, per_group))
        beta = ops.reshape(self.beta, (1, 1, self.groups, per_group))
        scale = gamma * ops.rsqrt(variance + self.epsilon)
        shift = beta - mean * scale
        outputs = ops.reshape(grouped * scale + shift, ops.shape(inputs))
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon}
