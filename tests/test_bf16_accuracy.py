"""Accuracy guard for bfloat16 fine-tuning: it learns digits as well as float32 does (within noise)."""

import keras

import bit_keras
from bit_keras.finetune.runner import finetune


def _run(tmp_path, dtype):
    import json

    keras.utils.set_random_seed(0)
    backbone = bit_keras.BiTBackbone((1, 1, 1, 1), width=1, name="tiny", dtype=dtype)
    gn = backbone.get_layer("block1-unit01-a-group_norm")
    assert gn.compute_dtype == ("bfloat16" if dtype == "mixed_bfloat16" else "float32")
    accuracy = finetune(backbone, dataset="digits", output=tmp_path / dtype, batch_size=32, steps=80, eval_every=80,
                        resolution=24, base_learning_rate=0.01, verbose=0)["eval_accuracy"]
    # run.json says what the backbone computed in (a float32 run records nothing, as before).
    assert json.loads((tmp_path / dtype / "run.json").read_text()).get("precision", "float32") == dtype
    return accuracy


def test_bfloat16_finetune_matches_float32_accuracy(tmp_path):
    full = _run(tmp_path, "float32")
    half = _run(tmp_path, "mixed_bfloat16")
    assert full > 0.4 and half > 0.4, (full, half)  # chance is 0.1
    # 360 test images: one standard error of an accuracy near 0.7 is about 0.025; two runs'
    # training noise (bfloat16 rounding changes the trajectory) adds about as much again.
    assert abs(half - full) < 0.1, (full, half)
