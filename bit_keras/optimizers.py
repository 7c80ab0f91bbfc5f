"""SGD with momentum that accumulates micro-batch gradients in its momentum buffer.

Keras' `gradient_accumulation_steps` keeps a second weight-sized buffer (the accumulator)
and makes copies while adding into it: 2.6 GiB on R101x3, the margin that decides whether
R152x4 fine-tunes at 480 px on a 24 GiB machine. SGD with momentum does not need it:

    m <- mu * m - lr * (g_1 + ... + g_k) / k,    w <- w + m

can be built up in `m` itself: the first micro-step scales `m` by mu, every micro-step
subtracts lr * g_i / k, and the last adds `m` to the weights. The arithmetic is Keras' up
to rounding order, and it is written without conditionals, so tf.distribute's all-reduce
(before `update_step`, in cross-replica context) and JAX's stateless apply work unchanged.
Checkpoints taken between updates (fit's epoch ends) hold an ordinary SGD momentum.
"""

from __future__ import annotations

import keras
from keras import ops

from bit_keras.errors import ConfigError


@keras.saving.register_keras_serializable(package="bit_keras")
class AccumulatingSGD(keras.optimizers.SGD):
    """`keras.optimizers.SGD` (momentum > 0) whose update averages `accumulation_steps` micro-batches.

    `iterations` counts updates, as with Keras' `gradient_accumulation_steps`; learning-rate
    schedules receive the micro-step counter (divide it: see `WarmupStepDecay.steps_per_update`).
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, *, accumulation_steps: int = 1, **kwargs):
        if kwargs.get("gradient_accumulation_steps"):
            raise ConfigError("AccumulatingSGD accumulates in its momentum buffer: give accumulation_steps, "
                              "not gradient_accumulation_steps.")
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ConfigError(f"accumulation_steps must be a positive integer. Received: {accumulation_steps!r}")
        if accumulation_steps > 1:
            if not momentum > 0:
                raise ConfigError("AccumulatingSGD needs momentum > 0 to accumulate in the momentum buffer; "
                                  "without momentum use keras.optimizers.SGD(gradient_accumulation_steps=...).")
            unsupported = [name for name in ("nesterov", "weight_decay", "clipnorm", "clipvalue", "global_clipnorm",
                                             "use_ema") if getattr(self, name, None)]
            if unsupported:
                # Each applies per micro-step in Keras' apply(), which would not be the averaged update.
                raise ConfigError(f"AccumulatingSGD with accumulation_steps > 1 does not support "
                                  f"{', '.join(unsupported)}.")
        self.accumulation_steps = accumulation_steps

    @property
    def iterations(self):
        """Updates made (micro-steps // accumulation_steps)."""
        if self.accumulation_steps == 1:
            return self._iterations
        return ops.floor_divide(self._iterations, self.accumulation_steps)

    def update_step(self, gradient, variable, learning_rate):
        steps = self.accumulation_steps
        if steps == 1:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        phase = ops.mod(self._iterations, steps)
        first = ops.cast(ops.equal(phase, 0), dtype)
        last = ops.cast(ops.equal(phase, steps - 1), dtype)
        momentum = ops.cast(self.momentum, dtype)
        step = ops.cast(learning_rate, dtype) / steps
        m = self.momentums[self._get_variable_index(variable)]
        # The first micro-step decays the old momentum (factor mu), the others keep it (factor 1).
        decay = 1.0 + first * (momentum - 1.0)
        self.assign(m, ops.subtract(ops.multiply(m, decay), ops.multiply(ops.cast(gradient, dtype), step)))
        self.assign_add(variable, ops.multiply(m, last))

    def get_config(self):
        return {**super().get_config(), "accumulation_steps": self.accumulation_steps}
