"""Fine-tuning with the BiT-HyperRule through `model.fit`.

- `schedule`: `HyperRuleSchedule`, the rule's learning rate as a Keras schedule.
- `wrapper`: `build_finetuner` -> `FineTuner` (compiled model + rule + input pipelines).
- `runner`: `finetune` / `evaluate`, resumable runs in an output directory (the CLI's engine).
- `demo`: `bit_keras demo`.
"""

from bit_keras.finetune.runner import evaluate, finetune
from bit_keras.finetune.schedule import HyperRuleSchedule
from bit_keras.finetune.wrapper import FineTuner, at_resolution, build_finetuner, shorten

__all__ = ["HyperRuleSchedule", "FineTuner", "build_finetuner", "shorten", "at_resolution", "finetune", "evaluate"]
