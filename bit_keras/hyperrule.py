"""BiT-HyperRule: the fine-tuning recipe chosen from the dataset alone, as pure data.

No framework imports: the rule can be printed, tested and reused by any trainer.
Defaults follow the paper; `public_code_resolution=True` gives the
public code's 512 -> 480 for every model, and `schedule="public"` the public code's decay
boundaries ([100, 200, 300, 400, 500] etc.: warm-up, three decays, end) instead of the
paper's 30/60/90% of the steps. The learning rate is `bit_keras.learning_rates.learning_rate`:
the warm-up starts above 0 (the public code's starts at exactly 0) and the rate drops at a
boundary step itself (step >= b).
"""

from __future__ import annotations

import dataclasses
import json

from bit_keras.learning_rates import DECAY_FACTOR, learning_rate, plan_warnings
from bit_keras.errors import ConfigError

BASE_BATCH = 512
BASE_LEARNING_RATE = 0.003
MOMENTUM = 0.9
SMALL_DATASET = 20_000
LARGE_DATASET = 500_000
SMALL_IMAGE_AREA = 96 * 96
MIXUP_ALPHA = 0.1
DECAY_FRACTIONS = (0.3, 0.6, 0.9)
SMALL_IMAGE_RESOLUTION = (160, 128)     # (resize, crop) below SMALL_IMAGE_AREA
DEFAULT_LARGE_RESOLUTION = (448, 384)   # otherwise; a model's releases may ask for more (R152x4: 512 -> 480)
PUBLIC_CODE_RESOLUTION = (512, 480)

# The public code's step boundaries at batch 512: warm-up end, three decays, total steps.
PUBLIC_SCHEDULES = {
    "small": (100, 200, 300, 400, 500),
    "medium": (500, 3000, 6000, 9000, 10_000),
    "large": (500, 6000, 12_000, 18_000, 20_000),
}
SCHEDULE_SOURCES = ("paper", "public")


@dataclasses.dataclass(frozen=True)
class HyperRule:
    """Everything the HyperRule decides for one dataset, at one batch size."""

    train_size: int
    image_size: tuple
    batch_size: int
    resize: int            # resize training images to resize x resize ...
    crop: int              # ... then random-crop crop x crop; evaluation resizes to crop
    total_steps: int
    warmup_steps: int
    decay_boundaries: tuple  # steps at which the learning rate is divided by 10
    base_learning_rate: float
    mixup_alpha: float     # 0.0: no MixUp
    momentum: float = MOMENTUM
    weight_decay: float = 0.0
    schedule: str = "paper"  # "paper": decays at 30/60/90%; "public": the public code's boundaries

    def learning_rate(self, step: int) -> float:
        """The rule's learning rate at a (0-based) step; never exactly 0 during warm-up."""
        return learning_rate(step, self.base_learning_rate, self.warmup_steps, self.decay_boundaries, DECAY_FACTOR)

    def warnings(self) -> list:
        """Sentences on what this rule cannot do as it looks (a shortened run's warm-up or decays)."""
        return plan_warnings(self.total_steps, self.warmup_steps, self.decay_boundaries)

    def boundary_learning_rates(self) -> list:
        """[(step, learning rate)] where the rate changes: step 0, the warm-up end, every decay."""
        steps = (0, self.warmup_steps, *self.decay_boundaries)
        return [(step, self.learning_rate(step)) for step in sorted(set(steps)) if step < self.total_steps]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def dataset_scale(train_size: int) -> str:
    if train_size < SMALL_DATASET:
        return "small"
    return "medium" if train_size < LARGE_DATASET else "large"


def resolution(image_size, *, large_resolution=DEFAULT_LARGE_RESOLUTION, public_code_resolution: bool = False):
    """(resize, crop) by image area: small images 160 -> 128, others `large_resolution`.

    `large_resolution` is 448 -> 384 by default; a model's releases carry their own
    (`presets.hyperrule_resolution`: 512 -> 480 for R152x4).
    """
    height, width = image_size
    if height * width < SMALL_IMAGE_AREA:
        return SMALL_IMAGE_RESOLUTION
    if public_code_resolution:
        return PUBLIC_CODE_RESOLUTION
    return tuple(large_resolution)


def hyperrule(train_size: int, image_size, *, large_resolution=DEFAULT_LARGE_RESOLUTION, batch_size: int = BASE_BATCH,
              public_code_resolution: bool = False, schedule: str = "paper") -> HyperRule:
    """The HyperRule for a dataset of `train_size` images of `image_size` (height, width).

    Smaller batches scale the learning rate by batch/512 and every step count by 512/batch.
    `schedule="public"` uses the public code's boundaries instead of the paper's 30/60/90%.
    """
    if train_size < 1:
        raise ConfigError(f"train_size must be positive. Received: train_size={train_size}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive. Received: batch_size={batch_size}")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    try:
        image_size = tuple(int(s) for s in image_size)
    except (TypeError, ValueError):
        raise ConfigError(f"image_size must be (height, width). Received: image_size={image_size!r}") from None
    if len(image_size) != 2 or min(image_size) < 1:
        raise ConfigError(f"image_size must be (height, width). Received: image_size={image_size}")
    if schedule not in SCHEDULE_SOURCES:
        raise ConfigError(f"schedule must be one of {SCHEDULE_SOURCES}. Received: schedule={schedule!r}")
    step_scale = BASE_BATCH / batch_size
    public = tuple(max(1, round(step * step_scale)) for step in PUBLIC_SCHEDULES[dataset_scale(train_size)])
    warmup_steps, total_steps = public[0], public[-1]
    if schedule == "public":
        boundaries = public[1:-1]
    else:
        boundaries = tuple(round(total_steps * fraction) for fraction in DECAY_FRACTIONS)
    resize, crop = resolution(image_size, large_resolution=large_resolution, public_code_resolution=public_code_resolution)
    return HyperRule(
        train_size=train_size, image_size=image_size, batch_size=batch_size,
        resize=resize, crop=crop, total_steps=total_steps, warmup_steps=warmup_steps,
        decay_boundaries=boundaries, base_learning_rate=BASE_LEARNING_RATE * batch_size / BASE_BATCH,
        mixup_alpha=MIXUP_ALPHA if train_size >= SMALL_DATASET else 0.0, schedule=schedule,
    )


def shorten(rule: HyperRule, total_steps: int) -> HyperRule:
    """The same rule compressed to `total_steps` updates: warm-up and decays keep their fractions."""
    if int(total_steps) < 1:
        raise ConfigError(f"steps must be a positive integer. Received: steps={total_steps}")
    scale = int(total_steps) / rule.total_steps
    return dataclasses.replace(
        rule, total_steps=int(total_steps), warmup_steps=max(1, round(rule.warmup_steps * scale)),
        decay_boundaries=tuple(max(1, round(b * scale)) for b in rule.decay_boundaries))


def at_resolution(rule: HyperRule, crop: int) -> HyperRule:
    """The rule with crop size `crop` and the resize scaled to keep the rule's resize/crop ratio."""
    if int(crop) < 1:
        raise ConfigError(f"resolution must be a positive integer. Received: resolution={crop}")
    return dataclasses.replace(rule, crop=int(crop), resize=max(int(crop), round(crop * rule.resize / rule.crop)))
