"""`bit_keras bench` and bit_keras.benchmark: the report's format and the MAC count (not speed)."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

import bit_keras
from bit_keras import benchmark
from bit_keras.cli import main as cli_main

TINY = "r1-1-1-1x1"  # the custom-architecture spelling every command takes


def _conv_macs_from_model(block_units, width, size, classes):
    """Independent count: run the Keras model and multiply each conv's real output size."""
    backbone = bit_keras.BiTBackbone(block_units, width)
    convs = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    probe = keras.Model(backbone.input, [conv.output for conv in convs])
    outputs = probe(np.zeros((1, size, size, 3), "float32"))
    total = 0
    for conv, out in zip(convs, outputs):
        kh, kw, cin, cout = conv.kernel.shape
        total += int(np.prod(out.shape[1:3])) * kh * kw * cin * cout
    return total + 2048 * width * classes


@pytest.mark.parametrize("size", [64, 97])  # 97: odd sizes round like the padding does
def test_mac_count_matches_the_built_model(size):
    assert benchmark.count_macs(bit_keras.Architecture((1, 2, 1, 1), 1), size, 10) == _conv_macs_from_model((1, 2, 1, 1), 1, size, 10)


def test_r50x1_macs_are_resnet50s():
    # ResNet-50's convolutions and head: 4.09 GMACs at 224 (torchvision's figure). timm's
    # 4.23 also counts the elementwise layers, so it may only be a few percent higher.
    macs = benchmark.count_macs(bit_keras.Architecture.parse("r50x1"), 224, 1000)
    assert round(macs / 1e9, 2) == 4.09
    assert 1.0 < 4.23e9 / macs < 1.05


def test_straightforward_baseline_computes_the_same_function():
    # The baseline swaps in Keras core's GroupNormalization; speed-ups are only fair if
    # both compute the same outputs.
    model = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone((1, 1, 1, 1), 1), 5)
    rng = np.random.default_rng(0)
    for variable in model.variables:
        if variable.path.endswith(("gamma", "beta", "bias")) or "head" in variable.path:
            variable.assign(rng.uniform(0.5, 1.5, variable.shape))
    plain = benchmark.with_keras_group_norm(model)
    assert isinstance(plain.get_layer("block1-unit01-b-group_norm"), keras.layers.GroupNormalization)
    images = rng.uniform(0, 1, (2, 48, 48, 3)).astype("float32")
    expected = np.asarray(model(images))
    assert np.abs(np.asarray(plain(images)) - expected).max() < 1e-5 * np.abs(expected).max()


def test_parse_variant():
    assert benchmark.parse_variant("BiT-M-R50x1") == bit_keras.Architecture((3, 4, 6, 3), 1)
    assert benchmark.parse_variant("r1-2-1-1x2") == bit_keras.Architecture((1, 2, 1, 1), 2)
    with pytest.raises(ValueError, match="Unknown BiT model"):
        benchmark.parse_variant("r51x1")


def test_cli_json_report_with_baseline():
    result = subprocess.run(
        [sys.executable, "-m", "bit_keras", "bench", "--variant", TINY, "--resolution", "64", "--batch", "2",
         "--steps", "2", "--jit", "--fold", "--baseline", "--json"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["backend"] == "tensorflow" and "cores" in report["machine"]
    assert report["peak_rss_bytes"] > 100 * 2**20
    baseline, tuned = report["results"]
    assert (baseline["jit"], baseline["fold"], tuned["jit"], tuned["fold"]) == (False, False, True, True)
    assert baseline["straightforward"] and not tuned["straightforward"]
    assert baseline["speedup_vs_first"] == 1.0
    macs = benchmark.count_macs(bit_keras.Architecture((1, 1, 1, 1), 1), 64, 1000)
    for entry in report["results"]:
        assert len(entry["step_seconds_all"]) == 2
        assert entry["images_per_second"] == pytest.approx(2 / entry["step_seconds"])
        assert entry["gmacs_per_image"] == pytest.approx(macs / 1e9)
        assert entry["model_gflops_per_second"] == pytest.approx(2 * macs * entry["images_per_second"] / 1e9)
        assert entry["fraction_of_peak"] == pytest.approx(
            entry["model_gflops_per_second"] / entry["peak_gflops_per_second"])
        assert entry["peak_gflops_per_second"] > 1 and entry["compile_seconds"] > 0
        assert entry["fraction_of_peak_best"] > 0


def _run_cli(*args):
    parser = cli_main.build_parser()
    return cli_main._main(parser.parse_args(["bench", *args]))


def test_cli_text_report_train_and_savedmodel(capsys):
    assert _run_cli("--variant", TINY, "--resolution", "32", "--batch", "2", "--steps", "1", "--mode", "train") == 0
    assert _run_cli("--variant", TINY, "--resolution", "32", "--batch", "1", "--steps", "1", "--serving", "--fold") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("machine: ") and "cores" in lines[0]
    train = next(line for line in lines if "train float32" in line)
    served = next(line for line in lines if "savedmodel float32+fold" in line)
    for line in (train, served):
        assert "images/s" in line and "% of the measured peak (" in line and "GFLOP/s" in line
        assert "best step vs best probe" in line
        assert "first row" not in line  # no speed-up without --baseline
    assert sum(line.startswith("peak memory (RSS high-water mark") and line.endswith("MiB") for line in lines) == 2


@pytest.mark.parametrize("args, message", [
    (["--variant", "r51x1"], "Unknown BiT model"),
    (["--variant", TINY, "--mode", "train", "--fold"], "fold is for inference"),
    (["--variant", TINY, "--steps", "0"], "--steps >= 1"),
])
def test_bad_requests_are_one_line_errors(capsys, args, message):
    assert _run_cli(*args) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
