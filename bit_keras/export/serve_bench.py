"""Which runtime to serve BiT with: the same model timed in Keras, the folded SavedModel, ONNX
Runtime, OpenVINO and the LiteRT interpreter (float32 and quantized), on this machine.

Every row is exported by `formats.export_deployable` (so each is first checked against the
Keras model) and timed in this process with the same thread count: images/s at batch 8 (the
median of `steps` calls, rows interleaved call by call so that a busy neighbour slows every
row alike) and latency at batch 1 (p50 and p99 of `latency_calls` calls), with ratios to the
SavedModel and the fraction of the float32 matmul peak (`bench.peak.MatmulProbe`, timed between
rounds).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np

ROWS = (("keras", None, None), ("savedmodel (folded)", "savedmodel", None), ("onnxruntime", "onnx", None),
        ("onnxruntime dynamic-int8", "onnx", "dynamic-int8"), ("onnxruntime int8", "onnx", "int8"),
        ("openvino", "openvino", None), ("litert", "litert", None), ("litert float16", "litert", "float16"),
        ("litert dynamic-int8", "litert", "dynamic-int8"), ("litert int8", "litert", "int8"))
CALIBRATION_IMAGES = 16  # int8 rows: uniform [0, 1] images; the timing does not depend on what they show


def _savedmodel_runner(model, directory):
    import tensorflow as tf

    from bit_keras.export import export_model
    from bit_keras.inference import fold_standardization

    path = export_model(model, os.path.join(directory, "savedmodel"), serving_model=fold_standardization(model))
    loaded = tf.saved_model.load(path)
    serving = loaded.signatures["serving_default"]
    key = next(iter(serving.structured_outputs))

    def run(images, _keep=loaded):
        return serving(images=tf.constant(images))[key].numpy()

    return run


def _runners(model, resolution, directory, threads, rows, log):
    from bit_keras.export import formats, runtimes

    runners = {}
    for name, fmt, mode in rows:
        if fmt is None:
            runners[name] = model.predict_on_batch  # Keras' compiled predict function
        elif fmt == "savedmodel":
            runners[name] = _savedmodel_runner(model, directory)
        else:
            suffix = {"onnx": ".onnx", "litert": ".tflite", "openvino": ""}[fmt]
            path = os.path.join(directory, name.replace(" ", "_") + suffix)
            calibration = (np.random.default_rng(0).uniform(0, 1, (CALIBRATION_IMAGES, resolution, resolution, 3))
                           .astype(np.float32) if mode == "int8" else None)
            formats.export_deployable(model, path, format=fmt, resolution=resolution, quantize=mode,
                                      calibration=calibration, log=log)
            runners[name] = runtimes.open_export(path, threads=threads).run
        log(f"ready: {name}")
    return runners


def serve_benchmark(variant="r50x1", resolution=224, *, batch=8, steps=10, latency_calls=50, threads=None,
                    rows=ROWS, log=print) -> dict:
    """{"rows": [...], "machine": ..., ...}: the same random-weights classifier served by each runtime."""
    import tensorflow as tf

    from bit_keras import weights
    from bit_keras.classifier import BiTImageClassifier
    from bit_keras.bench.counts import count_macs
    from bit_keras.bench.machine import cpu_name
    from bit_keras.bench.peak import MatmulProbe
    from bit_keras.bench.steps import parse_variant

    threads = threads or os.cpu_count()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already ran something in this process: its pool stays as it is
        pass
    architecture = parse_variant(variant)
    model = BiTImageClassifier.from_weights(weights.resolve(architecture.name, load_weights=False), 1000)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (batch, resolution, resolution, 3)).astype(np.float32)
    single = images[:1]
    flops_per_image = 2 * count_macs(architecture, resolution, 1000)
    with tempfile.TemporaryDirectory(prefix="bit_keras_serve_") as directory:
        runners = _runners(model, resolution, directory, threads, rows, log)
        probe = MatmulProbe()
        for run in runners.values():  # first calls pay for allocation and kernel selection
            run(images), run(single)
        batch_times = {name: [] for name in runners}
        probe_times = []
        for _ in range(steps):
            for name, run in runners.items():
                start = time.perf_counter()
                run(images)
                batch_times[name].append(time.perf_counter() - start)
            probe_times.append(probe.time())
        latencies = {name: [] for name in runners}
        for _ in range(latency_calls):
            for name, run in runners.items():
                start = time.perf_counter()
                run(single)
                latencies[name].append(time.perf_counter() - start)
    peak = probe.flops / statistics.median(probe_times)
    results = []
    for name, times in batch_times.items():
        per_second = batch / statistics.median(times)
        results.append({"runtime": name, "images_per_second_batch8": per_second,
                        "latency_ms_p50_batch1": 1e3 * float(np.percentile(latencies[name], 50)),
                        "latency_ms_p99_batch1": 1e3 * float(np.percentile(latencies[name], 99)),
                        "fraction_of_float32_peak": per_second * flops_per_image / peak})
    base = next((r for r in results if r["runtime"].startswith("savedmodel")), results[0])
    for row in results:
        row["throughput_vs_savedmodel"] = row["images_per_second_batch8"] / base["images_per_second_batch8"]
    return {"variant": architecture.name, "resolution": resolution, "batch": batch, "threads": threads,
            "steps": steps, "latency_calls": latency_calls, "machine": cpu_name(),
            "float32_peak_gflops_per_second": peak / 1e9, "rows": results}


def format_table(report) -> list:
    lines = [f"{report['variant']} at {report['resolution']} px on {report['machine']}, {report['threads']} threads; "
             f"float32 matmul peak {report['float32_peak_gflops_per_second']:.0f} GFLOP/s",
             f"| runtime | images/s (batch {report['batch']}) | vs SavedModel | p50 ms (batch 1) | p99 ms (batch 1) "
             "| of float32 peak |", "|---|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        lines.append(f"| {row['runtime']} | {row['images_per_second_batch8']:.1f} | "
                     f"{row['throughput_vs_savedmodel']:.2f}x | {row['latency_ms_p50_batch1']:.1f} | "
                     f"{row['latency_ms_p99_batch1']:.1f} | {row['fraction_of_float32_peak']:.0%} |")
    return lines
