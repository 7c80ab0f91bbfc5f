"""Fine-tuning with the BiT-HyperRule through `model.fit`: schedule, wrapper, runner, demo."""

from bit_keras.finetune.schedule import HyperRuleSchedule
from bit_keras.finetune.wrapper import FineTuner, build_finetuner, shorten, at_resolution

__all__ = ["HyperRuleSchedule", "FineTuner", "build_finetuner", "shorten", "at_resolution"]
