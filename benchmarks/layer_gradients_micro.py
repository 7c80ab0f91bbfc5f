"""GroupNorm and weight standardization, forward + backward, before and after issue 15 (TensorFlow).

Usage: python benchmarks/layer_gradients_micro.py [--rounds 7]
GroupNorm: every GroupNorm shape of R50x1 at 128 px, batch 32, as often as the model has it,
bfloat16 in and out (mixed_bfloat16), in one tf.function. Weight standardization: all of
R50x1's kernels, cast to bfloat16 as the convolutions use them. Old = autodiff through the
forward (`layer_gradients_ab.py`'s layers), new = bit_keras's hand-written backward passes.
Prints the best and median time of each over interleaved rounds.
"""

import argparse
import os
import sys
import time

import tensorflow as tf

import bit_keras
from bit_keras.layers import GroupNormalization, StandardizedConv2D, standardize_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from layer_gradients_ab import OldGN, old_standardize  # noqa: E402


def group_norm_shapes(size=128):
    counts, h = {}, size // 4
    architecture = bit_keras.Architecture.parse("r50x1")
    for unit in architecture.units():
        out = (h + 2 - 3) // unit.stride + 1
        for shape in ((h, unit.in_channels), (h, unit.mid_channels), (out, unit.mid_channels)):
            counts[shape] = counts.get(shape, 0) + 1
        h = out
    counts[(h, architecture.num_features)] = counts.get((h, architecture.num_features), 0) + 1
    return counts


def group_norm_step(layer_class, counts, batch=32):
    layers = {shape: layer_class(dtype="mixed_bfloat16") for shape in counts}
    inputs = {shape: tf.cast(tf.random.normal((batch, shape[0], shape[0], shape[1])) * 2 + 1, tf.bfloat16)
              for shape in counts}
    for shape, layer in layers.items():
        layer.build(inputs[shape].shape)

    @tf.function
    def step():
        total = []
        for shape, layer in layers.items():
            for _ in range(counts[shape]):
                with tf.GradientTape() as tape:
                    tape.watch(inputs[shape])
                    loss = tf.reduce_sum(tf.cast(layer(inputs[shape]), tf.float32))
                grads = tape.gradient(loss, [inputs[shape], layer.gamma, layer.beta])
                total.append(tf.reduce_sum(tf.cast(grads[0], tf.float32)) + tf.reduce_sum(grads[1] + grads[2]))
        return tf.add_n(total)

    return step


def standardize_step(function, kernels):
    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_sum(tf.cast(tf.cast(function(k), tf.bfloat16), tf.float32)) for k in kernels])
        return tf.add_n([tf.reduce_sum(g) for g in tape.gradient(loss, kernels)])

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    counts = group_norm_shapes()
    kernels = [tf.Variable(tf.random.normal(layer.kernel.shape))
               for layer in bit_keras.BiTBackbone((3, 4, 6, 3), 1).layers if isinstance(layer, StandardizedConv2D)]
    steps = {"group norm, old": group_norm_step(OldGN, counts), "group norm, new": group_norm_step(GroupNormalization, counts),
             "weight standardization, old": standardize_step(old_standardize, kernels),
             "weight standardization, new": standardize_step(standardize_kernel, kernels)}
    for step in steps.values():
        step()
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step().numpy()
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        values.sort()
        print(f"{name}: best {values[0] * 1e3:.0f} ms, median {values[len(values) // 2] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
