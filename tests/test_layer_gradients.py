"""The hand-written backward passes of GroupNorm and weight standardization against NumPy.

Gradients of `sum(weights * layer(x))` are compared with central finite differences of a
float64 NumPy forward, on every installed Keras backend (each in a subprocess), in float32;
under mixed_bfloat16 they are compared with the float32 gradients.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r'''
import numpy as np, keras
from keras import ops
from bit_keras.layers import group_norm, standardize_kernel
assert keras.backend.backend() == "{backend}"


def gradients(fn, *arrays):
    """Gradients of sum(fn(*arrays)) with respect to every array, with the backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        tensors = [tf.constant(a) for a in arrays]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            loss = tf.reduce_sum(tf.cast(fn(*tensors), tf.float32))
        return [np.asarray(tf.cast(g, tf.float32)) for g in tape.gradient(loss, tensors)]
    if backend == "jax":
        import jax, jax.numpy as jnp
        return [np.asarray(g, "float32") for g in
                jax.grad(lambda *t: jnp.sum(fn(*t).astype("float32")), argnums=tuple(range(len(arrays))))(
                    *[jnp.asarray(a) for a in arrays])]
    import torch
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    fn(*tensors).float().sum().backward()
    return [t.grad.float().numpy() for t in tensors]


def numpy_group_norm(x, gamma, beta, groups=8, eps=1e-5):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    normed = (g - g.mean(axis=(1, 2, 4), keepdims=True)) / np.sqrt(g.var(axis=(1, 2, 4), keepdims=True) + eps)
    return normed.reshape(x.shape) * gamma + beta


def numpy_standardize(k, eps=1e-10):
    return (k - k.mean(axis=(0, 1, 2), keepdims=True)) / np.sqrt(k.var(axis=(0, 1, 2), keepdims=True) + eps)


def finite_differences(fn, arrays, weights, step=1e-5):
    grads = []
    for index, array in enumerate(arrays):
        grad = np.zeros_like(array)
        for position in np.ndindex(array.shape):
            moved = [a.copy() for a in arrays]
            moved[index][position] += step
            up = np.sum(weights * fn(*moved))
            moved[index][position] -= 2 * step
            grad[position] = (up - np.sum(weights * fn(*moved))) / (2 * step)
        grads.append(grad)
    return grads


rng = np.random.default_rng(0)
# Group norm: 16 channels in 8 groups, channel means spread out (what the exact group
# variance combines), a mean far from 0 relative to the spread.
x = (rng.normal(0, 1.5, (2, 3, 4, 16)) + rng.normal(3, 2, 16)).astype(np.float64)
gamma, beta = rng.uniform(0.5, 1.5, 16), rng.normal(0, 0.5, 16)
weights = rng.normal(size=x.shape)
want = finite_differences(numpy_group_norm, [x, gamma, beta], weights)
f32 = [a.astype("float32") for a in (x, gamma, beta, weights)]
got = gradients(lambda x, g, b: group_norm(x, g, b, 8, 1e-5) * ops.convert_to_tensor(f32[3]), *f32[:3])
for name, g, w in zip(("x", "gamma", "beta"), got, want):
    error = np.abs(g - w).max() / np.abs(w).max()
    assert error < 1e-4, (name, error)

# Under mixed precision: bfloat16 in and out, float32 statistics; gradients within bfloat16 rounding.
low = gradients(lambda x, g, b: ops.cast(group_norm(ops.cast(x, "bfloat16"), g, b, 8, 1e-5), "float32")
                * ops.convert_to_tensor(f32[3]), *f32[:3])
for name, g, w in zip(("x", "gamma", "beta"), low, got):
    error = np.abs(g - w).max() / np.abs(w).max()
    assert error < 3e-2, ("bfloat16", name, error)

# Weight standardization of a 3x3x4x6 kernel with a non-zero mean.
kernel = rng.normal(2.0, 3.0, (3, 3, 4, 6))
kernel_weights = rng.normal(size=kernel.shape)
(want,) = finite_differences(numpy_standardize, [kernel], kernel_weights)
(got,) = gradients(lambda k: standardize_kernel(k) * ops.convert_to_tensor(kernel_weights.astype("float32")),
                   kernel.astype("float32"))
error = np.abs(got - want).max() / np.abs(want).max()
assert error < 1e-4, ("kernel", error)
print("gradients ok")
'''

BACKENDS = ["tensorflow"] + [name for name in ("jax", "torch") if importlib.util.find_spec(name)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_gradients_match_numpy(backend):
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SCRIPT.replace("{backend}", backend)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "gradients ok" in done.stdout, done.stderr[-3000:]
