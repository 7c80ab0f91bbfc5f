"""Fine-tuning with the BiT-HyperRule through `model.fit`.

- `fine_tuner`: `build_finetuner` -> `FineTuner` (compiled model + rule + input pipelines).
- `runner`: `finetune` / `evaluate`, resumable runs in an output directory (the CLI's engine).
- `demo`: `bit_keras demo`.
"""

from bit_keras.finetune.runner import evaluate, finetune
from bit_keras.finetune.fine_tuner import FineTuner, build_finetuner
from bit_keras.hyperrule import at_resolution, shorten

__all__ = ["FineTuner", "build_finetuner", "shorten", "at_resolution", "finetune", "evaluate"]
