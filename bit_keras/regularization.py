"""Regularization switches for research on the BiT ResNet-v2: drop-path (stochastic depth).

Stochastic depth (Huang et al. 2016) drops a unit's residual branch for a whole example
during training and keeps the shortcut; ResNet-RS (Bello et al. 2021) uses it as one of
the training strategies that matter more than architecture changes. The layer uses
`keras.ops` and `keras.random` only, so it runs on every Keras backend.
"""

from __future__ import annotations

import keras
from keras import ops

from bit_keras.errors import ConfigError


def drop_path_rates(rate: float, num_units: int) -> list:
    """The drop-path rate of each unit: `rate * (i + 1) / num_units` for unit i = 0..N-1.

    The rate grows linearly with depth and the last unit gets `rate` itself: the "linear
    decay" rule of Huang et al. (survival probability 1 - l/L * (1 - p_L) for l = 1..L).
    """
    check_rate(rate, "stochastic_depth")
    return [rate * (index + 1) / num_units for index in range(num_units)]


def check_rate(rate, name: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1). Received: {name}={rate!r}")
    return float(rate)


@keras.saving.register_keras_serializable(package="bit_keras")
class DropPath(keras.layers.Layer):
    """Drops its whole input per example with probability `rate` in training, scaling the rest.

    Training: `x * mask / (1 - rate)`, one Bernoulli(1 - rate) mask value per example, so the
    expected output equals the input. Inference (`training` false or None): the identity.
    Put it on a residual branch just before the `Add`.
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = check_rate(rate, "rate")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        # floor(keep + U[0, 1)) is 1 with probability `keep`, else 0.
        mask = ops.floor(keep + keras.random.uniform(shape, dtype="float32", seed=self.seed_generator))
        return inputs * ops.cast(mask / keep, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
