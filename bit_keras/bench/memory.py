"""Peak memory of fine-tuning, measured in a fresh subprocess per row, next to the analytic estimates."""

from __future__ import annotations

import os
import sys
import tempfile
import time

from bit_keras.bench.counts import activation_bytes
from bit_keras.bench.machine import cpu_name, machine_memory_bytes, peak_rss_bytes, rss_bytes
from bit_keras.bench.steps import Config, build_model, parse_variant
from bit_keras.errors import ConfigError, SetupError

ACCUMULATORS = ("momentum", "keras")


def _memory_child(spec: str) -> None:
    """Runs in a fresh process: one fine-tuning update (and a second), prints RSS figures as JSON."""
    import json

    import keras
    import numpy as np

    options = json.loads(spec)
    config = Config(variant=options["variant"], size=options["size"], batch=options["micro_batch"], mode="train",
                    precision=options["precision"], num_classes=options["num_classes"])
    accumulation = options["accumulation"]
    model = build_model(config)
    if options["accumulator"] == "keras":  # Keras' own: a weight-sized accumulator beside the momentum
        optimizer = keras.optimizers.SGD(0.003, momentum=0.9,
                                         gradient_accumulation_steps=accumulation if accumulation > 1 else None)
    else:  # what `bit_keras finetune` uses: micro-batches accumulate in the momentum buffer
        from bit_keras.optimizers import AccumulatingSGD
        optimizer = AccumulatingSGD(0.003, momentum=0.9, accumulation_steps=accumulation)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (config.batch, config.size, config.size, 3)).astype("float32")
    labels = rng.integers(0, config.num_classes, (config.batch,))
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    built = rss_bytes()
    start = time.perf_counter()
    for _ in range(options["updates"] * accumulation):
        model.train_on_batch(images, labels)
    print(json.dumps({"rss_after_build_bytes": built, "vm_hwm_bytes": peak_rss_bytes(),
                      "parameters": model.count_params(), "seconds": time.perf_counter() - start}))


def measure_memory(variant: str, size: int, micro_batch: int, *, accumulation: int = 1, precision: str = "float32",
                   accumulator: str = "momentum", num_classes: int = 1000, updates: int = 2,
                   timeout: float = 3600) -> dict:
    """Peak RSS of fine-tuning `variant` at `size` px in a fresh subprocess.

    The child builds the model, compiles SGD with momentum and runs `updates` updates of
    `accumulation` micro-batches of `micro_batch` images, accumulated as `bit_keras finetune`
    does (`accumulator="momentum"`: in the momentum buffer, `bit_keras.optimizers`) or with
    Keras' `gradient_accumulation_steps` (`"keras"`: a separate accumulator). The peak is the child's `ru_maxrss` from `os.wait4`, so nothing of this
    process is counted.
    """
    import json
    import subprocess

    if accumulator not in ACCUMULATORS:
        raise ConfigError(f"accumulator must be one of {', '.join(ACCUMULATORS)}. Received: {accumulator!r}")
    spec = json.dumps({"variant": variant, "size": size, "micro_batch": micro_batch, "accumulation": accumulation,
                       "precision": precision, "accumulator": accumulator, "num_classes": num_classes,
                       "updates": updates})
    code = f"from bit_keras.bench.memory import _memory_child; _memory_child({spec!r})"
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=err)
        start = time.perf_counter()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        lines = out.read().decode(errors="replace").strip().splitlines()
        # SIGKILL: on Linux the out-of-memory killer, which is this benchmark's answer "does not fit".
        killed = child.returncode == -9
        if (child.returncode != 0 or not lines) and not killed:
            tail = err.read().decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise SetupError(f"The memory benchmark's subprocess ({variant}, {size}px, micro-batch {micro_batch}, "
                             f"accumulation {accumulation}) failed with exit code {child.returncode}: {tail[0][:300]}")
        child_report = {} if killed else json.loads(lines[-1])
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    architecture = parse_variant(variant)
    activations = activation_bytes(architecture, size, micro_batch, 2 if precision == "bfloat16" else 4, num_classes)
    parameters = architecture.num_params(num_classes)
    return {"variant": variant, "size": size, "micro_batch": micro_batch, "accumulation": accumulation,
            "batch": micro_batch * accumulation, "precision": precision, "accumulator": accumulator,
            "fits": not killed, "peak_rss_bytes": peak, "machine_memory_bytes": machine_memory_bytes(),
            "vm_hwm_bytes": child_report.get("vm_hwm_bytes"), "rss_after_build_bytes": child_report.get("rss_after_build_bytes"),
            "parameters": child_report.get("parameters"), "parameters_counted": parameters,
            "activation_estimate_bytes": activations,
            # weights, gradients, momentum, and Keras' accumulator under its gradient accumulation
            "optimizer_state_estimate_bytes": 4 * parameters * (3 + (accumulation > 1 and accumulator == "keras")),
            "seconds": round(time.perf_counter() - start, 1)}


def memory_report(variant: str, size: int, micro_batches=(1, 2), *, accumulation: int = 2,
                  precision: str = "float32", accumulators=("momentum",)) -> dict:
    """`measure_memory` for each micro-batch, and for the largest also accumulated over `accumulation`
    micro-batches (once per accumulator), with the measured growth per image (between the
    smallest and largest micro-batch)."""
    rows = [measure_memory(variant, size, micro_batch, precision=precision) for micro_batch in micro_batches]
    if accumulation > 1:
        rows += [measure_memory(variant, size, max(micro_batches), accumulation=accumulation, precision=precision,
                                accumulator=accumulator) for accumulator in accumulators]
    plain = [row for row in rows if row["accumulation"] == 1 and row.get("fits", True)]
    report = {"machine": cpu_name(), "variant": variant, "size": size, "precision": precision, "rows": rows}
    if len(plain) > 1 and plain[-1]["micro_batch"] > plain[0]["micro_batch"]:
        images = plain[-1]["micro_batch"] - plain[0]["micro_batch"]
        report["measured_bytes_per_image"] = (plain[-1]["peak_rss_bytes"] - plain[0]["peak_rss_bytes"]) / images
        report["estimated_activation_bytes_per_image"] = activation_bytes(
            parse_variant(variant), size, 1, 2 if precision == "bfloat16" else 4)
    return report


def format_memory_report(report: dict) -> list:
    gib = 2 ** 30
    lines = [f"memory: {report['variant']} fine-tuning at {report['size']}px, {report['precision']}, "
             f"SGD momentum, peak RSS of a fresh subprocess per row (ru_maxrss)"]
    for row in report["rows"]:
        if not row.get("fits", True):
            total = row.get("machine_memory_bytes")
            lines.append(f"micro-batch {row['micro_batch']}, accumulation {row['accumulation']}: does not fit: killed "
                         f"(out of memory) at {row['peak_rss_bytes'] / gib:.2f} GiB RSS"
                         + (f", on a machine with {total / gib:.1f} GiB" if total else ""))
            continue
        keras_accumulator = row["accumulation"] > 1 and row.get("accumulator") == "keras"
        accumulated = (f"accumulating {row['accumulation']} micro-batches (batch {row['batch']}) "
                       f"{'with Keras gradient_accumulation_steps' if keras_accumulator else 'in the momentum'}"
                       if row["accumulation"] > 1 else "no accumulation")
        lines.append(f"micro-batch {row['micro_batch']}, {accumulated}: peak RSS {row['peak_rss_bytes'] / gib:.2f} GiB "
                     f"(after building {row['rss_after_build_bytes'] / gib:.2f} GiB; estimate: activations "
                     f"{row['activation_estimate_bytes'] / gib:.2f} GiB + weights/gradients/momentum"
                     f"{'/accumulator' if keras_accumulator else ''} "
                     f"{row['optimizer_state_estimate_bytes'] / gib:.2f} GiB)")
    if "measured_bytes_per_image" in report:
        lines.append(f"per image: {report['measured_bytes_per_image'] / gib:.2f} GiB measured, "
                     f"{report['estimated_activation_bytes_per_image'] / gib:.2f} GiB estimated activations")
    return lines
