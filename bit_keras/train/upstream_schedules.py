"""The BiT upstream schedules (the paper) as data, resolved into update counts.

Pure Python, no TensorFlow: `bit_keras train --dry-run` and the tests read it. The
learning rate itself is `bit_keras.learning_rates` (`WarmupStepDecay.from_plan`, or
`WarmupCosineDecay.from_plan` with `lr_schedule="cosine"`, for Keras).

Conventions:
- The base learning rate is given per 256 images and scaled linearly with the global
  batch: 0.03 * 4096 / 256 = 0.48 for the paper's batch.
- Warm-up is linear over `warmup_steps` updates; update `s` (0-based) uses
  base * (s + 1) / warmup_steps, so the first update is not wasted at exactly 0 (the same
  function as the HyperRule's) and update `warmup_steps - 1` reaches base.
- Decays happen at epoch boundaries converted to updates with the real training-set
  size: boundary = round(epoch * train_size / global_batch). From that update on the rate
  is divided by 10 once more. Warm-up and decays multiply, so a (test-sized) run whose
  warm-up outlasts a boundary still gets both.
- `lr_schedule="cosine"` keeps the warm-up and replaces the decays by half a cosine down to
  0 at the end of the run (`bit_keras.learning_rates.cosine_learning_rate`); `decay_epochs` are
  then unused and the plan lists no decay steps.
"""

from __future__ import annotations

import dataclasses
import math

from bit_keras.learning_rates import cosine_learning_rate, learning_rate, plan_warnings
from bit_keras.errors import ConfigError

REFERENCE_BATCH = 256
LR_SCHEDULES = ("step", "cosine")


@dataclasses.dataclass(frozen=True)
class UpstreamSchedule:
    """One of the paper's pre-training recipes. Every field is overridable from the CLI."""

    name: str
    epochs: float
    decay_epochs: tuple
    base_learning_rate: float = 0.03   # per REFERENCE_BATCH images
    warmup_steps: int = 5000
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 4096
    image_size: int = 224
    multi_label: bool = False
    description: str = ""
    lr_schedule: str = "step"          # step: /10 at decay_epochs; cosine: half a cosine after the warm-up

    def __post_init__(self):
        for name in ("epochs", "base_learning_rate", "momentum", "weight_decay", "decay_epochs"):
            values = getattr(self, name)  # NaN passes every comparison below, and inf breaks the plan
            if not all(math.isfinite(v) for v in (values if name == "decay_epochs" else [values])):
                raise ConfigError(f"{name} must be finite. Received: {name}={values}")
        if self.epochs <= 0:
            raise ConfigError(f"epochs must be positive. Received: epochs={self.epochs}")
        decays = tuple(float(e) for e in self.decay_epochs)
        if list(decays) != sorted(decays) or any(e <= 0 for e in decays):
            raise ConfigError(f"decay epochs must be positive and increasing. Received: {self.decay_epochs}")
        if self.base_learning_rate <= 0:
            raise ConfigError(f"base learning rate must be positive. Received: {self.base_learning_rate}")
        if int(self.warmup_steps) < 0:
            raise ConfigError(f"warmup_steps must be >= 0. Received: {self.warmup_steps}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1). Received: {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight decay must be >= 0. Received: {self.weight_decay}")
        if int(self.batch_size) < 1 or int(self.image_size) < 8:
            raise ConfigError(f"batch size must be >= 1 and image size >= 8. Received: batch_size="
                             f"{self.batch_size}, image_size={self.image_size}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be step or cosine. Received: {self.lr_schedule!r}")
        object.__setattr__(self, "decay_epochs", decays)

    def replace(self, **changes) -> "UpstreamSchedule":
        """A copy with the given fields changed (None values are ignored: unset CLI flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def plan(self, train_size: int) -> "RunPlan":
        """The schedule in updates for a training set of `train_size` examples."""
        if int(train_size) < 1:
            raise ConfigError(f"train_size must be positive. Received: {train_size}")
        steps_per_epoch = train_size / self.batch_size
        return RunPlan(
            schedule=self, train_size=int(train_size), steps_per_epoch=steps_per_epoch,
            total_steps=max(1, round(self.epochs * steps_per_epoch)),
            decay_steps=(tuple(round(e * steps_per_epoch) for e in self.decay_epochs)
                         if self.lr_schedule == "step" else ()),
            learning_rate_peak=self.base_learning_rate * self.batch_size / REFERENCE_BATCH)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A schedule resolved into update counts for one dataset and global batch."""

    schedule: UpstreamSchedule
    train_size: int
    steps_per_epoch: float
    total_steps: int
    decay_steps: tuple
    learning_rate_peak: float

    @property
    def warmup_steps(self) -> int:
        return int(self.schedule.warmup_steps)

    def learning_rate(self, step: int) -> float:
        """The rate used by update `step` (0-based)."""
        if self.schedule.lr_schedule == "cosine":
            return cosine_learning_rate(step, self.learning_rate_peak, self.warmup_steps, self.total_steps)
        return learning_rate(step, self.learning_rate_peak, self.warmup_steps, self.decay_steps)

    def warnings(self) -> list:
        """Sentences on what this plan cannot do as it looks (e.g. a warm-up longer than the run)."""
        return plan_warnings(self.total_steps, self.warmup_steps, self.decay_steps)

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch

    def to_dict(self) -> dict:
        fields = dataclasses.asdict(self.schedule)
        fields["decay_epochs"] = list(fields["decay_epochs"])
        return {**fields, "train_size": self.train_size, "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps, "decay_steps": list(self.decay_steps),
                "learning_rate_peak": self.learning_rate_peak}

    def milestones(self):
        """(step, learning rate) at warm-up start/end, at each decay (cosine: each quarter): what the CLI prints."""
        points = [0]
        if self.schedule.lr_schedule == "cosine":
            after = self.total_steps - self.warmup_steps
            points += [self.warmup_steps + round(after * q / 4) - 1 for q in (1, 2, 3)]
        if self.warmup_steps > 1:
            points.append(self.warmup_steps - 1)
        for boundary in self.decay_steps:
            points += [max(boundary - 1, 0), boundary]
        points.append(self.total_steps - 1)
        return [(s, self.learning_rate(s)) for s in sorted(set(points)) if s < self.total_steps]


UPSTREAM_SCHEDULES = {
    "bit-s": UpstreamSchedule(
        "bit-s", epochs=90, decay_epochs=(30, 60, 80),
        description="BiT-S: ILSVRC-2012 (1.28M images, 1000 classes), 90 epochs, softmax cross-entropy"),
    "bit-m": UpstreamSchedule(
        "bit-m", epochs=90, decay_epochs=(30, 60, 80), multi_label=True,
        description="BiT-M: ImageNet-21k (14.2M images, 21843 classes), 90 epochs, sigmoid cross-entropy"),
    "bit-l": UpstreamSchedule(
        "bit-l", epochs=40, decay_epochs=(10, 23, 30, 37), multi_label=True,
        description="BiT-L: JFT-300M (300M images, 18291 classes), 40 epochs, sigmoid cross-entropy"),
}


def resolve_schedule(name: str) -> UpstreamSchedule:
    key = str(name).strip().lower().replace("_", "-")
    if key in ("s", "m", "l"):
        key = f"bit-{key}"
    if key not in UPSTREAM_SCHEDULES:
        raise ConfigError(f"Unknown schedule {name!r}; choose one of {', '.join(UPSTREAM_SCHEDULES)}.")
    return UPSTREAM_SCHEDULES[key]
