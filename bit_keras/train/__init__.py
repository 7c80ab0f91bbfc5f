"""Upstream pre-training: the BiT-S/M/L schedules, input pipeline and the loop (strategies: `bit_keras.distribute`).

`upstream_schedules` and `recipes` (the training-strategy options) are pure Python; the other
modules import TensorFlow when used.
"""

from bit_keras.train.recipes import RECIPES, TrainingOptions, resolve_recipe
from bit_keras.train.upstream_schedules import UPSTREAM_SCHEDULES, RunPlan, UpstreamSchedule, resolve_schedule

__all__ = ["UPSTREAM_SCHEDULES", "RunPlan", "UpstreamSchedule", "resolve_schedule", "RECIPES", "TrainingOptions",
           "resolve_recipe", "TrainConfig", "train"]


def __getattr__(name):
    if name in ("TrainConfig", "TrainResult", "train"):
        from bit_keras.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'bit_keras.train' has no attribute {name!r}")
