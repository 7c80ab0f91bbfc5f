"""`bit_keras finetune --task detection|segmentation --strategy mirrored` over 2 logical CPUs, micro-batch 1.

One child process per task runs the command line as a user does (the CPU is split into logical
devices before TensorFlow initialises there) on a tiny BiT (r14x1, random weights) at 64 px, on
fixed data (two images whose objects sit on anchors; no flips), so the loss must fall: global
batch 4 = 2 replicas x 1 image x 2 accumulation steps, RetinaNet's and DeepLab's losses finite.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.processes import HANG_SECONDS
from tests.scaleout import ENV, ROOT

pytest.importorskip("keras_hub", reason="keras-hub provides the RetinaNet and DeepLabV3 task models")

SIZE = 64
BOXES = [[4, 4, 36, 36], [28, 28, 60, 60]]  # yxyx px: each exactly one of RetinaNet's 32 px anchors at P3


def _fixed_data(tmp_path):
    """Two 64 px images with one bright square each, as a COCO folder and as a mask folder."""
    from PIL import Image

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    annotations = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "square"}]}
    for index, (top, left, bottom, right) in enumerate(BOXES):
        image = np.full((SIZE, SIZE, 3), 20, np.uint8)
        image[top:bottom, left:right] = (230, 60, 60)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[top:bottom, left:right] = 1
        Image.fromarray(image).save(images / f"{index}.png")
        Image.fromarray(mask, mode="L").save(masks / f"{index}.png")
        annotations["images"].append({"id": index, "file_name": f"{index}.png", "height": SIZE, "width": SIZE})
        annotations["annotations"].append({"id": index, "image_id": index, "category_id": 1,
                                           "bbox": [left, top, right - left, bottom - top]})
    (tmp_path / "annotations.json").write_text(json.dumps(annotations))
    return {"detection": f"coco:{images},{tmp_path / 'annotations.json'}", "segmentation": f"masks:{images},{masks}"}


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_mirrored_dense_run_over_two_cpus_with_micro_batch_one_trains(task, tmp_path):
    dataset = _fixed_data(tmp_path)[task]
    output = tmp_path / "run"
    command = [sys.executable, "-m", "bit_keras", "finetune", "--task", task, "--variant", "r14x1",
               "--dataset", dataset, "--resolution", str(SIZE), "--batch", "4", "--micro-batch", "1",
               "--steps", "2", "--eval-every", "1", "--learning-rate", "0.002", "--no-flip", "--eval-split", "none",
               "--strategy", "mirrored", "--cpu-devices", "2", "--output", str(output), "--quiet"]
    if task == "segmentation":
        command += ["--num-classes", "2"]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=HANG_SECONDS)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "batch 4 = 2 replica(s) x micro-batch 1 x 2 accumulation step(s); 2 updates" in done.stdout
    losses = [float(v) for v in re.findall(r" - loss: ([-+.e0-9]+)", done.stdout)]
    assert len(losses) == 2 and np.isfinite(losses).all(), done.stdout[-3000:]
    assert losses[-1] < losses[0], losses
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["updates"] == 2 and np.isfinite(metrics["train_loss"])
    assert os.path.isfile(output / "model.keras")
