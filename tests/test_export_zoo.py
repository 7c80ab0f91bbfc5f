"""export/export_zoo.py's plan and refusals, and the hub.KerasLayer example, kept runnable."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "export", "export_zoo.py")


def run_script(*argv):
    return subprocess.run([sys.executable, SCRIPT, *argv], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


def test_zoo_plan_covers_every_release_and_skips_existing(tmp_path):
    from bit_keras import presets

    os.makedirs(tmp_path / "m-r50x1" / "feature_vector")
    result = run_script("--output-root", str(tmp_path), "--dry-run", "--kinds", "feature_vector,classification")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 * len(presets.PRESETS) == 40
    assert f"BiT-M-R50x1 feature_vector -> {tmp_path}/m-r50x1/feature_vector: exists, skipped" in result.stdout
    assert f"-> {tmp_path}/m-r152x4-ilsvrc2012/classification: weights https://" in result.stdout


def test_zoo_refuses_missing_weights_and_unknown_names(tmp_path):
    result = run_script("--output-root", str(tmp_path), "--variants", "s-r50x1", "--weights-dir", str(tmp_path))
    assert result.returncode == 2 and f"{tmp_path}/BiT-S-R50x1.npz" in result.stderr
    result = run_script("--output-root", str(tmp_path), "--variants", "r50x1")
    assert result.returncode == 2 and "names no released BiT checkpoint" in result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.slow  # ~50 s; test_export.py's hub.KerasLayer fine-tuning test covers the behaviour
def test_hub_layer_example_fine_tunes(tmp_path):
    pytest.importorskip("sklearn")
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import finetune_hub_layer
    finally:
        sys.path.pop(0)
    export_dir = finetune_hub_layer.export_tiny_random_backbone(str(tmp_path / "tiny"))
    result = finetune_hub_layer.main(["--export-dir", export_dir, "--steps", "4", "--batch-size", "16",
                                      "--image-size", "16"])
    assert result["backbone_variables_changed"] == result["backbone_variables"] > 0
