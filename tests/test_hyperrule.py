"""BiT-HyperRule against the paper's table, and the `bit_keras hyperrule` command.

Expected values are written out from the spec, never computed by the code under test.
"""

import json
import subprocess
import sys

import pytest

from bit_keras.hyperrule import hyperrule

# train_size -> (total steps, warm-up, paper boundaries at 30/60/90%, public boundaries, mixup) at batch 512
SCHEDULE_TABLE = {
    1: (500, 100, (150, 300, 450), (200, 300, 400), 0.0),
    19_999: (500, 100, (150, 300, 450), (200, 300, 400), 0.0),
    20_000: (10_000, 500, (3000, 6000, 9000), (3000, 6000, 9000), 0.1),
    499_999: (10_000, 500, (3000, 6000, 9000), (3000, 6000, 9000), 0.1),
    500_000: (20_000, 500, (6000, 12_000, 18_000), (6000, 12_000, 18_000), 0.1),
    1_281_167: (20_000, 500, (6000, 12_000, 18_000), (6000, 12_000, 18_000), 0.1),
}


@pytest.mark.parametrize("train_size", sorted(SCHEDULE_TABLE))
def test_schedule_by_dataset_size(train_size):
    total, warmup, paper, public, alpha = SCHEDULE_TABLE[train_size]
    rule = hyperrule(train_size, (224, 224))
    assert (rule.total_steps, rule.warmup_steps, rule.decay_boundaries) == (total, warmup, paper)
    assert rule.mixup_alpha == alpha
    assert rule.base_learning_rate == pytest.approx(0.003)
    assert (rule.momentum, rule.weight_decay, rule.batch_size) == (0.9, 0.0, 512)
    rule = hyperrule(train_size, (224, 224), schedule="public")
    assert (rule.total_steps, rule.warmup_steps, rule.decay_boundaries) == (total, warmup, public)


@pytest.mark.parametrize("image_size, expected", [
    ((95, 96), (160, 128)),    # area 9120 < 96*96
    ((96, 95), (160, 128)),
    ((1, 9215), (160, 128)),   # area just below 9216
    ((96, 96), (448, 384)),    # area exactly 96*96: not below
    ((48, 192), (448, 384)),   # same area, not square
    ((97, 96), (448, 384)),
    ((32, 32), (160, 128)),    # CIFAR
    ((500, 375), (448, 384)),  # Pets-like
])
def test_resolution_by_image_area(image_size, expected):
    rule = hyperrule(1000, image_size)
    assert (rule.resize, rule.crop) == expected


@pytest.mark.parametrize("variant", ["BiT-M-R152x4", "r152x4", "s-r152x4", "BiT-M-R152x4-ILSVRC2012"])
def test_r152x4_uses_512_480(variant):
    from bit_keras import presets

    large = presets.hyperrule_resolution(presets.resolve(variant)[0])
    rule = hyperrule(1000, (224, 224), large_resolution=large)
    assert (rule.resize, rule.crop) == (512, 480)
    small = hyperrule(1000, (32, 32), large_resolution=large)
    assert (small.resize, small.crop) == (160, 128)


def test_square_size_as_one_number():
    assert hyperrule(10, 32).image_size == (32, 32) and hyperrule(10, 32).crop == 128


def test_public_code_resolution_is_512_480_for_every_model():
    for large in ((448, 384), (512, 480)):
        rule = hyperrule(50_000, (224, 224), large_resolution=large, public_code_resolution=True)
        assert (rule.resize, rule.crop) == (512, 480)
    assert hyperrule(50_000, (224, 224)).crop == 384


@pytest.mark.parametrize("batch, lr, total, warmup, paper, public", [
    (128, 0.00075, 2000, 400, (600, 1200, 1800), (800, 1200, 1600)),
    (256, 0.0015, 1000, 200, (300, 600, 900), (400, 600, 800)),
    (64, 0.000375, 4000, 800, (1200, 2400, 3600), (1600, 2400, 3200)),
    (1024, 0.006, 250, 50, (75, 150, 225), (100, 150, 200)),
])
def test_batch_scaling(batch, lr, total, warmup, paper, public):
    rule = hyperrule(10_000, (32, 32), batch_size=batch)
    assert rule.base_learning_rate == pytest.approx(lr)
    assert (rule.total_steps, rule.warmup_steps, rule.decay_boundaries) == (total, warmup, paper)
    rule = hyperrule(10_000, (32, 32), batch_size=batch, schedule="public")
    assert (rule.total_steps, rule.warmup_steps, rule.decay_boundaries) == (total, warmup, public)


def test_warmup_is_linear_and_never_zero():
    for train_size, batch in ((100, 512), (100, 8192), (50_000, 512), (50_000, 32)):
        rule = hyperrule(train_size, (64, 64), batch_size=batch)
        rates = [rule.learning_rate(step) for step in range(rule.total_steps)]
        assert min(rates) > 0.0
        assert rule.learning_rate(0) > 0.0
        warm = rates[:rule.warmup_steps]
        assert all(b > a for a, b in zip(warm, warm[1:]))   # strictly rising
        assert warm[0] == pytest.approx(rule.base_learning_rate / rule.warmup_steps)
        assert max(rates) == pytest.approx(rule.base_learning_rate)


def test_boundary_learning_rates_table():
    rule = hyperrule(10_000, (32, 32))
    table = rule.boundary_learning_rates()
    assert [step for step, _ in table] == [0, 100, 150, 300, 450]
    assert [lr for _, lr in table] == pytest.approx([0.003 / 100, 0.003, 0.0003, 0.00003, 0.000003])


def test_json_round_trip():
    rule = hyperrule(20_000, (32, 32), batch_size=128)
    data = json.loads(rule.to_json())
    assert data["total_steps"] == 40_000 and data["crop"] == 128 and data["mixup_alpha"] == 0.1
    assert data["decay_boundaries"] == [12_000, 24_000, 36_000]


@pytest.mark.parametrize("kwargs, message", [
    (dict(train_size=0, image_size=(32, 32)), "train_size"),
    (dict(train_size=10, image_size=(32, 32), batch_size=0), "batch_size"),
    (dict(train_size=10, image_size=(32,)), "image_size"),
    (dict(train_size=10, image_size=(0, 32)), "image_size"),
    (dict(train_size=10, image_size="big"), "image_size"),
    (dict(train_size=10, image_size=(32, 32), schedule="fast"), "schedule"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        hyperrule(**kwargs)


# ---------------------------------------------------------------------------- command line

def _run_cli(*argv):
    return subprocess.run([sys.executable, "-m", "bit_keras", "hyperrule", *argv],
                          capture_output=True, text=True, timeout=120)


def test_cli_json_matches_the_rule():
    result = _run_cli("--train-size", "50000", "--image-size", "32x32", "--batch", "128", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["resize"], data["crop"]) == (160, 128)
    assert (data["total_steps"], data["warmup_steps"]) == (40_000, 2000)
    assert data["decay_boundaries"] == [12_000, 24_000, 36_000]
    assert data["base_learning_rate"] == pytest.approx(0.00075)
    assert data["mixup_alpha"] == 0.1
    assert [row["step"] for row in data["learning_rate_at"]] == [0, 2000, 12_000, 24_000, 36_000]
    assert [row["learning_rate"] for row in data["learning_rate_at"]] == pytest.approx(
        [0.00075 / 2000, 0.00075, 0.000075, 0.0000075, 0.00000075])


def test_cli_text_and_options(capsys):
    from bit_keras.cli.main import build_parser

    args = build_parser().parse_args(["hyperrule", "--train-size", "1000", "--image-size", "224x224",
                                      "--variant", "BiT-M-R50x1", "--public-code-resolution",
                                      "--schedule", "public"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "resize to 512x512, random crop 480x480" in out
    assert "decay x0.1 at 200, 300, 400" in out and "mixup          off" in out
    args = build_parser().parse_args(["hyperrule", "--train-size", "1000", "--image-size", "300", "--json"])
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out)["image_size"] == [300, 300]


def test_cli_bad_image_size_is_one_line_error():
    result = _run_cli("--train-size", "10", "--image-size", "big")
    assert result.returncode == 2
    assert "--image-size must be HxW" in result.stderr and "Traceback" not in result.stderr
