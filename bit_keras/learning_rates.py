"""Learning-rate schedules: warm-up + step decay (fine-tuning and pre-training) and warm-up + cosine.

The BiT-HyperRule and the upstream schedules are two parameterisations of it. Update `s`
(0-based) gets peak * min(1, (s + 1) / warmup_steps), never exactly 0 (the public BiT
code starts at 0; warmup_steps=0 means no warm-up), times `decay_factor` for every
boundary already reached (s >= boundary). The factors multiply, so a boundary inside the
warm-up (only in test-sized runs) lowers the warm-up too; with boundaries after the
warm-up, as in every paper recipe, that is the usual "warm up, then /10 at each boundary".

The cosine schedule (`bit_keras train --lr-schedule cosine`, ResNet-RS) keeps the same
warm-up and then follows half a cosine: with u = s + 1, update `s` gets peak * u / warmup_steps
while u < warmup_steps, else peak * 0.5 * (1 + cos(pi * (u - warmup_steps) / D)) with
D = total_steps - warmup_steps + 1, so the last update still moves (rate > 0) and the rate
reaches 0 just after the run. That is Keras' `CosineDecay` (warm-up from 0 to the peak)
evaluated at s + 1, which `WarmupCosineDecay` wraps.

Pure Python at import, so `bit_keras hyperrule` and `bit_keras list` never load
TensorFlow; `WarmupStepDecay` and `WarmupCosineDecay`, the same formulas as Keras
schedules, import Keras on first access.
"""

from __future__ import annotations
from bit_keras.errors import ConfigError

DECAY_FACTOR = 0.1


def _where(condition, x, y):
    return x if condition else y


def learning_rate(step, peak, warmup_steps, boundaries, decay_factor=DECAY_FACTOR, *, minimum=min, where=_where):
    """The rate of update `step`. `minimum`/`where` let `WarmupStepDecay` run this on tensors."""
    rate = peak * minimum(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else peak
    for boundary in boundaries:
        rate = where(step >= boundary, rate * decay_factor, rate)
    return rate


def cosine_decay_steps(total_steps, warmup_steps) -> int:
    """D of the cosine: the updates after the warm-up, plus one so the last update is not at rate 0."""
    return max(1, int(total_steps) - int(warmup_steps) + 1)


def cosine_learning_rate(step, peak, warmup_steps, total_steps):
    """The cosine schedule's rate of update `step` (pure Python; the reference for the Keras one)."""
    import math

    update = step + 1
    if warmup_steps > 0 and update < warmup_steps:
        return peak * update / warmup_steps
    decay = cosine_decay_steps(total_steps, warmup_steps)
    done = min(update - warmup_steps, decay) / decay
    return peak * 0.5 * (1.0 + math.cos(math.pi * done))


def plan_warnings(total_steps, warmup_steps, boundaries) -> list:
    """What is wrong with a schedule that cannot do what it looks like, one sentence each."""
    warnings, boundaries = [], sorted(int(b) for b in boundaries)
    if warmup_steps > total_steps:
        warnings.append(f"the warm-up ({warmup_steps} updates) is longer than the run ({total_steps}): the learning "
                        f"rate never reaches its peak (it stops at {total_steps / warmup_steps:.0%} of it)")
    early = [b for b in boundaries if b < min(warmup_steps, total_steps)]
    if early:
        warnings.append(f"decays at update(s) {early} fall inside the warm-up ({warmup_steps} updates): each one "
                        f"scales the rest of the warm-up by {DECAY_FACTOR:g} too")
    late = [b for b in boundaries if b >= total_steps]
    if late:
        warnings.append(f"decays at update(s) {late} never happen: the run ends after {total_steps} updates")
    repeated = sorted({b for b in boundaries if boundaries.count(b) > 1 and b < total_steps})
    if repeated:
        warnings.append(f"several decays at update(s) {repeated}: the rate drops by more than {DECAY_FACTOR:g} at once")
    return warnings


def _define_keras_schedule():
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="bit_keras")
    class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
        """`learning_rate` in `keras.ops`, evaluated by the optimizer inside the compiled step.

        `steps_per_update`: micro-batches per update under gradient accumulation. Keras passes
        schedules the raw micro-step counter, so this divides it back into real updates.
        """

        def __init__(self, peak, warmup_steps, boundaries, decay_factor=DECAY_FACTOR, steps_per_update=1):
            if peak <= 0 or int(warmup_steps) < 0 or int(steps_per_update) < 1:
                raise ConfigError(f"Need peak > 0, warmup_steps >= 0 and steps_per_update >= 1. Received: "
                                 f"peak={peak}, warmup_steps={warmup_steps}, steps_per_update={steps_per_update}")
            self.peak = float(peak)
            self.warmup_steps = int(warmup_steps)
            self.boundaries = tuple(int(b) for b in boundaries)
            self.decay_factor = float(decay_factor)
            self.steps_per_update = int(steps_per_update)

        @classmethod
        def from_rule(cls, rule, *, steps_per_update=1):
            """The schedule of a `bit_keras.hyperrule.HyperRule`."""
            return cls(rule.base_learning_rate, rule.warmup_steps, rule.decay_boundaries,
                       steps_per_update=steps_per_update)

        @classmethod
        def from_plan(cls, plan):
            """The schedule of an upstream `bit_keras.train.upstream_schedules.RunPlan`."""
            return cls(plan.learning_rate_peak, plan.warmup_steps, plan.decay_steps)

        def __call__(self, step):
            update = ops.floor_divide(ops.cast(step, "int64"), self.steps_per_update)
            rate = learning_rate(ops.cast(update, "float32"), self.peak, self.warmup_steps, self.boundaries,
                                 self.decay_factor, minimum=ops.minimum, where=ops.where)
            return ops.cast(rate, "float32")

        def get_config(self):
            return {"peak": self.peak, "warmup_steps": self.warmup_steps, "boundaries": list(self.boundaries),
                    "decay_factor": self.decay_factor, "steps_per_update": self.steps_per_update}

    return WarmupStepDecay


def _define_keras_cosine():
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="bit_keras")
    class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
        """Keras' `CosineDecay` with a linear warm-up from 0, called at update + 1 (see the module doc)."""

        def __init__(self, peak, warmup_steps, total_steps):
            if peak <= 0 or int(warmup_steps) < 0 or int(total_steps) < 1:
                raise ConfigError(f"Need peak > 0, warmup_steps >= 0 and total_steps >= 1. Received: peak={peak}, "
                                  f"warmup_steps={warmup_steps}, total_steps={total_steps}")
            self.peak, self.warmup_steps, self.total_steps = float(peak), int(warmup_steps), int(total_steps)
            decay = cosine_decay_steps(self.total_steps, self.warmup_steps)
            if self.warmup_steps > 0:
                self._cosine = keras.optimizers.schedules.CosineDecay(
                    0.0, decay, warmup_target=self.peak, warmup_steps=self.warmup_steps)
            else:
                self._cosine = keras.optimizers.schedules.CosineDecay(self.peak, decay)

        @classmethod
        def from_plan(cls, plan):
            """The schedule of an upstream `bit_keras.train.upstream_schedules.RunPlan`."""
            return cls(plan.learning_rate_peak, plan.warmup_steps, plan.total_steps)

        def __call__(self, step):
            return ops.cast(self._cosine(ops.add(ops.cast(step, "float32"), 1.0)), "float32")

        def get_config(self):
            return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}

    return WarmupCosineDecay


_KERAS_SCHEDULES = {"WarmupStepDecay": _define_keras_schedule, "WarmupCosineDecay": _define_keras_cosine}


def __getattr__(name):
    if name in _KERAS_SCHEDULES:
        globals()[name] = _KERAS_SCHEDULES[name]()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
