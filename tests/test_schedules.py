"""The one warm-up + step-decay learning rate, in Keras and pure Python, against a formula written here.

Both parameterisations (a HyperRule, an upstream RunPlan) are checked with their numbers
written out from the spec, never read back from the code under test.
"""

import dataclasses
import subprocess
import sys

import keras
import numpy as np
import pytest

import bit_keras
from bit_keras.hyperrule import hyperrule
from bit_keras.learning_rates import WarmupStepDecay
from bit_keras.train.upstream_schedules import UPSTREAM_SCHEDULES


def expected(step, peak, warmup, boundaries):
    """Linear warm-up (update s gets (s + 1) / warmup), times 0.1 per boundary reached."""
    ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return peak * ramp * 0.1 ** int(np.sum(step >= np.asarray(boundaries)))


RULE = hyperrule(10_000, (32, 32))                                        # the paper: N < 20k
UPSTREAM = UPSTREAM_SCHEDULES["bit-s"]
CASES = {   # name: (schedule, pure-Python rate, peak, warm-up, boundaries, steps) as the spec gives them
    "hyperrule": (WarmupStepDecay.from_rule(RULE), RULE.learning_rate, 0.003, 100, (150, 300, 450), 500),
    "hyperrule-boundary-in-warmup": (
        WarmupStepDecay.from_rule(dataclasses.replace(RULE, warmup_steps=200)),
        dataclasses.replace(RULE, warmup_steps=200).learning_rate, 0.003, 200, (150, 300, 450), 500),
    "upstream-bit-s": (WarmupStepDecay.from_plan(UPSTREAM.plan(1_281_167)), UPSTREAM.plan(1_281_167).learning_rate,
                       0.48, 5000, (9384, 18767, 25023), 28151),
    # 10 updates per epoch, decays at epochs 1 and 2, warm-up over 3 epochs: both decays inside it.
    "upstream-boundaries-in-warmup": (
        WarmupStepDecay.from_plan(UPSTREAM.replace(epochs=4, decay_epochs=(1, 2), warmup_steps=30).plan(40_960)),
        UPSTREAM.replace(epochs=4, decay_epochs=(1, 2), warmup_steps=30).plan(40_960).learning_rate,
        0.48, 30, (10, 20), 40),
    "no-warmup": (WarmupStepDecay(0.5, 0, (3, 7)), None, 0.5, 0, (3, 7), 10),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_keras_and_python_equal_the_formula_at_warmup_every_boundary_and_after(name):
    schedule, python_rate, peak, warmup, boundaries, total = CASES[name]
    steps = {0, 1, warmup // 2, total - 1, total, 3 * total}
    for point in (warmup, *boundaries):
        steps |= {point - 1, point, point + 1}
    for step in sorted(s for s in steps if s >= 0):
        want = expected(step, peak, warmup, boundaries)
        assert float(schedule(step)) == pytest.approx(want, rel=1e-6), step
        if python_rate is not None:
            assert python_rate(step) == pytest.approx(want, rel=1e-12), step
    assert float(schedule(0)) > 0  # the public code's warm-up starts at exactly 0


def test_a_boundary_inside_the_warmup_multiplies():
    schedule = CASES["hyperrule-boundary-in-warmup"][0]
    assert float(schedule(149)) == pytest.approx(0.003 * 150 / 200, rel=1e-6)
    assert float(schedule(150)) == pytest.approx(0.003 * 151 / 200 * 0.1, rel=1e-6)
    assert float(schedule(199)) == pytest.approx(0.003 * 0.1, rel=1e-6)


def test_steps_per_update_counts_updates_not_micro_batches_and_serializes():
    schedule = WarmupStepDecay.from_rule(RULE, steps_per_update=4)
    for update in (0, 49, 99, 100, 149, 150, 449, 450, 499):
        for micro in range(4):
            assert float(schedule(4 * update + micro)) == pytest.approx(
                expected(update, 0.003, 100, (150, 300, 450)), rel=1e-6), (update, micro)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, WarmupStepDecay) and restored.get_config() == schedule.get_config()
    assert bit_keras.WarmupStepDecay is WarmupStepDecay
    with pytest.raises(ValueError, match="steps_per_update"):
        WarmupStepDecay(0.1, 10, (), steps_per_update=0)


def test_the_pure_modules_do_not_import_tensorflow():
    code = "import bit_keras.learning_rates, bit_keras.hyperrule, sys; assert 'tensorflow' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_plans_that_cannot_work_are_named():
    from bit_keras.hyperrule import shorten
    from bit_keras.learning_rates import plan_warnings

    assert plan_warnings(500, 100, (150, 300, 450)) == [] and hyperrule(10_000, (32, 32)).warnings() == []
    long_warmup = plan_warnings(405, 5000, (135, 270, 360))
    assert "warm-up (5000 updates) is longer than the run (405)" in long_warmup[0] and "8%" in long_warmup[0]
    assert "[135, 270, 360] fall inside the warm-up" in long_warmup[1]
    tiny = shorten(hyperrule(1437, (8, 8), batch_size=64), 1).warnings()   # what `demo --steps 1` asked for
    assert any("never happen" in w for w in tiny)


def test_train_says_so_in_its_header(tmp_path):
    import numpy as np

    from bit_keras.data import from_arrays
    from bit_keras.train.loop import TrainConfig, train

    lines = []
    schedule = UPSTREAM_SCHEDULES["bit-s"].replace(batch_size=8, image_size=32)   # warm-up 5000 on 16 images
    train(TrainConfig(model_dir=str(tmp_path), dataset="arrays", schedule=schedule, block_units=(1, 1, 1, 1),
                      max_steps=0), source=from_arrays(np.zeros((16, 8, 8, 3), np.uint8), np.arange(16) % 4),
          log=lines.append)
    assert any(line.startswith("warning: the warm-up (5000 updates) is longer than the run (180)") for line in lines)
