"""A mirrored CLI fine-tune over 2 CPUs, killed with SIGKILL as a crash would, resumes where its checkpoint was
and writes its SavedModel (the default strategy's resume is checked in-process in test_finetune_run.py)."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.processes import HANG_SECONDS, kill_after_checkpoint
from tests.scaleout import ENV, FINETUNE, ROOT


def test_a_mirrored_cli_run_killed_with_sigkill_resumes_and_writes_a_savedmodel(tiny_export, tmp_path):
    import keras
    import tensorflow as tf

    output = tmp_path / "run"
    command = [sys.executable, "-m", "bit_keras", "finetune", "--variant", str(tiny_export), "--output", str(output),
               *FINETUNE, "--steps", "8", "--eval-every", "2", "--micro-batch", "4", "--strategy", "mirrored",
               "--cpu-devices", "2", "--savedmodel"]
    kill_after_checkpoint(command, output, updates=4, env=ENV, cwd=ROOT)
    assert not (output / "metrics.json").exists()
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=HANG_SECONDS, env=ENV, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "MirroredStrategy, 2 replica(s): global batch 16 = 2 replica(s) x 4 per replica x 2 accumulation" \
        in resumed.stdout
    assert "Resuming from" in resumed.stdout
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["updates"] == 8
    assert metrics["final_learning_rate"] == pytest.approx(0.05 * 0.001, rel=1e-5)
    # The updates before the kill are not redone: the logged updates run 2, 4, ... once each, after resume too.
    with open(output / "logs" / "metrics.csv") as handle:
        updates = [int(float(row["updates"])) for row in csv.DictReader(handle)]
    assert updates[-1] == 8 and updates[0] == 2 and sorted(set(updates)) == [2, 4, 6, 8]
    # The SavedModel is the fine-tuned classifier: the same logits as model.keras.
    images = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    loaded = tf.saved_model.load(str(output / "savedmodel"))
    model = keras.saving.load_model(output / "model.keras", compile=False)
    np.testing.assert_allclose(loaded(images, training=False).numpy(), model(images).numpy(), atol=1e-5)
