"""Accuracy guard for bfloat16 fine-tuning: it learns digits as well as float32 does (within noise)."""

import json

from tests.conftest import finetune_digits


def test_bfloat16_finetune_matches_float32_accuracy(digits_run, tmp_path):
    full = digits_run[1]["eval_accuracy"]
    half = finetune_digits(tmp_path, "mixed_bfloat16")["eval_accuracy"]
    # run.json says what the backbone computed in (a float32 run records nothing, as before).
    assert json.loads((tmp_path / "run.json").read_text())["precision"] == "mixed_bfloat16"
    assert "precision" not in json.loads((digits_run[0] / "run.json").read_text())
    assert full > 0.4 and half > 0.4, (full, half)  # chance is 0.1
    # 360 test images: one standard error of an accuracy near 0.7 is about 0.025; two runs'
    # training noise (bfloat16 rounding changes the trajectory) adds about as much again.
    assert abs(half - full) < 0.1, (full, half)
