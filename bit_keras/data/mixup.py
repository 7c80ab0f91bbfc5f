"""MixUp as BiT uses it: one lambda per batch, the batch mixed with a permutation of itself."""

from __future__ import annotations

import tensorflow as tf


def mixup_params(batch_size, alpha: float, seed):
    """(lambda ~ Beta(alpha, alpha), permutation of range(batch_size)) from a stateless seed [2]."""
    seed = tf.cast(seed, tf.int64)
    gamma_seed, other_seed, perm_seed = (tf.stack([seed[0], seed[1] + i]) for i in (11, 12, 13))
    # Beta(a, a) as X / (X + Y) with X, Y ~ Gamma(a): TF has no stateless beta sampler.
    x = tf.random.stateless_gamma([], gamma_seed, alpha=alpha)
    y = tf.random.stateless_gamma([], other_seed, alpha=alpha)
    lam = x / tf.maximum(x + y, 1e-12)
    permutation = tf.argsort(tf.random.stateless_uniform([batch_size], perm_seed))
    return lam, permutation


def mixup(images, labels, alpha: float, seed):
    """Mixed (images, one-hot labels): lam * batch + (1 - lam) * batch[permutation], per batch."""
    lam, permutation = mixup_params(tf.shape(images)[0], alpha, seed)
    images = lam * images + (1.0 - lam) * tf.gather(images, permutation)
    labels = lam * labels + (1.0 - lam) * tf.gather(labels, permutation)
    return images, labels
