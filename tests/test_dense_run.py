"""`bit_keras finetune/evaluate/export --task detection|segmentation`: runs on a tiny BiT and synthetic shapes.

Each run is two updates at 64 px (r14x1, random weights): what is checked is the run
directory, resumption, the reported metrics and the exported SavedModel, not accuracy.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bit_keras.errors import ConfigError

pytest.importorskip("keras_hub", reason="keras-hub provides the RetinaNet and DeepLabV3 task models")
pytest.importorskip("pycocotools", reason="COCO mAP is pycocotools'")

SIZE = 64


def _cli(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "bit_keras", *args], capture_output=True, text=True,
                            timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("dense") / "detection")
    result = _cli("finetune", "--task", "detection", "--variant", "r14x1", "--dataset", "shapes", "--steps", "2",
                  "--eval-every", "1", "--batch", "4", "--micro-batch", "2", "--resolution", str(SIZE),
                  "--output", output, "--quiet")
    return output, result.stdout


def test_detection_run_directory_and_metrics(detection_run):
    output, stdout = detection_run
    assert "1 replica(s) x micro-batch 2 x 2 accumulation step(s); 2 updates" in stdout
    for name in ("run.json", "metrics.json", "model.keras", "checkpoint/update-000000002.weights.h5"):
        assert os.path.isfile(os.path.join(output, name)), name
    record = json.load(open(os.path.join(output, "run.json")))
    assert record["task"] == "detection" and record["num_classes"] == 3 and record["resolution"] == SIZE
    metrics = json.load(open(os.path.join(output, "metrics.json")))
    assert metrics["updates"] == 2 and metrics["eval"]["examples"] == 64
    assert set(metrics["eval"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert not [n for n in os.listdir(output) if n.startswith(".")]  # nothing half-written left behind


def test_evaluate_reports_coco_map(detection_run):
    output, _ = detection_run
    result = _cli("evaluate", output, "--json")
    scores = json.loads(result.stdout[result.stdout.index("{"):])
    stored = json.load(open(os.path.join(output, "metrics.json")))["eval"]
    assert scores["task"] == "detection"
    for key in ("AP", "AP50", "AP75"):
        assert scores[key] == pytest.approx(stored[key], abs=1e-6)


def test_detection_export_reloads_in_a_fresh_process(detection_run, tmp_path):
    from bit_keras.dense.run import load_task
    from bit_keras.dense.shapes import synthetic_shapes
    from bit_keras.dense.tasks import detections_per_image

    output, _ = detection_run
    exported = str(tmp_path / "detector")
    printed = _cli("export", "--from-run", output, "--output", exported).stdout
    assert "serving_default" in printed and "boxes, scores, classes, num_detections" in printed
    images = np.stack([e["image"] for e in synthetic_shapes(3, SIZE, seed=5)]).astype("float32") / 255
    np.save(tmp_path / "images.npy", images)
    code = (f"import numpy as np, tensorflow as tf; f = tf.saved_model.load({exported!r}).signatures['serving_default'];"
            f"out = f(images=tf.constant(np.load({str(tmp_path / 'images.npy')!r})));"
            f"np.savez({str(tmp_path / 'out.npz')!r}, **{{k: v.numpy() for k, v in out.items()}})")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)  # no bit_keras or keras-hub import
    served = np.load(tmp_path / "out.npz")
    expected = load_task(output).predict(images, verbose=0)
    np.testing.assert_array_equal(served["num_detections"], np.asarray(expected["num_detections"]))
    for i, found in enumerate(detections_per_image(expected)):
        n = len(found["scores"])
        np.testing.assert_allclose(served["scores"][i, :n], found["scores"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(served["boxes"][i, :n], found["boxes"], rtol=1e-4, atol=1e-3)
        np.testing.assert_array_equal(served["classes"][i, :n], found["classes"])


def test_segmentation_run_resumes_scores_and_exports(tmp_path):
    import tensorflow as tf

    from bit_keras import weights
    from bit_keras.dense.export import export_run
    from bit_keras.dense.run import evaluate, finetune, load_task

    output = str(tmp_path / "segmentation")
    options = dict(task="segmentation", dataset="shapes", output=output, batch_size=4, micro_batch_size=2,
                   steps=2, eval_every=1, resolution=SIZE, output_stride=16, eval_split="none")
    choice = weights.resolve("r14x1")
    first = finetune(choice, **options, verbose=0)
    assert first["updates"] == 2 and "eval" not in first
    for name in ("metrics.json", "model.keras"):  # as if stopped after the last checkpoint
        os.remove(os.path.join(output, name))
    lines = []
    again = finetune(choice, **options, verbose=0, log=lines.append)
    assert any(line.startswith("Resuming from") and "update 2 of 2" in line for line in lines), lines
    assert again["updates"] == 2
    with pytest.raises(ConfigError, match="holds a different run"):
        os.remove(os.path.join(output, "metrics.json"))
        finetune(choice, **{**options, "output_stride": 8}, verbose=0)
    scores = evaluate(output)
    assert scores["examples"] == 64 and 0.0 <= scores["mean_iou"] <= 1.0 and 0.0 <= scores["pixel_accuracy"] <= 1.0
    exported = export_run(output, str(tmp_path / "segmenter"))
    images = np.random.default_rng(0).random((2, SIZE, SIZE, 3)).astype("float32")
    served = tf.saved_model.load(exported).signatures["serving_default"](images=tf.constant(images))
    logits = np.asarray(load_task(output).predict(images, verbose=0))
    np.testing.assert_allclose(served["logits"].numpy(), logits, rtol=1e-4, atol=1e-4)
    assert served["masks"].shape == (2, SIZE, SIZE)


@pytest.mark.parametrize("spec, task, message", [
    ("coco:images,annotations.json", "segmentation", "holds box annotations, no masks"),
    ("masks:images,masks", "detection", "holds masks, no boxes"),
    ("masks:images,masks", "segmentation", "pass num_classes="),
    ("nowhere", "detection", "Unknown dataset 'nowhere'"),
    ("shapes", "keypoints", "Unknown task 'keypoints'"),
])
def test_dataset_refusals(spec, task, message):
    from bit_keras.dense.data import open_dataset

    with pytest.raises(ConfigError, match=message):
        open_dataset(spec, task)


def test_model_refusals():
    from bit_keras.dense.run import build_task

    with pytest.raises(ConfigError, match="freezes BatchNorm; it needs norm='batch'"):
        build_task(None, "detection", 3, resolution=SIZE, freeze_bn=True)
    with pytest.raises(ConfigError, match="output_stride applies to segmentation"):
        build_task(None, "detection", 3, resolution=SIZE, output_stride=16)


@pytest.mark.parametrize("args, message", [
    (["--task", "segmentation", "--dataset", "coco:images,annotations.json"], "holds box annotations, no masks"),
    (["--dataset", "digits", "--norm", "batch"], "apply to --task detection|segmentation only"),
    (["--task", "keypoints", "--dataset", "shapes"], "invalid choice: 'keypoints'"),
])
def test_cli_refusals_are_one_line(tmp_path, args, message):
    result = _cli("finetune", "--variant", "r14x1", "--output", str(tmp_path / "run"), "--steps", "1", *args,
                  check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and (len(result.stderr.strip().splitlines()) == 1 or "usage:" in result.stderr)


def test_detection_demo_trains_scores_and_draws_in_a_small_setting(tmp_path):
    """`bit_keras demo --task detection` end to end with 2 updates at 32 px (the default is a few minutes)."""
    from PIL import Image

    from bit_keras.dense.demo import run_demo

    lines = []
    result = run_demo(str(tmp_path / "detection"), steps=2, batch_size=4, resolution=32, print_fn=lines.append)
    assert lines[0].startswith("BiT detection demo: keras-hub RetinaNet on r14x1") and "2 updates" in lines[0]
    assert any(line.startswith("COCO box mAP on 64 held-out images (pycocotools): AP ") for line in lines), lines
    assert result["updates"] == 2 and 0.0 <= result["eval"]["AP50"] <= 1.0
    with Image.open(result["picture"]) as picture:
        assert picture.width > 200 and picture.height > 100
