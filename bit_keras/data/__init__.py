"""Input data for fine-tuning: sources (TFDS, folders, digits, arrays), few-shot, HyperRule pipelines."""

from bit_keras.data.fewshot import few_shot
from bit_keras.data.mixup import mixup, mixup_params
from bit_keras.data.preprocess import eval_pipeline, train_pipeline
from bit_keras.data.sources import DatasetInfo, check_split, from_arrays, load_source, split_size

__all__ = ["DatasetInfo", "check_split", "load_source", "split_size", "from_arrays", "few_shot", "train_pipeline", "eval_pipeline",
           "mixup", "mixup_params"]
