"""The two layers that make a ResNet-v2 into BiT: weight-standardized convolution and GroupNorm.

Both use `keras.ops` only, so they run on the TensorFlow, JAX and PyTorch backends, and
both keep their statistics in float32 under mixed precision.
"""

from __future__ import annotations

import contextlib
import threading

import keras
from keras import ops
from bit_keras.errors import ConfigError

WS_EPSILON = 1e-10  # BiT's release uses 1e-10 inside the square root in all frameworks.
GN_EPSILON = 1e-5   # Keras core's GroupNormalization defaults to 1e-3, which is not BiT's.
_TRACING = threading.local()


@contextlib.contextmanager
def plain_reductions():
    """Within it, GroupNorm and weight standardization trace plain reductions, not products (`_pixel_sums`).

    For graphs that leave TensorFlow (ONNX, LiteRT, OpenVINO), whose runtimes reduce fast on their
    own: exports fold, convert and check the model inside it, so that they compute exactly as
    before the products (two float32 summation orders differ by ~1e-5, an int8 rounding flip).
    """
    before = getattr(_TRACING, "plain", False)
    _TRACING.plain = True
    try:
        yield
    finally:
        _TRACING.plain = before


def _product_sums() -> bool:
    return keras.backend.backend() == "tensorflow" and not getattr(_TRACING, "plain", False)


def standardize_kernel(kernel, epsilon: float = WS_EPSILON):
    """Standardizes an HWIO kernel per output channel over H, W and I (biased variance).

    Computed in float32, with a hand-written backward pass (`_standardize`): the same
    math as differentiating the forward, in three passes over the kernel instead of the
    dozen that automatic differentiation of mean, center, variance and scale takes. The
    backward pass keeps only per-channel statistics and the kernel (alive anyway), not the
    standardized kernel: under mixed precision the convolution keeps its own bfloat16 copy,
    and a kept float32 one was a third weight-sized tensor (3.5 GiB for R152x4).
    """
    return _standardize(ops.cast(kernel, "float32"), epsilon)


def _standardize(kernel, epsilon):
    @ops.custom_gradient
    def standardize(kernel):
        mean = _kernel_mean(kernel)
        centered = kernel - mean
        rstd = ops.rsqrt(_kernel_mean(ops.square(centered)) + epsilon)
        standardized = centered * rstd

        def grad(*args, upstream=None):
            # d/dw of (w - mean) * rstd for upstream g, per output channel over n = H*W*I:
            # rstd * (g - mean(g) - w_hat * mean(g * w_hat)), with w_hat = (w - mean) * rstd
            # expanded so that only w is touched: rstd * g + scale * w + shift, where
            # scale = -rstd^3 * mean(g * (w - mean)) and shift = -rstd * mean(g) - scale * mean.
            # (Written without `w - mean`, which graph optimisers would share with the forward
            # pass and so keep alive until here.)
            upstream = ops.cast(args[0] if upstream is None else upstream, "float32")
            upstream_mean = _kernel_mean(upstream)
            covariance = _kernel_mean(upstream * kernel) - mean * upstream_mean
            scale = -rstd * rstd * rstd * covariance
            return rstd * upstream + scale * kernel + (-rstd * upstream_mean - scale * mean)

        return standardized, grad

    return standardize(kernel)


def _kernel_mean(kernel):
    """Per output channel mean of an HWIO kernel over H, W and I, shaped [1, 1, 1, O] (see `_pixel_sums`)."""
    if not _product_sums():
        return ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
    *reduced, channels = kernel.shape
    count = reduced[0] * reduced[1] * reduced[2]
    sums = _pixel_sums(ops.reshape(kernel, (1, count, channels)), count)
    return ops.reshape(sums / count, (1, 1, 1, channels))


def _pixel_moments(x, pixels):
    """Per-sample, per-channel mean and (biased) variance of channels-last x over its pixels, [N, C] each.

    Two passes (the mean, then the mean of the centred squares) as `ops.moments`; on TensorFlow
    the sums are products with a row of ones (`_pixel_sums`), elsewhere (and in
    `plain_reductions`) `ops.moments` itself.
    """
    axes = tuple(range(1, len(x.shape) - 1))
    if not _product_sums():
        return ops.moments(x, axes=axes)
    count = ops.cast(pixels, "float32")
    mean = _pixel_sums(x, pixels) / count
    centered = x - ops.reshape(mean, (ops.shape(x)[0],) + (1,) * len(axes) + (x.shape[-1],))
    return mean, _pixel_sums(ops.square(centered), pixels) / count


def _pixel_sums(x, pixels):
    """Per-sample, per-channel sums of channels-last x over its `pixels` pixels, shaped [N, C].

    On TensorFlow, a batched product with a row of ones: TF's CPU reduction over the pixels of
    an [N, P, C] tensor is 2-4x slower than oneDNN's matrix product over R50x1's activation
    shapes (a third of the GroupNorm and weight standardization time); it sums in float32, to
    the model's usual parity with the float64 reference. Elsewhere a plain sum: XLA's CPU dot
    accumulates the pixels one after another (errors grow with P), JAX's and PyTorch's
    reductions are fast already.
    """
    if not _product_sums():
        return ops.sum(x, axis=tuple(range(1, len(x.shape) - 1)))
    batch, channels = ops.shape(x)[0], x.shape[-1]  # no reshape with -1: an empty batch is ambiguous
    flat = ops.reshape(x, (batch, pixels, channels))
    return ops.reshape(ops.matmul(ops.ones((1, pixels), x.dtype), flat), (batch, channels))


def _conv_output_size(size, kernel, stride, dilation, padding):
    if padding == "same":
        return (size + stride - 1) // stride
    return (size - dilation * (kernel - 1) - 1) // stride + 1


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

    # True only while `bit_keras.inference.standardized_kernels` holds the standardized kernel in
    # the variable itself (for the length of one `predict`): the convolution then skips the work.
    holds_standardized_kernel = False

    def convolution_op(self, inputs, kernel):
        if not self.holds_standardized_kernel:
            kernel = standardize_kernel(kernel, self.epsilon)
        kernel = ops.cast(kernel, self.compute_dtype)
        outputs = super().convolution_op(inputs, kernel)
        if keras.backend.backend() != "tensorflow" or self.data_format != "channels_last":
            return outputs
        # TF's oneDNN CPU convolution hands an empty batch back unchanged, input shape and all:
        # restate the output shape (a free reshape) so an empty batch gives an empty output.
        shape = ops.shape(inputs)
        sizes = [_conv_output_size(shape[1 + i], self.kernel_size[i], self.strides[i], self.dilation_rate[i],
                                   self.padding) for i in range(2)]
        return ops.reshape(outputs, (shape[0], *sizes, self.filters))

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="bit_keras")
class GroupNormalization(keras.layers.Layer):
    """Group normalization over channels-last inputs, with BiT's defaults (32 groups, eps 1e-5).

    Statistics are computed in float32 whatever the compute dtype. For speed without XLA,
    they are gathered per channel first (sums over the pixels, `_pixel_sums`: on TensorFlow a
    product with a row of ones, then a tiny reduction over the channels of each group)
    instead of over a strided [N, HW, G, C/G] view,
    and the normalisation is applied as one per-sample, per-channel multiply-add. Group
    variances combine the channels' exactly: mean(var_c) + mean((mean_c - mean_g)^2).
    This is about 2x faster in TensorFlow graphs than reducing the grouped view. The
    backward pass is written out by hand (`group_norm`), with the same math.
    """

    def __init__(self, groups: int = 32, epsilon: float = GN_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels % self.groups:
            raise ConfigError(
                f"GroupNormalization {self.name!r} needs a channel count divisible by "
                f"groups={self.groups}. Received input shape {tuple(input_shape)}."
            )
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones", autocast=False)
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros", autocast=False)

    def call(self, inputs):
        # gamma and beta go in as float32 tensors (cast outside: TF's custom gradients must
        # not read variables themselves).
        return group_norm(inputs, ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32"),
                          self.groups, self.epsilon, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon}


def group_norm(inputs, gamma, beta, groups: int, epsilon: float, dtype=None):
    """Channels-last group normalization with float32 statistics and a hand-written backward pass.

    Forward: per-channel mean and variance over the pixels, combined per group exactly
    (group variance = mean of channel variances + variance of channel means), then one
    per-sample, per-channel multiply-add; the output is cast to `dtype` (default: the
    input's). Backward, with the same math as differentiating that: for upstream g,
    x_hat = (x - mean) * rstd and M values per group,
    dx = rstd * (gamma * g - mean_group(gamma * g) - x_hat * mean_group(gamma * g * x_hat)),
    which needs only two per-channel sums over the pixels (of g and of g * x) and one
    multiply-add pass `dx = a * g + b * x + c`; dgamma and dbeta come from the same sums.
    """
    channels = inputs.shape[-1]
    per_group = channels // groups
    shape = ops.shape(inputs)
    batch = shape[0]
    axes = tuple(range(1, len(inputs.shape) - 1))
    pixels = 1
    for axis in axes:
        pixels = pixels * shape[axis]
    # No reshape with -1: an empty batch (TF Serving sends those) makes it ambiguous and fails.
    grouped = (batch, groups, per_group)
    per_channel = (batch,) + (1,) * len(axes) + (channels,)
    input_dtype = keras.backend.standardize_dtype(inputs.dtype)
    out_dtype = keras.backend.standardize_dtype(dtype or input_dtype)

    def to_float32(x):
        return x if keras.backend.standardize_dtype(x.dtype) == "float32" else ops.cast(x, "float32")

    def from_float32(x, wanted):
        return x if wanted == "float32" else ops.cast(x, wanted)

    @ops.custom_gradient
    def normalize(inputs, gamma, beta):
        x = to_float32(inputs)
        channel_mean, channel_var = _pixel_moments(x, pixels)
        channel_mean = ops.reshape(channel_mean, grouped)
        channel_var = ops.reshape(channel_var, grouped)
        mean = ops.mean(channel_mean, axis=2, keepdims=True)
        variance = ops.mean(channel_var + ops.square(channel_mean - mean), axis=2, keepdims=True)
        rstd = ops.rsqrt(variance + epsilon)
        gamma = ops.reshape(gamma, (1, groups, per_group))
        scale = gamma * rstd
        shift = ops.reshape(beta, (1, groups, per_group)) - mean * scale
        outputs = from_float32(x * ops.reshape(scale, per_channel) + ops.reshape(shift, per_channel), out_dtype)

        def grad(*args, upstream=None):
            g = to_float32(args[0] if upstream is None else upstream)
            x = to_float32(inputs)  # recast rather than keep a float32 copy alive until backward
            sum_g = ops.reshape(_pixel_sums(g, pixels), grouped)
            sum_gx = ops.reshape(_pixel_sums(g * x, pixels), grouped)
            sum_g_xhat = rstd * (sum_gx - mean * sum_g)  # per channel: sum over pixels of g * x_hat
            count = ops.cast(pixels * per_group, "float32")
            mean_g = ops.sum(gamma * sum_g, axis=2, keepdims=True) / count
            mean_g_xhat = ops.sum(gamma * sum_g_xhat, axis=2, keepdims=True) / count
            b = ops.broadcast_to(-rstd * rstd * mean_g_xhat, grouped)
            c = ops.broadcast_to(-rstd * mean_g, grouped) - b * mean
            dx = g * ops.reshape(scale, per_channel) + x * ops.reshape(b, per_channel) + ops.reshape(c, per_channel)
            return (from_float32(dx, input_dtype), ops.reshape(ops.sum(sum_g_xhat, axis=0), (channels,)),
                    ops.reshape(ops.sum(sum_g, axis=0), (channels,)))

        return outputs, grad

    return normalize(inputs, gamma, beta)
