"""`bit_keras bench --task detection|segmentation`: every row trains and reports (tiny r14x1, 64 px, one step)."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("keras_hub", reason="keras-hub provides the RetinaNet and DeepLabV3 task models")


def test_dense_bench_rows():
    """RetinaNet's {"boxes", "labels"} targets through a timed training step (keras-hub's
    `train_on_batch` refused them), one subprocess per row."""
    task, micro_batches, precision = "detection", (1, 2), "bfloat16"
    result = subprocess.run([sys.executable, "-m", "bit_keras", "bench", "--task", task, "--mode", "train",
                             "--variant", "r14x1", "--resolution", "64", "--micro-batch",
                             ",".join(map(str, micro_batches)), "--precision", precision, "--steps", "1", "--json"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert [row["micro_batch"] for row in report["rows"]] == list(micro_batches)
    for row in report["rows"]:
        assert (row["task"], row["precision"], row["resolution"], row["steps"]) == (task, precision, 64, 1)
        assert row["images_per_second"] == pytest.approx(row["micro_batch"] / row["seconds_per_step"])
        assert row["images_per_second"] > 0 and row["peak_rss_bytes"] > 100 * 2**20
    assert len(report["load_average"]) == 3
