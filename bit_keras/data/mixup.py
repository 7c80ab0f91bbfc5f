"""MixUp as BiT uses it: one lambda per batch, the batch mixed with a permutation of itself."""

from __future__ import annotations

import tensorflow as tf


def mixup_params(batch_size, alpha: float, seed):
    """(lambda ~ Beta(alpha, alpha) as float64, permutation of range(batch_size)) from a stateless seed [2]."""
    # Three independent streams from one seed: the two gamma draws and the permutation.
    gamma_seed, other_seed, perm_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3))
    # Beta(a, a) as X / (X + Y) with X, Y ~ Gamma(a): TF has no stateless beta sampler.
    # float64: Gamma(0.1) draws underflow float32, and with alpha 0.1 about 8% of lambdas lie
    # within float32's spacing of 1, where 1 - lambda would round to 0.
    x = tf.random.stateless_gamma([], gamma_seed, alpha=tf.constant(alpha, tf.float64), dtype=tf.float64)
    y = tf.random.stateless_gamma([], other_seed, alpha=tf.constant(alpha, tf.float64), dtype=tf.float64)
    lam = x / tf.maximum(x + y, 1e-300)
    permutation = tf.argsort(tf.random.stateless_uniform([batch_size], perm_seed))
    return lam, permutation


def mixup(images, labels, alpha: float, seed):
    """Mixed (images, one-hot labels): lam * batch + (1 - lam) * batch[permutation], per batch."""
    lam, permutation = mixup_params(tf.shape(images)[0], alpha, seed)
    own, other = tf.cast(lam, images.dtype), tf.cast(1.0 - lam, images.dtype)
    images = own * images + other * tf.gather(images, permutation)
    labels = own * labels + other * tf.gather(labels, permutation)
    return images, labels
