"""The BiT-HyperRule learning rate as a Keras schedule.

`HyperRule.learning_rate(step)` is the reference (pure Python); this is the same function
in `keras.ops`, so the optimizer evaluates it inside the compiled train step. Two
differences from the public BiT code: the warm-up starts at base/warmup, never at exactly 0
(the public code spends its first step with a zero learning rate), and with gradient
accumulation the schedule counts real updates, not micro-batches.
"""

from __future__ import annotations

import keras
from keras import ops

from bit_keras.hyperrule import DECAY_FACTOR


@keras.saving.register_keras_serializable(package="bit_keras")
class HyperRuleSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `base_learning_rate`, then divided by 10 at each decay boundary.

    Args:
        base_learning_rate: the peak rate (0.003 * batch / 512 in the HyperRule).
        warmup_steps: updates of linear warm-up; update `s` gets base * (s + 1) / warmup_steps.
        decay_boundaries: updates at which the rate is multiplied by `decay_factor`.
        steps_per_update: micro-batches per update under gradient accumulation. Keras 3.15
            passes the optimizer's raw micro-step counter to schedules, so the schedule
            divides it back into real updates (checked in tests/test_finetune.py).

    Example:
        >>> from bit_keras.hyperrule import hyperrule
        >>> schedule = HyperRuleSchedule.from_rule(hyperrule(10_000, (32, 32)))
        >>> round(float(schedule(0)), 8), round(float(schedule(450)), 9)  # float32 inside
        (3e-05, 3e-06)
    """

    def __init__(self, base_learning_rate, warmup_steps, decay_boundaries, decay_factor=DECAY_FACTOR,
                 steps_per_update=1):
        if base_learning_rate <= 0:
            raise ValueError(f"base_learning_rate must be positive. Received: {base_learning_rate}")
        if int(warmup_steps) < 1:
            raise ValueError(f"warmup_steps must be >= 1 (the warm-up never starts at exactly 0). "
                             f"Received: {warmup_steps}")
        if int(steps_per_update) < 1:
            raise ValueError(f"steps_per_update must be >= 1. Received: {steps_per_update}")
        self.base_learning_rate = float(base_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.decay_boundaries = tuple(int(b) for b in decay_boundaries)
        self.decay_factor = float(decay_factor)
        self.steps_per_update = int(steps_per_update)

    @classmethod
    def from_rule(cls, rule, *, steps_per_update=1):
        """The schedule of a `bit_keras.hyperrule.HyperRule`."""
        return cls(rule.base_learning_rate, rule.warmup_steps, rule.decay_boundaries,
                   steps_per_update=steps_per_update)

    def __call__(self, step):
        update = ops.floor_divide(ops.cast(step, "int64"), self.steps_per_update)
        update = ops.cast(update, "float32")
        warmup = self.base_learning_rate * (update + 1.0) / self.warmup_steps
        decays = ops.zeros_like(update)
        for boundary in self.decay_boundaries:
            decays = decays + ops.cast(update >= boundary, "float32")
        decayed = self.base_learning_rate * ops.power(self.decay_factor, decays)
        return ops.where(update < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return {"base_learning_rate": self.base_learning_rate, "warmup_steps": self.warmup_steps,
                "decay_boundaries": list(self.decay_boundaries), "decay_factor": self.decay_factor,
                "steps_per_update": self.steps_per_update}
