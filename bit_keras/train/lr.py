"""The upstream learning rate (`schedules.learning_rate`) as a Keras schedule in `keras.ops`.

The optimizer evaluates it inside the compiled step, on its own update counter, so a
restored optimizer resumes with exactly the rate it stopped at.
"""

from __future__ import annotations

import keras
from keras import ops

from bit_keras.train.schedules import DECAY_FACTOR


@keras.saving.register_keras_serializable(package="bit_keras")
class UpstreamLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over `warmup_steps` updates, times 0.1 at each decay step.

    Example:
        >>> from bit_keras.train.schedules import SCHEDULES
        >>> plan = SCHEDULES["bit-s"].plan(1_281_167)
        >>> schedule = UpstreamLearningRate.from_plan(plan)
        >>> round(float(schedule(4999)), 6), round(float(schedule(plan.decay_steps[0])), 6)
        (0.48, 0.048)
    """

    def __init__(self, peak, warmup_steps, decay_steps, decay_factor=DECAY_FACTOR):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = tuple(int(s) for s in decay_steps)
        self.decay_factor = float(decay_factor)

    @classmethod
    def from_plan(cls, plan):
        return cls(plan.learning_rate_peak, plan.warmup_steps, plan.decay_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        rate = ops.convert_to_tensor(self.peak, "float32")
        if self.warmup_steps > 0:
            rate = rate * ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        for boundary in self.decay_steps:
            rate = ops.where(step >= float(boundary), rate * self.decay_factor, rate)
        return rate

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "decay_steps": list(self.decay_steps), "decay_factor": self.decay_factor}
