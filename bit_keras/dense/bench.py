"""Training throughput and peak memory of detection/segmentation on BiT: `bit_keras bench --task ...`.

Each row (micro-batch, precision) runs in a fresh subprocess, so its peak resident memory
(VmHWM) is its own: the task (random weights) is built, compiled with SGD + momentum
(`AccumulatingSGD`, as `finetune --task` trains), one warm-up step is taken on a fixed batch
of synthetic shapes at the given resolution, then `steps` timed steps. Reported: median
seconds per step, images/s, and peak RSS (on an accelerator the device's peak memory too,
where the backend reports it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bit_keras.errors import ConfigError

PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def measure(task, variant="r50x1", resolution=512, micro_batch=1, precision="float32", steps=3) -> dict:
    """One row, in this process."""
    import keras
    import numpy as np

    from bit_keras import bench, weights
    from bit_keras.dense.data import open_dataset, train_batches
    from bit_keras.dense.run import _compile, build_task
    from bit_keras.optimizers import AccumulatingSGD

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be float32 or bfloat16. Received: precision={precision!r}")
    keras.config.set_dtype_policy(PRECISIONS[precision])  # the heads too
    keras.utils.set_random_seed(0)
    choice = weights.resolve(variant, load_weights=False)
    data = open_dataset("shapes", task, "test", resolution=resolution)
    model = build_task(choice, task, data.num_classes, resolution=resolution, dtype=PRECISIONS[precision])
    _compile(model, task, AccumulatingSGD(0.01, momentum=0.9))
    x, y = next(iter(train_batches(data, task, resolution=resolution, batch_size=micro_batch, max_boxes=8)))
    started = time.perf_counter()
    train_step(model, x, y)
    compile_seconds = time.perf_counter() - started
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        train_step(model, x, y)
        times.append(time.perf_counter() - started)
    median = float(np.median(times))
    row = {"task": task, "variant": choice.architecture.name, "resolution": resolution, "micro_batch": micro_batch,
           "precision": precision, "steps": steps, "seconds_per_step": median,
           "images_per_second": micro_batch / median, "first_step_seconds": compile_seconds,
           "peak_rss_bytes": bench.peak_rss_bytes(), "backend": keras.backend.backend()}
    device = _device_peak()
    if device is not None:
        row["device_peak_bytes"] = device
    return row


def train_step(model, x, y):
    """One training step on (x, y). keras-hub's `PipelineModel.train_on_batch` converts `y` to one
    tensor, which fails for RetinaNet's {"boxes", "labels"}; our tasks have no keras-hub
    preprocessor, so Keras' own `train_on_batch` (the same step `fit` takes) is called."""
    import keras

    return keras.Model.train_on_batch(model, x, y)


def _device_peak():
    try:
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return tf.config.experimental.get_memory_info(gpus[0].name)["peak"] if gpus else None
    except Exception:  # noqa: BLE001  (no such device or backend: nothing to report)
        return None


def report(task, variant, resolution, micro_batches=(1, 2), precisions=("float32",), steps=3, log=None) -> dict:
    """Every (precision, micro-batch) row, each in its own subprocess."""
    from bit_keras import bench

    rows = []
    for precision in precisions:
        for micro_batch in micro_batches:
            command = [sys.executable, "-m", "bit_keras.dense.bench", json.dumps(
                {"task": task, "variant": variant, "resolution": resolution, "micro_batch": micro_batch,
                 "precision": precision, "steps": steps})]
            result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
            if result.returncode:
                last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise ConfigError(f"bench --task {task} row micro-batch {micro_batch} {precision} failed: {last}")
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            if log is not None:
                log(format_row(rows[-1]))
    return {"machine": bench.cpu_name(), "load_average": os.getloadavg(), "rows": rows}


def format_row(row) -> str:
    device = f", device peak {row['device_peak_bytes'] / 2**30:.2f} GiB" if "device_peak_bytes" in row else ""
    return (f"{row['task']} {row['variant']} {row['resolution']} px micro-batch {row['micro_batch']} "
            f"{row['precision']}: {row['images_per_second']:.3f} images/s ({row['seconds_per_step']:.2f} s/step, "
            f"first step {row['first_step_seconds']:.1f} s), peak RSS {row['peak_rss_bytes'] / 2**30:.2f} GiB{device}")


if __name__ == "__main__":
    print(json.dumps(measure(**json.loads(sys.argv[1]))))
