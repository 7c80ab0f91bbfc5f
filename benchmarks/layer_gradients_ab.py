"""The GroupNorm/weight-standardization backward passes before and after issue 15, interleaved.

Usage: python benchmarks/layer_gradients_ab.py [--steps 8] [--kinds base32,old,new]
Builds R50x1 fine-tuning steps (128 px, batch 32, SGD momentum): `base32` the float32
straightforward baseline (Keras core GroupNormalization), `old` bfloat16 with the layers as
they were (autodiff through the forward), `new` bfloat16 with bit_keras's layers (hand-written
backward passes); times one step of each per round and prints medians and per-round ratios.
"""

import argparse
import statistics
import time

import keras
import numpy as np
from keras import ops

from bit_keras.bench.steps import Config, build_model, with_keras_group_norm
from bit_keras.inference import rebuild
from bit_keras.layers import GroupNormalization, StandardizedConv2D, _conv_output_size


def old_standardize(kernel, epsilon=1e-10):
    kernel = ops.cast(kernel, "float32")
    mean = ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
    centered = kernel - mean
    variance = ops.mean(ops.square(centered), axis=(0, 1, 2), keepdims=True)
    return centered * ops.rsqrt(variance + epsilon)


class OldConv(StandardizedConv2D):
    def convolution_op(self, inputs, kernel):
        kernel = ops.cast(old_standardize(kernel, self.epsilon), self.compute_dtype)
        outputs = keras.layers.Conv2D.convolution_op(self, inputs, kernel)
        shape = ops.shape(inputs)
        sizes = [_conv_output_size(shape[1 + i], self.kernel_size[i], self.strides[i], self.dilation_rate[i],
                                   self.padding) for i in range(2)]
        return ops.reshape(outputs, (shape[0], *sizes, self.filters))


class OldGN(GroupNormalization):
    def call(self, inputs):
        channels = inputs.shape[-1]
        per_group = channels // self.groups
        batch = ops.shape(inputs)[0]
        x = inputs if keras.backend.standardize_dtype(inputs.dtype) == "float32" else ops.cast(inputs, "float32")
        channel_mean, channel_var = ops.moments(x, axes=tuple(range(1, len(inputs.shape) - 1)))
        channel_mean = ops.reshape(channel_mean, (batch, self.groups, per_group))
        channel_var = ops.reshape(channel_var, (batch, self.groups, per_group))
        mean = ops.mean(channel_mean, axis=2, keepdims=True)
        variance = ops.mean(channel_var + ops.square(channel_mean - mean), axis=2, keepdims=True)
        gamma = ops.reshape(self.gamma, (1, self.groups, per_group))
        beta = ops.reshape(self.beta, (1, self.groups, per_group))
        scale = gamma * ops.rsqrt(variance + self.epsilon)
        shift = beta - mean * scale
        per_channel = (batch,) + (1,) * (len(inputs.shape) - 2) + (channels,)
        outputs = x * ops.reshape(scale, per_channel) + ops.reshape(shift, per_channel)
        if keras.backend.standardize_dtype(outputs.dtype) == self.compute_dtype:
            return outputs
        return ops.cast(outputs, self.compute_dtype)


def make(kind, batch=32, size=128):
    precision = "float32" if kind == "base32" else "bfloat16"
    model = build_model(Config(variant="r50x1", size=size, batch=batch, mode="train",
                                precision=precision))
    if kind == "base32":
        model = with_keras_group_norm(model)
    elif kind == "old":
        def old_layer(layer):
            if isinstance(layer, GroupNormalization):
                return OldGN.from_config(layer.get_config())
            if isinstance(layer, StandardizedConv2D):
                return OldConv.from_config(layer.get_config())
            return None

        model = rebuild(model, old_layer)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (batch, size, size, 3)).astype("float32")
    labels = rng.integers(0, 1000, (batch,))
    model.compile(optimizer=keras.optimizers.SGD(0.003, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(images, labels)
    return lambda: model.train_on_batch(images, labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--kinds", default="base32,old,new")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    steps = [make(kind) for kind in kinds]
    times = [[] for _ in kinds]
    for _ in range(args.steps):
        for index, step in enumerate(steps):
            start = time.perf_counter()
            step()
            times[index].append(time.perf_counter() - start)
    for kind, own in zip(kinds, times):
        for reference, theirs in zip(kinds[:2], times[:2]):
            if reference == kind:
                continue
            ratios = [a / b for a, b in zip(theirs, own)]
            print(f"{kind} vs {reference}: {32 / statistics.median(own):.2f} images/s, speed-up median "
                  f"{statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}), "
                  f"best step vs best step {min(theirs) / min(own):.2f}x")


if __name__ == "__main__":
    main()
