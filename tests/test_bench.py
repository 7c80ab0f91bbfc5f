"""`bit_keras bench` and bit_keras.bench: the report's format and the MAC count (not speed)."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

import bit_keras
from bit_keras import bench
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
    assert bench.count_macs(bit_keras.Architecture((1, 2, 1, 1), 1), size, 10) == _conv_macs_from_model((1, 2, 1, 1), 1, size, 10)


def test_r50x1_macs_are_resnet50s():
    # ResNet-50's convolutions and head: 4.09 GMACs at 224 (torchvision's figure). timm's
    # 4.23 also counts the elementwise layers, so it may only be a few percent higher.
    macs = bench.count_macs(bit_keras.Architecture.parse("r50x1"), 224, 1000)
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
    plain = bench.with_keras_group_norm(model)
    assert isinstance(plain.get_layer("block1-unit01-b-group_norm"), keras.layers.GroupNormalization)
    images = rng.uniform(0, 1, (2, 48, 48, 3)).astype("float32")
    expected = np.asarray(model(images))
    assert np.abs(np.asarray(plain(images)) - expected).max() < 1e-5 * np.abs(expected).max()


def test_parse_variant():
    assert bench.parse_variant("BiT-M-R50x1") == bit_keras.Architecture((3, 4, 6, 3), 1)
    assert bench.parse_variant("r1-2-1-1x2") == bit_keras.Architecture((1, 2, 1, 1), 2)
    with pytest.raises(ValueError, match="Unknown BiT model"):
        bench.parse_variant("r51x1")


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
    macs = bench.count_macs(bit_keras.Architecture((1, 1, 1, 1), 1), 64, 1000)
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
        assert "images/s" in line and "% of the measured float32 peak (" in line and "GFLOP/s" in line
        assert "best step vs best probe" in line
        assert "first row" not in line  # no speed-up without --baseline
    assert sum(line.startswith("peak memory (RSS high-water mark") and line.endswith("MiB") for line in lines) == 2


def test_bfloat16_rows_report_both_peaks(capsys):
    assert _run_cli("--variant", TINY, "--resolution", "32", "--batch", "2", "--steps", "1", "--mode", "train",
                    "--precision", "bfloat16", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["results"]
    assert row["peak_precision"] == "bfloat16" and "bfloat16 matmul" in row["peak_probe"]
    assert "float32 matmul" in row["peak_probe"]
    assert row["fraction_of_peak"] == row["fraction_of_bfloat16_peak"]
    for precision in ("float32", "bfloat16"):
        assert row[f"fraction_of_{precision}_peak"] == pytest.approx(
            row["model_gflops_per_second"] / row[f"{precision}_peak_gflops_per_second"])
    line = bench.format_result(row)
    assert "% of the measured bfloat16 peak (" in line and "% of the float32 peak (" in line


def test_input_mode_reports_supply_next_to_consumption(capsys):
    assert _run_cli("--variant", TINY, "--resolution", "32", "--batch", "2", "--steps", "1", "--mode", "input") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("machine: ")
    assert "JPEGs of 500x375 -> decode, resize 37, random crop 32, flip, MixUp 0.1" in lines[1]
    assert "bit_keras.data.train_pipeline" in lines[1]
    assert lines[2].startswith("pipeline supply: ") and "images/s on 1 core, " in lines[2]
    assert lines[3].startswith(f"model consumption ({TINY} fine-tuning, float32, 32px, batch 2): ")
    assert lines[4].startswith("supply / consumption: ") and "starved" in lines[4]
    assert lines[5].startswith("a GPU training at 2000 images/s needs about ") and lines[5].endswith(
        "such cores for this pipeline")


def test_input_throughput_runs_the_real_pipeline(tmp_path):
    bench.make_jpegs(str(tmp_path), count=6, image_size=(40, 60), classes=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class0", "class1"]
    result = bench.input_throughput(str(tmp_path), crop=32, batch=2, threads=1, batches=2, warmup=1)
    assert result["output_shape"] == [2, 32, 32, 3] and result["threads"] == 1
    assert result["source_images"] == 6 and result["source_image_size"] == [40, 60]
    assert result["images_per_second"] > 0


def test_measure_memory_runs_a_fresh_subprocess():
    row = bench.measure_memory(TINY, 32, 1, accumulation=2, updates=1, accumulator="keras")
    assert (row["micro_batch"], row["accumulation"], row["batch"], row["accumulator"]) == (1, 2, 2, "keras")
    assert row["parameters"] == row["parameters_counted"]
    assert row["peak_rss_bytes"] >= row["rss_after_build_bytes"] > 100 * 2**20
    assert row["activation_estimate_bytes"] == bench.activation_bytes(bit_keras.Architecture((1, 1, 1, 1), 1), 32, 1)
    assert row["optimizer_state_estimate_bytes"] == 4 * 4 * row["parameters"]  # weights, gradients, momentum, accumulator
    with pytest.raises(ValueError, match="accumulator must be one of momentum, keras"):
        bench.measure_memory(TINY, 32, 1, accumulation=2, accumulator="adam")


def test_a_row_killed_for_memory_reads_does_not_fit(tmp_path, monkeypatch):
    # The kernel's out-of-memory killer sends SIGKILL; a child that kills itself stands in for it.
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\nkill -9 $$\n")
    python.chmod(0o755)
    monkeypatch.setattr(bench.memory.sys, "executable", str(python))
    row = bench.measure_memory(TINY, 32, 2, accumulation=2)
    assert row["fits"] is False and row["rss_after_build_bytes"] is None
    report = {"variant": TINY, "size": 32, "precision": "float32", "rows": [row]}
    line = bench.format_memory_report(report)[1]
    assert line.startswith("micro-batch 2, accumulation 2: does not fit: killed (out of memory) at ")
    assert line.endswith(f"on a machine with {bench.machine_memory_bytes() / 2**30:.1f} GiB")


def test_memory_mode_rows_and_per_image(monkeypatch, capsys):
    def fake(variant, size, micro_batch, *, accumulation=1, precision="float32", accumulator="momentum"):
        keras_accumulator = accumulation > 1 and accumulator == "keras"
        peak = (1000 + 300 * micro_batch + 200 * keras_accumulator) * 2**20
        return {"variant": variant, "size": size, "micro_batch": micro_batch, "accumulation": accumulation,
                "batch": micro_batch * accumulation, "precision": precision, "accumulator": accumulator,
                "peak_rss_bytes": peak, "rss_after_build_bytes": 900 * 2**20,
                "activation_estimate_bytes": 2**30 * micro_batch,
                "optimizer_state_estimate_bytes": 2**29 * (3 + keras_accumulator)}

    monkeypatch.setattr(bench.memory, "measure_memory", fake)
    assert _run_cli("--variant", TINY, "--resolution", "32", "--mode", "memory", "--micro-batch", "1,2",
                    "--accumulation", "2", "--accumulator", "keras,momentum", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert [(r["micro_batch"], r["accumulation"], r["batch"], r["accumulator"]) for r in report["rows"]] == [
        (1, 1, 1, "momentum"), (2, 1, 2, "momentum"), (2, 2, 4, "keras"), (2, 2, 4, "momentum")]
    assert report["measured_bytes_per_image"] == 300 * 2**20
    assert report["estimated_activation_bytes_per_image"] == bench.activation_bytes(
        bit_keras.Architecture((1, 1, 1, 1), 1), 32)
    lines = bench.format_memory_report(report)
    assert lines[0].startswith(f"memory: {TINY} fine-tuning at 32px, float32")
    assert lines[1] == ("micro-batch 1, no accumulation: peak RSS 1.27 GiB (after building 0.88 GiB; estimate: "
                        "activations 1.00 GiB + weights/gradients/momentum 1.50 GiB)")
    assert lines[3].startswith("micro-batch 2, accumulating 2 micro-batches (batch 4) with Keras "
                               "gradient_accumulation_steps: peak RSS 1.76 GiB")
    assert "weights/gradients/momentum/accumulator 2.00 GiB" in lines[3]
    assert lines[4].startswith("micro-batch 2, accumulating 2 micro-batches (batch 4) in the momentum: "
                               "peak RSS 1.56 GiB")
    assert "weights/gradients/momentum 1.50 GiB" in lines[4]

    assert lines[-1].startswith("per image: 0.29 GiB measured, ")


def test_memory_mode_defaults_to_the_hyperrules_crop(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(bench.memory, "memory_report",
                        lambda variant, size, micro_batches, **kw: seen.update(size=size, mb=micro_batches) or
                        {"machine": "m", "variant": variant, "size": size, "precision": "float32", "rows": []})
    assert _run_cli("--variant", "r152x4", "--mode", "memory", "--micro-batch", "1,4") == 0
    assert seen == {"size": 480, "mb": (1, 4)}
    assert _run_cli("--variant", "r50x1", "--mode", "memory") == 0
    assert seen == {"size": 384, "mb": (1, 2)}


def test_parameter_count_and_activation_estimate():
    for units, width in (((1, 1, 1, 1), 1), ((1, 2, 1, 1), 2)):
        model = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone(units, width), 10)
        assert bit_keras.Architecture(units, width).num_params(10) == model.count_params()
    r50 = bit_keras.Architecture.parse("r50x1")
    assert bench.activation_bytes(r50, 224, 4) == 4 * bench.activation_bytes(r50, 224, 1)
    assert bench.activation_bytes(r50, 224, 1, 2) * 2 == bench.activation_bytes(r50, 224, 1, 4)
    # ResNet-50 keeps on the order of 100 MB of float32 activations per 224 px image for training.
    assert 50e6 < bench.activation_bytes(r50, 224) < 300e6


@pytest.mark.parametrize("args, message", [
    (["--variant", "r51x1"], "Unknown BiT model"),
    (["--variant", TINY, "--mode", "train", "--fold"], "fold is for inference"),
    (["--variant", TINY, "--steps", "0"], "--steps >= 1"),
    (["--variant", TINY, "--mode", "memory", "--micro-batch", "1,x"], "--micro-batch as positive integers"),
    (["--variant", TINY, "--mode", "memory", "--accumulator", "momentum,adam"], "--accumulator takes momentum or keras"),
    (["--variant", TINY, "--mode", "input", "--baseline"], "--mode input takes no --baseline"),
])
def test_bad_requests_are_one_line_errors(capsys, args, message):
    assert _run_cli(*args) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
